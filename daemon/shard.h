/*
 * shard.h - worker shards: one thread and one event base each, owning the
 * lanes of the tenants hashed to it and a few PostgreSQL connections.
 *
 * The front hands work over with shard_submit (nanomsg inproc; the shard's
 * pull socket is the wake-up).  Everything else in a shard is touched only by
 * its own thread; the front reads only the atomics.
 */
#ifndef TQ_SHARD_H
#define TQ_SHARD_H

#include <stdatomic.h>
#include <stdbool.h>

#include "daemon.h"
#include "job.h"

/* Create shard id (sockets, base, connections) without starting its thread.
 * Returns NULL on failure (logged). */
struct shard *shard_create(struct daemon *d, int id);
/* Start the thread.  0 or -1. */
int shard_start(struct shard *s) __attribute__((warn_unused_result));

/*
 * Hand job to shard s (front thread only).  Returns 0 if the shard took
 * ownership, -1 if its inbox is full (EAGAIN) or closed: the caller still
 * owns job and must answer it.
 */
int shard_submit(struct shard *s, struct job *job) __attribute__((warn_unused_result));

/* Ask the shard to report when everything it has queued is done (front
 * thread).  Returns 0 if the request was delivered, -1 to retry later. */
int shard_request_drain(struct shard *s);
/* Ask the shard to fail what is still queued with SHUTTING_DOWN, finish
 * what is running, and leave its loop.  0 or -1 to retry later. */
int shard_request_stop(struct shard *s);

/* Read by the front: drained after a drain request; count of usable
 * connections; a counter its timer bumps (watchdog liveness). */
bool shard_drained(const struct shard *s);
int shard_connected(const struct shard *s);
unsigned shard_heartbeat(const struct shard *s);

enum shard_gauge {
    SHARD_GAUGE_QUEUED,        /* requests waiting in lanes */
    SHARD_GAUGE_LANES,         /* tenants with queued or running work */
    SHARD_GAUGE_RECONNECTS,    /* database reconnect attempts */
    SHARD_GAUGE_LOCK_TIMEOUTS, /* batches failed with LOCK_TIMEOUT */
    SHARD_GAUGE_LOCK_BUSY,     /* batches put back: try-lock found the lock held */
    SHARD_GAUGE_CACHE_HITS,    /* rows read whose parsed state was cached */
    SHARD_GAUGE_CACHE_MISSES,  /* rows read and parsed */
    SHARD_GAUGE_CACHE_BYTES,   /* reckoned heap of the cached states */
    SHARD_GAUGE_CACHE_STALE,   /* one-round-trip batches whose cached state was stale */
    SHARD_GAUGE_ONE_TRIP,      /* transactions sent whole in one round trip */
    SHARD_GAUGE_ISOLATED_RERUNS, /* statement batches run again isolated after a failure */
    SHARD_GAUGE__COUNT
};
/* Read by the metrics endpoint (any thread). */
unsigned long shard_gauge(const struct shard *s, enum shard_gauge g);
struct tq_stats *shard_stats(struct shard *s);

/* Join the thread (after a stop request) and free everything. */
void shard_destroy(struct shard *s);

#endif
