/*
 * async.c - libtenantq's asynchronous calls (tq_call_async and friends, see
 * tenantq.h).
 *
 * A call in flight occupies a slot: one AF_SP_RAW NN_REQ socket, connected
 * to the endpoint of the call's tenant, with at most one request on it.
 * Raw REQ because cooked REQ re-sends on its own timer and on reconnects
 * and allows one request per socket anyway; we re-send only
 * when the connection that carried the request broke (the socket's
 * NN_STAT_BROKEN_CONNECTIONS moved since the send), as tq_call does.  One
 * request per socket because the daemon's raw REP drops a reply, silently,
 * when the connection is still busy sending the previous one.  Our request id (bit
 * 31 set, as nanomsg requires) travels in the SP header of a plain control buffer
 * and comes back in the reply's, so a reply that is not the slot's current
 * request (a late one) is recognised and dropped.
 *
 * With several endpoints a call goes to its tenant's best endpoint that is
 * up and, like tq_call, moves on to the next when its endpoint has had no
 * connection for failover_wait_ms() (failover(); client.c explains the
 * rule).  A slot moved so closes its socket when its call ends: the other
 * slots keep the client's idle sockets where its calls normally go.
 *
 * Sockets stay open between calls and are reused by the next call to the
 * same endpoint; a socket whose call timed out or failed is closed, so
 * nothing late can arrive on it.  tq_fd is an epoll instance holding every
 * open slot's NN_RCVFD (level-triggered: readable while a reply is queued).
 * Timers (a call's timeout, a retry's pause, the next try of a send that
 * found no connection yet, the next look at a waiting call's connection)
 * are the slots' own due times, scanned by
 * tq_dispatch when the earliest one has come.
 *
 * Ownership: the client owns the tq_async, the slots, their sockets and the
 * copies of the encoded requests; a callback's result text is freed after
 * the callback returns.
 */
#include "tenantq.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "client_int.h"

/* A send that found no connection yet (a fresh socket still connecting, or
 * the daemon away) is tried again after 1, 2, 4 .. ms, at most this. */
#define SEND_RETRY_MAX_MS 64
#define EPOLL_BATCH 64

enum slot_state {
    SLOT_FREE,     /* no call; the socket (if open) is idle */
    SLOT_SENDING,  /* the request waits for a connection; next try at due */
    SLOT_WAITING,  /* sent; the reply is due by deadline */
    SLOT_BACKOFF,  /* a retryable failure; the next attempt goes out at due */
    SLOT_FAILED,   /* ended with fail; its callback runs at the next dispatch */
};

struct slot {
    enum slot_state state;
    int sock;              /* raw REQ socket or -1 */
    int rcvfd;             /* its NN_RCVFD, in the epoll set while sock is open */
    size_t ep;             /* endpoint index sock is connected to */
    uint32_t id;           /* request id of the current attempt (bit 31 set) */
    unsigned char *req;    /* the encoded request, owned; resent byte for byte */
    size_t req_len, req_cap;
    int64_t deadline;      /* end of the current attempt (SENDING, WAITING) */
    int64_t due;           /* SENDING: next send try; WAITING: next look at the
                              connection; BACKOFF: next attempt */
    int64_t sending_since; /* SENDING: when this delivery began to wait for a
                              connection (failover after failover_wait_ms) */
    bool moved;            /* this call moved the socket to another endpoint */
    uint8_t order[TQ_MAX_ENDPOINTS]; /* the tenant's endpoints, best first */
    uint64_t broken;       /* WAITING: the socket's broken connections at the send */
    int broke;             /* deliveries of this attempt whose connection broke
                              before the reply (TQ_BROKEN_REPLIES) */
    int send_pause_ms;     /* SENDING: current pause between tries */
    int timeout_ms, attempt, attempts;
    tq_callback cb;
    void *arg;
    tq_status fail;        /* SLOT_FAILED: the outcome */
};

struct tq_async {
    int epfd;
    struct slot *slots;    /* max_inflight of them */
    int n_slots;
    int inflight;
    uint32_t next_id;
    int64_t next_due;      /* no timer falls due before this; INT64_MAX: none */
};

