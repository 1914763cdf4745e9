/*
 * client.c - libtenantq: synchronous calls to tenantqd over nanomsg REQ.
 *
 * Implements client/tenantq.h on top of the shared codec (proto/tq_proto.h).
 * Not thread-safe per handle (see tenantq.h); there is no global mutable
 * state, so separate handles may be used from separate threads.  Never calls
 * nn_term(): that would close every nanomsg socket of the host process.
 *
 * Several endpoints ("ipc:///a.sock,tcp://10.0.0.2:5555"): a tenant always
 * goes to the same endpoint by rendezvous hashing: for each endpoint the
 * score is
 *     fmix64(FNV-1a-64(endpoint || 0x00 || tenant))
 * (fmix64 is the MurmurHash3 64-bit finalizer, added because FNV-1a alone
 * mixes the last bytes poorly into the high bits) and the highest score wins,
 * ties going to the endpoint listed first.  The choice depends only on the
 * endpoint strings and the tenant, never on list order or on the process, so
 * every client with the same endpoint set agrees, and removing an endpoint
 * moves only that endpoint's tenants.
 *
 * Failover: the tenant's endpoints in score order are its preference list.
 * A request that finds no connection to its endpoint for TQ_FAILOVER_MS
 * (250 ms, or half its timeout if less), while the socket confirms it has
 * none at all, marks that endpoint down and
 * goes to the next one that is up (exchange(), and async.c's failover()).
 * A down endpoint gets a probe: a socket connected there that never sends,
 * which nanomsg keeps reconnecting; its first connection marks the endpoint
 * up again and its tenants return to it.  A daemon that is connected but
 * slow or hung is not down: its calls time out as before.  With one
 * endpoint nothing is ever marked down.
 *
 * Sockets: one raw REQ socket per endpoint for the synchronous calls, opened
 * on first use, with our own request ids in the SP header (exchange(): why
 * raw, and how a broken connection is re-sent).  A call that times out or
 * fails closes its socket, so an abandoned request's late reply cannot
 * answer the next call.  A reconnect during a call may deliver a request
 * twice: use an idempotency key for edits (tq_call does, automatically).
 */
#include "tenantq.h"

#include <errno.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <jansson.h>
#include <msgpack.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "client_int.h"
#include "jdump.h"
#include "jparse.h"
#include "tq_proto.h"
#include "tq_sp.h"

int status_set(tq_status *st, tq_code code, const char *fmt, ...)
{
    if (st == NULL)
        return -1;
    st->code = code;
    st->retryable = tq_code_retryable(code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof st->message, fmt, ap);
    va_end(ap);
    return -1;
}

void status_ok(tq_status *st)
{
    if (st == NULL)
        return;
    st->code = TQ_OK;
    st->retryable = false;
    st->message[0] = '\0';
}

static uint64_t fnv1a64(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    k *= UINT64_C(0xc4ceb9fe1a85ec53);
    k ^= k >> 33;
    return k;
}

/* Rendezvous score of (endpoint, tenant); see the top of this file. */
static uint64_t rendezvous_score(const char *url, const char *tenant)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    h = fnv1a64(h, url, strlen(url));
    h = fnv1a64(h, "", 1);
    h = fnv1a64(h, tenant, strlen(tenant));
    return fmix64(h);
}

void endpoint_order(const tq_client *c, const char *tenant, uint8_t *order)
{
    uint64_t score[TQ_MAX_ENDPOINTS];
    /* insertion sort, best score first; ties keep list order */
    for (size_t i = 0; i < c->n_eps; i++) {
        uint64_t s = tenant != NULL ? rendezvous_score(c->eps[i].url, tenant) : 0;
        size_t j = i;
        for (; j > 0 && score[j - 1] < s; j--) {
            score[j] = score[j - 1];
            order[j] = order[j - 1];
        }
        score[j] = s;
        order[j] = (uint8_t)i;
    }
}

static void endpoint_close(struct tq_endpoint *ep)
{
    if (ep->sock >= 0) {
        /* Errors only mean the socket is already gone. */
        (void)nn_close(ep->sock);
        ep->sock = -1;
    }
}

