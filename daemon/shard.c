/*
 * shard.c - a worker shard: its thread and event base, its inbox from the
 * front, the scheduling of ready lanes onto its connections, and its
 * lifecycle.
 *
 * A shard serves ready lanes round-robin: an idle connection takes the lane
 * at the head of the ready list (or several, when more lanes are ready than
 * connections are idle) and runs up to max_batch of its queued requests in
 * ONE transaction (txn.c).  A lane is never in two transactions at once, so
 * one tenant's requests execute one after another in arrival order, while
 * other tenants use the shard's other connections.  Requests that need no
 * database pass through their lane at once, whether or not a connection is
 * free.
 *
 * Must not: block, or touch another shard's objects.
 */
#include "shard_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>

#include "log.h"

#define SHARD_TICK_MS 20

enum msg_kind { MSG_JOB = 1, MSG_DRAIN, MSG_STOP };

struct shard_msg {
    int kind;
    struct job *job;
};

static void sweep(struct shard *s, bool all);

void shard_fail_job(struct shard *s, struct job *j, tq_code code, const char *msg)
{
    job_finish_error(s->d, &s->sb, j, code, "%s", msg);
}

void shard_count(struct shard *s, enum shard_gauge g)
{
    atomic_fetch_add_explicit(&s->gauges[g], 1, memory_order_relaxed);
}

int shard_idle_conns(const struct shard *s, int *first)
{
    int n = 0;
    *first = -1;
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i].state == PGC_IDLE && s->txns[i].nb == 0 && s->conns[i].cb == NULL) {
            if (n++ == 0)
                *first = i;
        }
    return n;
}

void shard_check_drained(struct shard *s)
{
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_QUEUED], s->queued, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_LANES], s->lanes.count, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_CACHE_HITS], s->cache.hits, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_CACHE_MISSES], s->cache.misses,
                          memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_CACHE_BYTES], s->cache.bytes,
                          memory_order_relaxed);
    if (s->draining && s->queued == 0 && s->inflight == 0)
        atomic_store(&s->drained, true);
    if (s->stopping && s->inflight == 0)
        event_base_loopbreak(s->base);
}

/* Answer the requests at the head of lane that need no database (ping). */
static void pass_through(struct shard *s, struct lane *lane)
{
    while (lane->head && !lane->head->fam->needs_db(lane->head->op)) {
        struct job *j = lane_pop(lane);
        s->queued--;
        json_t *res = NULL;
        tq_error err = {.code = TQ_OK};
        if (j->fam->pass(j, &res, &err) == 0)
            job_finish_ok(s->d, &s->sb, j, res, false, NULL);
        else
            shard_fail_job(s, j, err.code, err.message);
        json_decref(res);
    }
}

/* No connection is free: the lanes still ready may yet have requests at
 * their head that need none.  Answer those, and drop lanes that emptied. */
static void pass_through_all(struct shard *s)
{
    struct lane *prev = NULL, *lane = s->ready.head;
    while (lane) {
        struct lane *next = lane->rnext;
        pass_through(s, lane);
        if (lane->depth == 0) {
            ready_unlink(&s->ready, prev, lane);
            lane_remove(&s->lanes, lane);
        } else {
            prev = lane;
        }
        lane = next;
    }
}

void shard_kick(struct shard *s)
{
    struct lane *lane;
    expiry_maybe_run(s); /* (before the lanes take the idle connections) */
    if (s->stopping && s->queued > 0)
        sweep(s, true); /* e.g. a batch put back to rerun: nothing new starts now */
    while ((lane = s->ready.head) != NULL) {
        pass_through(s, lane);
        if (lane->depth == 0) {
            ready_pop(&s->ready);
            lane_remove(&s->lanes, lane);
            continue;
        }
        int i, idle = shard_idle_conns(s, &i);
        if (idle == 0) {
            pass_through_all(s);
            break;
        }
        /* spread the ready lanes over the idle connections; a connection
         * takes several only when there are more lanes than connections */
        size_t share = (s->ready.count + (size_t)idle - 1) / (size_t)idle;
        int lanes = share < (size_t)s->cfg->max_batch_tenants ? (int)share
                                                               : s->cfg->max_batch_tenants;
        txn_start(&s->txns[i], lanes);
    }
    shard_check_drained(s);
}

