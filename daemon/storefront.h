/*
 * storefront.h - the storefront edit logic as pure functions over a document.
 *
 * No I/O, no globals, no threads: the daemon's shards, the unit tests and the
 * load harness's baseline modes all run exactly this code, so "the same work"
 * is done on every side of a comparison.  Every function is safe to call from
 * any thread on its own objects.
 *
 * Document shape (proto/PROTOCOL.md "Operations"); any other field anywhere is preserved:
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
    SF_OP_DRAFT_CHECK,  /* read-only, like draft.get */
    SF_OP_DRAFT_REPAIR, /* mutating; a dry run or nothing to repair changes nothing */
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
 * (the op's result object as in proto/PROTOCOL.md, with the new "version"; it shares no
 * value with st, so it stays as it is however st changes later), and, for
 * mutating ops, has changed st and incremented st->version by exactly one
 * (draft.repair: only when it renamed something and dry_run is not true;
 * else st and its version stay as they were, so a caller decides whether to
 * write by whether the version changed).
 * On failure returns -1, err set (NOT_FOUND, DUPLICATE_SECTION_ID naming the
 * id and the page where it lives, INVALID_ARGUMENT for an out-of-range index,
 * DRAFT_TOO_LARGE naming the limit, ...), *result NULL and st exactly as it
 * was, so a batch can go on with the next op.  max_draft_bytes is measured on
 * the compact JSON serialisation of the draft (0 = unlimited).
 * The document itself is validated loosely: a draft whose "pages" or
 * "sections" has the wrong type is treated as INTERNAL for edits.
 * ping, draft.get and draft.check never change st.  draft.repair's result:
 *   {"renamed":[{"page","index","from","to"}], "unrepaired":[problems],
 *    "version"}, each list capped at SF_PROBLEMS_MAX entries, with
 *   "renamed_omitted"/"unrepaired_omitted" counts added when the cap cut it;
 *   draft.check's: {"problems":[...], "version"} (+ "omitted" likewise).
 * args is never modified, but section.upsert stores the new section as a
 * shallow copy: the section's field values are shared, by reference count,
 * between args and st.  The caller must not change args after the call (the
 * daemon frees a request's args untouched); nothing in this library ever
 * changes a value below a section.
 */
int sf_apply(sf_state *st, sf_op op, const json_t *args, size_t max_draft_bytes,
             json_t **result, tq_error *err) __attribute__((warn_unused_result));

/*
 * Repair of drafts damaged before tenantq (draft.check, draft.repair).
 *
 * sf_check_draft lists what in draft breaks the storefront's rules, as an
 * array of {"problem","id"?,"page","index","message"} objects, problem one
 * of "duplicate_id" (listed once per extra occurrence; message names the
 * first), "missing_id", "bad_id", "bad_type", "bad_shape".  "page" and
 * "index" are null where the problem is not at one page or section.  Pages
 * are visited in stored order, sections in array order.  draft may be any
 * JSON value (NULL = no draft = no problems); it is only read.  At most
 * SF_PROBLEMS_MAX problems are listed; *omitted (if not NULL) gets the
 * number left out.  Names in problems are clipped to SF_CLIP_MAX bytes.
 * Returns a new reference, or NULL when out of memory.  Bounded work:
 * linear in the number of sections, never recursing into section fields.
 */
#define SF_PROBLEMS_MAX 1000
#define SF_CLIP_MAX 80
json_t *sf_check_draft(const json_t *draft, size_t *omitted);

#endif