static void slot_close(struct tq_async *a, struct slot *s)
{
    if (s->sock < 0)
        return;
    (void)epoll_ctl(a->epfd, EPOLL_CTL_DEL, s->rcvfd, NULL);
    (void)nn_close(s->sock);
    s->sock = -1;
}

void async_free(struct tq_async *a)
{
    if (a == NULL)
        return;
    for (int i = 0; i < a->n_slots; i++) {
        slot_close(a, &a->slots[i]);
        free(a->slots[i].req);
    }
    free(a->slots);
    close(a->epfd);
    free(a);
}

static struct tq_async *async_get(tq_client *c, tq_status *st)
{
    if (c->async != NULL)
        return c->async;
    struct tq_async *a = calloc(1, sizeof *a);
    if (a == NULL) {
        status_set(st, TQ_E_TRANSPORT, "out of memory");
        return NULL;
    }
    a->epfd = epoll_create1(EPOLL_CLOEXEC);
    a->slots = calloc((size_t)c->max_inflight, sizeof *a->slots);
    if (a->epfd < 0 || a->slots == NULL) {
        status_set(st, TQ_E_TRANSPORT, "cannot set up asynchronous calls: %s",
                   a->epfd < 0 ? strerror(errno) : "out of memory");
        if (a->epfd >= 0)
            close(a->epfd);
        free(a->slots);
        free(a);
        return NULL;
    }
    a->n_slots = c->max_inflight;
    for (int i = 0; i < a->n_slots; i++)
        a->slots[i].sock = -1;
    a->next_due = INT64_MAX;
    c->async = a;
    return a;
}

/* Open slot i's socket to endpoint ep and watch its receive fd. */
static int slot_open(tq_client *c, struct tq_async *a, int i, size_t ep, tq_status *st)
{
    struct slot *s = &a->slots[i];
    const char *url = c->eps[ep].url;
    int sock = nn_socket(AF_SP_RAW, NN_REQ);
    if (sock < 0)
        return status_set(st, TQ_E_TRANSPORT, "endpoint %s: cannot create socket: %s", url,
                          nn_strerror(nn_errno()));
    int fd;
    size_t sz = sizeof fd;
    if (setopt_int(sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, TQ_RCVMAXSIZE) < 0 ||
        nn_connect(sock, url) < 0 ||
        nn_getsockopt(sock, NN_SOL_SOCKET, NN_RCVFD, &fd, &sz) < 0) {
        int e = nn_errno();
        (void)nn_close(sock);
        return status_set(st, TQ_E_TRANSPORT, "endpoint %s: %s", url, nn_strerror(e));
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        (void)nn_close(sock);
        return status_set(st, TQ_E_TRANSPORT, "endpoint %s: epoll: %s", url, strerror(e));
    }
    s->sock = sock;
    s->rcvfd = fd;
    s->ep = ep;
    return 0;
}

static void note_due(struct tq_async *a, int64_t t)
{
    if (t < a->next_due)
        a->next_due = t;
}

/* Send the slot's request as a new attempt's (fresh id).  Without a
 * connection yet, the slot waits in SENDING.  Returns 0, or -1 with st set
 * if the socket failed (it is closed). */
static int slot_send(struct tq_async *a, struct slot *s, int64_t now, tq_status *st)
{
    s->id = next_request_id(&a->next_id);
    s->broken = nn_get_statistic(s->sock, NN_STAT_BROKEN_CONNECTIONS);
    if (raw_send(s->sock, s->req, s->req_len, s->id, NN_DONTWAIT) >= 0) {
        s->state = SLOT_WAITING;
        s->due = now + TQ_BROKEN_CHECK_MS;
        note_due(a, s->due < s->deadline ? s->due : s->deadline);
        return 0;
    }
    int e = nn_errno();
    if (e == EAGAIN || e == EINTR) {
        /* no connection (yet): try again shortly, until the deadline */
        if (s->send_pause_ms == 0)
            s->send_pause_ms = 1;
        else if (s->send_pause_ms < SEND_RETRY_MAX_MS)
            s->send_pause_ms *= 2;
        s->state = SLOT_SENDING;
        s->due = now + s->send_pause_ms;
        note_due(a, s->due < s->deadline ? s->due : s->deadline);
        return 0;
    }
    return status_set(st, TQ_E_TRANSPORT, "send failed: %s", nn_strerror(e));
}