static bool sock_unconnected(int sock)
{
    return nn_get_statistic(sock, NN_STAT_CURRENT_CONNECTIONS) == 0;
}

/* Down: marked so, and its probe has not connected since. */
static bool endpoint_down(struct tq_endpoint *ep)
{
    if (ep->probe < 0)
        return false;
    if (sock_unconnected(ep->probe))
        return true;
    (void)nn_close(ep->probe); /* back up */
    ep->probe = -1;
    return false;
}

size_t endpoint_pick(tq_client *c, const uint8_t *order)
{
    for (size_t k = 0; k < c->n_eps; k++)
        if (!endpoint_down(&c->eps[order[k]]))
            return order[k];
    return order[0];
}

bool endpoint_mark_down(tq_client *c, size_t i, int sock)
{
    struct tq_endpoint *ep = &c->eps[i];
    if (c->n_eps < 2 || !sock_unconnected(sock))
        return false;
    if (ep->probe >= 0)
        return true; /* already down */
    /* The probe never sends: nanomsg keeps reconnecting it in the
     * background, and its first connection says the endpoint is back.  If
     * it cannot be made the endpoint is simply not marked down. */
    int s = nn_socket(AF_SP_RAW, NN_REQ);
    if (s < 0)
        return false;
    if (nn_connect(s, ep->url) < 0) {
        (void)nn_close(s);
        return false;
    }
    ep->probe = s;
    return true;
}

/* Whether v holds more than levels nested maps/arrays (v itself counts). */
static bool nests_deeper(json_t *v, int levels)
{
    if (!json_is_object(v) && !json_is_array(v))
        return false;
    if (levels == 0)
        return true;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (nests_deeper(json_array_get(v, i), levels - 1))
                return true;
        return false;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
        if (nests_deeper(x, levels - 1))
            return true;
    return false;
}

/* HOST:PORT of a tcp:// or ws:// endpoint: a host and a port 1..65535 (a
 * ws:// path after the port is allowed).  nanomsg would refuse anything else
 * only when connecting, as a transport error. */
static bool valid_host_port(const char *hp)
{
    const char *slash = strchr(hp, '/');
    size_t n = slash ? (size_t)(slash - hp) : strlen(hp);
    const char *colon = memrchr(hp, ':', n);
    if (colon == NULL || colon == hp)
        return false;
    const char *port = colon + 1, *end = hp + n;
    if (port == end || end - port > 5)
        return false;
    unsigned v = 0;
    for (const char *q = port; q < end; q++) {
        if (*q < '0' || *q > '9')
            return false;
        v = v * 10 + (unsigned)(*q - '0');
    }
    return v >= 1 && v <= 65535;
}

static bool valid_endpoint_syntax(const char *url)
{
    static const char *const schemes[] = {"ipc://", "tcp://", "inproc://", "ws://"};
    size_t len = strlen(url);
    if (len == 0 || len >= NN_SOCKADDR_MAX)
        return false;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t sl = strlen(schemes[i]);
        if (len > sl && strncmp(url, schemes[i], sl) == 0)
            return (i != 1 && i != 3) || valid_host_port(url + sl);
    }
    return false;
}

int setopt_int(int sock, int level, int opt, int value)
{
    return nn_setsockopt(sock, level, opt, &value, sizeof value);
}

/* Open ep's socket if it is not open.  Returns 0 or -1 with st set. */
static int endpoint_open(struct tq_endpoint *ep, tq_status *st)
{
    if (ep->sock >= 0)
        return 0;
    int s = nn_socket(AF_SP_RAW, NN_REQ);
    if (s < 0)
        return status_set(st, TQ_E_TRANSPORT, "endpoint %s: cannot create socket: %s",
                          ep->url, nn_strerror(nn_errno()));
    if (setopt_int(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, TQ_RCVMAXSIZE) < 0)
        goto fail;
    if (nn_connect(s, ep->url) < 0)
        goto fail;
    ep->sock = s;
    ep->snd_ms = ep->rcv_ms = -1;
    return 0;
fail:;
    int e = nn_errno();
    (void)nn_close(s);
    return status_set(st, TQ_E_TRANSPORT, "endpoint %s: %s", ep->url, nn_strerror(e));
}

