/*
 * tenantq.h - libtenantq, the C client of tenantqd (wire protocol v1).
 *
 * Thread-safety: a tq_client is NOT shared between threads without external
 * locking: it owns one nanomsg REQ socket with one request outstanding at a
 * time.  Use one tq_client per thread (they are cheap: one socket each; the
 * process limit of nanomsg is 512 sockets).  tq_code_name and friends are
 * safe from any thread.  The library never calls nn_term().
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
 * Call op for tenant with args_json (a JSON object as text; NULL = {}).
 * Every op that changes state (all but ping and draft.get) carries an
 * idempotency key: opts->key, or a random one generated per call, so that a
 * re-send by nanomsg or by tq_set_retries takes effect at most once.
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

#ifdef __cplusplus
}
#endif
#endif
