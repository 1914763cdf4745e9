/*
 * storefront_family.c - the storefront ops as an op family (family.h): the
 * tenant's state is its row of the [storage] table (storage.h), parsed;
 * requests apply to it in memory with storefront.c and the mapped columns
 * are written back: the draft and the version always, the published copy
 * only when a draft.publish changed it, updated_at when mapped.
 *
 * The shard's draft cache keeps the state a batch committed (or read) for
 * the tenant's next batch: begin() takes it out, and the read sends its row
 * version (version, xmin) so PostgreSQL returns the JSON only when the row
 * changed; with a cached state a batch may apply first and send a guard
 * instead of a read (one round trip).
 *
 * Must not: answer requests, send pipelines, or keep a reference into a
 * request's args beyond what sf_apply documents.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "draft_cache.h"
#include "family.h"
#include "jdump.h"
#include "jparse.h"
#include "job.h"
#include "log.h"
#include "storefront.h"

struct sf_batch {
    sf_state st;
    int64_t before;              /* st.version when begin()/load() had it */
    bool cached;                 /* st came from the draft cache */
    bool exists;                 /* the tenant has a row (else an INSERT creates it) */
    bool missing;                /* no row, and create_missing is off: NOT_FOUND */
    bool pub_dirty;              /* a draft.publish changed the published copy */
    bool unusable;               /* the stored draft is not a JSON object: only
                                  * draft.check and draft.repair answer (bad_shape) */
    char unusable_why[200];
    uint32_t xmin;               /* the row's xmin as read or written */
    size_t cost;                 /* what st is reckoned at in the draft cache */
    char cached_version[24], cached_xmin[16]; /* read/guard parameters */
    char *draft_text, *pub_text; /* the write's parameters */
    size_t draft_len, pub_len;
    char version[24];
};

static bool sf_fam_mutates(int op) { return sf_op_mutates((sf_op)op); }
static bool sf_fam_needs_db(int op) { return sf_op_needs_db((sf_op)op); }

static int sf_fam_pass(const struct job *j, json_t **result, tq_error *err)
{
    /* (only ping needs no database: sf_op_needs_db) */
    (void)j;
    *result = json_pack("{s:b}", "pong", 1);
    return *result ? 0 : tq_error_set(err, TQ_E_INTERNAL, "out of memory");
}

static void *sf_fam_new(void) { return calloc(1, sizeof(struct sf_batch)); }

static void sf_fam_clear(struct sf_batch *b)
{
    sf_state_clear(&b->st);
    free(b->draft_text);
    free(b->pub_text);
    *b = (struct sf_batch){0};
}

static void sf_fam_free(void *fs)
{
    if (!fs)
        return;
    sf_fam_clear(fs);
    free(fs);
}

static bool sf_fam_begin(void *fs, const struct fam_ctx *ctx, bool mutating)
{
    (void)mutating;
    struct sf_batch *b = fs;
    b->cached = dcache_take(ctx->cache, ctx->tenant, ctx->tenant_len, ctx->hash, &b->st,
                            &b->xmin, &b->cost);
    snprintf(b->cached_version, sizeof b->cached_version, "%" PRId64,
             b->cached ? b->st.version : -1);
    snprintf(b->cached_xmin, sizeof b->cached_xmin, "%" PRIu32, b->cached ? b->xmin : 0);
    b->before = b->st.version;
    b->exists = b->cached;
    return b->cached;
}

static int sf_fam_read(void *fs, const struct fam_ctx *ctx, struct pg_stmt *out)
{
    struct sf_batch *b = fs;
    out[0] = sql_stmt(ctx->sql, ST_SF_SELECT, ctx->tenant, b->cached_version, b->cached_xmin,
                      NULL);
    return 1;
}

static int sf_fam_guard(void *fs, const struct fam_ctx *ctx, struct pg_stmt *out)
{
    struct sf_batch *b = fs;
    out[0] = sql_stmt(ctx->sql, ST_SF_GUARD, ctx->tenant, b->cached_version, b->cached_xmin,
                      NULL);
    return 1;
}

/* Load the tenant's row (or the empty state) from the SELECT's result,
 * unless the state taken from the draft cache still is the row's version. */
