/*
 * storefront.c - the storefront edit operations as pure functions over a
 * jansson document (contract: storefront.h, proto/PROTOCOL.md "Operations").
 *
 * Everything here runs inside a shard's transaction and inside the load
 * harness's baselines, so it must stay free of I/O, globals and locks.
 * Two rules shape the code:
 *   - a failed op leaves the state exactly as it was, so a coalesced batch can
 *     go on with the next op: everything that can fail on the arguments is
 *     checked before the first change, and the only late failure (the size
 *     limit, or running out of memory) undoes the few changes made;
 *   - the stored document comes from the database and may have been written
 *     by someone else, so its shape is checked as it is walked and a wrong
 *     shape is reported as INTERNAL, never trusted.
 */
#include "storefront.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "jdump.h"

#define NAME_RULE "must match ^[a-z0-9]+(-[a-z0-9]+)*$ (at most 64 bytes)"

static const char *const op_names[SF_OP__COUNT] = {
    [SF_OP_PING] = "ping",
    [SF_OP_SECTION_UPSERT] = "section.upsert",
    [SF_OP_SECTION_REMOVE] = "section.remove",
    [SF_OP_SECTION_MOVE] = "section.move",
    [SF_OP_DRAFT_GET] = "draft.get",
    [SF_OP_DRAFT_PUBLISH] = "draft.publish",
    [SF_OP_DRAFT_DISCARD] = "draft.discard",
    [SF_OP_DRAFT_CHECK] = "draft.check",
    [SF_OP_DRAFT_REPAIR] = "draft.repair",
};

size_t sf_stored_size_ub(const char *text, size_t len)
{
    size_t dots = 0;
    for (const char *p = text; (p = memchr(p, '.', len - (size_t)(p - text))) != NULL; p++)
        dots++;
    return len + 24 * dots;
}

bool sf_op_lookup(const char *name, size_t len, sf_op *out)
{
    if (name == NULL)
        return false;
    for (int i = 0; i < SF_OP__COUNT; i++) {
        if (strlen(op_names[i]) == len && memcmp(op_names[i], name, len) == 0) {
            if (out != NULL)
                *out = (sf_op)i;
            return true;
        }
    }
    return false;
}

const char *sf_op_name(sf_op op)
{
    if ((int)op < 0 || op >= SF_OP__COUNT)
        return "unknown";
    return op_names[op];
}

bool sf_op_mutates(sf_op op)
{
    switch (op) {
    case SF_OP_SECTION_UPSERT:
    case SF_OP_SECTION_REMOVE:
    case SF_OP_SECTION_MOVE:
    case SF_OP_DRAFT_PUBLISH:
    case SF_OP_DRAFT_DISCARD:
    case SF_OP_DRAFT_REPAIR:
        return true;
    default:
        return false;
    }
}

bool sf_op_needs_db(sf_op op)
{
    return op != SF_OP_PING && (int)op >= 0 && op < SF_OP__COUNT;
}

bool sf_valid_name(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > SF_NAME_MAX)
        return false;
    bool prev_dash = true; /* forbids a leading dash */
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            prev_dash = false;
        } else if (c == '-') {
            if (prev_dash)
                return false; /* leading or double dash */
            prev_dash = true;
        } else {
            return false;
        }
    }
    return !prev_dash; /* no trailing dash */
}

/* ---- argument validation (independent of the state) ---- */

/* jansson's iterators and getters take non-const pointers even for reading. */
static json_t *unconst(const json_t *v)
{
    return (json_t *)(uintptr_t)v;
}

static bool json_is_name(const json_t *v)
{
    return json_is_string(v) && sf_valid_name(json_string_value(v), json_string_length(v));
}

/* A required or optional name field of obj; path names it in messages. */
static int check_name(const json_t *obj, const char *key, const char *path, bool required,
                      tq_error *err)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        if (required)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "%s: required", path);
        return 0;
    }
    if (!json_is_string(v))
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "%s: must be a string", path);
    if (!json_is_name(v))
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "%s: " NAME_RULE, path);
    return 0;
}

static int check_index(const json_t *args, bool required, tq_error *err)
{
    const json_t *v = json_object_get(args, "index");
    if (v == NULL) {
        if (required)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.index: required");
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT,
                            "args.index: must be an integer >= 0");
    return 0;
}

/* Container nesting depth of a JSON value (a scalar is 0, {} or [] is 1),
 * as the codec counts levels; gives up past limit.  A number that
 * PostgreSQL's jsonb would hand back as an integer beyond int64 (any real of
 * magnitude >= 2^63: jsonb prints numbers without exponents) makes it
 * return -1, so such a value is refused instead of poisoning the draft. */
static int json_depth(const json_t *v, int limit)
{
    if (json_is_real(v))
        return fabs(json_real_value(v)) < 9223372036854775808.0 ? 0 : -1;
    if (!json_is_object(v) && !json_is_array(v))
        return 0;
    if (limit <= 0)
        return 1;
    int deepest = 0;
    if (json_is_object(v)) {
        const char *k;
        const json_t *child;
        json_object_foreach((json_t *)(uintptr_t)v, k, child) {
            int d = json_depth(child, limit - 1);
            if (d < 0)
                return -1;
            if (d > deepest)
                deepest = d;
        }
    } else if (json_is_array(v)) {
        size_t i;
        const json_t *child;
        json_array_foreach(v, i, child) {
            int d = json_depth(child, limit - 1);
            if (d < 0)
                return -1;
            if (d > deepest)
                deepest = d;
        }
    }
    return 1 + deepest;
}

