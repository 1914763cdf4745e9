/*
 * idem.h - pure helpers of the idempotency records: the request fingerprint
 * and PostgreSQL text[] literals.  No I/O; any thread.
 */
#ifndef TQ_IDEM_H
#define TQ_IDEM_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define IDEM_FINGERPRINT_HEX 33 /* 32 hex digits + NUL */

/*
 * What a key is bound to: op and args in canonical form (object keys
 * sorted, so the same args sent with another key order match), hashed to
 * 128 bits with fixed parameters so every instance and restart agrees.
 * args NULL counts as {}.  Streams the tree; never builds a string.
 * Returns 0, or -1 out of memory.
 */
int idem_fingerprint(const char *op, const json_t *args, char out[IDEM_FINGERPRINT_HEX])
    __attribute__((warn_unused_result));

/* A growing PostgreSQL text[] literal: {"a","b\"c"}. */
struct pg_text_array {
    char *buf;
    size_t len, cap;
    size_t n;
};

/* Append one element (NUL-terminated UTF-8; quotes and backslashes are
 * escaped).  0 or -1 (out of memory; the array is then unusable). */
int pg_text_array_add(struct pg_text_array *a, const char *s) __attribute__((warn_unused_result));
/* The literal, NUL-terminated ("{}" when empty); NULL out of memory.  Owned by a. */
const char *pg_text_array_get(struct pg_text_array *a);
void pg_text_array_free(struct pg_text_array *a);

#endif
