/*
 * main.c - tenantqd startup order, signals, readiness, watchdog and drain.
 *
 * Startup: config -> (one-shot modes) -> evthread locking -> front socket
 * bound -> shards created and started -> front reading -> READY=1 once every
 * shard has a database connection.  Signals are handled on the main base
 * only (libevent delivers them to one base); SIGTERM/SIGINT start the drain,
 * SIGHUP re-reads the log level, the SQL operations and the auth token.  Shutdown follows the order nanomsg needs:
 * stop intake, let the shards finish, close sockets, nn_term last.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <nanomsg/nn.h>
#include <systemd/sd-daemon.h>
#if TQ_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "auth.h"
#include "config.h"
#include "daemon.h"
#include "job.h"
#include "front.h"
#include "initdb.h"
#include "log.h"
#include "metrics.h"
#include "opset.h"
#include "pg.h"
#include "scan.h"
#include "shard.h"
#include "sql.h"
#include "storage.h"

#define MAIN_TICK_MS 20
#define SHUTDOWN_LINGER_MS 200

/* The allocator this binary runs on, as --version and the ready line name it:
 * jemalloc when the build linked it (README, "Libraries"). */
static const char *allocator_name(void)
{
#if TQ_JEMALLOC
    static char name[96];
    const char *v = NULL;
    size_t len = sizeof v;
    if (!name[0]) {
        if (mallctl("version", (void *)&v, &len, NULL, 0) == 0 && v)
            snprintf(name, sizeof name, "jemalloc %.64s", v);
        else
            snprintf(name, sizeof name, "jemalloc");
    }
    return name;
#else
    return "libc malloc";
#endif
}

struct main_ctx {
    struct daemon d;
    tq_config cfg;
    struct event_base *base;
    struct front *front;
    struct metrics *metrics;
    struct event *ev_tick, *ev_term, *ev_int, *ev_hup;
    int argc;
    char **argv;
    bool ready;
    bool draining;
    bool stopping;
    uint64_t drain_deadline_us;
    bool *drain_sent, *stop_sent;
    uint64_t watchdog_usec, last_watchdog_us;
    unsigned *last_beats;
};

static void begin_stop(struct main_ctx *m)
{
    if (m->stopping)
        return;
    m->stopping = true;
    log_notice("stopping the shards");
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct main_ctx *m = arg;
    struct daemon *d = &m->d;

    if (!m->ready) {
        int up = 0;
        for (int i = 0; i < d->nshards; i++)
            up += shard_connected(d->shards[i]) > 0;
        if (up == d->nshards) {
            m->ready = true;
            log_notice("ready: %d shards connected to the database (allocator: %s)",
                       d->nshards, allocator_name());
            sd_notifyf(0, "READY=1\nSTATUS=serving with %d shards", d->nshards);
        }
    }

    if (m->watchdog_usec) {
        uint64_t now = now_us();
        if (now - m->last_watchdog_us >= m->watchdog_usec / 2) {
            /* only pet the watchdog if every shard's loop has ticked since */
            bool alive = true;
            for (int i = 0; i < d->nshards; i++) {
                unsigned b = shard_heartbeat(d->shards[i]);
                alive = alive && b != m->last_beats[i];
                m->last_beats[i] = b;
            }
            if (alive)
                sd_notify(0, "WATCHDOG=1");
            else
                log_warn("a shard's event loop has not run for %llu ms",
                         (unsigned long long)((now - m->last_watchdog_us) / 1000));
            m->last_watchdog_us = now;
        }
    }

    if (m->draining && !m->stopping) {
        bool all = true;
        for (int i = 0; i < d->nshards; i++) {
            if (!m->drain_sent[i])
                m->drain_sent[i] = shard_request_drain(d->shards[i]) == 0;
            all = all && m->drain_sent[i] && shard_drained(d->shards[i]);
        }
        if (all) {
            log_notice("drained: every queued request was answered");
            begin_stop(m);
        } else if (now_us() >= m->drain_deadline_us) {
            log_warn("shutdown grace of %d ms is over: failing what is still queued",
                     m->cfg.shutdown_grace_ms);
            begin_stop(m);
        }
    }
    if (m->stopping) {
        bool all = true;
        for (int i = 0; i < d->nshards; i++) {
            if (!m->stop_sent[i])
                m->stop_sent[i] = shard_request_stop(d->shards[i]) == 0;
            all = all && m->stop_sent[i];
        }
        if (all)
            event_base_loopbreak(m->base);
    }
}

static void on_shutdown_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct main_ctx *m = arg;
    if (m->draining) {
        log_notice("signal %d again: stopping without waiting for the queue", (int)sig);
        begin_stop(m);
        return;
    }
    log_notice("signal %d: draining (grace %d ms); new requests get SHUTTING_DOWN", (int)sig,
               m->cfg.shutdown_grace_ms);
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
    m->draining = true;
    atomic_store(&m->d.draining, true);
    m->drain_deadline_us = now_us() + (uint64_t)m->cfg.shutdown_grace_ms * 1000u;
}