int sf_validate_args(sf_op op, const json_t *args, tq_error *err)
{
    static const char *const upsert_keys[] = {"page", "section", "index", NULL};
    static const char *const remove_keys[] = {"id", NULL};
    static const char *const move_keys[] = {"id", "page", "index", NULL};
    static const char *const repair_keys[] = {"dry_run", NULL};
    static const char *const no_keys[] = {NULL};
    const char *const *allowed;
    int rc;

    switch (op) {
    case SF_OP_SECTION_UPSERT: allowed = upsert_keys; break;
    case SF_OP_SECTION_REMOVE: allowed = remove_keys; break;
    case SF_OP_SECTION_MOVE: allowed = move_keys; break;
    case SF_OP_DRAFT_REPAIR: allowed = repair_keys; break;
    case SF_OP_DRAFT_CHECK:
    case SF_OP_PING:
    case SF_OP_DRAFT_GET:
    case SF_OP_DRAFT_PUBLISH:
    case SF_OP_DRAFT_DISCARD: allowed = no_keys; break;
    default: return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "unknown op %d", (int)op);
    }
    if (args == NULL) /* absent args read as {} (without allocating one) */
        return allowed[0] == NULL || op == SF_OP_DRAFT_REPAIR ? 0
                                  : tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.%s: required",
                                                 allowed[0]);
    if (!json_is_object(args))
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args: must be an object");

    json_t *obj = unconst(args);
    for (void *it = json_object_iter(obj); it != NULL; it = json_object_iter_next(obj, it)) {
        const char *key = json_object_iter_key(it);
        bool known = false;
        for (const char *const *k = allowed; *k != NULL && !known; k++)
            known = strcmp(*k, key) == 0;
        if (!known)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.%.80s: unknown argument for %s",
                                key, sf_op_name(op));
    }

    switch (op) {
    case SF_OP_SECTION_UPSERT: {
        if ((rc = check_name(args, "page", "args.page", true, err)) != 0)
            return rc;
        const json_t *sec = json_object_get(args, "section");
        if (sec == NULL)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.section: required");
        if (!json_is_object(sec))
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.section: must be an object");
        if ((rc = check_name(sec, "type", "args.section.type", true, err)) != 0 ||
            (rc = check_name(sec, "id", "args.section.id", false, err)) != 0)
            return rc;
        /* a section sits at level 7 of a draft.get reply, which must stay
         * within the codec's 32 levels (PROTOCOL.md) */
        int depth = json_depth(sec, SF_SECTION_MAX_DEPTH + 1);
        if (depth < 0)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT,
                                "args.section: holds a number of magnitude 2^63 or more, which "
                                "cannot be stored exactly");
        if (depth > SF_SECTION_MAX_DEPTH)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT,
                                "args.section: nested deeper than %d levels",
                                SF_SECTION_MAX_DEPTH);
        return check_index(args, false, err);
    }
    case SF_OP_SECTION_REMOVE:
        return check_name(args, "id", "args.id", true, err);
    case SF_OP_SECTION_MOVE:
        if ((rc = check_name(args, "id", "args.id", true, err)) != 0 ||
            (rc = check_name(args, "page", "args.page", true, err)) != 0)
            return rc;
        return check_index(args, true, err);
    case SF_OP_DRAFT_REPAIR: {
        const json_t *dry = json_object_get(args, "dry_run");
        if (dry != NULL && !json_is_boolean(dry))
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.dry_run: must be a boolean");
        return 0;
    }
    default:
        return 0;
    }
}

/* ---- state ---- */

void sf_state_init_empty(sf_state *st)
{
    /* On out-of-memory draft stays NULL; sf_apply then answers INTERNAL. */
    st->draft = json_pack("{s:{}}", "pages");
    st->published = NULL;
    st->version = 0;
    st->size_ub = 0;
}

void sf_state_clear(sf_state *st)
{
    json_decref(st->draft);
    json_decref(st->published);
    st->draft = NULL;
    st->published = NULL;
    st->version = 0;
    st->size_ub = 0;
}

/* ---- walking the stored document ---- */

static int oom(tq_error *err)
{
    return tq_error_set(err, TQ_E_INTERNAL, "out of memory");
}

/* The draft's "pages" object in *pages, NULL if absent (no pages yet). */
static int draft_pages(json_t *draft, json_t **pages, tq_error *err)
{
    if (!json_is_object(draft))
        return tq_error_set(err, TQ_E_INTERNAL, "draft: must be an object");
    json_t *p = json_object_get(draft, "pages");
    if (p != NULL && !json_is_object(p))
        return tq_error_set(err, TQ_E_INTERNAL, "draft.pages: must be an object");
    *pages = p;
    return 0;
}

/* A page's "sections" array in *sections, NULL if the page has none. */
static int page_sections(const char *name, json_t *page, json_t **sections, tq_error *err)
{
    if (!json_is_object(page))
        return tq_error_set(err, TQ_E_INTERNAL, "draft.pages.%.80s: must be an object", name);
    json_t *s = json_object_get(page, "sections");
    if (s != NULL && !json_is_array(s))
        return tq_error_set(err, TQ_E_INTERNAL, "draft.pages.%.80s.sections: must be an array",
                            name);
    *sections = s;
    return 0;
}

/* Where a section lives.  page is the key inside draft.pages, sections the
 * page's array; both borrowed from the document. */
typedef struct sec_loc {
    const char *page;
    json_t *sections;
    size_t index;
} sec_loc;

/* What one walk over all sections looks for. */
typedef struct scan {
    /* the first section whose id equals want (want NULL: none), ignoring the
     * section at skip_sections[skip_index] (the one being replaced) */
    const char *want;
    size_t want_len;
    const json_t *skip_sections;
    size_t skip_index;
    bool found;
    sec_loc at;
    /* id generation: which of prefix+"main" and prefix+"<k>" (2 <= k <
     * ntaken) are in use; taken NULL: not generating */
    const char *prefix;
    size_t prefix_len;
    bool main_taken;
    bool *taken;
    size_t ntaken;
} scan;

/* Count sections without checking anything: sizes the id-generation map. */
static size_t count_sections(json_t *pages)
{
    size_t n = 0;
    for (void *it = json_object_iter(pages); it != NULL; it = json_object_iter_next(pages, it)) {
        json_t *page = json_object_iter_value(it);
        n += json_array_size(json_object_get(page, "sections"));
    }
    return n;
}

