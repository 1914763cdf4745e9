/*
 * front.c - nanomsg intake: decode, validate, admit, route.
 *
 * Runs on the main thread's event base.  Reads the raw REP socket through
 * its level-triggered NN_RCVFD, draining with NN_DONTWAIT in bounded rounds
 * so signals and timers still get their turn.  Bad requests are answered
 * here and never reach a shard; good ones become jobs owned by a shard.
 * Must not touch a shard's objects (only shard_submit).
 */
#include "front.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "auth.h"
#include "log.h"
#include "storage.h"
#include "metrics.h"
#include "family.h"
#include "job.h"
#include "opset.h"
#include "sqlargs.h"
#include "shard.h"
#include "siphash.h"

#define FRONT_ROUND 256 /* messages per callback before yielding to the loop */

/* [daemon] max_clients: nanomsg has no per-socket connection limit and no
 * hook to refuse one, and an accept() that fails with EMFILE is retried at
 * once, for ever, by its worker.  So the front counts the connections its
 * endpoints accepted (nanomsg's own statistics, every CLIENT_CHECK_MS) and,
 * at max_clients, takes the listeners out of reach without closing them or
 * the connections they hold: an ipc socket file is renamed aside (connects
 * get ENOENT), a tcp listener gets a socket filter that drops every segment
 * (SYNs go unanswered and are retried by the client's kernel).  Below
 * CLIENT_LOW_PERCENT of it they are put back.  What can still arrive
 * between two checks and sit in the listen backlogs is reserved in the
 * descriptor budget (front_client_budget). */
#define CLIENT_CHECK_MS 10
#define CLIENT_LOW_PERCENT 90
#define CLIENT_DEFAULT 10000
#define CLIENT_SLACK 256        /* accepted within one check, at most (reserved) */
#define FD_RESERVE_FIXED 64     /* stdio, log, epoll, eventfds, nanomsg's own, files */
#define FD_RESERVE_PER_SHARD 4  /* a shard's event base and its notification pipe */
#define IPC_BACKLOG 10          /* nanomsg's listen() backlogs (bipc.c, btcp.c) */
#define TCP_BACKLOG 100
#define MAX_LISTENERS 32

struct listener {
    int fd;            /* nanomsg's listening socket (not ours to close) */
    bool ipc;
    char path[108];    /* ipc: the socket file */
    char aside[128];   /* ipc: where it waits while paused */
};

struct front {
    struct daemon *d;
    struct event_base *base;
    struct event *ev_recv;
    struct event *ev_clients;
    msgpack_sbuffer sb;
    int max_clients;
    struct listener listeners[MAX_LISTENERS];
    int nlisteners;
    bool paused;
    unsigned long pauses;
};

static bool is_loopback_host(const char *host, size_t len)
{
    return (len >= 4 && strncmp(host, "127.", 4) == 0) ||
           (len == 9 && strncmp(host, "localhost", 9) == 0) ||
           (len == 5 && strncmp(host, "[::1]", 5) == 0);
}

/* Call fn for each trimmed, non-empty endpoint of the comma-separated list;
 * stop at the first non-zero return. */
static int each_endpoint(const char *listen, int (*fn)(const char *ep, void *arg), void *arg)
{
    char *copy = strdup(listen);
    if (!copy)
        return -1;
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        char *e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (*tok)
            rc = fn(tok, arg);
    }
    free(copy);
    return rc;
}

struct ep_ctx {
    struct daemon *d;
    char *err;
    size_t errlen;
    struct front *f;
};

/* The port of a tcp:// endpoint: digits only, 1..65535. */
static bool valid_port(const char *p)
{
    if (*p == '\0' || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p))
        return false;
    long v = strtol(p, NULL, 10);
    return v >= 1 && v <= 65535;
}

