/*
 * codes.c - names and retry classes of the tq_code error codes.
 *
 * The names are the stable wire strings of protocol v1 (PROTOCOL.md, "Error
 * codes"); the retry table is PROTOCOL.md's "retryable" column plus the client-side
 * codes.  Pure tables, no state: safe from any thread.
 */
#include <string.h>

#include "tq_codes.h"

static const char *const code_names[TQ_CODE__COUNT] = {
    [TQ_OK] = "OK",
    [TQ_E_BAD_REQUEST] = "BAD_REQUEST",
    [TQ_E_UNSUPPORTED_VERSION] = "UNSUPPORTED_VERSION",
    [TQ_E_UNKNOWN_OP] = "UNKNOWN_OP",
    [TQ_E_INVALID_ARGUMENT] = "INVALID_ARGUMENT",
    [TQ_E_NOT_FOUND] = "NOT_FOUND",
    [TQ_E_DUPLICATE_SECTION_ID] = "DUPLICATE_SECTION_ID",
    [TQ_E_DRAFT_TOO_LARGE] = "DRAFT_TOO_LARGE",
    [TQ_E_IDEMPOTENCY_KEY_REUSED] = "IDEMPOTENCY_KEY_REUSED",
    [TQ_E_QUEUE_FULL] = "QUEUE_FULL",
    [TQ_E_DEADLINE_EXCEEDED] = "DEADLINE_EXCEEDED",
    [TQ_E_LOCK_TIMEOUT] = "LOCK_TIMEOUT",
    [TQ_E_DB_UNAVAILABLE] = "DB_UNAVAILABLE",
    [TQ_E_OUTCOME_UNKNOWN] = "OUTCOME_UNKNOWN",
    [TQ_E_SHUTTING_DOWN] = "SHUTTING_DOWN",
    [TQ_E_INTERNAL] = "INTERNAL",
    [TQ_E_REJECTED] = "REJECTED",
    [TQ_E_UNAUTHENTICATED] = "UNAUTHENTICATED",
    [TQ_E_TIMEOUT] = "TIMEOUT",
    [TQ_E_TRANSPORT] = "TRANSPORT",
    [TQ_E_PROTOCOL] = "PROTOCOL",
    [TQ_E_USAGE] = "USAGE",
};

/* Retrying unchanged can succeed only where nothing was executed (or, for
 * OUTCOME_UNKNOWN/TIMEOUT, where an idempotency key makes a repeat safe). */
static const bool code_retryable[TQ_CODE__COUNT] = {
    [TQ_E_QUEUE_FULL] = true,
    [TQ_E_DEADLINE_EXCEEDED] = true,
    [TQ_E_LOCK_TIMEOUT] = true,
    [TQ_E_DB_UNAVAILABLE] = true,
    [TQ_E_OUTCOME_UNKNOWN] = true,
    [TQ_E_SHUTTING_DOWN] = true,
    [TQ_E_TIMEOUT] = true,
    [TQ_E_TRANSPORT] = true,
};

const char *tq_code_name(tq_code code)
{
    if ((unsigned)code >= TQ_CODE__COUNT || code_names[code] == NULL)
        return "UNKNOWN";
    return code_names[code];
}

bool tq_code_parse(const char *name, size_t len, tq_code *out)
{
    if (name == NULL)
        return false;
    for (unsigned i = 0; i < TQ_CODE__COUNT; i++) {
        const char *n = code_names[i];
        if (n != NULL && strlen(n) == len && memcmp(n, name, len) == 0) {
            if (out != NULL)
                *out = (tq_code)i;
            return true;
        }
    }
    return false;
}

bool tq_code_retryable(tq_code code)
{
    if ((unsigned)code >= TQ_CODE__COUNT)
        return false;
    return code_retryable[code];
}