static int sf_fam_load(void *fs, const struct fam_ctx *ctx, PGresult *const *res, char *why,
                       size_t whylen)
{
    struct sf_batch *b = fs;
    const PGresult *r = res[0];
    if (PQntuples(r) == 0) {
        sf_state_clear(&b->st);
        sf_state_init_empty(&b->st);
        b->before = 0;
        b->exists = false;
        b->missing = !ctx->storage->create_missing;
        return 0;
    }
    b->exists = true;
    b->xmin = (uint32_t)strtoul(PQgetvalue(r, 0, 3), NULL, 10);
    if (b->cached && PQgetvalue(r, 0, 4)[0] == 't') {
        ctx->cache->hits++;
        b->before = b->st.version;
        return 0;
    }
    ctx->cache->misses++;
    sf_state_clear(&b->st);
    b->cost = dcache_cost((size_t)PQgetlength(r, 0, 0) + (size_t)PQgetlength(r, 0, 1));
    const char *text = PQgetvalue(r, 0, 0);
    size_t len = (size_t)PQgetlength(r, 0, 0);
    char jerr[160];
    bool big = false, pub_big = false;
    /* SQL NULL and JSON null (a foreign table's column) read as no pages */
    b->st.draft = PQgetisnull(r, 0, 0) ? json_null() : jparse(text, len, &big, jerr, sizeof jerr);
    if (b->st.draft && json_is_null(b->st.draft)) {
        json_decref(b->st.draft);
        b->st.draft = json_pack("{s:{}}", "pages");
        text = "";
        len = 0;
    }
    if (!b->st.draft || !json_is_object(b->st.draft)) {
        /* not a failure of the batch: draft.check and draft.repair report
         * it as bad_shape; the other ops refuse it (st stays a valid empty
         * state, never written and never cached) */
        snprintf(b->unusable_why, sizeof b->unusable_why,
                 "the stored draft is not a JSON object (%s)",
                 b->st.draft ? "another JSON value" : jerr);
        json_decref(b->st.draft);
        b->st.draft = json_pack("{s:{}}", "pages");
        b->unusable = true;
        b->st.version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
        b->before = b->st.version;
        (void)why;
        (void)whylen;
        return b->st.draft ? 0 : -1;
    }
    b->st.size_ub = sf_stored_size_ub(text, len);
    if (!PQgetisnull(r, 0, 1)) {
        b->st.published =
            jparse(PQgetvalue(r, 0, 1), (size_t)PQgetlength(r, 0, 1), &pub_big, jerr, sizeof jerr);
        if (!b->st.published) {
            snprintf(why, whylen, "stored published config is not JSON (%s)", jerr);
            return -1;
        }
        if (json_is_null(b->st.published)) {
            json_decref(b->st.published);
            b->st.published = NULL;
        }
    }
    /* jsonb prints big numbers without exponent; a direct writer may have
     * stored an integer beyond int64, which jansson cannot hold as one */
    if (big || pub_big)
        log_warn("shard %d tenant \"%s\": stored document has integers beyond 64 bits; they "
                 "are read as floating point",
                 ctx->shard_id, ctx->tenant);
    b->st.version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    b->before = b->st.version;
    return 0;
}

/* What an op answers on a tenant whose stored draft is unusable. */
static int unusable_answer(const struct sf_batch *b, const struct fam_ctx *ctx, sf_op op,
                           json_t **result, tq_error *err)
{
    if (op != SF_OP_DRAFT_CHECK && op != SF_OP_DRAFT_REPAIR)
        return tq_error_set(err, TQ_E_INTERNAL,
                            "tenant \"%s\": %s; draft.check reports it, and it must be "
                            "repaired in the table (tenantq cannot guess the draft)",
                            ctx->tenant, b->unusable_why);
    json_t *pbs = json_pack("[{s:s, s:n, s:n, s:s}]", "problem", "bad_shape", "page", "index",
                            "message", b->unusable_why);
    *result = !pbs ? NULL
              : op == SF_OP_DRAFT_CHECK
                  ? json_pack("{s:o, s:I}", "problems", pbs, "version", (json_int_t)b->st.version)
                  : json_pack("{s:[], s:o, s:I}", "renamed", "unrepaired", pbs, "version",
                              (json_int_t)b->st.version);
    return *result ? 0 : tq_error_set(err, TQ_E_INTERNAL, "out of memory");
}

