/*
 * client_int.h - libtenantq internals shared by client.c (handles,
 * synchronous calls) and async.c (asynchronous calls).  Not installed; none
 * of these symbols is exported (libtenantq.map).
 */
#ifndef TQ_CLIENT_INT_H
#define TQ_CLIENT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "tenantq.h"

#define TQ_DEFAULT_TIMEOUT_MS 15000
/* Bounded replies: the daemon's max_draft_bytes (1 MiB default) plus
 * envelope overhead fit easily; a larger announced size drops the
 * connection instead of allocating it (NN_RCVMAXSIZE). */
#define TQ_RCVMAXSIZE (8 * 1024 * 1024)
/* How often a call waiting for its reply looks whether the connection that
 * carried the request broke (a daemon restart): if so the request is sent
 * again once a connection is back, as cooked REQ would. */
#define TQ_BROKEN_CHECK_MS 100
/* Failover (several endpoints): a request that finds no connection to its
 * endpoint for this long (or half its timeout, if that is shorter) marks the
 * endpoint down, and the call moves on to the tenant's next endpoint in
 * rendezvous order (client.c). */
#define TQ_FAILOVER_MS 250
/* Endpoints one client may list (tq_connect). */
#define TQ_MAX_ENDPOINTS 64

struct tq_endpoint {
    char *url;      /* owned, NUL-terminated */
    int sock;       /* raw REQ socket of the synchronous calls, or -1 */
    int snd_ms, rcv_ms; /* NN_SNDTIMEO / NN_RCVTIMEO as last set, -1 unknown */
    uint32_t next_id; /* request ids of the synchronous calls */
    int probe;      /* while the endpoint is down: a raw REQ socket connected
                       there that never sends, to see it come back; else -1 */
};

struct tq_async; /* async.c: the asynchronous calls' sockets and slots */

struct tq_client {
    struct tq_endpoint *eps; /* owned array of n_eps */
    size_t n_eps;
    int timeout_ms;
    int attempts;            /* tries per call for retryable errors (>= 1) */
    int max_inflight;        /* asynchronous calls at once (tq_set_max_inflight) */
    bool last_replayed;
    msgpack_sbuffer sb;      /* request encoding buffer, reused per call */
    char *auth;              /* owned token sent as "auth" (tq_set_auth), or NULL */
    size_t auth_len;
    struct tq_async *async;  /* owned; NULL until the first tq_call_async/tq_fd */
};

/* Fill st (if not NULL); retryable follows tq_code_retryable.  Returns -1. */
__attribute__((format(printf, 3, 4)))
int status_set(tq_status *st, tq_code code, const char *fmt, ...);

/* A reply over TQ_RCVMAXSIZE is not an error nanomsg reports: it drops the
 * connection, and the request is sent again once one is back (nanomsg
 * 1.1.5 may bring none back within the call's time), only for the same to
 * happen.  After the connection broke this many times in a row while the
 * reply was due, a call gives up with reply_lost's message; one whose
 * connection broke so and that then runs out of time sending again says
 * the same, not "could not send". */
#define TQ_BROKEN_REPLIES 2
int reply_lost(tq_status *st, const char *url, int times, int timeout_ms);
void status_ok(tq_status *st);

/*
 * Endpoint choice (client.c).  endpoint_order fills order[0..n_eps) with
 * the endpoint indexes in the tenant's rendezvous order (best first); a
 * NULL tenant gives list order (tq_call_raw).  endpoint_pick returns the
 * first of order that is not down, or order[0] when all are.
 * endpoint_mark_down is called when a request found no connection to ep for
 * failover_wait_ms; the endpoint counts as down until a connection to it is
 * seen again (its probe socket).  With one endpoint nothing is ever down.
 */
void endpoint_order(const tq_client *c, const char *tenant, uint8_t *order);
size_t endpoint_pick(tq_client *c, const uint8_t *order);
/* sock, connected to ep, found no connection: if it has none at all right
 * now, mark ep down (nothing with one endpoint).  Returns whether ep is
 * down now. */
bool endpoint_mark_down(tq_client *c, size_t ep, int sock);

/* How long a call with this timeout waits for a connection before failing
 * over: TQ_FAILOVER_MS, but at most half the timeout, so that a short call
 * still has time left for the next endpoint. */
static inline int failover_wait_ms(int timeout_ms)
{
    return timeout_ms / 2 < TQ_FAILOVER_MS ? (timeout_ms / 2 > 0 ? timeout_ms / 2 : 1)
                                           : TQ_FAILOVER_MS;
}

int setopt_int(int sock, int level, int opt, int value);
int64_t now_ms(void); /* CLOCK_MONOTONIC */

/* Check the arguments of a call and encode its request into c->sb (with an
 * automatic idempotency key for ops that change state).  0, or -1 with st
 * set (TQ_E_USAGE). */
int encode_call(tq_client *c, const char *tenant, const char *op, const char *args_json,
                const tq_call_opts *opts, tq_status *st);

/* Decode a reply from ep.  Success: 0, *result_json (if not NULL) a malloc'd
 * JSON text of the result, *replayed set.  Failure: -1 with st set from the
 * daemon's error (its own retryable flag) or TQ_E_PROTOCOL. */
int reply_result(const struct tq_endpoint *ep, const void *reply, size_t reply_len,
                 char **result_json, bool *replayed, tq_status *st);

/* Raw REQ messaging (the synchronous and the asynchronous calls): a request
 * id has bit 31 set (nanomsg ends the SP header at that bit) and travels in the SP header.
 * next_request_id takes the next one from *counter.  raw_send sends body
 * from the caller's buffer (plain buffers: a failed nn_sendmsg frees nothing
 * of ours) and returns nn_sendmsg's result.  raw_recv receives one reply
 * into *body (free with nn_freemsg) with its request id in *id (0 if it has
 * none) and returns nn_recvmsg's result. */
uint32_t next_request_id(uint32_t *counter);
int raw_send(int sock, const void *body, size_t len, uint32_t id, int flags);
int raw_recv(int sock, int flags, void **body, uint32_t *id);

/* A call's timeout and tries: opts' where given (> 0), else the client's. */
static inline int call_timeout_ms(const tq_client *c, const tq_call_opts *opts)
{
    return opts && opts->timeout_ms > 0 ? opts->timeout_ms : c->timeout_ms;
}

static inline int call_attempts(const tq_client *c, const tq_call_opts *opts)
{
    return opts && opts->attempts > 0 ? opts->attempts : c->attempts;
}

/* Pause before retry number attempt + 1 (tq_set_retries). */
int backoff_ms(int attempt);

/* Free everything of the asynchronous calls; in-flight calls are dropped
 * without their callbacks (tq_close). */
void async_free(struct tq_async *a);

#endif
