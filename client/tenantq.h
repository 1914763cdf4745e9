/*
 * tenantq.h - libtenantq, the C client of tenantqd (wire protocol v1).
 *
 * Thread-safety: a tq_client is NOT shared between threads without external
 * locking.  Its synchronous calls use one nanomsg REQ socket per endpoint
 * with one request outstanding at a time; its asynchronous calls use one
 * socket per call in flight (see tq_call_async).  Use one tq_client per
 * thread, or one per event loop with asynchronous calls (the process limit
 * of nanomsg is 512 sockets).  Callbacks run on the thread that calls
 * tq_dispatch.  tq_code_name and friends are safe from any thread.  The
 * library never calls nn_term().
 *
 * Values: arguments and results are JSON text (UTF-8).  Errors come back as a
 * tq_code plus a human message.
 */
#ifndef TENANTQ_H
#define TENANTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "tq_codes.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tq_client tq_client;

/* The outcome of a failed call. */
typedef struct tq_status {
    tq_code code;          /* TQ_OK on success */
    bool retryable;        /* as the daemon said, or tq_code_retryable */
    char message[512];     /* NUL-terminated human message */
} tq_status;

/* Per-call options; pass NULL for defaults. */
typedef struct tq_call_opts {
    const char *key;       /* idempotency key, NULL = none */
    uint32_t deadline_ms;  /* 0 = daemon default */
    int timeout_ms;        /* 0 = client default (see tq_set_timeout), per attempt */
    int attempts;          /* 0 = client default (see tq_set_retries) */
} tq_call_opts;

/*
 * Open a client for endpoint ("ipc:///run/tenantq/tenantqd.sock",
 * "tcp://127.0.0.1:5555").  The connection itself is made lazily by nanomsg,
 * so an absent daemon shows up as TQ_E_TIMEOUT on the first call.  Returns
 * NULL with st filled on failure.  The caller owns the handle: tq_close.
 *
 * endpoint may list up to 64 daemons of one deployment (one database),
 * comma-separated.  Each tenant then has its own order of preference among
 * them (rendezvous hashing: every client with the same list agrees) and its
 * calls go to the first one that is up.  Failover: a call that finds no
 * connection to its daemon for 250 ms marks that daemon down and goes to
 * the tenant's next one; it comes back to its first choice as soon as a
 * connection to it is seen again.  A request that was delivered and whose
 * connection then broke is sent on the same way, with its idempotency key,
 * which the daemons share through the database.  A daemon that is connected
 * but does not answer is not down: the call times out.
 */
tq_client *tq_connect(const char *endpoint, tq_status *st);

/* Close the socket and free the handle.  NULL is a no-op. */
void tq_close(tq_client *c);

/* Default per-call timeout in milliseconds (initially 15000). */
void tq_set_timeout(tq_client *c, int timeout_ms);

/*
 * Tries per call (initially 1 = no retry).  With n > 1 a call whose outcome
 * is a retryable error (QUEUE_FULL, DEADLINE_EXCEEDED, LOCK_TIMEOUT,
 * DB_UNAVAILABLE, OUTCOME_UNKNOWN, SHUTTING_DOWN, TIMEOUT) is sent again,
 * byte for byte, with the same idempotency key, after 50, 100, 200 ... ms
 * (capped at 1.6 s).  Safe for edits because of the key (see tq_call).
 */
void tq_set_retries(tq_client *c, int attempts);

/*
 * The token of a daemon with an auth_token_file (tenantqd.conf(5)): sent as
 * the envelope key "auth" on every later request of c (synchronous and
 * asynchronous; tq_call_raw sends its bytes unchanged).  A daemon without
 * one ignores it.  The string is copied; NULL sends none again.  A token
 * must be 1..4096 bytes of UTF-8 without control characters (what the
 * daemon accepts in its file), else TQ_E_USAGE and nothing changes.  It
 * travels in clear: see the daemon's docs/security.md.  Returns 0, or -1
 * with st filled.  The library reads no environment variable; the CLI
 * takes $TENANTQ_AUTH_TOKEN or --auth-token-file.
 */
int tq_set_auth(tq_client *c, const char *token, tq_status *st);

