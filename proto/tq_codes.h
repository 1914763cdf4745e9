/*
 * tq_codes.h - the stable error codes of tenantq wire protocol v1.
 *
 * Shared by the daemon, the codec and the public client library (installed
 * beside tenantq.h).  The wire carries the code as a string (tq_code_name);
 * the enum values are an ABI of libtenantq and only ever get appended to.
 */
#ifndef TQ_CODES_H
#define TQ_CODES_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tq_code {
    TQ_OK = 0,
    /* codes that travel on the wire (PROTOCOL.md "Error codes") */
    TQ_E_BAD_REQUEST,
    TQ_E_UNSUPPORTED_VERSION,
    TQ_E_UNKNOWN_OP,
    TQ_E_INVALID_ARGUMENT,
    TQ_E_NOT_FOUND,
    TQ_E_DUPLICATE_SECTION_ID,
    TQ_E_DRAFT_TOO_LARGE,
    TQ_E_IDEMPOTENCY_KEY_REUSED,
    TQ_E_QUEUE_FULL,
    TQ_E_DEADLINE_EXCEEDED,
    TQ_E_LOCK_TIMEOUT,
    TQ_E_DB_UNAVAILABLE,
    TQ_E_OUTCOME_UNKNOWN,
    TQ_E_SHUTTING_DOWN,
    TQ_E_INTERNAL,
    /* client-side codes: never sent by the daemon */
    TQ_E_TIMEOUT,   /* no reply within the call's timeout; outcome unknown */
    TQ_E_TRANSPORT, /* endpoint could not be opened / socket error */
    TQ_E_PROTOCOL,  /* the reply was not a valid v1 response */
    TQ_E_USAGE,     /* the caller passed invalid arguments to the library */
    /* wire codes added after the first release (appended: values never change) */
    TQ_E_REJECTED,  /* an SQL operation's own rule refused the request; nothing changed */
    TQ_E_UNAUTHENTICATED, /* auth missing or wrong (the daemon has an auth_token_file);
                           * nothing was queued */
    TQ_CODE__COUNT
} tq_code;

/* Stable name of a code ("QUEUE_FULL"); "UNKNOWN" for out-of-range values.
 * Never NULL, static storage, any thread. */
const char *tq_code_name(tq_code code);

/* Parse a wire name back to a code. Returns false (and leaves *out alone) if
 * the name is not one of the codes above.  name need not be NUL-terminated. */
bool tq_code_parse(const char *name, size_t len, tq_code *out);

/* Whether a daemon error with this code may be retried unchanged (PROTOCOL.md
 * table; OUTCOME_UNKNOWN counts as retryable, TIMEOUT and TRANSPORT too). */
bool tq_code_retryable(tq_code code);

#ifdef __cplusplus
}
#endif
#endif
