/*
 * front.h - the nanomsg intake on the main thread: one raw REP socket bound
 * to every configured endpoint, so many requests are in flight at once.
 * Decodes and validates each request, answers bad ones itself, and hands
 * good ones to the shard their tenant hashes to.
 */
#ifndef TQ_FRONT_H
#define TQ_FRONT_H

#include <event2/event.h>

#include "daemon.h"

struct front;

/*
 * Open the raw REP socket into d->rep_sock and bind every endpoint of
 * [daemon] listen.  Returns NULL after writing an error naming the key and
 * endpoint to err.  Main thread, before the shards start.
 */
struct front *front_open(struct daemon *d, struct event_base *base, char *err, size_t errlen);

/* Start reading (registers the receive event).  0 or -1. */
int front_start(struct front *f) __attribute__((warn_unused_result));

/* Stop reading; the socket stays open so shards can still reply. */
void front_stop_reading(struct front *f);

/* Close the socket and free f.  Only after every shard thread has ended. */
void front_close(struct front *f);

/* Check the syntax of the [daemon] listen value (for --check-config).
 * Returns 0, or -1 with a message naming the key and endpoint. */
int front_check_endpoints(const char *listen, char *err, size_t errlen);

/* Descriptors kept for everything but client connections: the database
 * connections, the metrics endpoint, the listen backlogs, what can arrive
 * between two connection checks and the daemon's own. */
long front_fd_reserve(const tq_config *cfg);

/* The [daemon] max_clients that runs under a descriptor limit of fd_limit:
 * the configured value, or for 0 CLIENT_DEFAULT or what the limit leaves
 * if less.  -1 with a message naming the key when it does not fit. */
int front_client_budget(const tq_config *cfg, long fd_limit, int *max_clients, char *err,
                        size_t errlen);

#endif