/* Note an id of the form prefix + "main" or prefix + decimal k (canonical:
 * no leading zero, so "x-2" and "x-02" are different ids). */
static void scan_note_generated(scan *sc, const char *id, size_t len)
{
    if (len <= sc->prefix_len || memcmp(id, sc->prefix, sc->prefix_len) != 0)
        return;
    const char *rest = id + sc->prefix_len;
    size_t rlen = len - sc->prefix_len;
    if (rlen == 4 && memcmp(rest, "main", 4) == 0) {
        sc->main_taken = true;
        return;
    }
    if (rlen > 18 || rest[0] == '0')
        return;
    uint64_t k = 0;
    for (size_t i = 0; i < rlen; i++) {
        if (rest[i] < '0' || rest[i] > '9')
            return;
        k = k * 10 + (uint64_t)(rest[i] - '0');
    }
    if (k >= 2 && k < sc->ntaken)
        sc->taken[k] = true;
}

/* A generated id: prefix ("<page>-<type>-") + "main" (k = 0) or + k. */
static void gen_name(char *buf, size_t size, const char *prefix, size_t k)
{
    if (k == 0)
        snprintf(buf, size, "%smain", prefix);
    else
        snprintf(buf, size, "%s%zu", prefix, k);
}

/* Walk every section of pages (NULL = no pages), checking the document's
 * shape all the way so that a broken stored draft is reported the same way
 * whatever the op looks for.  Returns 0, or -1 with INTERNAL naming the place. */
static int scan_draft(json_t *pages, scan *sc, tq_error *err)
{
    if (pages == NULL)
        return 0;
    for (void *it = json_object_iter(pages); it != NULL; it = json_object_iter_next(pages, it)) {
        const char *pname = json_object_iter_key(it);
        json_t *secs;
        if (page_sections(pname, json_object_iter_value(it), &secs, err) != 0)
            return -1;
        size_t n = json_array_size(secs);
        for (size_t i = 0; i < n; i++) {
            json_t *sec = json_array_get(secs, i);
            if (!json_is_object(sec))
                return tq_error_set(err, TQ_E_INTERNAL,
                                    "the stored draft.pages.%.80s.sections[%zu] is not an object "
                                    "(draft.check lists it; it must be repaired by hand)",
                                    pname, i);
            json_t *idv = json_object_get(sec, "id");
            if (!json_is_string(idv))
                return tq_error_set(err, TQ_E_INTERNAL,
                                    "the stored draft.pages.%.80s.sections[%zu] has no string id "
                                    "(draft.repair gives it one)",
                                    pname, i);
            const char *id = json_string_value(idv);
            size_t len = json_string_length(idv);
            if (sc->want != NULL && !sc->found && len == sc->want_len &&
                memcmp(id, sc->want, len) == 0 && !(secs == sc->skip_sections && i == sc->skip_index)) {
                sc->found = true;
                sc->at = (sec_loc){.page = pname, .sections = secs, .index = i};
            }
            if (sc->taken != NULL)
                scan_note_generated(sc, id, len);
        }
    }
    return 0;
}

/* Containers created by ensure_sections, remembered so a failed op can take
 * them out again (only the outermost one needs deleting). */
typedef struct made {
    json_t *draft;      /* created draft.pages */
    json_t *pages;      /* created pages[page_key] */
    const char *page_key;
    json_t *page;       /* created page.sections */
} made;

static void made_undo(made *m)
{
    if (m->draft != NULL)
        json_object_del(m->draft, "pages");
    else if (m->pages != NULL)
        json_object_del(m->pages, m->page_key);
    else if (m->page != NULL)
        json_object_del(m->page, "sections");
    memset(m, 0, sizeof *m);
}

/* The sections array of page pname, creating draft.pages, the page
 * ({"sections":[]}) or its sections as needed.  pname must outlive m. */
static int ensure_sections(json_t *draft, json_t *pages, const char *pname, json_t **out, made *m,
                           tq_error *err)
{
    memset(m, 0, sizeof *m);
    if (pages == NULL) {
        pages = json_object();
        if (json_object_set_new(draft, "pages", pages) != 0) /* steals pages even on failure */
            return oom(err);
        m->draft = draft;
    }
    json_t *page = json_object_get(pages, pname);
    if (page == NULL) {
        page = json_object();
        if (json_object_set_new(pages, pname, page) != 0) {
            made_undo(m);
            return oom(err);
        }
        if (m->draft == NULL) {
            m->pages = pages;
            m->page_key = pname;
        }
    }
    json_t *secs = json_object_get(page, "sections");
    if (secs == NULL) {
        secs = json_array();
        if (json_object_set_new(page, "sections", secs) != 0) {
            made_undo(m);
            return oom(err);
        }
        if (m->draft == NULL && m->pages == NULL)
            m->page = page;
    }
    *out = secs;
    return 0;
}

/* What adding sec to page pname can add to the compact draft at most: the
 * section, and a new page object with its punctuation. */
static size_t growth_bound(const json_t *sec, const char *pname)
{
    return jdump_size(sec) + strlen(pname) + 32;
}

/* DRAFT_TOO_LARGE if the compact serialisation of the draft, after an edit
 * that grew it by at most `grown` bytes, exceeds max (0 = unlimited).  While
 * the known upper bound plus growth stays within max the document is not
 * serialised at all; otherwise it is, and the bound becomes exact. */
static int check_size(sf_state *st, size_t grown, size_t max, tq_error *err)
{
    if (max == 0) {
        st->size_ub = 0; /* grown is not computed without a limit */
        return 0;
    }
    if (st->size_ub != 0 && st->size_ub + grown <= max) {
        st->size_ub += grown;
        return 0;
    }
    const json_t *draft = st->draft;
    size_t n = jdump_size(draft);
    if (n == 0)
        return tq_error_set(err, TQ_E_INTERNAL, "draft: cannot be serialised");
    if (n > max)
        return tq_error_set(err, TQ_E_DRAFT_TOO_LARGE,
                            "the draft would be %zu bytes, over the limit max_draft_bytes = %zu", n,
                            max);
    st->size_ub = n;
    return 0;
}

