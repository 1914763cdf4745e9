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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_CONNECT_TIMEOUT_S 10

enum { PGR_NONE, PGR_WAITING, PGR_OK, PGR_FAILED };

static void pg_schedule_reconnect(struct pgconn *c);
static void pg_io_cb(evutil_socket_t fd, short what, void *arg);
static void resolve_stop(struct pgconn *c);

const char *pg_sqlstate(const PGresult *r)
{
    return r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
}

bool pg_session_ended(const PGresult *r)
{
    const char *sev = r && pg_sqlstate(r) ? PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED)
                                          : NULL;
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
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

static void event_drop(struct event **ev)
{
    if (*ev) {
        event_free(*ev);
        *ev = NULL;
    }
}

static void free_events(struct pgconn *c)
{
    if (c->ev_limit)
        evtimer_del(c->ev_limit);
    event_drop(&c->ev_io);
    event_drop(&c->ev_write);
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
    resolve_stop(c);
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

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The host that timed out last, for every connection of the daemon (the
 * admin path's too): one connection learning that a host is silent spares
 * the others their 10 s on it. */
static pthread_mutex_t stuck_lock = PTHREAD_MUTEX_INITIALIZER;
static struct host_mark stuck_host;

static void stuck_get(struct host_mark *m)
{
    pthread_mutex_lock(&stuck_lock);
    *m = stuck_host;
    pthread_mutex_unlock(&stuck_lock);
}

static void stuck_set(const struct host_mark *m)
{
    pthread_mutex_lock(&stuck_lock);
    stuck_host = *m;
    pthread_mutex_unlock(&stuck_lock);
}

static void mark_set(struct host_mark *m, const char *host, const char *addr, const char *port)
{
    snprintf(m->host, sizeof m->host, "%s", host ? host : "");
    snprintf(m->addr, sizeof m->addr, "%s", addr ? addr : "");
    snprintf(m->port, sizeof m->port, "%s", port ? port : "");
}

static bool mark_eq(const struct host_mark *a, const struct host_mark *b)
{
    return strcmp(a->host, b->host) == 0 && strcmp(a->addr, b->addr) == 0 &&
           strcmp(a->port, b->port) == 0;
}

/* "host", "host (addr)", then ":port" */
static void mark_text(const struct host_mark *m, char *buf, size_t len)
{
    bool addr = m->addr[0] && strcmp(m->addr, m->host) != 0;
    snprintf(buf, len, "%s%s%s%s%s%s", m->host, addr ? " (" : "", addr ? m->addr : "",
             addr ? ")" : "", m->port[0] ? ":" : "", m->port);
}

/* Wait for what PQconnectPoll asked for, on the socket it has now (it can
 * change between steps).  Each host (each address of it) gets
 * connect_timeout_ms from the step libpq first tried it in: libpq moves to
 * the next host by itself only when one fails, never when one is silent. */
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
    struct host_mark now;
    mark_set(&now, PQhost(c->conn), PQhostaddr(c->conn), PQport(c->conn));
    uint64_t t = mono_ms();
    if (!mark_eq(&now, &c->trying)) {
        c->trying = now;
        c->host_since_ms = t;
    }
    uint64_t spent = t - c->host_since_ms;
    uint64_t left = spent < (uint64_t)c->connect_timeout_ms
                        ? (uint64_t)c->connect_timeout_ms - spent : 1;
    short ev = st == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
    struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
    c->ev_io = event_new(c->base, fd, ev, pg_connect_cb, c);
    if (!c->ev_io || event_add(c->ev_io, &tv) < 0)
        pg_drop(c, "cannot register connect event");
}

static void pg_connect_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    (void)fd;
    if (what & EV_TIMEOUT) {
        /* the next attempt starts with the host after this one */
        stuck_set(&c->trying);
        char where[400], why[480];
        mark_text(&c->trying, where, sizeof where);
        snprintf(why, sizeof why,
                 "timed out connecting to %s after %d ms; the next attempt starts with the "
                 "next host",
                 where, c->connect_timeout_ms);
        pg_drop(c, why);
        return;
    }
    pg_connect_step(c, PQconnectPoll(c->conn));
}

