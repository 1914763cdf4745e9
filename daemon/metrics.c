/*
 * metrics.c - per-thread counters and the small HTTP endpoint.
 *
 * The endpoint is hardened against hostile local clients: GET only, one
 * request a connection, 8 KiB of request head, 5 s from accept to the end of
 * the reply, and METRICS_MAX_CONNECTIONS open at once (more are closed as
 * they are accepted), so that a flood cannot take the descriptors the SP
 * listeners need; it runs on the main thread's base and only reads atomics,
 * so a slow scraper cannot disturb the shards.
 */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <errno.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/util.h>
#include <event2/listener.h>

#include "daemon.h"
#include "log.h"
#include "opset.h"
#include "shard.h"

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

/* A failing accept() (out of descriptors: EMFILE, ENFILE) leaves the
 * listening socket readable; without a pause libevent would retry it at
 * once, for ever, on the main thread that also reads the requests. */
#define ACCEPT_PAUSE_MS 1000

struct conn;

struct metrics {
    struct daemon *d;
    struct evconnlistener *listener;
    struct event *resume;            /* re-enables the listener after a pause */
    unsigned long paused;            /* pauses so far (logged, not each one) */
    struct conn *conns;              /* the open HTTP connections */
    int nconns;
    unsigned long refused;           /* connections closed at the cap so far */
};

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* Sum of one field over the front's and every shard's stats. */
#define SUM(out, field)                                                         \
    do {                                                                        \
        out = LOAD(d->front_stats->field);                                      \
        for (int i_ = 0; i_ < d->nshards; i_++)                                 \
            out += LOAD(shard_stats(d->shards[i_])->field);                     \
    } while (0)

static void histogram(struct evbuffer *b, struct daemon *d, const char *name, const char *help,
                      int which)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long cum = 0, v, sum;
    for (int k = 0; k <= STATS_LAT_BUCKETS; k++) {
        if (which == 0)
            SUM(v, queue_hist[k]);
        else
            SUM(v, exec_hist[k]);
        cum += v;
        if (k < STATS_LAT_BUCKETS)
            evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %lu\n", name,
                                (double)lat_bounds_us[k] / 1e6, cum);
        else
            evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %lu\n", name, cum);
    }
    if (which == 0)
        SUM(sum, queue_sum_us);
    else
        SUM(sum, exec_sum_us);
    evbuffer_add_printf(b, "%s_sum %g\n%s_count %lu\n", name, (double)sum / 1e6, name, cum);
}

/* The process start, for process_start_time_seconds: taken when this file's
 * code first runs (the daemon loads it at start), in Unix seconds. */
static double start_unix;

__attribute__((constructor)) static void note_start(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    start_unix = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The build and the process (the names Prometheus' client libraries use for
 * the process_* series, so dashboards made for them work unchanged). */
static void process_metrics(struct evbuffer *b)
{
    evbuffer_add_printf(b,
                        "# HELP tenantq_build_info The running tenantqd's version.\n"
                        "# TYPE tenantq_build_info gauge\n"
                        "tenantq_build_info{version=\"%s\"} 1\n"
                        "# HELP process_start_time_seconds Start time of the process since the "
                        "Unix epoch in seconds.\n"
                        "# TYPE process_start_time_seconds gauge\n"
                        "process_start_time_seconds %.3f\n",
                        TQ_VERSION, start_unix);
    unsigned long size_pages, rss_pages;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu %lu", &size_pages, &rss_pages) == 2) {
            double page = (double)sysconf(_SC_PAGESIZE);
            evbuffer_add_printf(b,
                                "# HELP process_resident_memory_bytes Resident memory size in "
                                "bytes.\n"
                                "# TYPE process_resident_memory_bytes gauge\n"
                                "process_resident_memory_bytes %.0f\n"
                                "# HELP process_virtual_memory_bytes Virtual memory size in "
                                "bytes.\n"
                                "# TYPE process_virtual_memory_bytes gauge\n"
                                "process_virtual_memory_bytes %.0f\n",
                                (double)rss_pages * page, (double)size_pages * page);
        }
        fclose(f);
    }
    DIR *dir = opendir("/proc/self/fd");
    if (dir) {
        long n = -1; /* the directory's own descriptor is not the daemon's */
        while (readdir(dir))
            n++;
        closedir(dir);
        n -= 2; /* "." and ".." */
        evbuffer_add_printf(b,
                            "# HELP process_open_fds Number of open file descriptors.\n"
                            "# TYPE process_open_fds gauge\n"
                            "process_open_fds %ld\n",
                            n < 0 ? 0 : n);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        evbuffer_add_printf(b,
                            "# HELP process_max_fds Maximum number of open file descriptors.\n"
                            "# TYPE process_max_fds gauge\n"
                            "process_max_fds %lu\n",
                            (unsigned long)rl.rlim_cur);
}