static int index_out_of_range(json_int_t ix, const char *page, size_t len, tq_error *err)
{
    return tq_error_set(err, TQ_E_INVALID_ARGUMENT,
                        "args.index: %" JSON_INTEGER_FORMAT " is out of range for page \"%s\" (0..%zu)",
                        ix, page, len);
}

/* ---- the ops ---- */

static int op_upsert(sf_state *st, const json_t *args, size_t max, json_t **result, tq_error *err)
{
    const char *pname = json_string_value(json_object_get(args, "page"));
    json_t *in = json_object_get(args, "section");
    const char *type = json_string_value(json_object_get(in, "type"));
    json_t *idv = json_object_get(in, "id");
    json_t *ixv = json_object_get(args, "index");
    json_t *pages, *secs = NULL;

    if (draft_pages(st->draft, &pages, err) != 0)
        return -1;
    json_t *page = pages != NULL ? json_object_get(pages, pname) : NULL;
    if (page != NULL && page_sections(pname, page, &secs, err) != 0)
        return -1;
    size_t len = json_array_size(secs);
    size_t index = len;
    if (ixv != NULL) {
        json_int_t ix = json_integer_value(ixv); /* >= 0: checked by sf_validate_args */
        if ((uint64_t)ix > len)
            return index_out_of_range(ix, pname, len, err);
        index = (size_t)ix;
    }
    bool replace = index < len;

    scan sc = {0};
    /* page (64) + '-' + type (64) + '-' + a number; never truncated */
    char prefix[SF_NAME_MAX * 2 + 3];
    char gen[sizeof prefix + 24];
    if (idv != NULL) {
        sc.want = json_string_value(idv);
        sc.want_len = json_string_length(idv);
        if (replace) {
            sc.skip_sections = secs;
            sc.skip_index = index;
        }
    } else if (!replace) {
        int n = snprintf(prefix, sizeof prefix, "%s-%s-", pname, type);
        sc.prefix = prefix;
        sc.prefix_len = (size_t)n;
        /* n sections can hold at most n of the numbers 2..n+2: one stays free */
        sc.ntaken = count_sections(pages) + 3;
        sc.taken = calloc(sc.ntaken, sizeof *sc.taken);
        if (sc.taken == NULL)
            return oom(err);
    }
    int rc = scan_draft(pages, &sc, err);
    size_t gen_k = 0; /* 0: "<prefix>main" */
    if (rc == 0 && sc.taken != NULL && sc.main_taken)
        for (gen_k = 2; sc.taken[gen_k]; gen_k++)
            ;
    free(sc.taken);
    if (rc != 0)
        return -1;

    const char *id;
    if (idv != NULL) {
        if (sc.found)
            return tq_error_set(err, TQ_E_DUPLICATE_SECTION_ID,
                                "section id \"%s\" already exists on page \"%.80s\" at index %zu",
                                sc.want, sc.at.page, sc.at.index);
        id = sc.want;
    } else if (replace) {
        id = json_string_value(json_object_get(json_array_get(secs, index), "id"));
    } else {
        gen_name(gen, sizeof gen, prefix, gen_k);
        id = gen;
        if (strlen(gen) > SF_NAME_MAX)
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT,
                                "args.section.id: the generated id \"%s\" would be longer than %d "
                                "bytes; give the section an explicit id",
                                gen, SF_NAME_MAX);
    }

    /* Everything that depends on the arguments has been checked: change.
     * A shallow copy: the fields' values are shared with args (see
     * storefront.h); only the copy gets the "id". */
    json_t *sec = json_copy(in);
    if (sec == NULL)
        return oom(err);
    if (json_object_set_new(sec, "id", json_string(id)) != 0) {
        json_decref(sec);
        return oom(err);
    }
    id = json_string_value(json_object_get(sec, "id"));

    made m = {0};
    json_t *old = NULL;
    if (replace) {
        old = json_incref(json_array_get(secs, index));
        json_array_set_new(secs, index, sec); /* cannot fail: index < len */
    } else {
        if (ensure_sections(st->draft, pages, pname, &secs, &m, err) != 0) {
            json_decref(sec);
            return -1;
        }
        if (json_array_append_new(secs, sec) != 0) {
            made_undo(&m);
            return oom(err);
        }
    }

    rc = check_size(st, max ? growth_bound(sec, pname) : 0, max, err);
    if (rc == 0) {
        *result = json_pack("{s:s, s:s, s:I, s:b, s:I}", "id", id, "page", pname, "index",
                            (json_int_t)index, "created", !replace, "version",
                            (json_int_t)(st->version + 1));
        if (*result == NULL)
            rc = oom(err);
    }
    if (rc != 0) {
        if (replace) {
            json_array_set_new(secs, index, old); /* gives our reference back */
        } else {
            json_array_remove(secs, index);
            made_undo(&m);
        }
        return -1;
    }
    json_decref(old);
    st->version++;
    return 0;
}

/* Find section id (args.id) for remove and move: NOT_FOUND if absent. */
static int find_section(sf_state *st, const json_t *args, json_t **pages, sec_loc *at,
                        tq_error *err)
{
    json_t *idv = json_object_get(args, "id");
    scan sc = {.want = json_string_value(idv), .want_len = json_string_length(idv)};
    if (draft_pages(st->draft, pages, err) != 0 || scan_draft(*pages, &sc, err) != 0)
        return -1;
    if (!sc.found)
        return tq_error_set(err, TQ_E_NOT_FOUND, "section \"%s\" not found in the draft", sc.want);
    *at = sc.at;
    return 0;
}