/* Set the socket option opt (NN_SNDTIMEO, NN_RCVTIMEO) to ms unless it is
 * already (*cached). */
static int endpoint_timeout(struct tq_endpoint *ep, int opt, int *cached, int ms)
{
    if (*cached == ms)
        return 0;
    if (setopt_int(ep->sock, NN_SOL_SOCKET, opt, ms) < 0)
        return -1;
    *cached = ms;
    return 0;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint32_t next_request_id(uint32_t *counter)
{
    return UINT32_C(0x80000000) | ((*counter)++ & UINT32_C(0x7fffffff));
}

int raw_send(int sock, const void *body, size_t len, uint32_t id, int flags)
{
    unsigned char hdr[4] = {(unsigned char)(id >> 24), (unsigned char)(id >> 16),
                            (unsigned char)(id >> 8), (unsigned char)id};
    alignas(max_align_t) unsigned char ctrl[TQ_SP_CTRL_SPACE];
    struct nn_iovec iov = {.iov_base = (void *)(uintptr_t)body, .iov_len = len};
    struct nn_msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl,
                           .msg_controllen = tq_sp_reply_ctrl(ctrl, hdr, sizeof hdr)};
    return nn_sendmsg(sock, &mh, flags);
}

int raw_recv(int sock, int flags, void **body, uint32_t *id)
{
    void *control = NULL;
    *body = NULL;
    *id = 0;
    struct nn_iovec iov = {.iov_base = body, .iov_len = NN_MSG};
    struct nn_msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                           .msg_controllen = NN_MSG};
    int n = nn_recvmsg(sock, &mh, flags);
    if (n < 0)
        return n;
    const unsigned char *hdr = NULL;
    if (tq_sp_header(&mh, &hdr) == 4)
        *id = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    if (control != NULL)
        nn_freemsg(control);
    return n;
}

/*
 * One request/reply exchange.  order lists the endpoints to use, best first
 * (endpoint_order).  On success returns 0, *reply is a nanomsg message the
 * caller frees with nn_freemsg and *used the endpoint that answered.  On any
 * failure the socket is closed (to be reopened by the next call) and -1
 * returned with st set: TQ_E_TIMEOUT if the request may have been
 * delivered, TQ_E_TRANSPORT if the socket could not be opened.
 *
 * A raw REQ socket with our own request id (as tq_call_async): it never
 * re-sends on its own, and closing it after a timeout leaves no request
 * state behind in nanomsg.  What cooked REQ did usefully, re-sending a
 * request whose connection broke (a daemon restart), is done here: the wait
 * looks every TQ_BROKEN_CHECK_MS whether the socket counted a broken connection
 * since the send, and if so sends the same bytes again (a new id) once a
 * connection is back.  The daemon may then see a request twice: edits carry
 * an idempotency key.
 *
 * Failover, with several endpoints: a send waits for a connection at most
 * failover_wait_ms() at a time.  If its endpoint then has no connection at
 * all, the endpoint is marked down and the request goes to the next endpoint
 * in order that is up (when none is, it keeps waiting where it is; a call
 * that runs out of time so also marks its endpoint down).  A request
 * not yet sent cannot be delivered twice; one whose connection broke is sent
 * again this way too, and its key makes that harmless, since the daemons of
 * one deployment share the database's idempotency records.
 */
int reply_lost(tq_status *st, const char *url, int times, int timeout_ms)
{
    if (times >= TQ_BROKEN_REPLIES)
        return status_set(st, TQ_E_TRANSPORT,
                          "endpoint %s: the connection broke each time the reply was due (%d "
                          "times): the reply most likely exceeds this client's receive limit of "
                          "%d bytes, over which nanomsg drops the connection (outcome unknown)",
                          url, times, TQ_RCVMAXSIZE);
    return status_set(st, TQ_E_TIMEOUT,
                      "endpoint %s: the connection broke while the reply was due and none came "
                      "back within %d ms: the reply may exceed this client's receive limit of %d "
                      "bytes, over which nanomsg drops the connection, or the daemon went away "
                      "(outcome unknown)",
                      url, timeout_ms, TQ_RCVMAXSIZE);
}

