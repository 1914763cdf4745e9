/*
 * daemon.h - objects shared by the front (main thread) and the shards.
 *
 * Threads: the main thread runs the front (nanomsg intake, signals, timers);
 * each shard is a thread with its own event base.  The only state shared
 * between them is in struct daemon: read-only after startup, except the
 * atomics.  Requests travel as jobs (job.h).
 */
#ifndef TQ_DAEMON_H
#define TQ_DAEMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"


struct shard;
struct tq_stats;
struct opset;
struct storage;
struct auth_token;

struct daemon {
    const tq_config *cfg;
    int rep_sock;                  /* raw REP: front receives, anyone replies */
    uint8_t hash_key[16];          /* SipHash key for tenant -> shard/lane */
    int nshards;
    struct shard **shards;
    atomic_int pending;            /* admitted, not yet answered (max_pending) */
    atomic_bool draining;          /* SIGTERM seen: admit nothing new */
    struct tq_stats *front_stats;  /* the main thread's counters */
    const struct storage *storage; /* where the storefront state lives (read-only) */
    struct opset *ops;             /* main thread only: the SQL operations of [ops] dir
                                    * (the front admits against it, SIGHUP swaps it) */
    struct auth_token *auth;       /* main thread only: the token of [daemon] auth_token_file,
                                    * NULL = none (the front checks it, SIGHUP re-reads it) */
};

#endif