static int op_remove(sf_state *st, const json_t *args, json_t **result, tq_error *err)
{
    json_t *pages;
    sec_loc at;
    if (find_section(st, args, &pages, &at, err) != 0)
        return -1;
    json_t *sec = json_incref(json_array_get(at.sections, at.index));
    json_array_remove(at.sections, at.index);
    /* Removing never grows the draft: no size check, so an oversized draft
     * (limit lowered since) can always be shrunk. */
    *result = json_pack("{s:s, s:I, s:I}", "page", at.page, "index", (json_int_t)at.index,
                        "version", (json_int_t)(st->version + 1));
    if (*result == NULL) {
        json_array_insert_new(at.sections, at.index, sec); /* capacity is still there */
        return oom(err);
    }
    json_decref(sec);
    st->version++;
    return 0;
}

static int op_move(sf_state *st, const json_t *args, size_t max, json_t **result, tq_error *err)
{
    const char *tname = json_string_value(json_object_get(args, "page"));
    json_int_t ix = json_integer_value(json_object_get(args, "index"));
    json_t *pages;
    sec_loc at;
    if (find_section(st, args, &pages, &at, err) != 0)
        return -1;
    json_t *tsecs = NULL;
    json_t *tpage = json_object_get(pages, tname);
    if (tpage != NULL && page_sections(tname, tpage, &tsecs, err) != 0)
        return -1;
    size_t tlen = json_array_size(tsecs);
    if (tsecs == at.sections)
        tlen--; /* positions are counted without the section itself */
    if ((uint64_t)ix > tlen)
        return index_out_of_range(ix, tname, tlen, err);
    size_t index = (size_t)ix;

    json_t *sec = json_incref(json_array_get(at.sections, at.index));
    json_array_remove(at.sections, at.index);
    made m;
    if (ensure_sections(st->draft, pages, tname, &tsecs, &m, err) != 0) {
        json_array_insert_new(at.sections, at.index, sec);
        return -1;
    }
    int rc = 0;
    if (json_array_insert(tsecs, index, sec) != 0) {
        made_undo(&m);
        json_array_insert_new(at.sections, at.index, sec);
        return oom(err);
    }
    rc = check_size(st, max ? growth_bound(sec, tname) : 0, max, err);
    if (rc == 0) {
        *result = json_pack("{s:s, s:I, s:I}", "page", tname, "index", (json_int_t)index,
                            "version", (json_int_t)(st->version + 1));
        if (*result == NULL)
            rc = oom(err);
    }
    if (rc != 0) {
        json_array_remove(tsecs, index);
        made_undo(&m);
        /* the source array still has the capacity it had: no allocation */
        json_array_insert_new(at.sections, at.index, sec);
        return -1;
    }
    json_decref(sec);
    st->version++;
    return 0;
}

static int op_get(sf_state *st, json_t **result, tq_error *err)
{
    if (st->draft == NULL)
        return tq_error_set(err, TQ_E_INTERNAL, "draft: missing");
    /* A copy, not a reference: later ops of the same batch edit the draft in
     * place before this result is encoded. */
    json_t *r = json_object();
    if (r == NULL || json_object_set_new(r, "draft", json_deep_copy(st->draft)) != 0 ||
        json_object_set_new(r, "version", json_integer((json_int_t)st->version)) != 0) {
        json_decref(r);
        return oom(err);
    }
    *result = r;
    return 0;
}

static int op_publish(sf_state *st, json_t **result, tq_error *err)
{
    if (st->draft == NULL)
        return tq_error_set(err, TQ_E_INTERNAL, "draft: missing");
    json_t *copy = json_deep_copy(st->draft);
    if (copy == NULL)
        return oom(err);
    *result = json_pack("{s:I}", "version", (json_int_t)(st->version + 1));
    if (*result == NULL) {
        json_decref(copy);
        return oom(err);
    }
    json_decref(st->published);
    st->published = copy;
    st->version++;
    return 0;
}

static int op_discard(sf_state *st, json_t **result, tq_error *err)
{
    /* A published copy a direct writer stored as something else would make
     * the draft unreadable for every later op. */
    if (st->published != NULL && !json_is_object(st->published))
        return tq_error_set(err, TQ_E_INTERNAL,
                            "stored published config is not a JSON object; draft not changed");
    json_t *copy = st->published != NULL ? json_deep_copy(st->published)
                                         : json_pack("{s:{}}", "pages");
    if (copy == NULL)
        return oom(err);
    *result = json_pack("{s:I}", "version", (json_int_t)(st->version + 1));
    if (*result == NULL) {
        json_decref(copy);
        return oom(err);
    }
    json_decref(st->draft);
    st->draft = copy;
    st->size_ub = 0;
    st->version++;
    return 0;
}

/* ---- repair: draft.check and draft.repair ---- */

typedef enum pb_kind { PB_DUPLICATE_ID, PB_MISSING_ID, PB_BAD_ID, PB_BAD_TYPE, PB_BAD_SHAPE } pb_kind;

static const char *const pb_names[] = {
    [PB_DUPLICATE_ID] = "duplicate_id", [PB_MISSING_ID] = "missing_id", [PB_BAD_ID] = "bad_id",
    [PB_BAD_TYPE] = "bad_type",         [PB_BAD_SHAPE] = "bad_shape",
};

#define AT_NONE SIZE_MAX /* problem.index: not at one section */

/* Where an id was seen first. */
typedef struct first_at {
    const char *page;
    size_t index;
} first_at;

/* One problem; every pointer points into the walked draft. */
typedef struct problem {
    pb_kind kind;
    const char *page; /* NULL: not at one page */
    size_t index;     /* AT_NONE: not at one section */
    const json_t *id; /* the section's id when it is a string, else NULL */
    const json_t *type; /* bad_type built from the type: that string */
    const char *why;  /* fixed text; NULL: built from the id or type */
    size_t first;     /* duplicate_id: index into walk.firsts */
    size_t fix;       /* index into walk.fixes, or AT_NONE: repair cannot fix it */
} problem;