/* End slot's call: free the slot, then run the callback (which may start a
 * new call, in this very slot). */
static void slot_finish(struct tq_async *a, struct slot *s, const tq_status *st,
                        const char *result, bool replayed)
{
    tq_callback cb = s->cb;
    void *arg = s->arg;
    if (s->moved) {
        slot_close(a, s);
        s->moved = false;
    }
    s->state = SLOT_FREE;
    s->cb = NULL;
    s->arg = NULL;
    a->inflight--;
    cb(arg, st, result, replayed);
}

/* The current attempt failed with st: retry after a pause if the error
 * allows and attempts are left, else end the call with it.  The callback
 * runs from run_timers, never from here: tq_call_async does not call back. */
static void slot_failed(struct tq_async *a, struct slot *s, const tq_status *st, int64_t now)
{
    if (st->retryable && s->attempt < s->attempts) {
        s->state = SLOT_BACKOFF;
        s->due = now + backoff_ms(s->attempt);
    } else {
        s->state = SLOT_FAILED;
        s->fail = *st;
        s->due = now;
    }
    note_due(a, s->due);
}

/* Start the next attempt of slot i's call (first or retry), on the
 * tenant's best endpoint that is up. */
static void slot_attempt(tq_client *c, struct tq_async *a, int i, int64_t now)
{
    struct slot *s = &a->slots[i];
    tq_status st;
    size_t ep = endpoint_pick(c, s->order);
    if (ep != s->ep) {
        slot_close(a, s);
        s->moved |= s->attempt > 0; /* a retry going elsewhere */
        s->ep = ep;
    }
    s->attempt++;
    s->broke = 0;
    s->deadline = now + s->timeout_ms;
    s->state = SLOT_SENDING;
    s->sending_since = now;
    s->send_pause_ms = 0; /* a send without connection starts pausing at 1 ms */
    if ((s->sock < 0 && slot_open(c, a, i, s->ep, &st) < 0) ||
        slot_send(a, s, now, &st) < 0) {
        slot_close(a, s);
        slot_failed(a, s, &st, now);
    }
}

int tq_fd(tq_client *c, tq_status *st)
{
    if (c == NULL)
        return status_set(st, TQ_E_USAGE, "client handle is NULL");
    struct tq_async *a = async_get(c, st);
    if (a == NULL)
        return -1;
    status_ok(st);
    return a->epfd;
}

int tq_inflight(const tq_client *c)
{
    return c != NULL && c->async != NULL ? c->async->inflight : 0;
}

int tq_set_max_inflight(tq_client *c, int n)
{
    if (c == NULL || n < 1 || n > TQ_MAX_INFLIGHT || tq_inflight(c) > 0)
        return -1;
    struct tq_async *a = c->async;
    if (a != NULL && n < a->n_slots) {
        /* the array keeps its size; the slots beyond n are closed */
        for (int i = n; i < a->n_slots; i++) {
            slot_close(a, &a->slots[i]);
            free(a->slots[i].req);
        }
        a->n_slots = n;
    } else if (a != NULL && n > a->n_slots) {
        struct slot *ns = realloc(a->slots, (size_t)n * sizeof *ns);
        if (ns == NULL)
            return -1; /* nothing changed */
        for (int i = a->n_slots; i < n; i++)
            ns[i] = (struct slot){.sock = -1};
        a->slots = ns;
        a->n_slots = n;
    }
    c->max_inflight = n;
    return 0;
}

/* A free slot for endpoint ep: one already connected there, else a closed
 * one, else one connected elsewhere (closed first).  -1 if none is free. */
static int slot_pick(struct tq_async *a, size_t ep)
{
    int closed = -1, other = -1;
    for (int i = 0; i < a->n_slots; i++) {
        struct slot *s = &a->slots[i];
        if (s->state != SLOT_FREE)
            continue;
        if (s->sock >= 0 && s->ep == ep)
            return i;
        if (s->sock < 0 && closed < 0)
            closed = i;
        else if (s->sock >= 0 && other < 0)
            other = i;
    }
    if (closed >= 0)
        return closed;
    if (other >= 0)
        slot_close(a, &a->slots[other]);
    return other;
}

