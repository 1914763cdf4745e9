/*
 * pg.c - the async libpq connection of a shard.  The libpq
 * traps this file is shaped around: event_free before the socket may be
 * closed or replaced (stale-fd stall), re-enter non-blocking and pipeline
 * mode after every (re)connect, flush until PQflush says 0 while watching
 * for reads too, never call PQgetResult while PQisBusy.
 */
#include "pg.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_CONNECT_TIMEOUT_S 10

static void pg_schedule_reconnect(struct pgconn *c);
static void pg_io_cb(evutil_socket_t fd, short what, void *arg);

const char *pg_sqlstate(const PGresult *r)
{
    return r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
}

enum pg_err pg_classify(const PGresult *r)
{
    if (!r)
        return PG_ERR_CONNECTION;
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_FATAL_ERROR && st != PGRES_NONFATAL_ERROR && st != PGRES_BAD_RESPONSE)
        return PG_ERR_NONE;
    const char *s = pg_sqlstate(r);
    if (!s || strlen(s) != 5)
        return PG_ERR_CONNECTION;
    if (strcmp(s, "55P03") == 0)
        return PG_ERR_LOCK;
    if (strcmp(s, "23505") == 0)
        return PG_ERR_UNIQUE;
    if (strncmp(s, "23", 2) == 0)
        return PG_ERR_CONSTRAINT;
    if (strcmp(s, "P0001") == 0)
        return PG_ERR_RAISED;
    if (strcmp(s, "22012") == 0)
        return PG_ERR_GUARD;
    if (strcmp(s, "40001") == 0)
        return PG_ERR_SERIALIZATION;
    if (strcmp(s, "57014") == 0 || strncmp(s, "40", 2) == 0 || strncmp(s, "08", 2) == 0 ||
        strncmp(s, "57P", 3) == 0 || strcmp(s, "53300") == 0)
        return PG_ERR_TRANSIENT;
    return PG_ERR_OTHER;
}

static void notice_receiver(void *arg, const PGresult *r)
{
    struct pgconn *c = arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    /* the primary message alone: the full one repeats the severity
     * ("FATAL:  terminating ...") */
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (!msg)
        msg = PQresultErrorMessage(r);
    size_t len = strcspn(msg, "\n");
    if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        log_warn("shard %d conn %d: server says %s: %.*s", c->shard_id, c->idx, sev, (int)len, msg);
    else
        log_debug("shard %d conn %d: %s: %.*s", c->shard_id, c->idx, sev ? sev : "NOTICE",
                  (int)len, msg);
}

int pg_check_conninfo(const char *conninfo, char *err, size_t errlen)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
    if (opts) {
        PQconninfoFree(opts);
        return 0;
    }
    snprintf(err, errlen, "[database] conninfo: %.*s", msg ? (int)strcspn(msg, "\n") : 13,
             msg ? msg : "out of memory");
    PQfreemem(msg);
    return -1;
}

int pg_pipeline_limit_ms(const tq_config *cfg)
{
    return cfg->lock_timeout_ms + cfg->statement_timeout_ms + 5000;
}

bool pg_busy(const struct pgconn *c)
{
    return c->state == PGC_BUSY || c->state == PGC_PREPARING;
}

static void free_events(struct pgconn *c)
{
    if (c->ev_limit)
        evtimer_del(c->ev_limit);
    if (c->ev_io) {
        event_free(c->ev_io);
        c->ev_io = NULL;
    }
    if (c->ev_write) {
        event_free(c->ev_write);
        c->ev_write = NULL;
    }
}

static void clear_results(PGresult **res, int n)
{
    for (int i = 0; i < n; i++) {
        PQclear(res[i]);
        res[i] = NULL;
    }
}

/* Drop the connection (events first: the fd number may be reused at once),
 * tell the running pipeline, schedule the reconnect unless aborting. */
static void pg_close(struct pgconn *c, const char *why, bool reconnect)
{
    bool was_busy = c->state == PGC_BUSY;
    if (!reconnect)
        log_info("shard %d conn %d: closing the database connection: %s", c->shard_id, c->idx,
                 why);
    else if (c->state == PGC_IDLE || c->state == PGC_BUSY || c->state == PGC_PREPARING)
        log_warn("shard %d conn %d: database connection lost: %s", c->shard_id, c->idx, why);
    else
        log_warn("shard %d conn %d: cannot connect to the database: %s", c->shard_id, c->idx,
                 why);
    free_events(c);
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    c->state = PGC_DOWN;
    if (was_busy) {
        PGresult *res[PG_MAX_STMTS];
        int n = c->nstmts;
        memcpy(res, c->results, sizeof res);
        memset(c->results, 0, sizeof c->results);
        pg_pipeline_cb cb = c->cb;
        c->cb = NULL;
        cb(c, c->cb_arg, res, n, true);
        clear_results(res, n);
    } else {
        /* (lost while preparing: nobody waits for those results) */
        clear_results(c->results, PG_MAX_STMTS);
        c->cb = NULL;
    }
    if (reconnect)
        pg_schedule_reconnect(c);
    if (c->on_state)
        c->on_state(c, c->owner);
}