/* A section that needs a generated id. */
typedef struct fix {
    const char *page;
    size_t index;
    const char *type;
    const json_t *from; /* the duplicate id, NULL: the section had none */
    const char *fail;   /* why no id can be generated; NULL: `to` holds it */
    char to[SF_NAME_MAX * 2 + 28];
} fix;

typedef struct walk {
    problem *pb;
    size_t npb, pbcap;
    fix *fx;
    size_t nfx, fxcap;
    first_at *firsts;
    size_t nfirsts, firstcap;
    json_t *seen; /* every string id of the draft (and each generated one) -> firsts index */
    bool oom;
} walk;

/* Grow *arr (elements of size sz, *cap of them) to hold one more. */
static bool grow(void **arr, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap)
        return true;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, ncap * sz);
    if (p == NULL)
        return false;
    *arr = p;
    *cap = ncap;
    return true;
}

static problem *add_pb(walk *w, pb_kind kind, const char *page, size_t index, const char *why)
{
    if (w->oom || !grow((void **)&w->pb, &w->pbcap, w->npb, sizeof *w->pb)) {
        w->oom = true;
        return NULL;
    }
    problem *p = &w->pb[w->npb++];
    *p = (problem){.kind = kind, .page = page, .index = index, .why = why, .fix = AT_NONE};
    return p;
}

/* s[0..len) cut to at most SF_CLIP_MAX bytes on a UTF-8 character boundary. */
static size_t clip_len(const char *s, size_t len)
{
    if (len <= SF_CLIP_MAX)
        return len;
    len = SF_CLIP_MAX;
    while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
        len--;
    return len;
}

static json_t *clip_string(const char *s, size_t len)
{
    return json_stringn_nocheck(s, clip_len(s, len));
}

static const char *page_shape_why(const json_t *page)
{
    if (!json_is_object(page))
        return "the page must be an object";
    const json_t *secs = json_object_get(page, "sections");
    return secs != NULL && !json_is_array(secs) ? "the page's \"sections\" must be an array" : NULL;
}

static void walk_section(walk *w, const char *pname, bool pname_ok, const json_t *secs, size_t i)
{
    const json_t *sec = json_array_get(secs, i);
    if (!json_is_object(sec)) {
        add_pb(w, PB_BAD_SHAPE, pname, i, "the section must be an object");
        return;
    }
    const json_t *idv = json_object_get(sec, "id");
    const json_t *tv = json_object_get(sec, "type");
    size_t mine = w->npb;
    bool needs_id = false;
    problem *p;
    if (idv == NULL || json_is_null(idv)) {
        add_pb(w, PB_MISSING_ID, pname, i, "the section has no id");
        needs_id = true;
    } else if (!json_is_string(idv)) {
        add_pb(w, PB_BAD_ID, pname, i, "the section's id must be a string");
    } else {
        const char *id = json_string_value(idv);
        size_t len = json_string_length(idv);
        json_t *at = json_object_getn(w->seen, id, len);
        if (at != NULL) {
            if ((p = add_pb(w, PB_DUPLICATE_ID, pname, i, NULL)) != NULL)
                p->first = (size_t)json_integer_value(at);
            needs_id = true;
        } else if (!w->oom) {
            if (!grow((void **)&w->firsts, &w->firstcap, w->nfirsts, sizeof *w->firsts) ||
                json_object_setn_new_nocheck(w->seen, id, len,
                                             json_integer((json_int_t)w->nfirsts)) != 0) {
                w->oom = true;
                return;
            }
            w->firsts[w->nfirsts++] = (first_at){.page = pname, .index = i};
        }
        if (!sf_valid_name(id, len))
            add_pb(w, PB_BAD_ID, pname, i, NULL);
    }
    if (tv == NULL)
        add_pb(w, PB_BAD_TYPE, pname, i, "the section has no type");
    else if (!json_is_string(tv))
        add_pb(w, PB_BAD_TYPE, pname, i, "the section's type must be a string");
    else if (!json_is_name(tv) && (p = add_pb(w, PB_BAD_TYPE, pname, i, NULL)) != NULL)
        p->type = tv;
    for (size_t k = mine; k < w->npb && json_is_string(idv); k++)
        w->pb[k].id = idv;
    if (!needs_id || w->oom)
        return;
    if (!grow((void **)&w->fx, &w->fxcap, w->nfx, sizeof *w->fx)) {
        w->oom = true;
        return;
    }
    fix *f = &w->fx[w->nfx];
    *f = (fix){.page = pname, .index = i, .type = json_string_value(tv),
               .from = json_is_string(idv) ? idv : NULL};
    if (!pname_ok)
        f->fail = "no id can be generated: the page name breaks the name rule";
    else if (!json_is_name(tv))
        f->fail = "no id can be generated: the section's type breaks the name rule";
    for (size_t k = mine; k < w->npb; k++)
        if (w->pb[k].kind != PB_BAD_TYPE)
            w->pb[k].fix = w->nfx;
    w->nfx++;
}

/* Phase one: every problem of draft, in stored order, and the sections that
 * need a generated id.  Only reads draft. */
static void walk_draft(walk *w, const json_t *draft)
{
    if (draft == NULL)
        return;
    if (!json_is_object(draft)) {
        add_pb(w, PB_BAD_SHAPE, NULL, AT_NONE, "the draft must be a JSON object");
        return;
    }
    json_t *pages = json_object_get(draft, "pages");
    if (pages == NULL)
        return;
    if (!json_is_object(pages)) {
        add_pb(w, PB_BAD_SHAPE, NULL, AT_NONE, "the draft's \"pages\" must be an object");
        return;
    }
    for (void *it = json_object_iter(pages); it != NULL && !w->oom;
         it = json_object_iter_next(pages, it)) {
        const char *pname = json_object_iter_key(it);
        bool pname_ok = sf_valid_name(pname, json_object_iter_key_len(it));
        json_t *page = json_object_iter_value(it);
        if (!pname_ok)
            add_pb(w, PB_BAD_SHAPE, pname, AT_NONE, "the page name " NAME_RULE);
        const char *why = page_shape_why(page);
        if (why != NULL) {
            add_pb(w, PB_BAD_SHAPE, pname, AT_NONE, why);
            continue;
        }
        const json_t *secs = json_object_get(page, "sections");
        size_t n = json_array_size(secs);
        for (size_t i = 0; i < n && !w->oom; i++)
            walk_section(w, pname, pname_ok, secs, i);
    }
}

