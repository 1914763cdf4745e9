/*
 * sql_family.c - SQL operations as an op family (family.h, FAM_STATEMENTS):
 * each request runs its op file's statement, with its arguments bound as
 * text parameters (sqlargs.h), inside the batch's transaction; the result
 * is {"rows":[...],"count":N} (sqlresult.h).
 *
 * Outcomes: a statement that returns or affects no row, when its op says
 * reject_if_empty, is REJECTED with the op's message; an integrity
 * violation (SQLSTATE class 23) is REJECTED naming the constraint, and
 * RAISE EXCEPTION (P0001) with its message; a lock the statement waited
 * for in vain (55P03, a row lock) is LOCK_TIMEOUT; a transient server error
 * DB_UNAVAILABLE; anything else INTERNAL, logged with the SQLSTATE.
 *
 * Must not: splice an argument into SQL, answer requests, send pipelines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "family.h"
#include "job.h"
#include "log.h"
#include "opfile.h"
#include "sqlargs.h"
#include "sqlresult.h"

/* Requests of one SQL batch at most: one statement each, after BEGIN,
 * the timeouts, the lock and a key lookup, and before the key records and
 * COMMIT, within a pipeline. */
struct sql_batch {
    sqlargs args[PG_MAX_REQUESTS];
    int nargs;
};

static bool sql_mutates(int op)
{
    (void)op;
    return true; /* every SQL op is a critical section: lock, key record, commit */
}

static bool sql_needs_db(int op)
{
    (void)op;
    return true;
}

static void *sql_new(void) { return calloc(1, sizeof(struct sql_batch)); }

static void sql_clear(struct sql_batch *b)
{
    for (int i = 0; i < b->nargs; i++)
        sqlargs_clear(&b->args[i]);
    b->nargs = 0;
}

static void sql_free(void *fs)
{
    if (!fs)
        return;
    sql_clear(fs);
    free(fs);
}

static void sql_end(void *fs, const struct fam_ctx *ctx, bool kept, PGresult *const *wres)
{
    (void)ctx;
    (void)kept;
    (void)wres;
    sql_clear(fs);
}

static bool sql_begin(void *fs, const struct fam_ctx *ctx, bool mutating)
{
    (void)ctx;
    (void)mutating;
    sql_clear(fs);
    return false;
}

static const char *sql_lock_key(const struct job *j) { return j->def->lock_key_sql; }

static int sql_bind(void *fs, const struct fam_ctx *ctx, const struct job *j, int i,
                    struct pg_stmt *out, tq_error *err)
{
    struct sql_batch *b = fs;
    if (i >= PG_MAX_REQUESTS)
        return tq_error_set(err, TQ_E_INTERNAL, "too many statements in one batch");
    if (i < b->nargs)
        sqlargs_clear(&b->args[i]); /* bound again: its request runs again */
    if (sqlargs_bind(j->def, j->req.args, ctx->tenant, &b->args[i], err) < 0)
        return -1;
    if (i >= b->nargs)
        b->nargs = i + 1;
    *out = (struct pg_stmt){
        .sql = j->def->sql, .nparams = b->args[i].n, .paramv = b->args[i].values};
    return 0;
}

/* The primary message of an error result, first line only, into buf. */
static const char *primary(const PGresult *res, char *buf, size_t len)
{
    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (!m)
        m = PQresultErrorMessage(res);
    snprintf(buf, len, "%.*s", (int)strcspn(m, "\n"), m);
    return buf;
}

static int sql_outcome(const struct fam_ctx *ctx, const struct job *j, const PGresult *res,
                       json_t **result, tq_error *err, bool *undo)
{
    const char *op = j->def->name;
    char msg[256];
    *result = NULL;
    *undo = true;
    switch (pg_classify(res)) {
    case PG_ERR_NONE: {
        int64_t count = sqlresult_count(res);
        if (count == 0 && j->def->reject_if_empty) {
            /* undone: a statement that returned no row may still have
             * changed some (a function it called, a trigger) */
            return tq_error_set(err, TQ_E_REJECTED, "%s: %s", op, j->def->reject_if_empty);
        }
        *result = sqlresult_to_json(res, err);
        if (!*result) {
            log_err("shard %d tenant \"%s\": %s: result not representable: %s", ctx->shard_id,
                    ctx->tenant, op, err->message);
            return -1;
        }
        *undo = false;
        return 0;
    }
    case PG_ERR_UNIQUE:
    case PG_ERR_CONSTRAINT: {
        const char *c = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
        return tq_error_set(err, TQ_E_REJECTED, "%s: violates constraint \"%s\": %s", op,
                            c ? c : "?", primary(res, msg, sizeof msg));
    }
    case PG_ERR_RAISED:
        return tq_error_set(err, TQ_E_REJECTED, "%s: %s", op, primary(res, msg, sizeof msg));
    case PG_ERR_LOCK:
        return tq_error_set(err, TQ_E_LOCK_TIMEOUT,
                            "tenant \"%s\": %s waited longer than lock_timeout_ms for a lock "
                            "its statement needs (a row lock held by another transaction); "
                            "nothing changed",
                            ctx->tenant, op);
    case PG_ERR_SERIALIZATION:
    case PG_ERR_TRANSIENT:
        return tq_error_set(err, TQ_E_DB_UNAVAILABLE, "tenant \"%s\": %s: database error %s (%s); "
                            "not executed", ctx->tenant, op, pg_sqlstate(res),
                            primary(res, msg, sizeof msg));
    case PG_ERR_CONNECTION:
        return tq_error_set(err, TQ_E_DB_UNAVAILABLE,
                            "tenant \"%s\": %s: database connection lost; not executed",
                            ctx->tenant, op);
    case PG_ERR_GUARD:
    case PG_ERR_OTHER:
        break;
    }
    log_err("shard %d tenant \"%s\": %s: SQL error %s: %s", ctx->shard_id, ctx->tenant, op,
            pg_sqlstate(res) ? pg_sqlstate(res) : "-", primary(res, msg, sizeof msg));
    return tq_error_set(err, TQ_E_INTERNAL, "%s: SQL error %s: %s", op,
                        pg_sqlstate(res) ? pg_sqlstate(res) : "-", msg);
}

/* Without reject_if_empty, a statement that succeeded stands as it is. */
static bool sql_commits_blind(const struct job *j) { return !j->def->reject_if_empty; }

const struct op_family sql_family = {
    .id = FAM_SQL,
    .kind = FAM_STATEMENTS,
    .name = "sql",
    .mutates = sql_mutates,
    .needs_db = sql_needs_db,
    .state_new = sql_new,
    .state_free = sql_free,
    .begin = sql_begin,
    .end = sql_end,
    .lock_key = sql_lock_key,
    .bind = sql_bind,
    .outcome = sql_outcome,
    .commits_blind = sql_commits_blind,
};