static int check_one(const char *ep, void *arg)
{
    struct ep_ctx *c = arg;
    /* (an ipc path must fit in sockaddr_un's 108 bytes with its NUL) */
    if (strncmp(ep, "ipc://", 6) == 0 && ep[6] != '\0' && strlen(ep + 6) < 108)
        return 0;
    const char *colon = strncmp(ep, "tcp://", 6) == 0 ? strrchr(ep + 6, ':') : NULL;
    if (!colon || colon == ep + 6 || !valid_port(colon + 1)) {
        snprintf(c->err, c->errlen,
                 "[daemon] listen: endpoint \"%.200s\" must be ipc://PATH or tcp://HOST:PORT", ep);
        return -1;
    }
    /* nanomsg binds to an address, not a name, and the socket is IPv4 only:
     * refuse here what would only fail at start */
    char host[64];
    size_t hlen = (size_t)(colon - (ep + 6));
    struct in_addr a4;
    if (hlen < sizeof host) {
        memcpy(host, ep + 6, hlen);
        host[hlen] = '\0';
        if (strcmp(host, "*") == 0 || inet_pton(AF_INET, host, &a4) == 1)
            return 0;
    }
    snprintf(c->err, c->errlen,
             "[daemon] listen: endpoint \"%.200s\": HOST must be * or an IPv4 address such as "
             "127.0.0.1 (host names and IPv6 cannot be bound)",
             ep);
    return -1;
}

static int count_one(const char *ep, void *arg)
{
    (void)ep;
    ++*(int *)arg;
    return 0;
}

int front_check_endpoints(const char *listen, char *err, size_t errlen)
{
    struct ep_ctx c = {NULL, err, errlen, NULL};
    int n = 0;
    if (each_endpoint(listen, count_one, &n) < 0) {
        snprintf(err, errlen, "[daemon] listen: out of memory");
        return -1;
    }
    if (n == 0) {
        snprintf(err, errlen, "[daemon] listen: \"%.200s\" names no endpoint", listen);
        return -1;
    }
    return each_endpoint(listen, check_one, &c);
}

static int reserve_one(const char *ep, void *arg)
{
    *(long *)arg += (strncmp(ep, "ipc://", 6) == 0 ? IPC_BACKLOG : TCP_BACKLOG) + 1;
    return 0;
}

long front_fd_reserve(const tq_config *cfg)
{
    long r = FD_RESERVE_FIXED + CLIENT_SLACK +
             (long)cfg->shards * (FD_RESERVE_PER_SHARD + cfg->connections_per_shard);
    if (cfg->metrics_listen[0])
        r += METRICS_MAX_CONNECTIONS + 1;
    if (each_endpoint(cfg->listen, reserve_one, &r) < 0)
        r += MAX_LISTENERS * (TCP_BACKLOG + 1);
    return r;
}

int front_client_budget(const tq_config *cfg, long fd_limit, int *max_clients, char *err,
                        size_t errlen)
{
    long reserve = front_fd_reserve(cfg), room = fd_limit - reserve;
    if (cfg->max_clients > 0 && cfg->max_clients <= room) {
        *max_clients = cfg->max_clients;
        return 0;
    }
    if (cfg->max_clients == 0 && room >= 1) {
        *max_clients = room < CLIENT_DEFAULT ? (int)room : CLIENT_DEFAULT;
        return 0;
    }
    if (cfg->max_clients > 0)
        snprintf(err, errlen,
                 "[daemon] max_clients: %d client connections do not fit the descriptor limit "
                 "%ld (%ld are reserved for the database connections, the metrics endpoint, "
                 "the listen backlogs and the daemon itself): lower max_clients to at most "
                 "%ld or raise the limit (LimitNOFILE=)",
                 cfg->max_clients, fd_limit, reserve, room > 0 ? room : 0);
    else
        snprintf(err, errlen,
                 "[daemon] max_clients: the descriptor limit %ld leaves no room for client "
                 "connections (%ld are reserved for the database connections, the metrics "
                 "endpoint, the listen backlogs and the daemon itself): raise the limit "
                 "(LimitNOFILE=)",
                 fd_limit, reserve);
    return -1;
}

/* Is fd a listening socket bound to ep (and not one already known)? */
static bool is_listener_of(const struct front *f, int fd, const char *ep)
{
    for (int i = 0; i < f->nlisteners; i++)
        if (f->listeners[i].fd == fd)
            return false;
    int on = 0;
    socklen_t len = sizeof on;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) < 0 || !on)
        return false;
    struct sockaddr_storage ss;
    len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return false;
    if (strncmp(ep, "ipc://", 6) == 0) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&ss;
        return ss.ss_family == AF_UNIX && len > offsetof(struct sockaddr_un, sun_path) &&
               strncmp(un->sun_path, ep + 6, sizeof un->sun_path) == 0;
    }
    const char *colon = strrchr(ep, ':');
    long port = colon ? strtol(colon + 1, NULL, 10) : -1;
    return ss.ss_family == AF_INET &&
           ntohs(((const struct sockaddr_in *)&ss)->sin_port) == port;
}