static void admit(struct shard *s, struct job *j)
{
    struct lane *lane = lane_get(&s->lanes, j->req.tenant, j->req.tenant_len, j->hash, true);
    if (!lane) {
        shard_fail_job(s, j, TQ_E_QUEUE_FULL,
                       "out of memory for a new tenant lane; nothing was queued");
        return;
    }
    if (lane->depth >= (uint32_t)s->cfg->max_queue_per_tenant) {
        char msg[TQ_ERRMSG_MAX];
        snprintf(msg, sizeof msg,
                 "tenant \"%s\" already has %u requests queued (max_queue_per_tenant); nothing "
                 "was queued",
                 lane->tenant, lane->depth);
        shard_fail_job(s, j, TQ_E_QUEUE_FULL, msg);
        if (lane->depth == 0 && !lane->busy && !lane->ready)
            lane_remove(&s->lanes, lane);
        return;
    }
    lane_push(lane, j);
    s->queued++;
    if (j->deadline_us < s->min_deadline_us)
        s->min_deadline_us = j->deadline_us;
    if (!lane->busy)
        ready_push(&s->ready, lane);
}

/* Answer queued jobs whose deadline passed (or all, when stopping). */
static void sweep(struct shard *s, bool all)
{
    uint64_t now = now_us();
    if (!all && (s->queued == 0 || now < s->min_deadline_us))
        return;
    bool db_up = atomic_load(&s->connected) > 0;
    uint64_t min = UINT64_MAX;
    for (size_t b = 0; b <= s->lanes.mask; b++) {
        for (struct lane *l = s->lanes.buckets[b]; l; l = l->hnext) {
            size_t n;
            struct job *j = lane_expire(l, now, all, &min, &n);
            s->queued -= n;
            while (j) {
                struct job *next = j->next;
                if (all)
                    shard_fail_job(s, j, TQ_E_SHUTTING_DOWN,
                                   "the daemon is shutting down; not executed");
                else if (!db_up)
                    shard_fail_job(s, j, TQ_E_DB_UNAVAILABLE,
                                   "no database connection before the deadline; not executed");
                else
                    shard_fail_job(s, j, TQ_E_DEADLINE_EXCEEDED,
                                   "deadline passed while queued; not executed");
                j = next;
            }
        }
    }
    s->min_deadline_us = min;
    /* emptied lanes are still in the ready list: shard_kick drops them */
}

static void on_pull(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct shard *s = arg;
    for (;;) {
        struct shard_msg m;
        int rc = nn_recv(s->pull_sock, &m, sizeof m, NN_DONTWAIT);
        if (rc < 0) {
            if (nn_errno() != EAGAIN && nn_errno() != EINTR)
                log_err("shard %d: inbox: %s", s->id, nn_strerror(nn_errno()));
            break;
        }
        if (rc != (int)sizeof m)
            continue;
        switch (m.kind) {
        case MSG_JOB:
            if (s->stopping)
                shard_fail_job(s, m.job, TQ_E_SHUTTING_DOWN,
                               "the daemon is shutting down; not executed");
            else
                admit(s, m.job);
            break;
        case MSG_DRAIN:
            s->draining = true;
            break;
        case MSG_STOP:
            s->draining = true;
            s->stopping = true;
            sweep(s, true);
            /* The grace is over: a batch still waiting for its lock or its
             * read has committed nothing, so closing its connection fails it
             * cleanly; so does a cleanup pass or a ROLLBACK.  A batch whose
             * COMMIT is out finishes (bounded by the server's timeouts, and
             * by pg_pipeline_limit_ms if the server stops answering). */
            for (int i = 0; i < s->nconns; i++)
                if (pg_busy(&s->conns[i]) &&
                    (s->txns[i].nb == 0 || !s->txns[i].committing))
                    pg_abort(&s->conns[i], "shutdown grace is over");
            break;
        }
    }
    shard_kick(s);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct shard *s = arg;
    atomic_fetch_add_explicit(&s->heartbeat, 1, memory_order_relaxed);
    sweep(s, false);
    shard_kick(s); /* (and the expiry) */
}