static int exchange(tq_client *c, const uint8_t *order, const void *req, size_t req_len,
                    int timeout_ms, void **reply, size_t *reply_len,
                    const struct tq_endpoint **used, tq_status *st)
{
    int64_t deadline = now_ms() + timeout_ms;
    const char *what = "no reply";
    int e = ETIMEDOUT;
    int wait_ms = failover_wait_ms(timeout_ms);
    int broke = 0; /* deliveries in a row whose connection broke before the reply */
    struct tq_endpoint *ep;
    for (;;) { /* one delivery of the request per turn */
        size_t i = endpoint_pick(c, order);
        ep = &c->eps[i];
        if (endpoint_open(ep, st) < 0)
            return -1;
        uint64_t broken = nn_get_statistic(ep->sock, NN_STAT_BROKEN_CONNECTIONS);
        uint32_t id = next_request_id(&ep->next_id);
        /* without a connection (yet) the send waits for one */
        int sent;
        bool moved = false;
        for (;;) {
            int64_t left = deadline - now_ms();
            if (left < 1) {
                e = ETIMEDOUT;
                sent = -1;
                break;
            }
            bool slice = c->n_eps > 1 && left > wait_ms;
            if (endpoint_timeout(ep, NN_SNDTIMEO, &ep->snd_ms, slice ? wait_ms : (int)left) < 0) {
                e = nn_errno();
                sent = -1;
                break;
            }
            sent = raw_send(ep->sock, req, req_len, id, 0);
            if (sent >= 0)
                break;
            e = nn_errno();
            if (e == EINTR)
                continue;
            if (!slice || (e != EAGAIN && e != ETIMEDOUT))
                break;
            if (endpoint_mark_down(c, i, ep->sock) && endpoint_pick(c, order) != i) {
                moved = true;
                break;
            }
        }
        if (moved) {
            endpoint_close(ep); /* nothing of this call is on it */
            continue;
        }
        if (sent < 0) {
            bool timed_out = e == EAGAIN || e == ETIMEDOUT || e == EINTR;
            if (timed_out)
                (void)endpoint_mark_down(c, i, ep->sock); /* the next call goes elsewhere */
            endpoint_close(ep);
            if (timed_out && broke > 0)
                return reply_lost(st, ep->url, broke, timeout_ms);
            if (timed_out)
                return status_set(st, TQ_E_TIMEOUT, "endpoint %s: could not send within %d ms",
                                  ep->url, timeout_ms);
            return status_set(st, TQ_E_TRANSPORT, "endpoint %s: send failed: %s", ep->url,
                              nn_strerror(e));
        }
        bool resend = false;
        while (!resend) {
            int64_t left = deadline - now_ms();
            if (left < 1) {
                e = ETIMEDOUT;
                goto failed;
            }
            int slice = left < TQ_BROKEN_CHECK_MS ? (int)left : TQ_BROKEN_CHECK_MS;
            if (endpoint_timeout(ep, NN_RCVTIMEO, &ep->rcv_ms, slice) < 0) {
                e = nn_errno();
                goto failed;
            }
            void *buf;
            uint32_t rid;
            int n = raw_recv(ep->sock, 0, &buf, &rid);
            if (n >= 0) {
                if (rid == id) {
                    *reply = buf;
                    *reply_len = (size_t)n;
                    *used = ep;
                    return 0;
                }
                nn_freemsg(buf); /* not this request's: an earlier delivery's */
                continue;
            }
            e = nn_errno();
            /* A signal interrupts the wait but not the request: keep waiting
             * for its reply until the deadline, like SA_RESTART would. */
            if (e != EINTR && e != ETIMEDOUT && e != EAGAIN) {
                what = "receive failed";
                goto failed;
            }
            resend = nn_get_statistic(ep->sock, NN_STAT_BROKEN_CONNECTIONS) != broken;
        }
        if (++broke >= TQ_BROKEN_REPLIES) {
            endpoint_close(ep);
            return reply_lost(st, ep->url, broke, timeout_ms);
        }
    }
failed:
    endpoint_close(ep);
    if (e == ETIMEDOUT || e == EAGAIN || e == EINTR)
        return status_set(st, TQ_E_TIMEOUT, "endpoint %s: %s within %d ms (outcome unknown)",
                          ep->url, what, timeout_ms);
    return status_set(st, TQ_E_TIMEOUT, "endpoint %s: %s after up to %d ms: %s "
                      "(outcome unknown)", ep->url, what, timeout_ms, nn_strerror(e));
}

