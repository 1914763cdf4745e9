/*
 * stats.c - the request, batch and transaction counters (contract: stats.h).
 */
#include "stats.h"

#include <stdio.h>
#include <string.h>

#include "opset.h"

_Thread_local struct tq_stats *tls_stats;

/* upper bounds in microseconds; the last bucket is +Inf */
static const uint64_t lat_bounds_us[STATS_LAT_BUCKETS] = {
    250, 500, 1000, 2000, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000,
};

void stats_request(int op, tq_code code)
{
    struct tq_stats *s = tls_stats;
    if (!s || code < 0 || code >= TQ_CODE__COUNT)
        return;
    if (op < 0 || op > SF_OP__COUNT)
        op = SF_OP__COUNT;
    atomic_fetch_add_explicit(&s->requests[op][code], 1, memory_order_relaxed);
}

/* Names written on the main thread only, before the slot is handed out;
 * read by the main thread's /metrics.  Counts from any thread. */
static char sql_names[STATS_SQL_OPS][OPSET_NAME_MAX + 1];
static atomic_ulong sql_counts[STATS_SQL_OPS][TQ_CODE__COUNT];
static int n_sql_names;

int stats_sql_slot(const char *name)
{
    for (int i = 0; i < n_sql_names; i++)
        if (strcmp(sql_names[i], name) == 0)
            return i;
    if (n_sql_names == STATS_SQL_OPS || strlen(name) > OPSET_NAME_MAX)
        return -1;
    snprintf(sql_names[n_sql_names], sizeof sql_names[0], "%s", name);
    return n_sql_names++;
}

void stats_sql_request(int slot, tq_code code)
{
    if (slot < 0 || slot >= STATS_SQL_OPS || code < 0 || code >= TQ_CODE__COUNT) {
        stats_request(-1, code);
        return;
    }
    atomic_fetch_add_explicit(&sql_counts[slot][code], 1, memory_order_relaxed);
}

static int lat_bucket(uint64_t us)
{
    int b = 0;
    while (b < STATS_LAT_BUCKETS && us > lat_bounds_us[b])
        b++;
    return b;
}

void stats_timing(uint64_t queue_us, uint64_t exec_us)
{
    struct tq_stats *s = tls_stats;
    if (!s)
        return;
    atomic_fetch_add_explicit(&s->queue_hist[lat_bucket(queue_us)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->exec_hist[lat_bucket(exec_us)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->queue_sum_us, queue_us, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->exec_sum_us, exec_us, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->timed, 1, memory_order_relaxed);
}

void stats_batch(int n)
{
    struct tq_stats *s = tls_stats;
    if (!s || n <= 0)
        return;
    int b = 0;
    while (b < STATS_BATCH_BUCKETS && n > (1 << b))
        b++;
    atomic_fetch_add_explicit(&s->batch_hist[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->batch_sum, (unsigned long)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->batches, 1, memory_order_relaxed);
}

void stats_txn(int tenants)
{
    struct tq_stats *s = tls_stats;
    if (!s || tenants <= 0)
        return;
    atomic_fetch_add_explicit(&s->txns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->txn_tenants, (unsigned long)tenants, memory_order_relaxed);
}

uint64_t stats_lat_bound_us(int k) { return lat_bounds_us[k]; }

int stats_sql_names(void) { return n_sql_names; }

const char *stats_sql_name(int slot) { return sql_names[slot]; }

unsigned long stats_sql_count(int slot, tq_code code)
{
    return atomic_load_explicit(&sql_counts[slot][code], memory_order_relaxed);
}
