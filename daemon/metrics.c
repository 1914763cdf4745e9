/*
 * metrics.c - the small HTTP endpoint: /metrics (the counters of stats.h,
 * the shards' gauges, the process) and /healthz.
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
#include "shard.h"

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
                                (double)stats_lat_bound_us(k) / 1e6, cum);
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

/* The shards' gauges (shard.h), each named once: per shard, or summed over
 * them.  SHARD_GAUGE__COUNT stands for the usable database connections. */
struct series {
    enum shard_gauge g;
    const char *name;
    bool counter, per_shard;
    const char *help;
};
static const struct series shard_series[] = {
    {SHARD_GAUGE_QUEUED, "tenantq_queued", false, true,
     "Requests waiting in tenant lanes, by shard."},
    {SHARD_GAUGE_LANES, "tenantq_tenants_pending", false, true,
     "Tenants with queued or running work."},
    {SHARD_GAUGE__COUNT, "tenantq_db_connections", false, true,
     "Usable database connections."},
    {SHARD_GAUGE_CACHE_HITS, "tenantq_draft_cache_hits_total", true, false,
     "Batches whose tenant's parsed state was cached and still the row's version."},
    {SHARD_GAUGE_CACHE_MISSES, "tenantq_draft_cache_misses_total", true, false,
     "Tenant rows read and parsed."},
    {SHARD_GAUGE_CACHE_BYTES, "tenantq_draft_cache_bytes", false, false,
     "Heap reckoned for cached states."},
    {SHARD_GAUGE_CACHE_STALE, "tenantq_draft_cache_stale_total", true, false,
     "Batches sent in one round trip whose cached state the row had moved past (written "
     "behind the daemon); they ran again from the row."},
    {SHARD_GAUGE_ONE_TRIP, "tenantq_transactions_one_round_trip_total", true, false,
     "Transactions sent whole in one round trip because every tenant's state was cached."},
    {SHARD_GAUGE_RECONNECTS, "tenantq_db_reconnects_total", true, false,
     "Database reconnect attempts."},
    {SHARD_GAUGE_LOCK_TIMEOUTS, "tenantq_lock_timeouts_total", true, false,
     "Batches that hit lock_timeout."},
    {SHARD_GAUGE_LOCK_BUSY, "tenantq_lock_busy_total", true, false,
     "Batches put back because their lock was held elsewhere while sharing a transaction."},
    {SHARD_GAUGE_ISOLATED_RERUNS, "tenantq_sql_isolated_reruns_total", true, false,
     "SQL-operation transactions run without savepoints in which a request failed; their "
     "batches ran again with each request in a savepoint."},
};

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
    for (int i = 0; i < stats_sql_names(); i++) {
        for (int code = 0; code < TQ_CODE__COUNT; code++) {
            unsigned long v = stats_sql_count(i, (tq_code)code);
            if (v)
                evbuffer_add_printf(b, "tenantq_requests_total{op=\"%s\",code=\"%s\"} %lu\n",
                                    stats_sql_name(i),
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

    for (size_t k = 0; k < sizeof shard_series / sizeof shard_series[0]; k++) {
        const struct series *se = &shard_series[k];
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", se->name, se->help, se->name,
                            se->counter ? "counter" : "gauge");
        unsigned long sum = 0;
        for (int i = 0; i < d->nshards; i++) {
            unsigned long g = se->g == SHARD_GAUGE__COUNT
                                  ? (unsigned long)shard_connected(d->shards[i])
                                  : shard_gauge(d->shards[i], se->g);
            if (se->per_shard)
                evbuffer_add_printf(b, "%s{shard=\"%d\"} %lu\n", se->name, i, g);
            sum += g;
        }
        if (!se->per_shard)
            evbuffer_add_printf(b, "%s %lu\n", se->name, sum);
    }
    evbuffer_add_printf(b,
                        "# HELP tenantq_pending Requests admitted and not yet answered.\n"
                        "# TYPE tenantq_pending gauge\n"
                        "tenantq_pending %d\n",
                        atomic_load(&d->pending));
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