/* keys/vals for PQconnectStartParams: every option the connection string
 * sets, host/hostaddr/port replaced by the lists given (NULL: left out),
 * and fallback_application_name last (as before: it wins).  NULL when
 * out of memory; the caller frees both arrays (not the strings). */
static int params(const PQconninfoOption *opts, const char *host, const char *hostaddr,
                  const char *port, const char *app, const char ***keys, const char ***vals)
{
    size_t n = 0;
    while (opts[n].keyword)
        n++;
    *keys = calloc(n + 5, sizeof **keys);
    *vals = calloc(n + 5, sizeof **vals);
    if (!*keys || !*vals) {
        free(*keys);
        free(*vals);
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *kw = opts[i].keyword;
        if (!opts[i].val || strcmp(kw, "host") == 0 || strcmp(kw, "hostaddr") == 0 ||
            strcmp(kw, "port") == 0 || strcmp(kw, "fallback_application_name") == 0)
            continue;
        (*keys)[k] = kw;
        (*vals)[k++] = opts[i].val;
    }
    const char *extra[][2] = {{"host", host}, {"hostaddr", hostaddr}, {"port", port},
                              {"fallback_application_name", app}};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        if (extra[i][1]) {
            (*keys)[k] = extra[i][0];
            (*vals)[k++] = extra[i][1];
        }
    return 0;
}

/* Start libpq's connect with what the lookups gave (none needed: the
 * lists as written, rotated). */
static void pg_connect_now(struct pgconn *c)
{
    c->trying = (struct host_mark){0};
    if (!c->opts) {
        static const char *const keys[] = {"dbname", "fallback_application_name", NULL};
        const char *vals[] = {c->cfg->conninfo, "tenantqd", NULL};
        c->conn = PQconnectStartParams(keys, vals, 1);
    } else {
        char *host = NULL, *addr = NULL, *port = NULL;
        struct host_mark after;
        stuck_get(&after);
        int n = hostlist_build(&c->hosts, c->addrs, &after, &host, &addr, &port);
        if (n <= 0) {
            pg_drop(c, n == 0 ? (c->resolve_err[0] ? c->resolve_err : "no usable host")
                              : "out of memory");
            return;
        }
        if (c->resolve_err[0])
            log_warn("shard %d conn %d: %s; trying the other hosts", c->shard_id, c->idx,
                     c->resolve_err);
        const char **keys = NULL, **vals = NULL;
        if (params(c->opts, host, addr, port, "tenantqd", &keys, &vals) == 0) {
            c->conn = PQconnectStartParams(keys, vals, 0);
            free(keys);
            free(vals);
        }
        free(host);
        free(addr);
        free(port);
    }
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        pg_drop_with_libpq_error(c);
        return;
    }
    PQsetNoticeReceiver(c->conn, notice_receiver, c);
    /* libpq: behave as if the last poll returned WRITING */
    pg_connect_step(c, PGRES_POLLING_WRITING);
}

static void resolve_note(struct pgconn *c, const char *msg)
{
    size_t len = strlen(c->resolve_err);
    snprintf(c->resolve_err + len, sizeof c->resolve_err - len, "%s%s", len ? "; " : "", msg);
}

/* Take the answers that are in. */
static void resolve_collect(struct pgconn *c)
{
    for (int i = 0; i < c->hosts.n; i++) {
        if (c->rstate[i] != PGR_WAITING)
            continue;
        char err[160];
        int rc = resolve_take(&c->reqs[i], &c->addrs[i], err, sizeof err);
        if (rc == 0)
            continue;
        c->pending--;
        c->rstate[i] = rc > 0 ? PGR_OK : PGR_FAILED;
        if (rc < 0) { /* libpq's wording */
            char msg[400];
            snprintf(msg, sizeof msg, "could not translate host name \"%s\" to address: %s",
                     c->hosts.host[i], err);
            resolve_note(c, msg);
        }
    }
}