/*
 * Call op for tenant with args_json (a JSON object as text; NULL = {}).
 * Text that is not JSON, a repeated key in an object, an integer beyond the
 * 64-bit range or a top-level value other than an object is TQ_E_USAGE
 * (the message names the byte offset) and sends nothing.
 * Every op that changes state (all but ping and draft.get) carries an
 * idempotency key: opts->key, or one generated per call ("auto-", the time
 * in milliseconds and 80 random bits, in hex: unique, and increasing over
 * time, which keeps the daemon's record index compact), so that a
 * re-send (after the connection broke, e.g. a daemon restart: the request
 * goes out again once a connection is back, within the same timeout) or a
 * retry by tq_set_retries takes effect at most once.
 * Blocks until the reply or the timeout.  On success returns 0 and, if
 * result_json is not NULL, stores a malloc'd JSON text of the result there
 * (caller frees with free()).  On failure returns -1 with st filled
 * (TQ_E_TIMEOUT if no reply came: the outcome is then unknown and the socket
 * is reopened so a late reply cannot be confused with the next call's).
 * st may be NULL.
 */
int tq_call(tq_client *c, const char *tenant, const char *op, const char *args_json,
            const tq_call_opts *opts, char **result_json, tq_status *st);

/* Whether the last successful tq_call on c was answered from the daemon's
 * idempotency record ("replayed": true). */
bool tq_last_replayed(const tq_client *c);

/*
 * Send raw bytes as one request and wait for one raw reply (for tests and
 * tools speaking the wire protocol directly).  On success returns 0 and a
 * malloc'd copy in *reply / *reply_len.  Same timeout rules as tq_call.
 */
int tq_call_raw(tq_client *c, const void *req, size_t req_len, void **reply,
                size_t *reply_len, int timeout_ms, tq_status *st);

/* ---- asynchronous calls, for event loops -------------------------------
 *
 * tq_call_async sends a call and returns at once; its outcome is delivered
 * later to a callback, exactly once, from tq_dispatch.  The caller's loop
 * watches tq_fd for readability (level-triggered: poll, epoll, libevent's
 * EV_READ|EV_PERSIST) and wakes at the latest after tq_next_timeout_ms, and
 * then calls tq_dispatch.  Calls in flight are independent: replies come in
 * any order.  Timeouts, retries (tq_set_retries), idempotency keys and the
 * endpoint choice are as for tq_call.
 *
 * Each call in flight has a nanomsg socket of its own (raw REQ, opened on
 * first use and kept for the next call), so the daemon never has two
 * replies outstanding on one connection, and nothing is re-sent behind the
 * caller's back: a request goes out again only as a retry of
 * tq_set_retries, with its key.  Synchronous and asynchronous calls may be
 * mixed on one client; they do not share sockets.
 */

/* Outcome of an asynchronous call.  st->code is TQ_OK on success, and then
 * result_json is the result (NUL-terminated JSON text, valid until the
 * callback returns; NULL on failure).  replayed: as tq_last_replayed.  The
 * callback may start new calls on the same client; it must not tq_close it. */
typedef void (*tq_callback)(void *arg, const tq_status *st, const char *result_json,
                            bool replayed);

/* The default and the largest number of asynchronous calls in flight. */
#define TQ_DEFAULT_MAX_INFLIGHT 64
#define TQ_MAX_INFLIGHT 256

/*
 * Start a call (arguments as tq_call).  Returns 0 when it was started: cb
 * will be called exactly once, from tq_dispatch, with arg.  Returns -1 with
 * st filled if it could not be started (cb is then never called):
 * TQ_E_USAGE for bad arguments, TQ_E_QUEUE_FULL when tq_set_max_inflight
 * calls are already in flight, TQ_E_TRANSPORT if no socket could be opened.
 */
int tq_call_async(tq_client *c, const char *tenant, const char *op, const char *args_json,
                  const tq_call_opts *opts, tq_callback cb, void *arg, tq_status *st);

/* A file descriptor that is readable while replies wait for tq_dispatch.
 * Owned by the client (do not read or close it); the same for the client's
 * lifetime.  -1 with st filled if it cannot be created. */
int tq_fd(tq_client *c, tq_status *st);

/* Milliseconds until tq_dispatch has work even if tq_fd stays quiet (a
 * timeout or a retry falls due); 0 = now; -1 = no call in flight. */
int tq_next_timeout_ms(const tq_client *c);

/* Receive the replies that have arrived, expire calls whose timeout passed,
 * send due retries, and run the callbacks of the calls that ended.  Never
 * blocks.  Returns the number of callbacks run. */
int tq_dispatch(tq_client *c);

/* Asynchronous calls in flight (started, callback not yet run). */
int tq_inflight(const tq_client *c);

/* Calls allowed in flight at once, 1..TQ_MAX_INFLIGHT (default
 * TQ_DEFAULT_MAX_INFLIGHT).  Returns 0, or -1 if n is out of range or calls
 * are in flight. */
int tq_set_max_inflight(tq_client *c, int n);

/* tq_close(c) with calls in flight drops them: their callbacks never run. */

#ifdef __cplusplus
}
#endif
#endif