/* Load the SQL operations of dir ("" = none: an empty set).  NULL with a
 * message naming [ops] dir, the file and the line. */
static struct opset *load_ops(const char *dir, char *err, size_t errlen)
{
    char why[OPSET_ERR_MAX];
    struct opset *set = dir[0] ? opset_load(dir, why, sizeof why) : opset_empty();
    if (!set)
        snprintf(err, errlen, "[ops] dir: %s", dir[0] ? why : "out of memory");
    return set;
}

/* SIGHUP: a good directory replaces the running set (requests already
 * admitted keep the definitions they came with); a bad one changes
 * nothing. */
static void reload_ops(struct main_ctx *m, const char *dir)
{
    char err[OPSET_ERR_MAX + 64];
    struct opset *set = load_ops(dir, err, sizeof err);
    if (!set) {
        log_err("reload: %s (keeping the %zu operations loaded before)", err,
                opset_count(m->d.ops));
        return;
    }
    opset_unref(m->d.ops);
    m->d.ops = set;
    log_notice("reload: %zu SQL operations from [ops] dir", opset_count(set));
}

/* SIGHUP: the token file named by the configuration as it reads now.  A
 * good file replaces the token (or turns authentication on); a failed read
 * keeps what runs.  Turning authentication off needs a restart, so that a
 * slip in the file cannot open the daemon to everyone. */
static void reload_auth(struct main_ctx *m, const char *path)
{
    if (!path[0]) {
        if (m->d.auth)
            log_warn("reload: [daemon] auth_token_file is now empty, but turning "
                     "authentication off needs a restart; keeping the token read before");
        return;
    }
    char err[512];
    struct auth_token *t = auth_load(path, err, sizeof err);
    if (!t) {
        log_warn("reload: %s (%s)", err,
                 m->d.auth ? "keeping the token read before" : "authentication stays off");
        return;
    }
    log_notice("reload: %s the token of [daemon] auth_token_file %s",
               m->d.auth ? "requests now need" : "authentication on: requests now need", path);
    auth_free(m->d.auth);
    m->d.auth = t;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct main_ctx *m = arg;
    /* Only the log level, the SQL operations and the auth token can change
     * at run time; everything else needs a restart, which systemd's
     * drain-aware stop makes cheap. */
    tq_config fresh;
    tq_action act;
    char err[512];
    /* RELOADING=1 ... READY=1 only while serving: before the first READY=1
     * (no database yet) systemd would take it as "started", and after
     * STOPPING=1 as "running again". */
    bool notify = m->ready && !m->draining;
    if (notify)
        sd_notify(0, "RELOADING=1");
    if (config_load(&fresh, m->argc, m->argv, &act, err, sizeof err) < 0) {
        log_err("reload: %s (keeping the running configuration)", err);
    } else {
        atomic_store(&log_level, log_parse_level(fresh.log_level));
        log_notice("reload: log level %s", fresh.log_level);
        reload_ops(m, fresh.ops_dir);
        reload_auth(m, fresh.auth_token_file);
    }
    config_free(&fresh);
    if (notify)
        sd_notify(0, "READY=1");
}

/* libevent's own messages (an accept() failing, say) go through our log,
 * with its priority prefixes, instead of bare lines on stderr. */
static void on_libevent_log(int severity, const char *msg)
{
    int prio = severity == EVENT_LOG_ERR    ? LOG_ERR
               : severity == EVENT_LOG_WARN ? LOG_WARNING
               : severity == EVENT_LOG_MSG  ? LOG_INFO
                                            : LOG_DEBUG;
    log_at(prio, "libevent: %s", msg);
}

/* Every client connection, database connection and metrics connection is a
 * descriptor: use the hard limit, not the soft default of 1024.  Returns the
 * limit in force (what [daemon] max_clients must fit). */
static long raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_warn("cannot raise the descriptor limit to %llu: %s", (unsigned long long)want,
                     strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return 1L << 20;
    log_info("descriptor limit %llu", (unsigned long long)rl.rlim_cur);
    return (long)rl.rlim_cur;
}

/* The limit the daemon would raise itself to (for --check-config, which
 * leaves its own alone). */
static long fd_limit_to_run(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 1L << 20;
    rlim_t v = rl.rlim_max != RLIM_INFINITY ? rl.rlim_max : rl.rlim_cur;
    return v == RLIM_INFINITY || v > (1L << 30) ? 1L << 30 : (long)v;
}