static void pg_drop(struct pgconn *c, const char *why)
{
    pg_close(c, why, true);
}

void pg_abort(struct pgconn *c, const char *why)
{
    if (c->state != PGC_DOWN)
        pg_close(c, why, false);
}

static void conn_error_text(struct pgconn *c, char *buf, size_t len)
{
    const char *m = c->conn ? PQerrorMessage(c->conn) : "out of memory";
    size_t n = strcspn(m, "\n");
    snprintf(buf, len, "%.*s", (int)(n > 300 ? 300 : n), m);
}

static void pg_drop_with_libpq_error(struct pgconn *c)
{
    char buf[320];
    conn_error_text(c, buf, sizeof buf);
    pg_drop(c, buf[0] ? buf : "connection closed");
}

static void prepared_cb(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost);
static void dyn_clear(struct pgconn *c);
static int pg_send(struct pgconn *c, const struct pg_stmt *stmts, int n, bool prepare,
                   pg_pipeline_cb cb, void *arg);

/* The connection is usable: tell the owner. */
static void pg_usable(struct pgconn *c)
{
    c->state = PGC_IDLE;
    c->backoff_ms = 0;
    if (c->was_up)
        log_notice("shard %d conn %d: reconnected to the database", c->shard_id, c->idx);
    else
        log_info("shard %d conn %d: connected to the database", c->shard_id, c->idx);
    c->was_up = true;
    if (c->on_state)
        c->on_state(c, c->owner);
}

static void prepared_cb(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    (void)arg;
    if (lost)
        return; /* pg_drop already scheduled the reconnect */
    for (int i = 0; i < n; i++) {
        if (!res[i] || PQresultStatus(res[i]) != PGRES_COMMAND_OK) {
            const char *m = res[i] ? PQresultErrorMessage(res[i]) : "no result";
            char why[400];
            snprintf(why, sizeof why, "preparing statements failed (run tenantqd --init-db?): %.*s",
                     (int)strcspn(m, "\n"), m);
            pg_drop(c, why);
            return;
        }
    }
    pg_usable(c);
}

static void pg_connected(struct pgconn *c)
{
    free_events(c);
    dyn_clear(c); /* a new session has prepared nothing */
    int fd = PQsocket(c->conn);
    if (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1 || fd < 0) {
        pg_drop_with_libpq_error(c);
        return;
    }
    c->ev_io = event_new(c->base, fd, EV_READ | EV_PERSIST, pg_io_cb, c);
    c->ev_write = event_new(c->base, fd, EV_WRITE | EV_PERSIST, pg_io_cb, c);
    if (!c->ev_io || !c->ev_write || event_add(c->ev_io, NULL) < 0) {
        pg_drop(c, "cannot register connection events");
        return;
    }
    if (c->nprepare == 0) {
        pg_usable(c);
        return;
    }
    c->state = PGC_IDLE; /* so that pg_send may start */
    if (pg_send(c, c->prepare, c->nprepare, true, prepared_cb, NULL) == 0 &&
        c->state == PGC_BUSY)
        c->state = PGC_PREPARING;
}

static void pg_connect_cb(evutil_socket_t fd, short what, void *arg);

/* Wait for what PQconnectPoll asked for, on the socket it has now (it can
 * change between steps). */
static void pg_connect_step(struct pgconn *c, PostgresPollingStatusType st)
{
    free_events(c);
    if (st == PGRES_POLLING_OK) {
        pg_connected(c);
        return;
    }
    if (st == PGRES_POLLING_FAILED) {
        pg_drop_with_libpq_error(c);
        return;
    }
    int fd = PQsocket(c->conn);
    if (fd < 0) {
        pg_drop_with_libpq_error(c);
        return;
    }
    short ev = st == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
    struct timeval tv = {PG_CONNECT_TIMEOUT_S, 0};
    c->ev_io = event_new(c->base, fd, ev, pg_connect_cb, c);
    if (!c->ev_io || event_add(c->ev_io, &tv) < 0)
        pg_drop(c, "cannot register connect event");
}