/* Find the listening socket nanomsg's nn_bind just opened for ep. */
static int find_listener(struct front *f, const char *ep, char *err, size_t errlen)
{
    if (f->nlisteners == MAX_LISTENERS) {
        snprintf(err, errlen, "[daemon] listen: more than %d endpoints", MAX_LISTENERS);
        return -1;
    }
    DIR *dir = opendir("/proc/self/fd");
    int found = -1;
    struct dirent *de;
    while (dir && found < 0 && (de = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(de->d_name, &end, 10);
        if (*end == '\0' && end != de->d_name && fd != dirfd(dir) &&
            is_listener_of(f, (int)fd, ep))
            found = (int)fd;
    }
    if (dir)
        closedir(dir);
    if (found < 0) {
        snprintf(err, errlen,
                 "[daemon] listen: cannot find the listening socket of %.200s, so "
                 "[daemon] max_clients could not be kept",
                 ep);
        return -1;
    }
    struct listener *l = &f->listeners[f->nlisteners++];
    l->fd = found;
    l->ipc = strncmp(ep, "ipc://", 6) == 0;
    if (l->ipc) {
        snprintf(l->path, sizeof l->path, "%s", ep + 6);
        snprintf(l->aside, sizeof l->aside, "%s.full", ep + 6);
        unlink(l->aside); /* left by a daemon that died while full */
    }
    return 0;
}

/* Take one listener out of reach (pause) or put it back; its listening
 * socket and the connections it accepted stay open either way. */
static void set_reachable(struct listener *l, bool reachable)
{
    if (l->ipc) {
        const char *from = reachable ? l->aside : l->path, *to = reachable ? l->path : l->aside;
        if (rename(from, to) < 0)
            log_warn("max_clients: cannot rename %s to %s: %s", from, to, strerror(errno));
        return;
    }
    if (reachable) {
        int unused = 0;
        if (setsockopt(l->fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused) < 0)
            log_warn("max_clients: cannot let the tcp listener accept again: %s",
                     strerror(errno));
        return;
    }
    struct sock_filter drop[] = {BPF_STMT(BPF_RET | BPF_K, 0)};
    struct sock_fprog prog = {.len = 1, .filter = drop};
    if (setsockopt(l->fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
        log_warn("max_clients: cannot stop the tcp listener accepting: %s", strerror(errno));
}

/* Connections the endpoints accepted and still hold, in handshake or not. */
static long open_clients(int sock)
{
    uint64_t in = nn_get_statistic(sock, NN_STAT_ACCEPTED_CONNECTIONS);
    uint64_t out = nn_get_statistic(sock, NN_STAT_BROKEN_CONNECTIONS) +
                   nn_get_statistic(sock, NN_STAT_DROPPED_CONNECTIONS);
    return in > out ? (long)(in - out) : 0;
}

static void set_paused(struct front *f, bool paused, long open)
{
    f->paused = paused;
    for (int i = 0; i < f->nlisteners; i++)
        set_reachable(&f->listeners[i], !paused);
    if (paused)
        f->pauses++;
    /* the 1st, 2nd, 4th, 8th ... pause (and the resume after it) is logged */
    if ((f->pauses & (f->pauses - 1)) != 0)
        return;
    if (paused)
        log_warn("%ld client connections open ([daemon] max_clients %d): stopped accepting new "
                 "ones until fewer than %d are open (%lu times so far)",
                 open, f->max_clients, f->max_clients * CLIENT_LOW_PERCENT / 100, f->pauses);
    else
        log_notice("%ld client connections open: accepting clients again", open);
}

static void on_clients(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct front *f = arg;
    long open = open_clients(f->d->rep_sock);
    if (!f->paused && open >= f->max_clients)
        set_paused(f, true, open);
    else if (f->paused && open < (long)f->max_clients * CLIENT_LOW_PERCENT / 100)
        set_paused(f, false, open);
}

/* Who can reach an ipc socket once bound.  nanomsg has no file mode for
 * ipc sockets, and any local peer that can connect can abort it with a
 * malformed frame (a frame type other than 1): connecting needs write
 * permission on the socket file (0770 from the daemon's umask 007), and the
 * directory is the second guard. */
static void check_ipc_access(const char *path, bool auth)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    struct stat sock, dst;
    if (stat(path, &sock) < 0 || stat(dir, &dst) < 0)
        return;
    unsigned smode = (unsigned)(sock.st_mode & 0777), dmode = (unsigned)(dst.st_mode & 0777);
    if ((sock.st_mode & S_IWOTH) && (dst.st_mode & S_IXOTH))
        log_warn("ipc://%s: the socket (mode %03o) and its directory %s (mode %03o) are open to "
                 "every local user: anyone can connect and %s - use a directory with mode 0750 "
                 "owned by the service's group",
                 path, smode, dir, dmode,
                 auth ? "crash the daemon with a malformed frame"
                      : "edit any tenant or crash the daemon with a malformed frame");
    else if (dst.st_mode & S_IXOTH)
        log_warn("ipc://%s: directory %s can be entered by every local user (mode %03o); only "
                 "the socket's own mode %03o keeps them from connecting (and from crashing the "
                 "daemon with a malformed frame)%s - use a directory with mode 0750 owned by "
                 "the service's group",
                 path, dir, dmode, smode,
                 (dst.st_mode & S_IWOTH) && !(dst.st_mode & S_ISVTX)
                     ? ", and they can remove or replace it"
                     : "");
}

static int bind_one(const char *ep, void *arg)
{
    struct ep_ctx *c = arg;
    if (check_one(ep, c) < 0)
        return -1;
    if (strncmp(ep, "tcp://", 6) == 0) {
        const char *host = ep + 6, *colon = strrchr(host, ':');
        bool remote = !is_loopback_host(host, (size_t)(colon - host));
        if (remote && !c->d->auth)
            log_warn("listening on non-loopback %s without [daemon] auth_token_file: nanomsg "
                     "tcp has no authentication or encryption of its own; anyone who can reach "
                     "it can edit any tenant",
                     ep);
        else if (remote)
            log_warn("listening on non-loopback %s: requests must carry the token of [daemon] "
                     "auth_token_file, but nanomsg tcp has no encryption: the token and every "
                     "request cross the network in clear (use a private network or a TLS tunnel)",
                     ep);
    }
    if (nn_bind(c->d->rep_sock, ep) < 0) {
        snprintf(c->err, c->errlen, "[daemon] listen: cannot bind %.200s: %s", ep,
                 nn_strerror(nn_errno()));
        return -1;
    }
    if (find_listener(c->f, ep, c->err, c->errlen) < 0)
        return -1;
    if (strncmp(ep, "ipc://", 6) == 0)
        check_ipc_access(ep + 6, c->d->auth != NULL);
    log_info("listening on %s", ep);
    return 0;
}

/* What the storage decides of a storefront request: draft.publish and
 * draft.discard need a published column; the tenant must be in the tenant
 * column type's canonical form (a string that does not cast would fail a
 * shared transaction; another spelling of the same key would get another
 * lane and another lock). */
static int storefront_admit(const struct storage *st, sf_op op, const tq_request *req,
                            tq_error *err)
{
    if (!st->published[0] && (op == SF_OP_DRAFT_PUBLISH || op == SF_OP_DRAFT_DISCARD))
        return tq_error_set(err, TQ_E_UNKNOWN_OP,
                            "op: %s needs a published copy, and [storage] published_column is "
                            "empty",
                            req->op);
    char why[TQ_ERRMSG_MAX];
    if (storage_check_tenant(st, req->tenant, req->tenant_len, why, sizeof why) < 0)
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "%s", why);
    return 0;
}

/* With [daemon] auth_token_file set, every request carries its token as
 * auth: before anything else is looked at, so a request without it learns
 * nothing about ops, tenants or the queue.  false with err set. */
static bool authenticated(const struct daemon *d, const tq_request *req, tq_error *err)
{
    if (req->auth_not_str)
        tq_error_set(err, TQ_E_UNAUTHENTICATED,
                     "auth: must be a string (the token of the daemon's auth_token_file); "
                     "nothing was queued");
    else if (!req->auth)
        tq_error_set(err, TQ_E_UNAUTHENTICATED,
                     "auth: missing; this daemon requires the token of its auth_token_file on "
                     "every request; nothing was queued");
    else if (!auth_matches(d->auth, req->auth, req->auth_len))
        tq_error_set(err, TQ_E_UNAUTHENTICATED,
                     "auth: wrong token (not the one of the daemon's auth_token_file); "
                     "nothing was queued");
    else
        return true;
    return false;
}

/* Validate and route one request.  body is borrowed. */
static void handle(struct front *f, const void *body, size_t len, const uint8_t *hdr,
                   size_t hdr_len)
{
    struct daemon *d = f->d;
    tq_request req;
    tq_error err;
    if (tq_request_decode(body, len, &req, &err) < 0) {
        reply_error_raw(d, &f->sb, hdr, hdr_len, err.code, err.message);
        stats_request(-1, err.code);
        return;
    }
    if (d->auth && !authenticated(d, &req, &err)) {
        reply_error_raw(d, &f->sb, hdr, hdr_len, err.code, err.message);
        stats_request(-1, err.code);
        goto drop;
    }
    /* what the client sent as auth goes no further (not into jobs) */
    if (req.auth) {
        explicit_bzero(req.auth, req.auth_len);
        free(req.auth);
        req.auth = NULL;
        req.auth_len = 0;
    }
    sf_op op = SF_OP__COUNT;
    const opfile_def *def = NULL;
    if (!sf_op_lookup(req.op, req.op_len, &op) &&
        !(d->ops && (def = opset_find(d->ops, req.op, req.op_len)) != NULL)) {
        char msg[TQ_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "op: unknown operation \"%s\"", req.op);
        reply_error_raw(d, &f->sb, hdr, hdr_len, TQ_E_UNKNOWN_OP, msg);
        stats_request(-1, TQ_E_UNKNOWN_OP);
        goto drop;
    }
    if (!def && op != SF_OP_PING && storefront_admit(d->storage, op, &req, &err) < 0) {
        reply_error_raw(d, &f->sb, hdr, hdr_len, err.code, err.message);
        stats_request((int)op, err.code);
        goto drop;
    }
    /* the op's counters: by name for an SQL op (a name of the loaded set,
     * never a client-supplied string) */
    struct job counted = {.op = (int)op, .sql_stat = def ? stats_sql_slot(def->name) + 1 : 0};
    if (def ? sqlargs_check(def, req.args, &err) < 0 : sf_validate_args(op, req.args, &err) < 0) {
        reply_error_raw(d, &f->sb, hdr, hdr_len, err.code, err.message);
        job_count(&counted, err.code);
        goto drop;
    }
    if (atomic_load(&d->draining)) {
        reply_error_raw(d, &f->sb, hdr, hdr_len, TQ_E_SHUTTING_DOWN,
                        "the daemon is shutting down; not executed");
        job_count(&counted, TQ_E_SHUTTING_DOWN);
        goto drop;
    }
    if (atomic_fetch_add(&d->pending, 1) >= d->cfg->max_pending) {
        atomic_fetch_sub(&d->pending, 1);
        char msg[TQ_ERRMSG_MAX];
        snprintf(msg, sizeof msg,
                 "the daemon has %d requests pending (max_pending); nothing was queued",
                 d->cfg->max_pending);
        reply_error_raw(d, &f->sb, hdr, hdr_len, TQ_E_QUEUE_FULL, msg);
        job_count(&counted, TQ_E_QUEUE_FULL);
        goto drop;
    }
    struct job *job = calloc(1, sizeof *job);
    if (!job) {
        atomic_fetch_sub(&d->pending, 1);
        reply_error_raw(d, &f->sb, hdr, hdr_len, TQ_E_QUEUE_FULL, "out of memory; nothing was queued");
        goto drop;
    }
    job->req = req; /* the job owns the request from here */
    if (def) {
        /* the job keeps the set its op came from until it is freed */
        job->fam = &sql_family;
        job->def = def;
        job->set = opset_ref(d->ops);
    } else {
        job->fam = &storefront_family;
    }
    job->op = (int)op;
    job->sql_stat = counted.sql_stat;
    job->hash = siphash24(d->hash_key, req.tenant, req.tenant_len);
    job->recv_us = now_us();
    uint64_t dl_ms = req.has_deadline ? req.deadline_ms : (uint64_t)d->cfg->default_deadline_ms;
    job->deadline_us = job->recv_us + dl_ms * 1000u;
    job->hdr_len = hdr_len;
    memcpy(job->hdr, hdr, hdr_len);
    struct shard *s = d->shards[job->hash % (uint64_t)d->nshards];
    if (shard_submit(s, job) < 0) {
        char msg[TQ_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "shard %u inbox is full; nothing was queued",
                 (unsigned)(job->hash % (uint64_t)d->nshards));
        job_finish_error(d, &f->sb, job, TQ_E_QUEUE_FULL, "%s", msg);
    }
    return;
drop:
    tq_request_free(&req);
}

static void on_recv(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct front *f = arg;
    for (int n = 0; n < FRONT_ROUND; n++) {
        void *body = NULL, *control = NULL;
        struct nn_iovec iov = {.iov_base = &body, .iov_len = NN_MSG};
        struct nn_msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                               .msg_controllen = NN_MSG};
        int rc = nn_recvmsg(f->d->rep_sock, &mh, NN_DONTWAIT);
        if (rc < 0) {
            int e = nn_errno();
            if (e != EAGAIN && e != EINTR && e != ETERM && e != EBADF)
                log_err("receive: %s", nn_strerror(e));
            return;
        }
        const uint8_t *hdr = NULL;
        size_t hdr_len = tq_sp_header(&mh, &hdr);
        if (hdr_len == 0)
            log_debug("dropping a message without a usable routing header");
        else
            handle(f, body, (size_t)rc, hdr, hdr_len);
        nn_freemsg(body);
        if (control)
            nn_freemsg(control);
    }
}