static void metrics_body(struct metrics *m, struct evbuffer *b)
{
    struct daemon *d = m->d;
    evbuffer_add_printf(b, "# HELP tenantq_requests_total Requests answered, by op and code.\n"
                           "# TYPE tenantq_requests_total counter\n");
    for (int op = 0; op <= SF_OP__COUNT; op++) {
        for (int code = 0; code < TQ_CODE__COUNT; code++) {
            unsigned long v;
            SUM(v, requests[op][code]);
            if (v)
                evbuffer_add_printf(b, "tenantq_requests_total{op=\"%s\",code=\"%s\"} %lu\n",
                                    op < SF_OP__COUNT ? sf_op_name((sf_op)op) : "invalid",
                                    code == TQ_OK ? "OK" : tq_code_name((tq_code)code), v);
        }
    }
    for (int i = 0; i < n_sql_names; i++) {
        for (int code = 0; code < TQ_CODE__COUNT; code++) {
            unsigned long v = atomic_load_explicit(&sql_counts[i][code], memory_order_relaxed);
            if (v)
                evbuffer_add_printf(b, "tenantq_requests_total{op=\"%s\",code=\"%s\"} %lu\n",
                                    sql_names[i],
                                    code == TQ_OK ? "OK" : tq_code_name((tq_code)code), v);
        }
    }
    histogram(b, d, "tenantq_queue_wait_seconds", "Time from arrival to execution start.", 0);
    histogram(b, d, "tenantq_exec_seconds", "Time from execution start to the reply.", 1);

    evbuffer_add_printf(b, "# HELP tenantq_batch_size Requests per executed batch (one tenant's "
                           "share of a transaction).\n"
                           "# TYPE tenantq_batch_size histogram\n");
    unsigned long cum = 0, v;
    for (int k = 0; k <= STATS_BATCH_BUCKETS; k++) {
        SUM(v, batch_hist[k]);
        cum += v;
        if (k < STATS_BATCH_BUCKETS)
            evbuffer_add_printf(b, "tenantq_batch_size_bucket{le=\"%d\"} %lu\n", 1 << k, cum);
        else
            evbuffer_add_printf(b, "tenantq_batch_size_bucket{le=\"+Inf\"} %lu\n", cum);
    }
    SUM(v, batch_sum);
    evbuffer_add_printf(b, "tenantq_batch_size_sum %lu\ntenantq_batch_size_count %lu\n", v, cum);
    unsigned long txns, tenants;
    SUM(txns, txns);
    SUM(tenants, txn_tenants);
    evbuffer_add_printf(b,
                        "# HELP tenantq_transactions_total Transactions started.\n"
                        "# TYPE tenantq_transactions_total counter\n"
                        "tenantq_transactions_total %lu\n"
                        "# HELP tenantq_transaction_tenants_total Tenant batches run by those "
                        "transactions (several share one when lanes outnumber connections).\n"
                        "# TYPE tenantq_transaction_tenants_total counter\n"
                        "tenantq_transaction_tenants_total %lu\n",
                        txns, tenants);

    evbuffer_add_printf(b, "# HELP tenantq_queued Requests waiting in tenant lanes, by shard.\n"
                           "# TYPE tenantq_queued gauge\n");
    for (int i = 0; i < d->nshards; i++)
        evbuffer_add_printf(b, "tenantq_queued{shard=\"%d\"} %lu\n", i,
                            (unsigned long)shard_gauge(d->shards[i], SHARD_GAUGE_QUEUED));
    evbuffer_add_printf(b, "# HELP tenantq_tenants_pending Tenants with queued or running work.\n"
                           "# TYPE tenantq_tenants_pending gauge\n");
    for (int i = 0; i < d->nshards; i++)
        evbuffer_add_printf(b, "tenantq_tenants_pending{shard=\"%d\"} %lu\n", i,
                            (unsigned long)shard_gauge(d->shards[i], SHARD_GAUGE_LANES));
    evbuffer_add_printf(b, "# HELP tenantq_db_connections Usable database connections.\n"
                           "# TYPE tenantq_db_connections gauge\n");
    for (int i = 0; i < d->nshards; i++)
        evbuffer_add_printf(b, "tenantq_db_connections{shard=\"%d\"} %d\n", i,
                            shard_connected(d->shards[i]));
    unsigned long rec = 0, lto = 0, busy = 0, hits = 0, misses = 0, cbytes = 0, stale = 0,
                  one_trip = 0;
    for (int i = 0; i < d->nshards; i++) {
        rec += shard_gauge(d->shards[i], SHARD_GAUGE_RECONNECTS);
        lto += shard_gauge(d->shards[i], SHARD_GAUGE_LOCK_TIMEOUTS);
        busy += shard_gauge(d->shards[i], SHARD_GAUGE_LOCK_BUSY);
        hits += shard_gauge(d->shards[i], SHARD_GAUGE_CACHE_HITS);
        misses += shard_gauge(d->shards[i], SHARD_GAUGE_CACHE_MISSES);
        cbytes += shard_gauge(d->shards[i], SHARD_GAUGE_CACHE_BYTES);
        stale += shard_gauge(d->shards[i], SHARD_GAUGE_CACHE_STALE);
        one_trip += shard_gauge(d->shards[i], SHARD_GAUGE_ONE_TRIP);
    }
    evbuffer_add_printf(b,
                        "# HELP tenantq_draft_cache_hits_total Batches whose tenant's parsed "
                        "state was cached and still the row's version.\n"
                        "# TYPE tenantq_draft_cache_hits_total counter\n"
                        "tenantq_draft_cache_hits_total %lu\n"
                        "# HELP tenantq_draft_cache_misses_total Tenant rows read and parsed.\n"
                        "# TYPE tenantq_draft_cache_misses_total counter\n"
                        "tenantq_draft_cache_misses_total %lu\n"
                        "# HELP tenantq_draft_cache_bytes Heap reckoned for cached states.\n"
                        "# TYPE tenantq_draft_cache_bytes gauge\n"
                        "tenantq_draft_cache_bytes %lu\n"
                        "# HELP tenantq_draft_cache_stale_total Batches sent in one round trip "
                        "whose cached state the row had moved past (written behind the daemon); "
                        "they ran again from the row.\n"
                        "# TYPE tenantq_draft_cache_stale_total counter\n"
                        "tenantq_draft_cache_stale_total %lu\n"
                        "# HELP tenantq_transactions_one_round_trip_total Transactions sent "
                        "whole in one round trip because every tenant's state was cached.\n"
                        "# TYPE tenantq_transactions_one_round_trip_total counter\n"
                        "tenantq_transactions_one_round_trip_total %lu\n",
                        hits, misses, cbytes, stale, one_trip);
    evbuffer_add_printf(b,
                        "# HELP tenantq_db_reconnects_total Database reconnect attempts.\n"
                        "# TYPE tenantq_db_reconnects_total counter\n"
                        "tenantq_db_reconnects_total %lu\n"
                        "# HELP tenantq_lock_timeouts_total Batches that hit lock_timeout.\n"
                        "# TYPE tenantq_lock_timeouts_total counter\n"
                        "tenantq_lock_timeouts_total %lu\n"
                        "# HELP tenantq_lock_busy_total Batches put back because their lock was "
                        "held elsewhere while sharing a transaction.\n"
                        "# TYPE tenantq_lock_busy_total counter\n"
                        "tenantq_lock_busy_total %lu\n"
                        "# HELP tenantq_pending Requests admitted and not yet answered.\n"
                        "# TYPE tenantq_pending gauge\n"
                        "tenantq_pending %d\n",
                        rec, lto, busy, atomic_load(&d->pending));
    process_metrics(b);
}