static void pg_connect_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    (void)fd;
    if (what & EV_TIMEOUT) {
        pg_drop(c, "connect timed out");
        return;
    }
    pg_connect_step(c, PQconnectPoll(c->conn));
}

void pg_start(struct pgconn *c)
{
    static const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {c->cfg->conninfo, "tenantqd", NULL};
    c->conn = PQconnectStartParams(keys, vals, 1);
    c->state = PGC_CONNECTING;
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        pg_drop_with_libpq_error(c);
        return;
    }
    PQsetNoticeReceiver(c->conn, notice_receiver, c);
    /* libpq: behave as if the last poll returned WRITING */
    pg_connect_step(c, PGRES_POLLING_WRITING);
}

static void pg_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pgconn *c = arg;
    c->reconnects++;
    pg_start(c);
}

static void pg_limit_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pgconn *c = arg;
    if (!pg_busy(c))
        return;
    char why[160];
    snprintf(why, sizeof why,
             "no answer from the server within %d ms (lock_timeout_ms + statement_timeout_ms "
             "+ 5 s): dropping the connection",
             pg_pipeline_limit_ms(c->cfg));
    pg_drop(c, why);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void pg_schedule_reconnect(struct pgconn *c)
{
    /* capped exponential backoff with +-25% jitter, so that the connections
     * of all shards do not hammer a recovering server in lockstep */
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : PG_BACKOFF_MIN_MS;
    if (c->backoff_ms > PG_BACKOFF_MAX_MS)
        c->backoff_ms = PG_BACKOFF_MAX_MS;
    unsigned jitter = (unsigned)(xorshift(&c->rng) % (c->backoff_ms / 2 + 1));
    unsigned ms = c->backoff_ms - c->backoff_ms / 4 + jitter;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(c->ev_timer, &tv);
}

int pg_init(struct pgconn *c, struct event_base *base, const tq_config *cfg, int shard_id,
            int idx, pg_state_cb on_state, void *owner, const struct pg_stmt *prepare,
            int nprepare)
{
    memset(c, 0, sizeof *c);
    c->base = base;
    c->cfg = cfg;
    c->shard_id = shard_id;
    c->idx = idx;
    c->on_state = on_state;
    c->owner = owner;
    c->prepare = prepare;
    c->nprepare = nprepare;
    c->state = PGC_DOWN;
    if (getrandom(&c->rng, sizeof c->rng, 0) != sizeof c->rng || c->rng == 0)
        c->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)(shard_id * 64 + idx + 1);
    c->ev_timer = evtimer_new(base, pg_timer_cb, c);
    c->ev_limit = evtimer_new(base, pg_limit_cb, c);
    return c->ev_timer && c->ev_limit ? 0 : -1;
}

void pg_destroy(struct pgconn *c)
{
    free_events(c);
    dyn_clear(c);
    if (c->ev_timer) {
        event_free(c->ev_timer);
        c->ev_timer = NULL;
    }
    if (c->ev_limit) {
        event_free(c->ev_limit);
        c->ev_limit = NULL;
    }
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    clear_results(c->results, PG_MAX_STMTS);
    c->state = PGC_DOWN;
}

/* Forget the session's statements prepared on first use. */
static void dyn_clear(struct pgconn *c)
{
    for (int i = 0; i < c->ndyn; i++)
        free(c->dyn[i].sql);
    c->ndyn = 0;
}

/* A pipeline ended: a Prepare of it that did not succeed prepared nothing. */
static void dyn_settle(struct pgconn *c, PGresult *const *res, int n)
{
    for (int i = 0; i < n; i++)
        if (c->dyn_at[i] >= 0 && c->dyn_at[i] < c->ndyn &&
            (!res[i] || PQresultStatus(res[i]) != PGRES_COMMAND_OK))
            c->dyn[c->dyn_at[i]].ready = false;
}