int tq_call_async(tq_client *c, const char *tenant, const char *op, const char *args_json,
                  const tq_call_opts *opts, tq_callback cb, void *arg, tq_status *st)
{
    if (cb == NULL)
        return status_set(st, TQ_E_USAGE, "callback is NULL");
    if (encode_call(c, tenant, op, args_json, opts, st) < 0)
        return -1;
    struct tq_async *a = async_get(c, st);
    if (a == NULL)
        return -1;
    uint8_t order[TQ_MAX_ENDPOINTS];
    endpoint_order(c, tenant, order);
    size_t ep = endpoint_pick(c, order);
    int i = slot_pick(a, ep);
    if (i < 0)
        return status_set(st, TQ_E_QUEUE_FULL, "%d calls already in flight on this client "
                          "(tq_set_max_inflight)", a->n_slots);
    struct slot *s = &a->slots[i];
    if (s->sock < 0 && slot_open(c, a, i, ep, st) < 0)
        return -1;
    if (s->req_cap < c->sb.size) {
        unsigned char *r = realloc(s->req, c->sb.size);
        if (r == NULL)
            return status_set(st, TQ_E_TRANSPORT, "out of memory");
        s->req = r;
        s->req_cap = c->sb.size;
    }
    memcpy(s->req, c->sb.data, c->sb.size);
    s->req_len = c->sb.size;
    memcpy(s->order, order, c->n_eps);
    s->timeout_ms = call_timeout_ms(c, opts);
    s->attempts = call_attempts(c, opts);
    s->attempt = 0;
    s->cb = cb;
    s->arg = arg;
    a->inflight++;
    /* From here on the outcome goes to the callback, even a failure of the
     * first send. */
    slot_attempt(c, a, i, now_ms());
    status_ok(st);
    return 0;
}