static void on_conn_state(struct pgconn *c, void *owner)
{
    struct shard *s = owner;
    /* A connection made again may reach another server than the one the
     * cache was filled from: a promoted standby after a failover, or a
     * server restarted after a crash, that lacks edits the old one had
     * acknowledged (asynchronous replication, synchronous_commit = off)
     * and hands their transaction ids out again, so a row there can match
     * a cached (version, xmin) and still differ (docs/failure.md).  Start
     * from what the server holds. */
    if (c->state == PGC_IDLE && c->reconnects > 0) {
        size_t n = dcache_clear(&s->cache);
        if (n > 0)
            log_info("shard %d: draft cache emptied after reconnecting (%zu entries)", s->id, n);
    }
    int up = 0;
    unsigned long reconnects = 0;
    for (int i = 0; i < s->nconns; i++) {
        up += s->conns[i].state == PGC_IDLE || s->conns[i].state == PGC_BUSY;
        reconnects += s->conns[i].reconnects;
    }
    atomic_store(&s->connected, up);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_RECONNECTS], reconnects, memory_order_relaxed);
    shard_kick(s);
}

static void *shard_main(void *arg)
{
    struct shard *s = arg;
    tls_stats = &s->stats;
    for (int i = 0; i < s->nconns; i++)
        pg_start(&s->conns[i]);
    event_base_dispatch(s->base);
    log_debug("shard %d: loop done", s->id);
    return NULL;
}

/* --- lifecycle ----------------------------------------------------------- */

struct shard *shard_create(struct daemon *d, int id)
{
    const tq_config *cfg = d->cfg;
    struct shard *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->d = d;
    s->cfg = cfg;
    s->id = id;
    s->pull_sock = s->push_sock = -1;
    s->min_deadline_us = UINT64_MAX;
    expiry_init(s);
    snprintf(s->tout_stmt, sizeof s->tout_stmt, "%d", cfg->statement_timeout_ms);
    snprintf(s->tout_idle, sizeof s->tout_idle, "%d", pg_pipeline_limit_ms(cfg));
    msgpack_sbuffer_init(&s->sb);
    s->outbox = calloc((size_t)cfg->max_batch, sizeof *s->outbox);
    if (!s->outbox || lane_table_init(&s->lanes) < 0 ||
        dcache_init(&s->cache, (size_t)cfg->draft_cache_mb * 1024 * 1024 / (size_t)cfg->shards) < 0)
        goto fail;
    s->base = event_base_new();
    if (!s->base)
        goto fail;

    char url[64];
    snprintf(url, sizeof url, "inproc://tenantq-shard-%d", id);
    s->pull_sock = nn_socket(AF_SP, NN_PULL);
    s->push_sock = nn_socket(AF_SP, NN_PUSH);
    if (s->pull_sock < 0 || s->push_sock < 0 || nn_bind(s->pull_sock, url) < 0 ||
        nn_connect(s->push_sock, url) < 0) {
        log_err("shard %d: inproc socket: %s", id, nn_strerror(nn_errno()));
        goto fail;
    }
    int rcvfd;
    size_t sz = sizeof rcvfd;
    if (nn_getsockopt(s->pull_sock, NN_SOL_SOCKET, NN_RCVFD, &rcvfd, &sz) < 0)
        goto fail;
    s->ev_pull = event_new(s->base, rcvfd, EV_READ | EV_PERSIST, on_pull, s);
    s->ev_tick = event_new(s->base, -1, EV_PERSIST, on_tick, s);
    struct timeval tick = {0, SHARD_TICK_MS * 1000};
    if (!s->ev_pull || !s->ev_tick || event_add(s->ev_pull, NULL) < 0 ||
        event_add(s->ev_tick, &tick) < 0)
        goto fail;
    if (sql_table_init(&s->sql, cfg, d->storage) < 0)
        goto fail;