/* Forget the lookups of this attempt (cancelling those still out). */
static void resolve_stop(struct pgconn *c)
{
    if (c->ev_deadline)
        evtimer_del(c->ev_deadline);
    for (int i = 0; c->rstate && i < c->hosts.n; i++) {
        if (c->rstate[i] == PGR_WAITING)
            resolve_cancel(&c->reqs[i]);
        c->rstate[i] = PGR_NONE;
        free(c->addrs[i]);
        c->addrs[i] = NULL;
    }
    c->pending = 0;
    c->resolving = false;
}

static void resolve_done(struct pgconn *c)
{
    c->resolving = false;
    evtimer_del(c->ev_deadline);
    pg_connect_now(c);
}

/* ev_resolved (an answer is in) and ev_deadline (EV_TIMEOUT: the lookups
 * still out count as failed, the attempt goes on with what resolved). */
static void pg_resolve_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct pgconn *c = arg;
    if (!c->resolving)
        return; /* an answer that came as the deadline passed */
    resolve_collect(c);
    for (int i = 0; (what & EV_TIMEOUT) && i < c->hosts.n; i++)
        if (c->rstate[i] == PGR_WAITING) {
            resolve_cancel(&c->reqs[i]);
            c->rstate[i] = PGR_FAILED;
            c->pending--;
            char msg[400];
            snprintf(msg, sizeof msg,
                     "could not resolve %s within %d ms (the resolver does not answer)",
                     c->hosts.host[i], c->connect_timeout_ms);
            resolve_note(c, msg);
        }
    if (c->pending == 0)
        resolve_done(c);
}

void pg_start(struct pgconn *c)
{
    c->state = PGC_CONNECTING;
    c->resolve_err[0] = '\0';
    if (c->nnames == 0) {
        pg_connect_now(c);
        return;
    }
    c->resolving = true;
    for (int i = 0; i < c->hosts.n; i++) {
        if (c->hosts.addr[i][0] || !resolve_is_name(c->hosts.host[i]))
            continue;
        c->rstate[i] = PGR_WAITING;
        c->pending++;
        resolve_start(&c->reqs[i], c->hosts.host[i], c->ev_resolved);
    }
    resolve_collect(c); /* what the cache answered at once */
    if (c->pending == 0) {
        resolve_done(c);
        return;
    }
    struct timeval tv = {c->connect_timeout_ms / 1000, (c->connect_timeout_ms % 1000) * 1000};
    evtimer_add(c->ev_deadline, &tv);
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

/* The connection string's options (*opts; NULL: give libpq the string as
 * it is) and host lists, parsed once.  Without a host in the string,
 * PGHOST/PGHOSTADDR/PGPORT count (as libpq would take them), unless a
 * service file may name the host: then the string goes to libpq as it is.
 * Returns how many entries are names to look up, or -1 (out of memory). */
static int parse_conninfo(const char *conninfo, PQconninfoOption **opts, struct hostlist *hosts,
                          int *timeout_ms)
{
    *timeout_ms = PG_CONNECT_TIMEOUT_S * 1000;
    *hosts = (struct hostlist){0};
    char *msg = NULL;
    *opts = PQconninfoParse(conninfo, &msg);
    PQfreemem(msg);
    if (!*opts)
        return 0; /* refused at start already (pg_check_conninfo); libpq will say */
    const char *host = NULL, *hostaddr = NULL, *port = NULL, *service = NULL;
    for (const PQconninfoOption *o = *opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "service") == 0)
            service = o->val;
        else if (strcmp(o->keyword, "connect_timeout") == 0 && atoi(o->val) > 0)
            /* libpq: at least 2 s; 0 (forever) is not on offer here */
            *timeout_ms = (atoi(o->val) < 2 ? 2 : atoi(o->val)) * 1000;
    }
    bool from_env = false;
    if ((!host || !host[0]) && (!hostaddr || !hostaddr[0])) {
        if (service || getenv("PGSERVICE"))
            goto as_is;
        host = getenv("PGHOST");
        hostaddr = getenv("PGHOSTADDR");
        from_env = host || hostaddr;
    }
    if (!port && from_env)
        port = getenv("PGPORT");
    if (hostlist_parse(hosts, host, hostaddr, port) < 0)
        goto as_is; /* no host at all, or lists libpq will refuse */
    int names = 0;
    for (int i = 0; i < hosts->n; i++)
        names += !hosts->addr[i][0] && resolve_is_name(hosts->host[i]);
    return names;