tq_client *tq_connect(const char *endpoint, tq_status *st)
{
    if (endpoint == NULL) {
        status_set(st, TQ_E_USAGE, "endpoint is NULL");
        return NULL;
    }
    tq_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        goto oom;
    c->timeout_ms = TQ_DEFAULT_TIMEOUT_MS;
    c->attempts = 1;
    c->max_inflight = TQ_DEFAULT_MAX_INFLIGHT;
    msgpack_sbuffer_init(&c->sb);

    size_t cap = 1;
    for (const char *p = endpoint; *p; p++)
        cap += *p == ',';
    if (cap > TQ_MAX_ENDPOINTS) {
        status_set(st, TQ_E_USAGE, "%zu endpoints in \"%.100s...\": at most %d", cap, endpoint,
                   TQ_MAX_ENDPOINTS);
        tq_close(c);
        return NULL;
    }
    c->eps = calloc(cap, sizeof *c->eps);
    if (c->eps == NULL)
        goto oom;

    const char *p = endpoint;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        /* Tolerate blanks around the commas ("a, b"). */
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        char *url = strndup(p, (size_t)(end - p));
        if (url == NULL)
            goto oom;
        if (!valid_endpoint_syntax(url)) {
            status_set(st, TQ_E_USAGE,
                       "invalid endpoint \"%s\" in \"%s\": expected ipc://PATH, "
                       "tcp://HOST:PORT, inproc://NAME or ws://HOST:PORT, under %d bytes",
                       url, endpoint, NN_SOCKADDR_MAX);
            free(url);
            tq_close(c);
            return NULL;
        }
        c->eps[c->n_eps].url = url;
        c->eps[c->n_eps].sock = -1;
        c->eps[c->n_eps].probe = -1;
        c->n_eps++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    status_ok(st);
    return c;
oom:
    tq_close(c);
    status_set(st, TQ_E_TRANSPORT, "out of memory");
    return NULL;
}

static void clear_auth(tq_client *c)
{
    if (c->auth != NULL) {
        explicit_bzero(c->auth, c->auth_len);
        free(c->auth);
    }
    c->auth = NULL;
    c->auth_len = 0;
}

int tq_set_auth(tq_client *c, const char *token, tq_status *st)
{
    if (c == NULL)
        return status_set(st, TQ_E_USAGE, "client handle is NULL");
    if (token == NULL) {
        clear_auth(c);
        status_ok(st);
        return 0;
    }
    size_t n = strlen(token);
    if (!tq_auth_valid(token, n))
        return status_set(st, TQ_E_USAGE,
                          "auth token: must be 1..%d bytes of UTF-8 without control "
                          "characters, got %zu bytes",
                          TQ_MAX_AUTH_BYTES, n);
    char *copy = strdup(token);
    if (copy == NULL)
        return status_set(st, TQ_E_USAGE, "auth token: out of memory");
    clear_auth(c);
    c->auth = copy;
    c->auth_len = n;
    status_ok(st);
    return 0;
}

void tq_close(tq_client *c)
{
    if (c == NULL)
        return;
    async_free(c->async);
    for (size_t i = 0; i < c->n_eps; i++) {
        endpoint_close(&c->eps[i]);
        if (c->eps[i].probe >= 0)
            (void)nn_close(c->eps[i].probe);
        free(c->eps[i].url);
    }
    free(c->eps);
    msgpack_sbuffer_destroy(&c->sb);
    clear_auth(c);
    free(c);
}