/* The /healthz body; returns the status code. */
static int healthz_body(struct metrics *m, struct evbuffer *b)
{
    struct daemon *d = m->d;
    int down = 0;
    for (int i = 0; i < d->nshards; i++)
        down += shard_connected(d->shards[i]) == 0;
    int code = 200;
    if (atomic_load(&d->draining)) {
        evbuffer_add_printf(b, "draining\n");
        code = 503;
    } else if (down) {
        evbuffer_add_printf(b, "%d of %d shards have no database connection\n", down, d->nshards);
        code = 503;
    } else {
        evbuffer_add_printf(b, "ok\n");
    }
    return code;
}

int metrics_parse_listen(const char *listen, char *host, size_t hostlen, uint16_t *port,
                         char *err, size_t errlen)
{
    const char *colon = strrchr(listen, ':');
    char *end = NULL;
    long p = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == listen || (size_t)(colon - listen) >= hostlen || end == colon + 1 ||
        *end != '\0' || p < 0 || p > 65535) {
        snprintf(err, errlen, "[metrics] listen: expected HOST:PORT, got \"%.100s\"", listen);
        return -1;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:9464 */
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    *port = (uint16_t)p;
    return 0;
}

/* One HTTP/1.1 request a connection, answered with Connection: close.  A
 * connection lives CONN_DEADLINE_S at the most, from accept to the last
 * byte of the reply, however slowly it sends; at METRICS_MAX_CONNECTIONS
 * open, new ones are accepted and closed at once. */