struct front *front_open(struct daemon *d, struct event_base *base, char *err, size_t errlen)
{
    struct front *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->d = d;
    f->base = base;
    msgpack_sbuffer_init(&f->sb);
    d->rep_sock = nn_socket(AF_SP_RAW, NN_REP);
    if (d->rep_sock < 0) {
        snprintf(err, errlen, "cannot create the REP socket: %s", nn_strerror(nn_errno()));
        goto fail;
    }
    /* Same explicit limit the clients are told about (never -1, which is unlimited). */
    int maxsz = d->cfg->max_message_bytes;
    if (nn_setsockopt(d->rep_sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &maxsz, sizeof maxsz) < 0) {
        snprintf(err, errlen, "[daemon] max_message_bytes: %s", nn_strerror(nn_errno()));
        goto fail;
    }
    struct rlimit rl;
    long limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                     ? (long)rl.rlim_cur
                     : 1L << 20;
    if (front_client_budget(d->cfg, limit, &f->max_clients, err, errlen) < 0)
        goto fail;
    log_info("at most %d client connections (descriptor limit %ld, %ld reserved)",
             f->max_clients, limit, front_fd_reserve(d->cfg));
    struct ep_ctx c = {d, err, errlen, f};
    if (each_endpoint(d->cfg->listen, bind_one, &c) != 0)
        goto fail;
    return f;
fail:
    front_close(f);
    return NULL;
}