void tq_set_timeout(tq_client *c, int timeout_ms)
{
    if (c != NULL)
        c->timeout_ms = timeout_ms > 0 ? timeout_ms : TQ_DEFAULT_TIMEOUT_MS;
}

void tq_set_retries(tq_client *c, int attempts)
{
    if (c != NULL)
        c->attempts = attempts >= 1 ? (attempts > 100 ? 100 : attempts) : 1;
}

/* Ops that change state get an idempotency key when the caller gave none, so
 * that our own retries and re-sends after a broken connection take effect
 * once. */
static bool op_changes_state(const char *op)
{
    return strcmp(op, "ping") != 0 && strcmp(op, "draft.get") != 0 &&
           strcmp(op, "draft.check") != 0;
}

/* "auto-", 12 hex digits of the wall clock in milliseconds, 20 random hex
 * digits (80 bits: unique however many calls share a millisecond).  Keys
 * that grow with time put a tenant's idempotency records at the end of its
 * range of the daemon's primary-key index (tenant, key) instead of on a
 * random leaf page: with a day of records (idempotency_ttl_s) that index
 * outgrows the server's buffers, and random inserts then cost it a read. */
static int make_key(char out[40])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[10];
    struct timespec now;
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd ||
        clock_gettime(CLOCK_REALTIME, &now) < 0)
        return -1;
    uint64_t ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    memcpy(out, "auto-", 5);
    char *p = out + 5;
    for (int shift = 44; shift >= 0; shift -= 4)
        *p++ = hex[(ms >> shift) & 15];
    for (size_t i = 0; i < sizeof rnd; i++) {
        *p++ = hex[rnd[i] >> 4];
        *p++ = hex[rnd[i] & 15];
    }
    *p = '\0';
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

bool tq_last_replayed(const tq_client *c)
{
    return c != NULL && c->last_replayed;
}

static const char *json_type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

int encode_call(tq_client *c, const char *tenant, const char *op, const char *args_json,
                const tq_call_opts *opts, tq_status *st)
{
    if (c == NULL)
        return status_set(st, TQ_E_USAGE, "client handle is NULL");
    if (tenant == NULL)
        return status_set(st, TQ_E_USAGE, "tenant is NULL");
    if (op == NULL)
        return status_set(st, TQ_E_USAGE, "op is NULL");

    json_t *args = NULL;
    if (args_json != NULL) {
        /* jparse: a quarter of json_loads' time (tq_call's largest cost after
         * the transport); it refuses repeated keys as json_loads was asked to */
        char jerr[160];
        bool big = false;
        args = jparse_with(args_json, strlen(args_json), JPARSE_REJECT_DUPLICATES, &big, jerr,
                           sizeof jerr);
        if (args == NULL)
            return status_set(st, TQ_E_USAGE, "args: invalid JSON: %s", jerr);
        if (big) {
            json_decref(args);
            return status_set(st, TQ_E_USAGE,
                              "args: invalid JSON: an integer is beyond the 64-bit range");
        }
        if (!json_is_object(args)) {
            const char *what = json_type_name(args);
            json_decref(args);
            return status_set(st, TQ_E_USAGE, "args must be a JSON object, got %s", what);
        }
        /* the envelope map is level 1, args level 2 */
        if (nests_deeper(args, TQ_MAX_DEPTH - 1)) {
            json_decref(args);
            return status_set(st, TQ_E_USAGE,
                              "args nest deeper than %d levels of maps and arrays (the "
                              "protocol allows %d levels in all, the envelope included)",
                              TQ_MAX_DEPTH - 1, TQ_MAX_DEPTH);
        }
    }

    const char *key = opts ? opts->key : NULL;
    char auto_key[40];
    if (key == NULL && op_changes_state(op)) {
        if (make_key(auto_key) < 0) {
            json_decref(args);
            return status_set(st, TQ_E_USAGE, "cannot generate an idempotency key: %s",
                              strerror(errno));
        }
        key = auto_key;
    }
    uint64_t deadline_ms = opts ? opts->deadline_ms : 0;

    msgpack_sbuffer_clear(&c->sb);
    int rc = tq_request_encode_auth(&c->sb, tenant, op, args, key, deadline_ms, c->auth,
                                    c->auth_len);
    json_decref(args);
    if (rc < 0)
        return status_set(st, TQ_E_USAGE,
                          "cannot encode the request for tenant \"%s\" op \"%s\" "
                          "(args not representable or out of memory)", tenant, op);
    return 0;
}