/* What the config parser cannot check alone: the endpoints' syntax, the
 * metrics address, the connection string (libpq's own parser), the SQL
 * operations and the auth token file, so that
 * --check-config catches them and the daemon refuses them at start (exit 2)
 * instead of failing to bind or retrying a connection that cannot work. */
static int check_values(const tq_config *cfg, long fd_limit, char *err, size_t errlen)
{
    if (front_check_endpoints(cfg->listen, err, errlen) < 0)
        return -1;
    int max_clients;
    if (front_client_budget(cfg, fd_limit, &max_clients, err, errlen) < 0)
        return -1;
    char host[256];
    uint16_t port;
    if (cfg->metrics_listen[0] &&
        metrics_parse_listen(cfg->metrics_listen, host, sizeof host, &port, err, errlen) < 0)
        return -1;
    if (pg_check_conninfo(cfg->conninfo, err, errlen) < 0)
        return -1;
    if (storage_check_names(cfg, err, errlen) < 0)
        return -1;
    struct opset *ops = load_ops(cfg->ops_dir, err, errlen);
    if (!ops)
        return -1;
    opset_unref(ops);
    if (cfg->auth_token_file[0]) {
        struct auth_token *t = auth_load(cfg->auth_token_file, err, errlen);
        if (!t)
            return -1;
        auth_free(t);
    }
    return 0;
}

static int run_daemon(struct main_ctx *m)
{
    struct daemon *d = &m->d;
    char err[512];
    int rc = 1;

    signal(SIGPIPE, SIG_IGN);
    umask(007); /* the ipc socket file gets no permissions for others */
    event_set_log_callback(on_libevent_log);
    if (evthread_use_pthreads() < 0) {
        log_err("libevent thread support is unavailable");
        return 1;
    }
    d->cfg = &m->cfg;
    d->rep_sock = -1;
    d->front_stats = calloc(1, sizeof *d->front_stats);
    if (!d->front_stats) {
        log_err("out of memory");
        return 1;
    }
    tls_stats = d->front_stats;
    if (getrandom(d->hash_key, sizeof d->hash_key, 0) != (ssize_t)sizeof d->hash_key) {
        log_err("getrandom: %s", strerror(errno));
        return 1;
    }
    m->base = event_base_new();
    if (!m->base) {
        log_err("cannot create the event base");
        return 1;
    }
    m->front = front_open(d, m->base, err, sizeof err);
    if (!m->front) {
        log_err("%s", err);
        goto out;
    }
    d->nshards = m->cfg.shards;
    d->shards = calloc((size_t)d->nshards, sizeof *d->shards);
    m->drain_sent = calloc((size_t)d->nshards, sizeof *m->drain_sent);
    m->stop_sent = calloc((size_t)d->nshards, sizeof *m->stop_sent);
    m->last_beats = calloc((size_t)d->nshards, sizeof *m->last_beats);
    if (!d->shards || !m->drain_sent || !m->stop_sent || !m->last_beats)
        goto out;
    for (int i = 0; i < d->nshards; i++)
        if (!(d->shards[i] = shard_create(d, i)))
            goto out;
    for (int i = 0; i < d->nshards; i++)
        if (shard_start(d->shards[i]) < 0) {
            log_err("cannot start shard %d", i);
            goto out;
        }
    if (front_start(m->front) < 0) {
        log_err("cannot register the receive event");
        goto out;
    }
    if (m->cfg.metrics_listen[0]) {
        m->metrics = metrics_start(d, m->base, m->cfg.metrics_listen, err, sizeof err);
        if (!m->metrics) {
            log_err("%s", err);
            goto out;
        }
        log_info("metrics on http://%s/metrics", m->cfg.metrics_listen);
    }
    if (sd_watchdog_enabled(0, &m->watchdog_usec) <= 0)
        m->watchdog_usec = 0;
    m->last_watchdog_us = now_us();
    struct timeval tick = {0, MAIN_TICK_MS * 1000};
    m->ev_tick = event_new(m->base, -1, EV_PERSIST, on_tick, m);
    m->ev_term = evsignal_new(m->base, SIGTERM, on_shutdown_signal, m);
    m->ev_int = evsignal_new(m->base, SIGINT, on_shutdown_signal, m);
    m->ev_hup = evsignal_new(m->base, SIGHUP, on_hup, m);
    if (!m->ev_tick || !m->ev_term || !m->ev_int || !m->ev_hup ||
        event_add(m->ev_tick, &tick) < 0 || event_add(m->ev_term, NULL) < 0 ||
        event_add(m->ev_int, NULL) < 0 || event_add(m->ev_hup, NULL) < 0)
        goto out;
    log_info("tenantqd %s: %d shards x %d connections, max_batch %d", TQ_VERSION, d->nshards,
             m->cfg.connections_per_shard, m->cfg.max_batch);
    event_base_dispatch(m->base);
    rc = 0;
out:
    if (!m->stopping && d->shards) {
        /* startup failed half-way: stop what runs */
        for (int i = 0; i < d->nshards; i++)
            if (d->shards[i])
                while (shard_request_stop(d->shards[i]) < 0)
                    usleep(1000);
    }
    atomic_store(&d->draining, true); /* the front answers SHUTTING_DOWN from here on */
    if (m->ev_tick)
        event_del(m->ev_tick); /* it looks at the shards, which go now */
    metrics_stop(m->metrics);   /* so does /metrics */
    m->metrics = NULL;
    for (int i = 0; d->shards && i < d->nshards; i++)
        shard_destroy(d->shards[i]); /* joins the thread */
    if (rc == 0 && m->front) {
        /* nanomsg has no linger: give its worker a moment to put
         * the last replies on the wire before the socket closes, answering
         * late arrivals with SHUTTING_DOWN meanwhile */
        struct timeval linger = {0, SHUTDOWN_LINGER_MS * 1000};
        event_base_loopexit(m->base, &linger);
        event_base_dispatch(m->base);
    }
    if (m->front)
        front_stop_reading(m->front);
    metrics_stop(m->metrics);
    front_close(m->front);
    if (m->ev_tick)
        event_free(m->ev_tick);
    if (m->ev_term)
        event_free(m->ev_term);
    if (m->ev_int)
        event_free(m->ev_int);
    if (m->ev_hup)
        event_free(m->ev_hup);
    free(d->shards);
    free(m->drain_sent);
    free(m->stop_sent);
    free(m->last_beats);
    free(d->front_stats);
    event_base_free(m->base);
    nn_term();
    if (rc == 0) {
        int left = atomic_load(&d->pending);
        if (left)
            log_warn("exiting with %d requests unanswered", left);
        log_notice("stopped");
    }
    return rc;
}