    s->nconns = cfg->connections_per_shard;
    s->conns = calloc((size_t)s->nconns, sizeof *s->conns);
    s->txns = calloc((size_t)s->nconns, sizeof *s->txns);
    if (!s->conns || !s->txns)
        goto fail;
    for (int i = 0; i < s->nconns; i++)
        if (txn_init(&s->txns[i], s, &s->conns[i]) < 0 ||
            pg_init(&s->conns[i], s->base, cfg, id, i, on_conn_state, s, s->sql.prep,
                    ST__COUNT) < 0)
            goto fail;
    return s;
fail:
    log_err("shard %d: cannot be created", id);
    shard_destroy(s);
    return NULL;
}

int shard_start(struct shard *s)
{
    if (pthread_create(&s->thread, NULL, shard_main, s) != 0)
        return -1;
    s->thread_started = true;
    return 0;
}

static int send_msg(struct shard *s, int kind, struct job *job)
{
    struct shard_msg m = {.kind = kind, .job = job};
    return nn_send(s->push_sock, &m, sizeof m, NN_DONTWAIT) == (int)sizeof m ? 0 : -1;
}

int shard_submit(struct shard *s, struct job *job) { return send_msg(s, MSG_JOB, job); }
int shard_request_drain(struct shard *s) { return send_msg(s, MSG_DRAIN, NULL); }
int shard_request_stop(struct shard *s) { return send_msg(s, MSG_STOP, NULL); }
bool shard_drained(const struct shard *s) { return atomic_load(&s->drained); }
int shard_connected(const struct shard *s) { return atomic_load(&s->connected); }
unsigned shard_heartbeat(const struct shard *s) { return atomic_load(&s->heartbeat); }
struct tq_stats *shard_stats(struct shard *s) { return &s->stats; }
unsigned long shard_gauge(const struct shard *s, enum shard_gauge g)
{
    return atomic_load_explicit(&s->gauges[g], memory_order_relaxed);
}

void shard_destroy(struct shard *s)
{
    if (!s)
        return;
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    /* the thread is gone: its objects are ours now */
    if (s->lanes.buckets) {
        for (size_t b = 0; b <= s->lanes.mask; b++) {
            struct lane *l = s->lanes.buckets[b];
            while (l) {
                struct lane *next = l->hnext;
                struct job *j;
                while ((j = lane_pop(l)) != NULL) {
                    atomic_fetch_sub(&s->d->pending, 1);
                    job_free(j);
                }
                free(l);
                l = next;
            }
        }
        lane_table_destroy(&s->lanes);
    }
    for (int i = 0; s->txns && i < s->nconns; i++)
        if (s->txns[i].s)
            txn_destroy(&s->txns[i]);
    for (int i = 0; s->conns && i < s->nconns; i++)
        pg_destroy(&s->conns[i]);
    dcache_destroy(&s->cache);
    free(s->conns);
    free(s->txns);
    if (s->ev_pull)
        event_free(s->ev_pull);
    if (s->ev_tick)
        event_free(s->ev_tick);
    if (s->pull_sock >= 0)
        nn_close(s->pull_sock);
    if (s->push_sock >= 0)
        nn_close(s->push_sock);
    if (s->base)
        event_base_free(s->base);
    sql_table_free(&s->sql);
    free(s->outbox);
    msgpack_sbuffer_destroy(&s->sb);
    free(s);
}