int reply_result(const struct tq_endpoint *ep, const void *reply, size_t reply_len,
                 char **result_json, bool *replayed, tq_status *st)
{
    tq_response resp;
    tq_error err;
    if (tq_response_decode(reply, reply_len, &resp, &err) < 0)
        return status_set(st, TQ_E_PROTOCOL, "endpoint %s: invalid reply: %s", ep->url,
                          err.message);
    if (!resp.ok) {
        if (st != NULL) {
            st->code = resp.code;
            st->retryable = resp.retryable;
            snprintf(st->message, sizeof st->message, "%s", resp.message ? resp.message : "");
        }
        tq_response_free(&resp);
        return -1;
    }
    if (result_json != NULL) {
        *result_json = jdump(resp.result, 0, NULL); /* = json_dumps(.., COMPACT|ENCODE_ANY) */
        if (*result_json == NULL) {
            tq_response_free(&resp);
            return status_set(st, TQ_E_INTERNAL, "out of memory formatting the result");
        }
    }
    *replayed = resp.replayed;
    tq_response_free(&resp);
    status_ok(st);
    return 0;
}

int backoff_ms(int attempt)
{
    return 25 << (attempt < 6 ? attempt : 6);
}

int tq_call(tq_client *c, const char *tenant, const char *op, const char *args_json,
            const tq_call_opts *opts, char **result_json, tq_status *st)
{
    if (result_json != NULL)
        *result_json = NULL;
    if (encode_call(c, tenant, op, args_json, opts, st) < 0)
        return -1;
    int timeout_ms = call_timeout_ms(c, opts);
    uint8_t order[TQ_MAX_ENDPOINTS];
    endpoint_order(c, tenant, order);
    int attempts = call_attempts(c, opts);
    tq_status local;
    tq_status *s = st ? st : &local;
    for (int attempt = 1;; attempt++) {
        /* the same bytes, and so the same key, on every attempt */
        void *reply = NULL;
        size_t reply_len = 0;
        const struct tq_endpoint *ep = NULL;
        int rc = exchange(c, order, c->sb.data, c->sb.size, timeout_ms, &reply, &reply_len,
                          &ep, s);
        if (rc == 0) {
            rc = reply_result(ep, reply, reply_len, result_json, &c->last_replayed, s);
            nn_freemsg(reply);
            if (rc == 0)
                return 0;
        }
        if (attempt >= attempts || !s->retryable)
            return -1;
        sleep_ms(backoff_ms(attempt));
    }
}

int tq_call_raw(tq_client *c, const void *req, size_t req_len, void **reply,
                size_t *reply_len, int timeout_ms, tq_status *st)
{
    if (reply != NULL)
        *reply = NULL;
    if (reply_len != NULL)
        *reply_len = 0;
    if (c == NULL || reply == NULL || reply_len == NULL || (req == NULL && req_len > 0))
        return status_set(st, TQ_E_USAGE, "tq_call_raw: NULL argument");
    if (timeout_ms <= 0)
        timeout_ms = c->timeout_ms;

    /* No tenant to hash: raw calls go to the first endpoint listed that is up. */
    uint8_t order[TQ_MAX_ENDPOINTS];
    endpoint_order(c, NULL, order);
    const struct tq_endpoint *ep = NULL;
    void *msg = NULL;
    size_t len = 0;
    if (exchange(c, order, req == NULL ? "" : req, req_len, timeout_ms, &msg, &len, &ep, st) < 0)
        return -1;
    void *copy = malloc(len > 0 ? len : 1);
    if (copy == NULL) {
        nn_freemsg(msg);
        return status_set(st, TQ_E_INTERNAL, "out of memory copying a %zu-byte reply", len);
    }
    memcpy(copy, msg, len);
    nn_freemsg(msg);
    *reply = copy;
    *reply_len = len;
    status_ok(st);
    return 0;
}