int main(int argc, char **argv)
{
    log_init();
    struct main_ctx m;
    memset(&m, 0, sizeof m);
    m.argc = argc;
    m.argv = argv;
    tq_action action;
    char err[OPSET_ERR_MAX + 64];
    if (config_load(&m.cfg, argc, argv, &action, err, sizeof err) < 0) {
        fprintf(stderr, "tenantqd: %s\n", err);
        config_free(&m.cfg);
        return 2;
    }
    atomic_store(&log_level, log_parse_level(m.cfg.log_level));
    int rc = 0;
    switch (action) {
    case TQ_ACTION_HELP:
        config_usage(argv[0]);
        break;
    case TQ_ACTION_VERSION:
        printf("tenantqd %s (allocator: %s)\n", TQ_VERSION, allocator_name());
        break;
    case TQ_ACTION_CHECK_CONFIG:
        if (check_values(&m.cfg, fd_limit_to_run(), err, sizeof err) < 0) {
            fprintf(stderr, "tenantqd: %s\n", err);
            rc = 2;
        } else {
            printf("tenantqd: configuration OK\n");
        }
        break;
    case TQ_ACTION_INIT_DB:
        rc = initdb_run(&m.cfg, stdout);
        break;
    case TQ_ACTION_SCAN:
        rc = scan_run(&m.cfg, stdout);
        break;
    case TQ_ACTION_RUN:
        if (check_values(&m.cfg, raise_fd_limit(), err, sizeof err) < 0) {
            fprintf(stderr, "tenantqd: %s\n", err);
            rc = 2;
            break;
        }
        if (!(m.d.ops = load_ops(m.cfg.ops_dir, err, sizeof err))) {
            fprintf(stderr, "tenantqd: %s\n", err);
            rc = 2;
            break;
        }
        log_info("%zu SQL operations from [ops] dir", opset_count(m.d.ops));
        if (m.cfg.auth_token_file[0]) {
            if (!(m.d.auth = auth_load(m.cfg.auth_token_file, err, sizeof err))) {
                fprintf(stderr, "tenantqd: %s\n", err);
                opset_unref(m.d.ops);
                rc = 2;
                break;
            }
            log_info("every request must carry the token of [daemon] auth_token_file %s",
                     m.cfg.auth_token_file);
        } else {
            log_info("no [daemon] auth_token_file: requests are not authenticated");
        }
        struct storage storage;
        if (storage_open(&m.cfg, &storage) < 0) {
            opset_unref(m.d.ops);
            auth_free(m.d.auth);
            rc = 2;
            break;
        }
        log_info("storage: %s%s", storage.table_name,
                 storage.no_xmin ? " (a view: no draft cache)" : "");
        m.d.storage = &storage;
        rc = run_daemon(&m);
        storage_free(&storage);
        opset_unref(m.d.ops);
        auth_free(m.d.auth);
        break;
    }
    config_free(&m.cfg);
    return rc;
}