#define REQUEST_MAX 8192 /* request line and headers */
#define CONN_DEADLINE_S 5

struct conn {
    struct metrics *m;
    struct bufferevent *bev;
    struct event *deadline;
    struct conn *prev, *next;
    bool replied;
};

static void conn_free(struct conn *c)
{
    struct metrics *m = c->m;
    if (c->prev)
        c->prev->next = c->next;
    else
        m->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    m->nconns--;
    event_free(c->deadline);
    bufferevent_free(c->bev);
    free(c);
}

static void reply(struct conn *c, int code, const char *reason, const char *type,
                  struct evbuffer *body)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "%sConnection: close\r\n\r\n",
                        code, reason, type, body ? evbuffer_get_length(body) : strlen(reason) + 1,
                        code == 405 ? "Allow: GET\r\n" : "");
    if (body)
        evbuffer_add_buffer(out, body);
    else
        evbuffer_add_printf(out, "%s\n", reason);
    c->replied = true;
    bufferevent_disable(c->bev, EV_READ);
    bufferevent_enable(c->bev, EV_WRITE);
}

static void serve(struct conn *c, char *line)
{
    char *sp1 = strchr(line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        reply(c, 400, "Bad Request", "text/plain", NULL);
        return;
    }
    *sp1 = *sp2 = '\0';
    char *target = sp1 + 1, *query = strchr(target, '?');
    if (query)
        *query = '\0';
    if (strcmp(line, "GET") != 0) {
        reply(c, 405, "Method Not Allowed", "text/plain", NULL);
        return;
    }
    bool metrics = strcmp(target, "/metrics") == 0;
    if (!metrics && strcmp(target, "/healthz") != 0) {
        reply(c, 404, "Not Found", "text/plain", NULL);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        reply(c, 500, "Internal Server Error", "text/plain", NULL);
        return;
    }
    if (metrics) {
        metrics_body(c->m, b);
        reply(c, 200, "OK", "text/plain; version=0.0.4", b);
    } else {
        int code = healthz_body(c->m, b);
        reply(c, code, code == 200 ? "OK" : "Service Unavailable", "text/plain", b);
    }
    evbuffer_free(b);
}