static int sf_fam_apply(void *fs, const struct fam_ctx *ctx, const struct job *j,
                        json_t **result, tq_error *err)
{
    struct sf_batch *b = fs;
    if (b->missing)
        return tq_error_set(err, TQ_E_NOT_FOUND,
                            "tenant \"%s\" has no row in %s (create_missing is off)",
                            ctx->tenant, ctx->storage->table_name);
    if (b->unusable)
        return unusable_answer(b, ctx, (sf_op)j->op, result, err);
    int64_t v = b->st.version;
    if (sf_apply(&b->st, (sf_op)j->op, j->req.args, (size_t)ctx->cfg->max_draft_bytes, result,
                 err) < 0)
        return -1;
    if (j->op == SF_OP_DRAFT_PUBLISH && b->st.version != v)
        b->pub_dirty = true;
    return 0;
}

static bool sf_fam_changed(const void *fs)
{
    const struct sf_batch *b = fs;
    return b->st.version != b->before;
}

static int sf_fam_write(void *fs, const struct fam_ctx *ctx, struct pg_stmt *out, tq_error *err)
{
    struct sf_batch *b = fs;
    /* the published copy is written (and serialised) only when it changed:
     * unchanged, it would be a second TOAST write of the same JSON */
    enum sql_stmt which = !b->exists    ? ST_SF_INSERT
                          : b->pub_dirty ? ST_SF_UPDATE_PUB
                                         : ST_SF_UPDATE;
    bool pub = which != ST_SF_UPDATE && b->st.published;
    b->draft_text = jdump(b->st.draft, b->st.size_ub, &b->draft_len);
    b->pub_text = pub ? jdump(b->st.published, 0, &b->pub_len) : NULL;
    if (!pub && b->st.published)
        b->pub_len = b->draft_len; /* (what the draft cache reckons it at) */
    snprintf(b->version, sizeof b->version, "%" PRId64, b->st.version);
    if (!b->draft_text || (pub && !b->pub_text)) {
        tq_error_set(err, TQ_E_INTERNAL, "tenant \"%s\": out of memory serialising the draft",
                     ctx->tenant);
        return -1;
    }
    /* parameters: tenant, draft, version[, published] */
    out[0] = sql_stmt(ctx->sql, which, ctx->tenant, b->draft_text, b->version,
                      which == ST_SF_UPDATE ? NULL : b->pub_text);
    return 1;
}

static void sf_fam_end(void *fs, const struct fam_ctx *ctx, bool kept, PGresult *const *wres)
{
    struct sf_batch *b = fs;
    if (kept && wres) {
        /* the committed state is the row's new version: keep it parsed */
        if (PQntuples(wres[0]) == 1 && !PQgetisnull(wres[0], 0, 0)) {
            b->st.size_ub = b->draft_len;
            b->xmin = (uint32_t)strtoul(PQgetvalue(wres[0], 0, 0), NULL, 10);
            b->cost = dcache_cost(b->draft_len + b->pub_len);
        } else {
            kept = false;
        }
    }
    /* xmin below 3 is a special id (2: the row was frozen), which a later
     * write followed by another freeze would show again: never trust it */
    if (kept && !b->unusable && b->st.version > 0 && b->xmin >= 3)
        dcache_put(ctx->cache, ctx->tenant, ctx->tenant_len, ctx->hash, &b->st, b->xmin, b->cost);
    sf_fam_clear(b);
}

const struct op_family storefront_family = {
    .id = FAM_STOREFRONT,
    .kind = FAM_STATE,
    .name = "storefront",
    .mutates = sf_fam_mutates,
    .needs_db = sf_fam_needs_db,
    .pass = sf_fam_pass,
    .state_new = sf_fam_new,
    .state_free = sf_fam_free,
    .begin = sf_fam_begin,
    .read = sf_fam_read,
    .guard = sf_fam_guard,
    .load = sf_fam_load,
    .apply = sf_fam_apply,
    .changed = sf_fam_changed,
    .write = sf_fam_write,
    .end = sf_fam_end,
};