/* Phase two: a generated id for every fix, in order, by the rule of
 * section.upsert (<page>-<type>-main, then -2, -3, ..., the first one free
 * in the draft, counting the ids generated before).  A prefix's search
 * resumes where it stopped, since ids are only ever added. */
static void walk_generate(walk *w)
{
    json_t *next = json_object(); /* prefix -> next k to try */
    if (next == NULL) {
        w->oom = true;
        return;
    }
    char prefix[SF_NAME_MAX * 2 + 3];
    for (size_t f = 0; f < w->nfx && !w->oom; f++) {
        fix *x = &w->fx[f];
        if (x->fail != NULL)
            continue;
        snprintf(prefix, sizeof prefix, "%s-%s-", x->page, x->type);
        size_t k = (size_t)json_integer_value(json_object_get(next, prefix));
        for (;;) {
            gen_name(x->to, sizeof x->to, prefix, k);
            k = k == 0 ? 2 : k + 1;
            if (json_object_get(w->seen, x->to) == NULL)
                break;
        }
        if (json_object_set_new_nocheck(next, prefix, json_integer((json_int_t)k)) != 0 ||
            json_object_set_new_nocheck(w->seen, x->to, json_integer(-1)) != 0)
            w->oom = true;
        if (strlen(x->to) > SF_NAME_MAX)
            x->fail = "no id can be generated: it would be longer than 64 bytes";
    }
    json_decref(next);
}

static int walk_run(walk *w, const json_t *draft, bool generate)
{
    memset(w, 0, sizeof *w);
    w->seen = json_object();
    w->oom = w->seen == NULL;
    if (!w->oom)
        walk_draft(w, draft);
    if (!w->oom && generate)
        walk_generate(w);
    return w->oom ? -1 : 0;
}

static void walk_free(walk *w)
{
    free(w->pb);
    free(w->fx);
    free(w->firsts);
    json_decref(w->seen);
}

static json_t *page_or_null(const char *page)
{
    return page != NULL ? clip_string(page, strlen(page)) : json_null();
}

static json_t *index_or_null(size_t index)
{
    return index != AT_NONE ? json_integer((json_int_t)index) : json_null();
}