static uint64_t text_hash(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

int pg_prepared(struct pgconn *c, const struct pg_stmt *st, struct pg_stmt *out)
{
    uint64_t h = text_hash(st->sql);
    int e = -1;
    for (int i = 0; i < c->ndyn && e < 0; i++)
        if (c->dyn[i].hash == h && c->dyn[i].nparams == st->nparams &&
            strcmp(c->dyn[i].sql, st->sql) == 0)
            e = i;
    if (e < 0 && c->ndyn < PG_DYN_MAX) {
        char *copy = strdup(st->sql);
        if (copy) {
            e = c->ndyn++;
            c->dyn[e] = (struct pg_dyn){.hash = h, .sql = copy, .nparams = st->nparams};
            snprintf(c->dyn[e].name, sizeof c->dyn[e].name, "tq_op_%u", c->dyn_serial++);
        }
    }
    if (e < 0) {
        out[0] = *st;
        return 1;
    }
    int n = 0;
    if (!c->dyn[e].ready) {
        out[n++] = (struct pg_stmt){.name = c->dyn[e].name, .sql = c->dyn[e].sql,
                                    .nparams = st->nparams, .prepare = true, .dyn = e};
        c->dyn[e].ready = true;
    }
    out[n] = *st;
    out[n].name = c->dyn[e].name;
    return n + 1;
}

static void pg_finish_pipeline(struct pgconn *c)
{
    PGresult *res[PG_MAX_STMTS];
    int n = c->nstmts;
    memcpy(res, c->results, sizeof res);
    memset(c->results, 0, sizeof c->results);
    pg_pipeline_cb cb = c->cb;
    c->cb = NULL;
    c->state = PGC_IDLE;
    evtimer_del(c->ev_limit);
    dyn_settle(c, res, n);
    cb(c, c->cb_arg, res, n, false);
    clear_results(res, n);
}

/* Read what arrived and hand finished pipelines to their callbacks. */
static void pg_read(struct pgconn *c)
{
    if (!PQconsumeInput(c->conn)) {
        pg_drop_with_libpq_error(c);
        return;
    }
    int nulls = 0;
    while ((c->state == PGC_BUSY || c->state == PGC_PREPARING) && !PQisBusy(c->conn)) {
        PGresult *r = PQgetResult(c->conn);
        if (!r) {
            /* NULL ends one statement's results; two in a row means the
             * pipeline has nothing more queued right now */
            if (c->cur_has) {
                c->cur++;
                c->cur_has = false;
            }
            if (++nulls > 1)
                break;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (--c->syncs > 0)
                continue; /* one of the pipeline's intermediate Syncs */
            pg_finish_pipeline(c);
            return;
        }
        if (c->cur < c->nstmts && !c->cur_has) {
            c->results[c->cur] = r;
            c->cur_has = true;
        } else {
            PQclear(r);
        }
    }
    if (c->conn && PQstatus(c->conn) == CONNECTION_BAD)
        pg_drop_with_libpq_error(c);
}

static void pg_flush(struct pgconn *c)
{
    int rc = PQflush(c->conn);
    if (rc < 0) {
        pg_drop_with_libpq_error(c);
    } else if (rc == 1) {
        if (!event_pending(c->ev_write, EV_WRITE, NULL))
            event_add(c->ev_write, NULL);
    } else if (event_pending(c->ev_write, EV_WRITE, NULL)) {
        event_del(c->ev_write);
    }
}

static void pg_io_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    (void)fd;
    if (what & EV_READ) {
        if (c->state == PGC_IDLE) {
            /* nothing expected: a notice, or the server closing on us */
            if (!PQconsumeInput(c->conn) || PQstatus(c->conn) == CONNECTION_BAD) {
                pg_drop_with_libpq_error(c);
                return;
            }
            PGresult *r;
            while (!PQisBusy(c->conn) && (r = PQgetResult(c->conn)) != NULL)
                PQclear(r);
            return;
        }
        pg_read(c);
        if ((c->state != PGC_BUSY && c->state != PGC_PREPARING) || !c->conn)
            return;
    }
    if (c->ev_write && event_pending(c->ev_write, EV_WRITE, NULL))
        pg_flush(c);
}

int pg_pipeline(struct pgconn *c, const struct pg_stmt *stmts, int n, pg_pipeline_cb cb,
                void *arg)
{
    return pg_send(c, stmts, n, false, cb, arg);
}

static int pg_send(struct pgconn *c, const struct pg_stmt *stmts, int n, bool prepare,
                   pg_pipeline_cb cb, void *arg)
{
    if (c->state != PGC_IDLE || n <= 0 || n > PG_MAX_STMTS)
        return -1;
    int syncs = 0;
    for (int i = 0; i < n; i++) {
        const struct pg_stmt *s = &stmts[i];
        const char *const *pv = s->paramv ? s->paramv : s->params;
        c->dyn_at[i] = (short)(s->prepare && !prepare ? s->dyn : -1);
        int ok = prepare || s->prepare ? PQsendPrepare(c->conn, s->name, s->sql, s->nparams, NULL)
                 : s->name ? PQsendQueryPrepared(c->conn, s->name, s->nparams, pv, NULL, NULL, 0)
                           : PQsendQueryParams(c->conn, s->sql, s->nparams, NULL, pv, NULL, NULL,
                                               0);
        if (!ok)
            goto fail;
        if (s->sync && i < n - 1) {
            if (!PQpipelineSync(c->conn))
                goto fail;
            syncs++;
        }
    }
    if (!PQpipelineSync(c->conn))
        goto fail;
    c->syncs = syncs + 1;
    c->state = PGC_BUSY;
    c->nstmts = n;
    c->cur = 0;
    c->cur_has = false;
    c->cb = cb;
    c->cb_arg = arg;
    int limit = pg_pipeline_limit_ms(c->cfg);
    struct timeval tv = {limit / 1000, (limit % 1000) * 1000};
    evtimer_add(c->ev_limit, &tv);
    pg_flush(c); /* a failure here drops the connection and reports to cb */
    return 0;
fail: {
    char buf[320];
    conn_error_text(c, buf, sizeof buf);
    c->state = PGC_IDLE; /* nothing to report to a callback */
    pg_drop(c, buf);
    return -1;
}
}

