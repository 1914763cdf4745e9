/*
 * stats.h - the counters and histograms of answered requests, batches and
 * transactions.
 *
 * Every thread that answers requests (the front and each shard) owns one
 * struct tq_stats and writes it with relaxed atomics; the /metrics handler
 * on the main thread (metrics.c) sums them.  No locks, no allocation on the
 * request path.
 */
#ifndef TQ_STATS_H
#define TQ_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "storefront.h"
#include "tq_codes.h"

#define STATS_LAT_BUCKETS 15  /* latency buckets, see metrics.c */
#define STATS_BATCH_BUCKETS 9 /* 1, 2, 4, ... 128, 256 */

struct tq_stats {
    /* [op][code]; op SF_OP__COUNT = not a known op (rejected by the front) */
    atomic_ulong requests[SF_OP__COUNT + 1][TQ_CODE__COUNT];
    atomic_ulong queue_hist[STATS_LAT_BUCKETS + 1], exec_hist[STATS_LAT_BUCKETS + 1];
    atomic_ulong queue_sum_us, exec_sum_us, timed;
    atomic_ulong batch_hist[STATS_BATCH_BUCKETS + 1], batch_sum, batches;
    atomic_ulong txns, txn_tenants;
};

/* The calling thread's stats (set once at thread start; NULL = not counted). */
extern _Thread_local struct tq_stats *tls_stats;

/* Count one answered request; op < 0 or >= SF_OP__COUNT = unknown op. */
void stats_request(int op, tq_code code);
/* Requests of SQL operations are counted by op name, in counters shared by
 * every thread and kept across reloads (a name keeps its slot; at most
 * STATS_SQL_OPS names over the process' life, further ones count as
 * op="invalid").  stats_sql_slot is main thread only (admission): the slot of
 * name, assigned on first use, or -1 when the table is full.
 * stats_sql_request may be called from any thread. */
#define STATS_SQL_OPS 256

/* HTTP connections the metrics endpoint holds at once; more are accepted
 * and closed at once (each is a descriptor the SP listeners must not lose) */
#define METRICS_MAX_CONNECTIONS 16
int stats_sql_slot(const char *name);
void stats_sql_request(int slot, tq_code code);

/* Record one executed request's queue wait and execution time. */
void stats_timing(uint64_t queue_us, uint64_t exec_us);
/* Record one executed batch of n requests (one tenant's share of a transaction). */
void stats_batch(int n);
/* Record one transaction started with the batches of `tenants` tenants. */
void stats_txn(int tenants);

/* For the renderer: the upper bound of latency bucket k (< STATS_LAT_BUCKETS)
 * in microseconds; the SQL op names counted so far and one's count. */
uint64_t stats_lat_bound_us(int k);
int stats_sql_names(void);
const char *stats_sql_name(int slot);
unsigned long stats_sql_count(int slot, tq_code code);

#endif
