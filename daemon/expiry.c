/*
 * expiry.c - deleting expired idempotency records, on shard 0 only.
 *
 * Edits come first: a due pass waits for an idle connection that no ready
 * lane wants, but for at most EXPIRY_MAX_WAIT_MS; then it takes the next
 * connection that comes free ahead of the lanes, so that a shard busy all
 * the time still keeps up.  While behind (the last pass deleted a whole
 * batch) it does not wait: one SQL_CLEANUP_BATCH DELETE per
 * EXPIRY_BEHIND_MS, up to ~25,000 records a second, on one connection.
 *
 * Must not: wait for locks (the DELETE skips locked records and runs under
 * the transactions' timeouts), or run while the shard drains.
 */
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "shard_int.h"

#define EXPIRY_IDLE_S 10        /* rest after a pass that deleted less than a batch */
#define EXPIRY_BEHIND_MS 20     /* next pass after a full batch: more are due */
#define EXPIRY_MAX_WAIT_MS 1000 /* a due pass waits this long for a moment without edits */
#define EXPIRY_FIRST_S 5        /* let startup settle first */

void expiry_init(struct shard *s)
{
    s->expiry.next_us = now_us() + EXPIRY_FIRST_S * 1000000u;
    snprintf(s->expiry.ttl, sizeof s->expiry.ttl, "%d", s->cfg->idempotency_ttl_s);
    snprintf(s->expiry.lock_ms, sizeof s->expiry.lock_ms, "%d", s->cfg->lock_timeout_ms);
}

static void expiry_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    (void)c;
    struct shard *s = arg;
    s->inflight--;
    int f = -1;
    for (int i = 0; !lost && i < n && f < 0; i++)
        if (pg_classify(res[i]) != PG_ERR_NONE)
            f = i;
    long deleted = (!lost && f < 0 && n == 2) ? atol(PQcmdTuples(res[1])) : 0;
    if (f >= 0)
        log_warn("shard %d: idempotency cleanup failed: %s", s->id,
                 res[f] ? PQresultErrorMessage(res[f]) : "no result");
    if (deleted > 0)
        log_debug("shard %d: expired %ld idempotency records", s->id, deleted);
    /* a full batch means more are due: come back soon, else rest a while */
    s->expiry.behind = deleted >= SQL_CLEANUP_BATCH;
    s->expiry.next_us =
        now_us() + (s->expiry.behind ? EXPIRY_BEHIND_MS * 1000u : EXPIRY_IDLE_S * 1000000u);
    shard_check_drained(s);
    shard_kick(s);
}

void expiry_maybe_run(struct shard *s)
{
    if (s->id != 0 || s->draining) /* (called on every kick: no clock read first) */
        return;
    uint64_t now = now_us();
    if (now < s->expiry.next_us)
        return;
    if (s->ready.head && !s->expiry.behind && now < s->expiry.next_us + EXPIRY_MAX_WAIT_MS * 1000u)
        return;
    int i;
    if (shard_idle_conns(s, &i) == 0)
        return;
    /* one implicit transaction: the timeouts apply to the DELETE */
    struct pg_stmt del[2] = {
        sql_stmt(&s->sql, ST_TIMEOUTS, s->expiry.lock_ms, s->tout_stmt, s->tout_idle, NULL),
        sql_stmt(&s->sql, ST_IDEM_CLEANUP, s->expiry.ttl, NULL, NULL, NULL),
    };
    if (pg_pipeline(&s->conns[i], del, 2, expiry_done, s) == 0)
        s->inflight++;
    s->expiry.next_us = now + EXPIRY_IDLE_S * 1000000u;
}