/* --- one-shot admin path (before any event loop) ------------------------ */

/* "relation already exists, skipping" is the normal case of an idempotent
 * --init-db: keep it off the terminal unless debugging. */
static void admin_notice(void *arg, const char *message)
{
    (void)arg;
    int len = (int)strcspn(message, "\n");
    if (strstr(message, "already exists, skipping"))
        log_debug("init-db: %.*s", len, message);
    else /* e.g. the schema's note that the server has no lz4 */
        log_info("init-db: %.*s", len, message);
}

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int rc;
    do
        rc = poll(&p, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    return rc;
}

PGconn *pg_admin_connect(const char *conninfo, const char *app, int timeout_ms, char *err,
                         size_t errlen)
{
    static const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {conninfo, app, NULL};
    PGconn *conn = PQconnectStartParams(keys, vals, 1);
    if (!conn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    PostgresPollingStatusType st = PQstatus(conn) == CONNECTION_BAD ? PGRES_POLLING_FAILED
                                                                     : PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
            snprintf(err, errlen, "%s", PQerrorMessage(conn));
            PQfinish(conn);
            return NULL;
        }
        if (wait_fd(PQsocket(conn), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, timeout_ms) <= 0) {
            snprintf(err, errlen, "connect timed out");
            PQfinish(conn);
            return NULL;
        }
        st = PQconnectPoll(conn);
    }
    PQsetNoticeProcessor(conn, admin_notice, NULL);
    if (PQsetnonblocking(conn, 1) != 0) {
        snprintf(err, errlen, "%s", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

/* Flush what was sent; then wait until a result can be read without
 * blocking.  Returns 0, or -1 (timeout or a broken connection). */
static int admin_wait_result(PGconn *conn, int timeout_ms)
{
    int f;
    while ((f = PQflush(conn)) == 1)
        if (wait_fd(PQsocket(conn), POLLIN | POLLOUT, timeout_ms) <= 0 || !PQconsumeInput(conn))
            return -1;
    if (f < 0)
        return -1;
    while (PQisBusy(conn))
        if (wait_fd(PQsocket(conn), POLLIN, timeout_ms) <= 0 || !PQconsumeInput(conn))
            return -1;
    return 0;
}

int pg_admin_rows(PGconn *conn, const char *sql, int nparams, const char *const *params,
                  int timeout_ms, int (*row)(void *arg, const PGresult *r), void *arg,
                  char *err, size_t errlen)
{
    if (!PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) ||
        !PQsetSingleRowMode(conn)) {
        snprintf(err, errlen, "%s", PQerrorMessage(conn));
        return -1;
    }
    int rc = 0;
    for (;;) {
        if (admin_wait_result(conn, timeout_ms) < 0) {
            snprintf(err, errlen, "timed out or lost the connection: %s", PQerrorMessage(conn));
            return -1; /* the connection is not reusable: the caller finishes it */
        }
        PGresult *r = PQgetResult(conn);
        if (!r)
            return rc;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE) {
            if (rc == 0 && row != NULL && row(arg, r) < 0) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
            }
        } else if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && rc == 0) {
            snprintf(err, errlen, "%s", PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
}

int pg_admin_script(PGconn *conn, const char *sql, int timeout_ms, char *err, size_t errlen)
{
    if (!PQsendQuery(conn, sql)) {
        snprintf(err, errlen, "%s", PQerrorMessage(conn));
        return -1;
    }
    int rc = 0;
    for (;;) {
        if (admin_wait_result(conn, timeout_ms) < 0) {
            snprintf(err, errlen, "timed out or lost the connection: %s", PQerrorMessage(conn));
            return -1;
        }
        PGresult *r = PQgetResult(conn);
        if (!r)
            return rc;
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK &&
            rc == 0) {
            snprintf(err, errlen, "%s", PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
}