as_is:
    PQconninfoFree(*opts);
    *opts = NULL;
    return 0;
}

static int pg_parse_conninfo(struct pgconn *c)
{
    c->nnames = parse_conninfo(c->cfg->conninfo, &c->opts, &c->hosts, &c->connect_timeout_ms);
    if (!c->opts)
        return 0;
    c->reqs = calloc((size_t)c->hosts.n, sizeof *c->reqs);
    c->addrs = calloc((size_t)c->hosts.n, sizeof *c->addrs);
    c->rstate = calloc((size_t)c->hosts.n, sizeof *c->rstate);
    return c->reqs && c->addrs && c->rstate ? 0 : -1;
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
    c->ev_resolved = event_new(base, -1, 0, pg_resolve_cb, c);
    c->ev_deadline = evtimer_new(base, pg_resolve_cb, c);
    if (!c->ev_timer || !c->ev_limit || !c->ev_resolved || !c->ev_deadline)
        return -1;
    return pg_parse_conninfo(c);
}

void pg_destroy(struct pgconn *c)
{
    free_events(c);
    resolve_stop(c);
    dyn_clear(c);
    event_drop(&c->ev_resolved);
    event_drop(&c->ev_deadline);
    event_drop(&c->ev_timer);
    event_drop(&c->ev_limit);
    free(c->reqs);
    free(c->addrs);
    free(c->rstate);
    c->reqs = NULL;
    c->addrs = NULL;
    c->rstate = NULL;
    hostlist_free(&c->hosts);
    c->nnames = 0;
    if (c->opts) {
        PQconninfoFree(c->opts);
        c->opts = NULL;
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

/* PQconnectStartParams of conninfo, its host names looked up by the
 * resolver within timeout_ms (libpq would block on them without a bound). */
static PGconn *admin_start(const char *conninfo, const char *app, int timeout_ms,
                           const struct host_mark *after, int *nhosts, int *host_ms, char *err,
                           size_t errlen)
{
    PQconninfoOption *opts;
    struct hostlist hl;
    int names = parse_conninfo(conninfo, &opts, &hl, host_ms);
    PGconn *conn = NULL;
    *nhosts = 1;
    if (!opts) {
        static const char *const keys[] = {"dbname", "fallback_application_name", NULL};
        const char *vals[] = {conninfo, app, NULL};
        conn = PQconnectStartParams(keys, vals, 1);
        if (!conn)
            snprintf(err, errlen, "out of memory");
        return conn;
    }
    struct resolve_req *reqs = calloc((size_t)hl.n, sizeof *reqs);
    char **addrs = calloc((size_t)hl.n, sizeof *addrs);
    char why[320] = "";
    if (!reqs || !addrs) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; names > 0 && i < hl.n; i++)
        if (!hl.addr[i][0] && resolve_is_name(hl.host[i]))
            resolve_start(&reqs[i], hl.host[i], NULL);
    uint64_t until = mono_ms() + (uint64_t)timeout_ms;
    for (int i = 0; names > 0 && i < hl.n; i++) {
        if (hl.addr[i][0] || !resolve_is_name(hl.host[i]))
            continue;
        uint64_t now = mono_ms();
        char e[160];
        if (!resolve_wait(&reqs[i], now < until ? (int)(until - now) : 0)) {
            resolve_cancel(&reqs[i]);
            snprintf(why, sizeof why, "could not resolve %s within %d ms", hl.host[i],
                     timeout_ms);
        } else if (resolve_take(&reqs[i], &addrs[i], e, sizeof e) < 0) {
            snprintf(why, sizeof why, "could not translate host name \"%s\" to address: %s",
                     hl.host[i], e);
        }
    }
    char *host = NULL, *addr = NULL, *port = NULL;
    int n = hostlist_build(&hl, addrs, after, &host, &addr, &port);
    *nhosts = n;
    const char **keys = NULL, **vals = NULL;
    if (n == 0)
        snprintf(err, errlen, "%s", why[0] ? why : "no usable host");
    else if (n < 0 || params(opts, host, addr, port, app, &keys, &vals) < 0)
        snprintf(err, errlen, "out of memory");
    else if (!(conn = PQconnectStartParams(keys, vals, 0)))
        snprintf(err, errlen, "out of memory");
    free(keys);
    free(vals);
    free(host);
    free(addr);
    free(port);
out:
    for (int i = 0; addrs && i < hl.n; i++)
        free(addrs[i]);
    free(addrs);
    free(reqs);
    hostlist_free(&hl);
    PQconninfoFree(opts);
    return conn;
}

PGconn *pg_admin_connect(const char *conninfo, const char *app, int timeout_ms, char *err,
                         size_t errlen)
{
    /* as on the loop: a host silent for connect_timeout (10 s) is skipped,
     * the next attempt starting after it, one attempt per host at most */
    for (int attempt = 0;; attempt++) {
        struct host_mark stuck;
        stuck_get(&stuck);
        int nhosts = 0, host_ms = 0;
        PGconn *conn = admin_start(conninfo, app, timeout_ms, &stuck, &nhosts, &host_ms, err,
                                   errlen);
        if (!conn)
            return NULL;
        PostgresPollingStatusType st = PQstatus(conn) == CONNECTION_BAD
                                           ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
        struct host_mark cur = {0};
        uint64_t since = 0;
        bool next_host = false;
        while (st != PGRES_POLLING_OK) {
            if (st == PGRES_POLLING_FAILED) {
                snprintf(err, errlen, "%s", PQerrorMessage(conn));
                PQfinish(conn);
                return NULL;
            }
            struct host_mark now;
            mark_set(&now, PQhost(conn), PQhostaddr(conn), PQport(conn));
            uint64_t t = mono_ms();
            if (!mark_eq(&now, &cur)) {
                cur = now;
                since = t;
            }
            uint64_t left = t - since < (uint64_t)host_ms ? (uint64_t)host_ms - (t - since) : 0;
            int wait = left < (uint64_t)timeout_ms ? (int)left : timeout_ms;
            if (wait_fd(PQsocket(conn), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, wait) <=
                0) {
                char where[400];
                mark_text(&cur, where, sizeof where);
                snprintf(err, errlen, "connect timed out (%s)", where);
                PQfinish(conn);
                if (wait == (int)left && attempt + 1 < nhosts) {
                    log_warn("timed out connecting to %s after %d ms; trying the next host",
                             where, host_ms);
                    stuck_set(&cur);
                    next_host = true;
                    break;
                }
                return NULL;
            }
            st = PQconnectPoll(conn);
        }
        if (next_host)
            continue;
        PQsetNoticeProcessor(conn, admin_notice, NULL);
        if (PQsetnonblocking(conn, 1) != 0) {
            snprintf(err, errlen, "%s", PQerrorMessage(conn));
            PQfinish(conn);
            return NULL;
        }
        return conn;
    }
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