static void on_conn_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->replied) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0 ? evbuffer_get_length(in) > REQUEST_MAX : (size_t)end.pos > REQUEST_MAX) {
        reply(c, 431, "Request Header Fields Too Large", "text/plain", NULL);
        return;
    }
    if (end.pos < 0)
        return;
    size_t n;
    char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT);
    if (!line) {
        reply(c, 500, "Internal Server Error", "text/plain", NULL);
        return;
    }
    serve(c, line);
    free(line);
}

static void on_conn_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->replied && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_free(c);
}

static void on_conn_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what; /* EOF or an error: nothing more to say */
    conn_free(arg);
}

static void on_conn_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lev;
    (void)sa;
    (void)salen;
    struct metrics *m = arg;
    if (m->nconns >= METRICS_MAX_CONNECTIONS) {
        evutil_closesocket(fd);
        m->refused++;
        /* the 1st, 2nd, 4th, 8th ... refusal is logged */
        if ((m->refused & (m->refused - 1)) == 0)
            log_warn("metrics: refusing connections: %d are open, the most it holds (each "
                     "%d s at the most); %lu refused so far",
                     m->nconns, CONN_DEADLINE_S, m->refused);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    struct event_base *base = evconnlistener_get_base(lev);
    if (c)
        c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c && c->bev)
        c->deadline = evtimer_new(base, on_conn_deadline, c);
    struct timeval dl = {CONN_DEADLINE_S, 0};
    if (!c || !c->bev || !c->deadline || evtimer_add(c->deadline, &dl) < 0) {
        if (c && c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c && c->deadline)
            event_free(c->deadline);
        free(c);
        return;
    }
    c->m = m;
    c->next = m->conns;
    if (m->conns)
        m->conns->prev = c;
    m->conns = c;
    m->nconns++;
    bufferevent_setcb(c->bev, on_conn_read, on_conn_write, on_conn_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, REQUEST_MAX + 4);
    bufferevent_enable(c->bev, EV_READ);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct metrics *m = arg;
    evconnlistener_enable(m->listener);
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct metrics *m = arg;
    int e = EVUTIL_SOCKET_ERROR();
    evconnlistener_disable(lev);
    struct timeval tv = {ACCEPT_PAUSE_MS / 1000, (ACCEPT_PAUSE_MS % 1000) * 1000};
    evtimer_add(m->resume, &tv);
    m->paused++;
    /* the 1st, 2nd, 4th, 8th ... pause is logged */
    if ((m->paused & (m->paused - 1)) == 0)
        log_warn("metrics: cannot accept a connection (%s); not accepting for %d ms "
                 "(%lu pauses so far)", evutil_socket_error_to_string(e), ACCEPT_PAUSE_MS,
                 m->paused);
}

struct metrics *metrics_start(struct daemon *d, struct event_base *base, const char *listen,
                              char *err, size_t errlen)
{
    char host[256], port[8];
    uint16_t portnum;
    if (metrics_parse_listen(listen, host, sizeof host, &portnum, err, errlen) < 0)
        return NULL;
    snprintf(port, sizeof port, "%u", (unsigned)portnum);
    struct metrics *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->d = d;
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                    .ai_flags = EVUTIL_AI_PASSIVE},
                           *ai = NULL;
    int gai = evutil_getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "[metrics] listen: %.100s: %s", listen, evutil_gai_strerror(gai));
        free(m);
        return NULL;
    }
    m->listener = evconnlistener_new_bind(base, on_accept, m,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                              LEV_OPT_CLOSE_ON_EXEC,
                                          128, ai->ai_addr, (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    m->resume = evtimer_new(base, on_resume, m);
    if (!m->listener || !m->resume) {
        snprintf(err, errlen, "[metrics] listen: cannot bind %.100s: %s", listen,
                 strerror(errno));
        metrics_stop(m);
        return NULL;
    }
    evconnlistener_set_error_cb(m->listener, on_accept_error);
    return m;
}

void metrics_stop(struct metrics *m)
{
    if (!m)
        return;
    while (m->conns)
        conn_free(m->conns);
    if (m->listener)
        evconnlistener_free(m->listener);
    if (m->resume)
        event_free(m->resume);
    free(m);
}