int front_start(struct front *f)
{
    int rcvfd;
    size_t sz = sizeof rcvfd;
    if (nn_getsockopt(f->d->rep_sock, NN_SOL_SOCKET, NN_RCVFD, &rcvfd, &sz) < 0)
        return -1;
    f->ev_recv = event_new(f->base, rcvfd, EV_READ | EV_PERSIST, on_recv, f);
    f->ev_clients = event_new(f->base, -1, EV_PERSIST, on_clients, f);
    struct timeval every = {0, CLIENT_CHECK_MS * 1000};
    return f->ev_recv && event_add(f->ev_recv, NULL) == 0 && f->ev_clients &&
                   event_add(f->ev_clients, &every) == 0
               ? 0
               : -1;
}

void front_stop_reading(struct front *f)
{
    if (f->ev_recv) {
        event_free(f->ev_recv);
        f->ev_recv = NULL;
    }
}

void front_close(struct front *f)
{
    if (!f)
        return;
    front_stop_reading(f);
    if (f->ev_clients)
        event_free(f->ev_clients);
    if (f->paused) /* the socket files go back, for nanomsg to remove */
        for (int i = 0; i < f->nlisteners; i++)
            if (f->listeners[i].ipc)
                set_reachable(&f->listeners[i], true);
    if (f->d->rep_sock >= 0) {
        nn_close(f->d->rep_sock);
        f->d->rep_sock = -1;
    }
    msgpack_sbuffer_destroy(&f->sb);
    free(f);
}
