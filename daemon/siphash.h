/*
 * siphash.h - SipHash-2-4, the keyed hash that maps tenants to shards and
 * lanes.  Keyed with random bytes at startup so that clients cannot choose
 * tenant names that pile up on one shard or one hash bucket.
 */
#ifndef TQ_SIPHASH_H
#define TQ_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/* Hash len bytes of data with the 16-byte key.  Pure; any thread. */
uint64_t siphash24(const uint8_t key[16], const void *data, size_t len);

#endif
