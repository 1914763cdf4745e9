/*
 * storefront.h - the storefront edit logic as pure functions over a document.
 *
 * No I/O, no globals, no threads: the daemon's shards, the unit tests and the
 * load harness's baseline modes all run exactly this code, so "the same work"
 * is done on every side of a comparison.  Every function is safe to call from
 * any thread on its own objects.
 *
 * Document shape (SPEC "Operations"); any other field anywhere is preserved:
 *   {"pages": {"<page>": {"sections": [{"id": "...", "type": "...", ...}]}}}
 */
#ifndef TQ_STOREFRONT_H
#define TQ_STOREFRONT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tq_proto.h"

#define SF_NAME_MAX 64
#define SF_SECTION_MAX_DEPTH 26 /* the section object is level 1 */

typedef enum sf_op {
    SF_OP_PING = 0,
    SF_OP_SECTION_UPSERT,
    SF_OP_SECTION_REMOVE,
    SF_OP_SECTION_MOVE,
    SF_OP_DRAFT_GET,
    SF_OP_DRAFT_PUBLISH,
    SF_OP_DRAFT_DISCARD,
    SF_OP__COUNT
} sf_op;

/* The state of one tenant as stored.  draft/published are owned references
 * (published may be NULL = never published).  version counts committed
 * changes (0 = no row yet). */
typedef struct sf_state {
    json_t *draft;
    json_t *published;
    int64_t version;
    /* An upper bound of the draft's compact JSON size, or 0 = unknown.  Kept
     * by sf_apply so that a batch serialises the document once for the
     * max_draft_bytes check instead of once per edit.  Whoever replaces
     * draft directly must reset it to 0. */
    size_t size_ub;
} sf_state;

/* sf_state.size_ub for a draft parsed from PostgreSQL's jsonb text (len
 * bytes), without serialising it: that text has ", " and ": " where compact
 * JSON has none and the same escapes, but prints a real more briefly than
 * our %.17g (at most 24 bytes more), and every such real has a '.'. */
size_t sf_stored_size_ub(const char *text, size_t len);

/* Look an op up by wire name (not NUL-terminated).  Returns false if unknown. */
bool sf_op_lookup(const char *name, size_t len, sf_op *out);
/* The op's wire name, e.g. "section.upsert". */
const char *sf_op_name(sf_op op);
/* Whether the op changes state (needs a write + commit). */
bool sf_op_mutates(sf_op op);
/* Whether the op touches the database at all (ping does not). */
bool sf_op_needs_db(sf_op op);

/* Name rule: ^[a-z0-9]+(-[a-z0-9]+)*$, 1..64 bytes. */
bool sf_valid_name(const char *s, size_t len);

/*
 * Check args that do not depend on the state (types, names, required fields,
 * negative index) so a bad request is rejected before it is queued.  Returns
 * 0, or -1 with err->code = INVALID_ARGUMENT and a message naming the field
 * ("args.page: must match ^[a-z0-9]+(-[a-z0-9]+)*$ and be at most 64 bytes").
 */
int sf_validate_args(sf_op op, const json_t *args, tq_error *err)
    __attribute__((warn_unused_result));

/* Initialise an empty state: draft {"pages":{}}, no published, version 0. */
void sf_state_init_empty(sf_state *st);
/* Drop the references held by st (st itself is not freed). */
void sf_state_clear(sf_state *st);

/*
 * Apply one op to st.  On success returns 0, sets *result to a new reference
 * (the op's result object as in SPEC, with the new "version"; it shares no
 * value with st, so it stays as it is however st changes later), and, for
 * mutating ops, has changed st and incremented st->version by exactly one.
 * On failure returns -1, err set (NOT_FOUND, DUPLICATE_SECTION_ID naming the
 * id and the page where it lives, INVALID_ARGUMENT for an out-of-range index,
 * DRAFT_TOO_LARGE naming the limit, ...), *result NULL and st exactly as it
 * was, so a batch can go on with the next op.  max_draft_bytes is measured on
 * the compact JSON serialisation of the draft (0 = unlimited).
 * The document itself is validated loosely: a draft whose "pages" or
 * "sections" has the wrong type is treated as INTERNAL for edits.
 * ping and draft.get never change st.
 * args is never modified, but section.upsert stores the new section as a
 * shallow copy: the section's field values are shared, by reference count,
 * between args and st.  The caller must not change args after the call (the
 * daemon frees a request's args untouched); nothing in this library ever
 * changes a value below a section.
 */
int sf_apply(sf_state *st, sf_op op, const json_t *args, size_t max_draft_bytes,
             json_t **result, tq_error *err) __attribute__((warn_unused_result));

#endif