static json_t *problem_json(const walk *w, const problem *p, bool repairing)
{
    char msg[512];
    const char *id = p->id ? json_string_value(p->id) : NULL;
    int idlen = p->id ? (int)clip_len(id, json_string_length(p->id)) : 0;
    if (p->kind == PB_DUPLICATE_ID) {
        const first_at *f = &w->firsts[p->first];
        snprintf(msg, sizeof msg, "section id \"%.*s\" is used again here; its first occurrence "
                                  "is on page \"%.*s\" at index %zu",
                 idlen, id, (int)clip_len(f->page, strlen(f->page)), f->page, f->index);
    } else if (p->type != NULL) {
        const char *type = json_string_value(p->type);
        snprintf(msg, sizeof msg, "section type \"%.*s\" " NAME_RULE,
                 (int)clip_len(type, json_string_length(p->type)), type);
    } else if (p->why == NULL) { /* bad_id of a string id */
        snprintf(msg, sizeof msg, "section id \"%.*s\" " NAME_RULE, idlen, id);
    } else {
        snprintf(msg, sizeof msg, "%s", p->why);
    }
    if (repairing && p->fix != AT_NONE && w->fx[p->fix].fail != NULL)
        snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "; %s", w->fx[p->fix].fail);
    else if (repairing && p->fix == AT_NONE)
        snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "; repair leaves it to be fixed by hand");
    json_t *o = json_pack("{s:s, s:o, s:o, s:s}", "problem", pb_names[p->kind], "page",
                          page_or_null(p->page), "index", index_or_null(p->index), "message", msg);
    if (o != NULL && id != NULL &&
        json_object_set_new(o, "id", clip_string(id, json_string_length(p->id))) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Append item to arr unless it holds SF_PROBLEMS_MAX already (then count it
 * in *omitted).  Steals item; false when out of memory. */
static bool append_capped(json_t *arr, json_t *item, size_t *omitted)
{
    if (item == NULL)
        return false;
    if (json_array_size(arr) >= SF_PROBLEMS_MAX) {
        json_decref(item);
        (*omitted)++;
        return true;
    }
    return json_array_append_new(arr, item) == 0;
}

static bool fixed(const walk *w, const problem *p)
{
    return p->fix != AT_NONE && w->fx[p->fix].fail == NULL;
}

/* The problems of w (repairing: only those the repair leaves) as an array. */
static json_t *problems_json(const walk *w, bool repairing, size_t *omitted)
{
    json_t *arr = json_array();
    *omitted = 0;
    for (size_t i = 0; arr != NULL && i < w->npb; i++) {
        if (repairing && fixed(w, &w->pb[i]))
            continue;
        if (json_array_size(arr) >= SF_PROBLEMS_MAX) {
            (*omitted)++;
            continue;
        }
        if (!append_capped(arr, problem_json(w, &w->pb[i], repairing), omitted)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

json_t *sf_check_draft(const json_t *draft, size_t *omitted)
{
    walk w;
    size_t dummy;
    json_t *r = walk_run(&w, draft, false) == 0
                    ? problems_json(&w, false, omitted ? omitted : &dummy)
                    : NULL;
    walk_free(&w);
    return r;
}

/* Set "<name>" = n in o when n > 0 (a capped list's omitted count). */
static int set_omitted(json_t *o, const char *name, size_t n)
{
    return n == 0 ? 0 : json_object_set_new(o, name, json_integer((json_int_t)n));
}

static int op_check(sf_state *st, json_t **result, tq_error *err)
{
    size_t omitted;
    json_t *pbs = sf_check_draft(st->draft, &omitted);
    json_t *r = pbs ? json_pack("{s:o, s:I}", "problems", pbs, "version", (json_int_t)st->version)
                    : NULL;
    if (r == NULL || set_omitted(r, "omitted", omitted) != 0) {
        json_decref(r);
        return oom(err);
    }
    *result = r;
    return 0;
}

/* The draft with every successful fix of w applied, as a new document. */
static json_t *repaired_copy(const walk *w, const json_t *draft)
{
    json_t *copy = json_deep_copy(draft);
    json_t *pages = json_object_get(copy, "pages");
    for (size_t f = 0; copy != NULL && f < w->nfx; f++) {
        const fix *x = &w->fx[f];
        if (x->fail != NULL)
            continue;
        json_t *secs = json_object_get(json_object_get(pages, x->page), "sections");
        if (json_object_set_new(json_array_get(secs, x->index), "id", json_string(x->to)) != 0) {
            json_decref(copy);
            copy = NULL;
        }
    }
    return copy;
}

static json_t *renamed_json(const walk *w, size_t *omitted, size_t *nrenamed)
{
    json_t *arr = json_array();
    *omitted = *nrenamed = 0;
    for (size_t f = 0; arr != NULL && f < w->nfx; f++) {
        const fix *x = &w->fx[f];
        if (x->fail != NULL)
            continue;
        (*nrenamed)++;
        json_t *from = x->from ? clip_string(json_string_value(x->from),
                                             json_string_length(x->from))
                               : json_null();
        json_t *item = json_pack("{s:s, s:I, s:o, s:s}", "page", x->page, "index",
                                 (json_int_t)x->index, "from", from, "to", x->to);
        if (!append_capped(arr, item, omitted)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

static int op_repair(sf_state *st, const json_t *args, size_t max, json_t **result, tq_error *err)
{
    bool dry = json_is_true(json_object_get(args, "dry_run"));
    walk w;
    json_t *copy = NULL, *renamed = NULL, *left = NULL, *r = NULL;
    size_t nrenamed = 0, ren_omitted = 0, left_omitted = 0, size = 0;
    int rc = 0;
    if (walk_run(&w, st->draft, true) != 0 ||
        (renamed = renamed_json(&w, &ren_omitted, &nrenamed)) == NULL ||
        (left = problems_json(&w, true, &left_omitted)) == NULL) {
        rc = oom(err);
        goto out;
    }
    bool write = nrenamed > 0 && !dry;
    if (write) {
        if ((copy = repaired_copy(&w, st->draft)) == NULL) {
            rc = oom(err);
            goto out;
        }
        if (max != 0 && (size = jdump_size(copy)) > max) {
            rc = tq_error_set(err, TQ_E_DRAFT_TOO_LARGE,
                              "the repaired draft would be %zu bytes, over the limit "
                              "max_draft_bytes = %zu; nothing was changed",
                              size, max);
            goto out;
        }
    }
    r = json_pack("{s:O, s:O, s:I}", "renamed", renamed, "unrepaired", left, "version",
                  (json_int_t)(st->version + (write ? 1 : 0)));
    if (r == NULL || set_omitted(r, "renamed_omitted", ren_omitted) != 0 ||
        set_omitted(r, "unrepaired_omitted", left_omitted) != 0) {
        json_decref(r);
        rc = oom(err);
        goto out;
    }
    *result = r;
    if (write) {
        json_decref(st->draft);
        st->draft = copy;
        copy = NULL;
        st->size_ub = size; /* exact when measured, else 0 = unknown */
        st->version++;
    }
out:
    json_decref(copy);
    json_decref(renamed);
    json_decref(left);
    walk_free(&w);
    return rc;
}

int sf_apply(sf_state *st, sf_op op, const json_t *args, size_t max_draft_bytes,
             json_t **result, tq_error *err)
{
    if (result == NULL || st == NULL)
        return tq_error_set(err, TQ_E_INTERNAL, "sf_apply: no state or result pointer");
    *result = NULL;
    /* Cheap (top-level keys only) and keeps the edits below safe whatever
     * the caller checked before queueing. */
    if (sf_validate_args(op, args, err) != 0)
        return -1;
    /* A direct writer may have stored any version; the next number must
     * exist (signed overflow is undefined, and a wrapped version would
     * defeat the cache's guard). */
    if (sf_op_mutates(op) && st->version == INT64_MAX)
        return tq_error_set(err, TQ_E_INTERNAL,
                            "stored version is %" PRId64 ", the largest there is: no further "
                            "change can be numbered; not changed",
                            st->version);
    switch (op) {
    case SF_OP_PING:
        *result = json_pack("{s:b}", "pong", 1);
        return *result != NULL ? 0 : oom(err);
    case SF_OP_SECTION_UPSERT:
        return op_upsert(st, args, max_draft_bytes, result, err);
    case SF_OP_SECTION_REMOVE:
        return op_remove(st, args, result, err);
    case SF_OP_SECTION_MOVE:
        return op_move(st, args, max_draft_bytes, result, err);
    case SF_OP_DRAFT_GET:
        return op_get(st, result, err);
    case SF_OP_DRAFT_PUBLISH:
        return op_publish(st, result, err);
    case SF_OP_DRAFT_DISCARD:
        return op_discard(st, result, err);
    case SF_OP_DRAFT_CHECK:
        return op_check(st, result, err);
    case SF_OP_DRAFT_REPAIR:
        return op_repair(st, args, max_draft_bytes, result, err);
    default:
        return tq_error_set(err, TQ_E_INTERNAL, "unknown op %d", (int)op);
    }
}