int tq_next_timeout_ms(const tq_client *c)
{
    if (c == NULL || c->async == NULL || c->async->inflight == 0)
        return -1;
    int64_t left = c->async->next_due - now_ms();
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Take every queued message off slot i's socket; the one answering the
 * current attempt ends it. */
static int slot_receive(tq_client *c, struct tq_async *a, int i)
{
    struct slot *s = &a->slots[i];
    int done = 0;
    while (s->sock >= 0) {
        void *body;
        uint32_t id;
        int n = raw_recv(s->sock, NN_DONTWAIT, &body, &id);
        if (n < 0) {
            int e = nn_errno();
            if (e == EAGAIN || e == EINTR)
                break;
            /* the socket is broken: whatever was in flight on it is lost */
            tq_status st;
            status_set(&st, TQ_E_TIMEOUT, "endpoint %s: receive failed: %s (outcome unknown)",
                       c->eps[s->ep].url, nn_strerror(e));
            slot_close(a, s);
            if (s->state == SLOT_WAITING || s->state == SLOT_SENDING)
                slot_failed(a, s, &st, now_ms());
            break;
        }
        if (s->state == SLOT_WAITING && id == s->id) {
            tq_status st;
            char *result = NULL;
            bool replayed = false;
            if (reply_result(&c->eps[s->ep], body, (size_t)n, &result, &replayed, &st) == 0) {
                slot_finish(a, s, &st, result, replayed);
                done++;
            } else {
                slot_failed(a, s, &st, now_ms());
            }
            free(result);
        }
        nn_freemsg(body);
    }
    return done;
}

/* Slot i's request has found no connection since sending_since: after
 * failover_wait_ms, if its socket has none at all, mark the endpoint down and
 * move the slot to the tenant's next endpoint that is up (client.c,
 * exchange: the same rule for tq_call).  0, or -1 with st set if no socket
 * could be opened there. */
static int failover(tq_client *c, struct tq_async *a, int i, int64_t now, tq_status *st)
{
    struct slot *s = &a->slots[i];
    if (now - s->sending_since < failover_wait_ms(s->timeout_ms) ||
        !endpoint_mark_down(c, s->ep, s->sock))
        return 0;
    size_t ep = endpoint_pick(c, s->order);
    if (ep == s->ep)
        return 0; /* every endpoint is down: keep waiting here */
    slot_close(a, s); /* nothing of this call is on it */
    s->moved = true;
    s->sending_since = now;
    s->send_pause_ms = 0;
    return slot_open(c, a, i, ep, st);
}

/* Act on the slots whose timers have come; recompute next_due. */
static int run_timers(tq_client *c, struct tq_async *a, int64_t now)
{
    int done = 0;
    a->next_due = INT64_MAX;
    for (int i = 0; i < a->n_slots; i++) {
        struct slot *s = &a->slots[i];
        switch (s->state) {
        case SLOT_FREE:
            break;
        case SLOT_SENDING:
        case SLOT_WAITING:
            if (now >= s->deadline) {
                tq_status st;
                if (s->state == SLOT_SENDING && s->broke > 0)
                    reply_lost(&st, c->eps[s->ep].url, s->broke, s->timeout_ms);
                else
                    status_set(&st, TQ_E_TIMEOUT, s->state == SLOT_SENDING
                               ? "endpoint %s: could not send within %d ms"
                               : "endpoint %s: no reply within %d ms (outcome unknown)",
                               c->eps[s->ep].url, s->timeout_ms);
                if (s->state == SLOT_SENDING) /* the next call goes elsewhere */
                    (void)endpoint_mark_down(c, s->ep, s->sock);
                /* a late reply must not arrive on a socket we reuse */
                slot_close(a, s);
                slot_failed(a, s, &st, now);
            } else if (now >= s->due &&
                       (s->state == SLOT_SENDING ||
                        nn_get_statistic(s->sock, NN_STAT_BROKEN_CONNECTIONS) != s->broken)) {
                /* a send that found no connection, or a request whose
                 * connection broke: (again) once one is there */
                tq_status st;
                if (s->state == SLOT_WAITING && ++s->broke >= TQ_BROKEN_REPLIES) {
                    reply_lost(&st, c->eps[s->ep].url, s->broke, s->timeout_ms);
                    slot_close(a, s);
                    slot_failed(a, s, &st, now);
                    break;
                }
                if (s->state == SLOT_WAITING)
                    s->sending_since = now;
                else if (failover(c, a, i, now, &st) < 0) {
                    slot_close(a, s);
                    slot_failed(a, s, &st, now);
                    break;
                }
                if (slot_send(a, s, now, &st) < 0) {
                    slot_close(a, s);
                    slot_failed(a, s, &st, now);
                }
            } else {
                if (now >= s->due)
                    s->due = now + TQ_BROKEN_CHECK_MS;
                note_due(a, s->due < s->deadline ? s->due : s->deadline);
            }
            break;
        case SLOT_BACKOFF:
            if (now >= s->due)
                slot_attempt(c, a, i, now);
            else
                note_due(a, s->due);
            break;
        case SLOT_FAILED: {
            tq_status st = s->fail; /* the callback may reuse the slot */
            slot_finish(a, s, &st, NULL, false);
            done++;
            break;
        }
        }
    }
    return done;
}

int tq_dispatch(tq_client *c)
{
    if (c == NULL || c->async == NULL)
        return 0;
    struct tq_async *a = c->async;
    int done = 0;
    struct epoll_event evs[EPOLL_BATCH];
    int n;
    do {
        n = epoll_wait(a->epfd, evs, EPOLL_BATCH, 0);
        for (int k = 0; k < n; k++) {
            uint32_t i = evs[k].data.u32;
            if (i < (uint32_t)a->n_slots)
                done += slot_receive(c, a, (int)i);
        }
    } while (n == EPOLL_BATCH);
    /* Calls that failed during a pass end in the next; a few passes, so
     * that callbacks starting calls that fail at once cannot keep us here. */
    int64_t now = now_ms();
    for (int pass = 0; pass < 4 && now >= a->next_due; pass++)
        done += run_timers(c, a, now);
    return done;
}
