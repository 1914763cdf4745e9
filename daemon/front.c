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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

struct front {
    struct daemon *d;
    struct event_base *base;
    struct event *ev_recv;
    msgpack_sbuffer sb;
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
    struct ep_ctx c = {NULL, err, errlen};
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
    if (strncmp(ep, "ipc://", 6) == 0) {
        /* nanomsg has no file mode for ipc sockets and aborts on a malformed
         * frame from any local peer (an ipc frame type other than 1): the directory is the guard */
        char dir[512];
        snprintf(dir, sizeof dir, "%s", ep + 6);
        char *slash = strrchr(dir, '/');
        if (slash)
            *(slash == dir ? slash + 1 : slash) = '\0';
        else
            snprintf(dir, sizeof dir, ".");
        struct stat st;
        if (stat(dir, &st) == 0 && (st.st_mode & S_IXOTH))
            log_warn("%s: directory %s can be entered by every local user (mode %03o); "
                     "anyone can connect and %s - use a directory with mode 0750 "
                     "owned by the service's group",
                     ep, dir, (unsigned)(st.st_mode & 0777),
                     c->d->auth ? "crash the daemon with a malformed frame"
                                : "edit any tenant");
    }
    if (nn_bind(c->d->rep_sock, ep) < 0) {
        snprintf(c->err, c->errlen, "[daemon] listen: cannot bind %.200s: %s", ep,
                 nn_strerror(nn_errno()));
        return -1;
    }
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
    struct ep_ctx c = {d, err, errlen};
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
    return f->ev_recv && event_add(f->ev_recv, NULL) == 0 ? 0 : -1;
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
    if (f->d->rep_sock >= 0) {
        nn_close(f->d->rep_sock);
        f->d->rep_sock = -1;
    }
    msgpack_sbuffer_destroy(&f->sb);
    free(f);
}
