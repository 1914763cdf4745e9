/*
 * txn.c - the transaction engine: runs batches (one tenant's queued
 * requests each) in transactions on a shard's connections, with the
 * tenant's advisory lock, the idempotency records, COMMIT and the answers.
 * What a request does is its family's business (family.h).
 *
 * When more lanes are ready than connections are idle, a connection takes
 * several lanes from the head of the ready list (at most max_batch_tenants,
 * and max_batch requests in all) into one transaction: each batch keeps its
 * own lock, read, in-memory apply and write, but BEGIN, COMMIT and the round
 * trips are shared.  A batch that runs alone waits for its advisory lock;
 * batches that share a transaction only try theirs
 * (pg_try_advisory_xact_lock), so a tenant locked elsewhere never holds the
 * others up and no two transactions can wait for each other: a batch that
 * misses its lock, or whose shared transaction fails, goes back to the head
 * of its lane and runs again alone.
 *
 * Transaction (two round trips, pipelined):
 *   BEGIN; set_config(lock_timeout, statement_timeout, ...);
 *   per batch: advisory lock (or try-lock); the family's read; Sync
 *       -> apply every batch's requests in memory, in order; answer the
 *          batches that changed nothing
 *   per batch that changed something: [INSERT key records;] the family's
 *   write;  then COMMIT; Sync  -> reply to each request
 * Batches that only read run without BEGIN (one implicit transaction).
 * Statement batches (the SQL family) have a transaction shape of their
 * own, one savepoint per request, and share transactions with each other
 * only ("statement batches" below).
 *
 * One round trip (txn_start_precomputed), when every batch changes state
 * and its family holds the tenant's state already (the draft cache): apply
 * first, then
 *   BEGIN; set_config(...); per batch: lock (shared: a try-lock that fails
 *   when busy); the family's guard (fails unless the stored state is the one
 *   applied to); [INSERT key records;] the family's write;  COMMIT; Sync
 * A failed guard writes nothing; the batch runs again from the row.
 *
 * Answers wait in the shard's outbox until the callback that produced them
 * has sent the next pipeline (txn_outbox_flush).
 *
 * Must not: block, touch another shard's objects, or reply to a change
 * before COMMIT.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jdump.h"
#include "log.h"
#include "shard_int.h"

/* --- small helpers ------------------------------------------------------- */

static struct fam_ctx batch_ctx(const struct batch *b)
{
    const struct shard *s = b->t->s;
    return (struct fam_ctx){
        .cfg = s->cfg,
        .sql = &s->sql,
        .storage = s->d->storage,
        .cache = &b->t->s->cache,
        .shard_id = s->id,
        .tenant = b->lane->tenant,
        .tenant_len = b->lane->tenant_len,
        .hash = b->lane->hash,
    };
}

static struct pg_stmt stmt(const struct shard *s, enum sql_stmt which, const char *p0,
                           const char *p1, const char *p2, const char *p3)
{
    return sql_stmt(&s->sql, which, p0, p1, p2, p3);
}

/* Answer every request of b still unanswered with the same error. */
static void fail_batch(struct batch *b, tq_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_batch(struct batch *b, tq_code code, const char *fmt, ...)
{
    char msg[TQ_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (int i = 0; i < b->n; i++) {
        if (b->jobs[i])
            shard_fail_job(b->t->s, b->jobs[i], code, msg);
        b->jobs[i] = NULL;
    }
}

/* Whether j has an idempotency record: only a request that changes state
 * and carries a key. */
static bool key_recorded(const struct job *j)
{
    return j->req.key && j->fam->mutates(j->op);
}

/* Whether j reads with a key: a key bound by an edit is refused
 * (IDEMPOTENCY_KEY_REUSED: another op), else ignored, since a read has no
 * effect to record.  Requests that need no database ignore keys. */
static bool key_checked_read(const struct job *j)
{
    return j->req.key && !j->fam->mutates(j->op) && j->fam->needs_db(j->op);
}

static bool batch_answered(const struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        if (b->jobs[i])
            return false;
    return true;
}

/* End the family's part (kept: its outcome stands; wres: its write's
 * results) and clear the batch for its slot's next use. */
static void batch_reset(struct batch *b, bool kept, PGresult *const *wres)
{
    if (b->begun) {
        struct fam_ctx ctx = batch_ctx(b);
        b->fam->end(b->fs, &ctx, kept, wres);
    }
    for (int i = 0; i < b->n; i++) {
        json_decref(b->results[i]);
        b->results[i] = NULL;
    }
    pg_text_array_free(&b->keys);
    pg_text_array_free(&b->new_keys);
    pg_text_array_free(&b->new_fps);
    pg_text_array_free(&b->new_resps);
    json_decref(b->records);
    struct txn *t = b->t;
    void *fstate[FAM__COUNT];
    memcpy(fstate, b->fstate, sizeof fstate);
    *b = (struct batch){
        .t = t, .r_lock = -1, .r_read = -1, .r_lookup = -1, .r_idem = -1, .r_write = -1};
    memcpy(b->fstate, fstate, sizeof fstate);
}

/* The batch's outcome stands: the family may keep its state. */
static void batch_keep(struct batch *b, PGresult *const *wres)
{
    if (b->begun) {
        struct fam_ctx ctx = batch_ctx(b);
        b->fam->end(b->fs, &ctx, true, wres);
        b->begun = false;
    }
}

static void lane_release(struct shard *s, struct lane *lane)
{
    lane->busy = false;
    if (lane->depth > 0)
        ready_push(&s->ready, lane);
    else
        lane_remove(&s->lanes, lane);
}

/* Every request of t has been answered or put back: its lanes are free again
 * (only now, so a lane is never in two transactions at once; the connection
 * may still be busy rolling back).  conn_free says whether it is idle now. */
static void txn_end(struct txn *t, bool conn_free)
{
    struct shard *s = t->s;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        if (!batch_answered(b)) {
            log_err("shard %d tenant \"%s\": transaction ended with requests unanswered", s->id,
                    b->lane->tenant);
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": internal error; not executed",
                       b->lane->tenant);
        }
        /* The family's end still reads the lane: release it last (it may
         * be freed when nothing waits on it). */
        struct lane *lane = b->lane;
        batch_reset(b, false, NULL);
        lane_release(s, lane);
    }
    t->nb = 0;
    t->njobs = 0;
    t->nres = 0;
    t->committing = false;
    t->one_trip = false;
    if (conn_free)
        s->inflight--;
    shard_kick(s);
}

static void rollback_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    (void)c;
    (void)res;
    (void)n;
    (void)lost;
    struct shard *s = arg;
    s->inflight--;
    shard_kick(s);
}

/* After an error inside an explicit transaction the session stays aborted
 * until ROLLBACK (every later statement fails with 25P02). */
static void txn_end_with_rollback(struct txn *t)
{
    struct pgconn *c = t->pc;
    bool in_txn = c->state == PGC_IDLE && PQtransactionStatus(c->conn) != PQTRANS_IDLE;
    if (in_txn) {
        struct pg_stmt rb = {.sql = SQL_ROLLBACK};
        if (pg_pipeline(c, &rb, 1, rollback_done, t->s) == 0) {
            txn_end(t, false);
            return;
        }
    }
    txn_end(t, true);
}

static bool result_ok(const PGresult *r)
{
    if (!r)
        return false;
    ExecStatusType st = PQresultStatus(r);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/* Index of the statement of a pipeline that failed (the ones after it are
 * PIPELINE_ABORTED), or -1. */
static int first_failed(PGresult *const *res, int n)
{
    for (int i = 0; i < n; i++)
        if (!result_ok(res[i]) && res[i] && PQresultStatus(res[i]) != PGRES_PIPELINE_ABORTED)
            return i;
    return -1;
}

/* Answer a batch whose advisory-lock wait ran out (55P03).  The wait was
 * cut at the batch's tightest deadline when that came before
 * lock_timeout_ms: those whose deadline is what ran out hear so; the others
 * hear about the lock.  Nothing changed either way. */
static void fail_batch_lock_timeout(struct batch *b, bool row)
{
    struct txn *t = b->t;
    const char *tenant = b->lane->tenant;
    shard_count(t->s, SHARD_GAUGE_LOCK_TIMEOUTS);
    char lock_msg[TQ_ERRMSG_MAX], dl_msg[TQ_ERRMSG_MAX];
    if (row) {
        /* the write waited for the row itself: someone holds the tenant's
         * row without its advisory lock (SELECT ... FOR UPDATE, or an
         * uncommitted UPDATE of any of its columns) */
        const char *table = t->s->d->storage->table_name;
        snprintf(lock_msg, sizeof lock_msg,
                 "tenant \"%s\": its row in %s stayed locked for %s ms by another transaction "
                 "(an application transaction holding the row, not the advisory lock); "
                 "nothing changed",
                 tenant, table, t->tout_lock);
        snprintf(dl_msg, sizeof dl_msg,
                 "tenant \"%s\": deadline passed while waiting %s ms for its row in %s, which "
                 "another transaction holds (not the advisory lock); not executed",
                 tenant, t->tout_lock, table);
    } else {
        snprintf(lock_msg, sizeof lock_msg,
                 "tenant \"%s\": advisory lock not acquired within %s ms: it is held elsewhere "
                 "(another tenantqd instance or a direct writer); nothing changed",
                 tenant, t->tout_lock);
        snprintf(dl_msg, sizeof dl_msg,
                 "tenant \"%s\": deadline passed while waiting %s ms for the advisory lock, "
                 "which is held elsewhere (another tenantqd instance or a direct writer); "
                 "not executed",
                 tenant, t->tout_lock);
    }
    uint64_t now = now_us();
    for (int i = 0; i < b->n; i++) {
        if (!b->jobs[i])
            continue;
        bool expired = now + 1000 >= b->jobs[i]->deadline_us;
        shard_fail_job(t->s, b->jobs[i], expired ? TQ_E_DEADLINE_EXCEEDED : TQ_E_LOCK_TIMEOUT,
                       expired ? dl_msg : lock_msg);
        b->jobs[i] = NULL;
    }
}

/* Map the first failed statement of a pipeline to a reply for the batch
 * (a transaction of this one batch: the failure is its own). */
static void fail_batch_from_results(struct batch *b, PGresult *const *res, int n)
{
    struct txn *t = b->t;
    int f = first_failed(res, n);
    const PGresult *bad = f >= 0 ? res[f] : NULL;
    const char *state = pg_sqlstate(bad);
    const char *tenant = b->lane->tenant;
    enum pg_err e = bad ? pg_classify(bad) : PG_ERR_OTHER;
    bool at_write = f >= 0 && f == b->r_write && b->fam->kind == FAM_STATE;
    if (e == PG_ERR_LOCK) {
        fail_batch_lock_timeout(b, at_write);
        return;
    }
    if (e == PG_ERR_GUARD && at_write) {
        /* the write found no row to update (or one already there to
         * insert): not the row this transaction read */
        log_err("shard %d tenant \"%s\": the write of its row in %s matched no row", t->s->id,
                tenant, t->s->d->storage->table_name);
        fail_batch(b, TQ_E_INTERNAL,
                   "tenant \"%s\": the row read from %s could not be written back (a row-level "
                   "security policy, a view's condition, or a writer that ignores the advisory "
                   "lock); nothing changed",
                   tenant, t->s->d->storage->table_name);
        return;
    }
    char detail[256] = "no result";
    if (bad) {
        const char *m = PQresultErrorMessage(bad);
        snprintf(detail, sizeof detail, "%.*s", (int)strcspn(m, "\n"), m);
    }
    if (e == PG_ERR_SERIALIZATION) {
        log_info("shard %d tenant \"%s\": serialization failure: %s", t->s->id, tenant, detail);
        fail_batch(b, TQ_E_DB_UNAVAILABLE,
                   "tenant \"%s\": serialization failure (SQLSTATE 40001: %s); not executed, "
                   "safe to retry",
                   tenant, detail);
        return;
    }
    if (e == PG_ERR_TRANSIENT) {
        log_info("shard %d tenant \"%s\": transient database error %s: %s", t->s->id, tenant,
                 state, detail);
        fail_batch(b, TQ_E_DB_UNAVAILABLE,
                   "tenant \"%s\": database error %s (%s); not executed", tenant, state, detail);
        return;
    }
    log_err("shard %d tenant \"%s\": database error %s: %s", t->s->id, tenant,
            state ? state : "-", detail);
    fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": database error %s: %s", tenant,
               state ? state : "-", detail);
}

void txn_outbox_flush(struct shard *s)
{
    for (int i = 0; i < s->nout; i++) {
        struct reply *r = &s->outbox[i];
        if (r->result) {
            job_finish_ok(s->d, &s->sb, r->job, r->result, r->replayed, &r->tm);
            json_decref(r->result);
        } else {
            shard_fail_job(s, r->job, r->err.code, r->err.message);
        }
    }
    s->nout = 0;
}

/* Answer every request of b still unanswered with its result or error.  The
 * answers wait in the shard's outbox until txn_outbox_flush, so that a
 * callback can start the lane's next transaction before it spends time
 * encoding and sending them (results share nothing with the state). */
static void reply_all(struct batch *b)
{
    struct txn *t = b->t;
    struct shard *s = t->s;
    uint64_t now = now_us();
    for (int i = 0; i < b->n; i++) {
        struct job *j = b->jobs[i];
        if (!j)
            continue;
        if (s->nout == s->cfg->max_batch)
            txn_outbox_flush(s); /* (a transaction holds at most max_batch) */
        b->jobs[i] = NULL;
        struct reply *r = &s->outbox[s->nout++];
        r->job = j;
        r->result = b->results[i];
        b->results[i] = NULL;
        if (r->result) {
            r->replayed = b->replayed[i];
            r->tm = (tq_timing){.queue_us = t->start_us - j->recv_us,
                                .exec_us = now - t->start_us,
                                .batch = (uint32_t)b->n};
            stats_timing(r->tm.queue_us, r->tm.exec_us);
        } else {
            r->err = b->errs[i];
        }
    }
}

/* Load the stored idempotency records of this batch's keys. */
static int load_records(struct batch *b, const PGresult *r)
{
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *resp = json_loads(PQgetvalue(r, i, 2), JSON_DECODE_ANY, NULL);
        /* (stored as text: the exact bytes the first answer was built from) */
        json_t *rec = resp ? json_pack("{s:s,s:o}", "f", PQgetvalue(r, i, 1), "r", resp) : NULL;
        if (!rec || json_object_set_new(b->records, PQgetvalue(r, i, 0), rec) < 0)
            return -1;
    }
    return 0;
}

/* j's key is bound to another op or other args. */
static void key_reused(tq_error *err, const struct job *j)
{
    tq_error_set(err, TQ_E_IDEMPOTENCY_KEY_REUSED,
                 "key \"%s\" was used before for tenant \"%s\" with a different op or args",
                 j->req.key, j->req.tenant);
}

/* Whether b's request i (fingerprint fp) has a stored record: then it is
 * answered from it (a repeat: the first execution's answer, never a second
 * effect), or refused when the record is of other args. */
static bool answer_from_record(struct batch *b, int i, const char *fp)
{
    json_t *rec = json_object_get(b->records, b->jobs[i]->req.key);
    if (!rec)
        return false;
    const char *seen = json_string_value(json_object_get(rec, "f"));
    if (seen && strcmp(seen, fp) == 0) {
        b->results[i] = json_incref(json_object_get(rec, "r"));
        b->replayed[i] = true;
    } else {
        key_reused(&b->errs[i], b->jobs[i]);
    }
    return true;
}

/* Apply the batch through its family, in arrival order: each request sees
 * the state the ones before it left.  A repeated key answers from its
 * record instead.  Returns whether the state changed. */
static bool apply_batch(struct batch *b)
{
    struct fam_ctx ctx = batch_ctx(b);
    for (int i = 0; i < b->n; i++) {
        struct job *j = b->jobs[i];
        b->errs[i].code = TQ_OK;
        b->replayed[i] = false;
        b->results[i] = NULL;
        bool keyed = key_recorded(j) && b->records;
        char fp[IDEM_FINGERPRINT_HEX];
        if (key_checked_read(j) && json_object_get(b->records, j->req.key)) {
            key_reused(&b->errs[i], j);
            continue;
        }
        if (keyed) {
            if (idem_fingerprint(j->req.op, j->req.args, fp) < 0) {
                tq_error_set(&b->errs[i], TQ_E_INTERNAL,
                             "out of memory fingerprinting the request");
                continue;
            }
            if (answer_from_record(b, i, fp))
                continue;
        }
        if (b->fam->apply(b->fs, &ctx, j, &b->results[i], &b->errs[i]) < 0) {
            b->results[i] = NULL;
            continue;
        }
        if (keyed) {
            /* bind the key to this success; duplicates later in the batch replay it */
            json_t *rec = json_pack("{s:s,s:O}", "f", fp, "r", b->results[i]);
            char *resp = jdump(b->results[i], 0, NULL);
            if (!rec || !resp || json_object_set_new(b->records, j->req.key, rec) < 0 ||
                pg_text_array_add(&b->new_keys, j->req.key) < 0 ||
                pg_text_array_add(&b->new_fps, fp) < 0 ||
                pg_text_array_add(&b->new_resps, resp) < 0)
                b->oom = true;
            free(resp);
        }
    }
    return b->fam->changed(b->fs);
}

/* Whether a request with a key failed in this batch. */
static bool keyed_failure(const struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        if (!b->results[i] && key_recorded(b->jobs[i]))
            return true;
    return false;
}

/* --- the transaction ----------------------------------------------------- */

/* Put b's requests back at the head of its lane, unanswered and in order;
 * they run again once this transaction has ended (which rolls back whatever
 * it did for them).  solo: next time alone, waiting for the lock;
 * lookup: next time with the keys looked up first. */
static void batch_put_back(struct batch *b, bool solo, bool lookup)
{
    struct shard *s = b->t->s;
    struct lane *lane = b->lane;
    for (int i = b->n - 1; i >= 0; i--) {
        if (!b->jobs[i])
            continue;
        if (b->jobs[i]->deadline_us < s->min_deadline_us)
            s->min_deadline_us = b->jobs[i]->deadline_us;
        lane_push_front(lane, b->jobs[i]);
        b->jobs[i] = NULL;
        s->queued++;
    }
    lane_mark_rerun(lane, solo, lookup);
}

/* Whether r is the fast path's INSERT of idempotency records failing on a
 * key that already has one. */
static bool key_seen_before(const PGresult *r)
{
    const char *constraint = r ? PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME) : NULL;
    return r && pg_classify(r) == PG_ERR_UNIQUE && constraint &&
           strcmp(constraint, SQL_IDEM_PKEY) == 0;
}

/* The connection went away before COMMIT was sent: nothing of the
 * transaction happened.  Aborted on purpose when the shutdown grace is over. */
static void fail_lost_before_commit(struct txn *t)
{
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        if (t->s->stopping)
            fail_batch(b, TQ_E_SHUTTING_DOWN, "the daemon is shutting down; not executed");
        else
            fail_batch(b, TQ_E_DB_UNAVAILABLE,
                       "tenant \"%s\": database connection lost before commit; not executed",
                       b->lane->tenant);
    }
    txn_end(t, true);
}

/* Whether pipeline statement f belongs to b. */
static bool batch_owns(const struct batch *b, int f)
{
    return f >= 0 && (f == b->r_lock || f == b->r_read || f == b->r_idem || f == b->r_write);
}

/* A one-round-trip transaction failed: nothing was written.  The batch
 * whose statement failed decides: a stale precomputed state runs again from
 * the row; a try-lock that found the lock held, alone; a key seen before,
 * with lookups.  Any other error is the batch's own when it ran alone;
 * shared, the batches run again (the failing one alone). */
static void one_trip_failed(struct txn *t, PGresult *const *res, int n)
{
    int f = first_failed(res, n);
    bool guard = f >= 0 && pg_classify(res[f]) == PG_ERR_GUARD;
    int owner = -1;
    for (int k = 0; k < t->nb; k++)
        if (t->b[k].role != BATCH_OUT && batch_owns(&t->b[k], f))
            owner = k;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        if (b->role == BATCH_OUT)
            continue; /* answered or put back before sending */
        if (k == owner && guard && f == b->r_read) {
            shard_count(t->s, SHARD_GAUGE_CACHE_STALE);
            batch_put_back(b, false, false);
        } else if (k == owner && guard && f == b->r_lock) {
            shard_count(t->s, SHARD_GAUGE_LOCK_BUSY);
            batch_put_back(b, true, false);
        } else if (k == owner && f == b->r_idem && key_seen_before(res[f])) {
            batch_put_back(b, false, true);
        } else if (t->nb == 1) {
            fail_batch_from_results(b, res, n);
        } else {
            batch_put_back(b, k == owner || owner < 0, false);
        }
    }
}

/* The connection was lost while a pipeline ending in COMMIT was out. */
static void txn_lost_at_commit(struct txn *t, PGresult *const *res, int n)
{
    /* The server reported an error on a statement before COMMIT (a
     * lock wait ended by its shutdown, say): it had aborted the
     * transaction, so nothing of it happened.  Only the server's own
     * errors (with a SQLSTATE) say where it stopped: the one libpq makes
     * up for a lost connection goes to the first statement whose result
     * had not arrived, which may be before a COMMIT that did run.  In an
     * isolated statement batch a request's own failure is rolled back to
     * its savepoint and does not abort the transaction: there only the
     * batch's own statements (before seg_from) count, and a request's error
     * only when the server ended the session with it.  Without savepoints
     * any error aborted the transaction. */
    int upto = n - 1;
    bool savepoints = t->b[0].fam->kind == FAM_STATEMENTS && t->isolated;
    if (savepoints && t->seg_from < upto)
        upto = t->seg_from;
    int f = first_failed(res, upto);
    for (int i = upto; savepoints && f < 0 && i < n - 1; i++)
        if (pg_session_ended(res[i]))
            f = i;
    if (f >= 0 && pg_sqlstate(res[f]) != NULL) {
        fail_lost_before_commit(t);
        return;
    }
    /* COMMIT was sent: it may or may not have happened (a batch that
     * only confirmed its validation errors wrote nothing either way) */
    for (int k = 0; k < t->nb; k++) {
        if (t->b[k].role == BATCH_CONFIRMS)
            fail_batch(&t->b[k], TQ_E_DB_UNAVAILABLE,
                       "tenant \"%s\": database connection lost; not executed",
                       t->b[k].lane->tenant);
        else
            fail_batch(&t->b[k], TQ_E_OUTCOME_UNKNOWN,
                       "tenant \"%s\": database connection lost during COMMIT; the outcome "
                       "is unknown (retry with the same key to learn it)",
                       t->b[k].lane->tenant);
    }
    txn_end(t, true);
}

static void commit_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    struct txn *t = arg;
    (void)c;
    if (lost) {
        txn_lost_at_commit(t, res, n);
        return;
    }
    bool ok = n >= 1;
    for (int i = 0; ok && i < n; i++)
        ok = result_ok(res[i]);
    if (ok && strcmp(PQcmdStatus(res[n - 1]), "COMMIT") == 0) {
        struct shard *s = t->s;
        for (int k = 0; k < t->nb; k++) {
            struct batch *b = &t->b[k];
            if (t->one_trip && b->role != BATCH_OUT)
                s->cache.hits++; /* the guard found the precomputed state current */
            if (b->role == BATCH_CONFIRMS) {
                /* the state was current: the validation errors stand */
                reply_all(b);
                batch_keep(b, NULL);
            } else if (b->role == BATCH_WRITES) {
                reply_all(b);
                batch_keep(b, b->r_write >= 0 ? &res[b->r_write] : NULL);
            }
        }
        txn_end(t, true); /* may send the lanes' next transaction */
        txn_outbox_flush(s);
        return;
    }
    if (t->one_trip) {
        one_trip_failed(t, res, n);
        txn_end_with_rollback(t);
        return;
    }
    /* Nothing was written.  A key seen before sends its batch back to run
     * with lookups.  One writer hears the error; several run again, each on
     * its own, where an error is theirs alone. */
    int writers = 0;
    for (int k = 0; k < t->nb; k++)
        writers += t->b[k].role == BATCH_WRITES;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        if (b->role != BATCH_WRITES)
            continue;
        if (!b->lookup && b->r_idem >= 0 && b->r_idem < n && key_seen_before(res[b->r_idem]))
            batch_put_back(b, false, true);
        else if (writers > 1)
            batch_put_back(b, true, false);
        else
            fail_batch_from_results(b, res, n);
    }
    txn_end_with_rollback(t);
}

/* Add b's key records and the family's write to stmts.  Returns 0, or -1
 * when b was answered with an error instead. */
static int batch_writes(struct batch *b, struct pg_stmt *stmts, int *ns)
{
    struct shard *s = b->t->s;
    const char *tenant = b->lane->tenant;
    int at = *ns;
    if (b->new_keys.n > 0) {
        const char *k = pg_text_array_get(&b->new_keys), *f = pg_text_array_get(&b->new_fps),
                   *r = pg_text_array_get(&b->new_resps);
        if (b->oom || !k || !f || !r) {
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": out of memory recording keys", tenant);
            return -1;
        }
        b->r_idem = at;
        stmts[at++] = stmt(s, b->lookup ? ST_IDEM_UPSERT : ST_IDEM_INSERT, tenant, k, f, r);
    }
    struct fam_ctx ctx = batch_ctx(b);
    tq_error err = {.code = TQ_OK};
    int w = b->fam->write(b->fs, &ctx, stmts + at, &err);
    if (w < 0) {
        fail_batch(b, err.code, "%s", err.message);
        b->r_idem = -1;
        return -1;
    }
    b->r_write = at;
    *ns = at + w;
    b->role = BATCH_WRITES;
    return 0;
}

/* Whether a pg_try_advisory_xact_lock result says the lock was taken. */
static bool lock_taken(const PGresult *r)
{
    return PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
}

/* The first pipeline is back: every batch has its lock (or not) and its
 * state.  Apply each in memory; those that changed something are written
 * and committed together, the others are answered now. */
static void read_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    struct txn *t = arg;
    char why[256];
    if (lost) {
        fail_lost_before_commit(t);
        return;
    }
    bool ok = n == t->nres;
    for (int i = 0; ok && i < n; i++)
        ok = result_ok(res[i]);
    if (!ok) {
        if (t->nb == 1)
            fail_batch_from_results(&t->b[0], res, n);
        else
            for (int k = 0; k < t->nb; k++)
                batch_put_back(&t->b[k], true, false);
        txn_end_with_rollback(t);
        return;
    }
    struct pg_stmt stmts[TXN_MAX_STMTS];
    int ns = 0;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        const char *tenant = b->lane->tenant;
        if (b->mutating && t->nb > 1 && !lock_taken(res[b->r_lock])) {
            /* held elsewhere: not worth making the others wait for */
            shard_count(t->s, SHARD_GAUGE_LOCK_BUSY);
            batch_put_back(b, true, false);
            continue;
        }
        if (b->lookup && load_records(b, res[b->r_lookup]) < 0) {
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": unreadable idempotency record", tenant);
            continue;
        }
        struct fam_ctx ctx = batch_ctx(b);
        if (b->fam->load(b->fs, &ctx, res + b->r_read, why, sizeof why) < 0) {
            log_err("shard %d tenant \"%s\": %s", t->s->id, tenant, why);
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": %s", tenant, why);
            continue;
        }
        bool wrote = apply_batch(b);
        if (b->mutating && !b->lookup && b->has_keys && keyed_failure(b)) {
            /* the failure may be a repeat of an edit that did succeed (an id
             * that now exists because of it): only its record can tell */
            batch_put_back(b, false, true);
            continue;
        }
        if (!wrote || !b->mutating) {
            /* nothing to write: every edit failed validation or only read;
             * the state still is the row as read */
            reply_all(b);
            batch_keep(b, NULL);
            continue;
        }
        (void)batch_writes(b, stmts, &ns);
    }
    struct shard *s = t->s;
    if (ns == 0) {
        txn_end_with_rollback(t);
    } else {
        stmts[ns++] = (struct pg_stmt){.sql = SQL_COMMIT};
        t->committing = true;
        if (pg_pipeline(c, stmts, ns, commit_done, t) < 0)
            fail_lost_before_commit(t); /* nothing was sent */
    }
    txn_outbox_flush(s);
}

/*
 * The one-round-trip transaction: every batch of t changes state and its
 * family holds the tenant's state.  Apply them now, and send BEGIN, each
 * batch's lock, guard and writes, and COMMIT as one pipeline.  A guard that
 * fails (or, shared, a try-lock that finds the lock held) aborts the
 * transaction before anything is written; commit_done then puts the batches
 * back to run again from the stored state.  A batch whose requests all
 * failed validation sends only its lock and guard and is answered after
 * COMMIT, like the rest.  stmts holds BEGIN and the timeouts (ns of them)
 * and has room for the rest.
 */
static void txn_start_precomputed(struct txn *t, struct pg_stmt *stmts, int ns)
{
    struct shard *s = t->s;
    int parties = 0;
    t->one_trip = true;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        const char *tenant = b->lane->tenant;
        if (b->has_keys && !(b->records = json_object())) {
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": out of memory", tenant);
            continue;
        }
        bool wrote = apply_batch(b);
        if (b->has_keys && keyed_failure(b)) {
            /* only the stored records can tell a failed repeat (read_done) */
            batch_put_back(b, false, true);
            continue;
        }
        b->r_lock = ns;
        stmts[ns++] = stmt(s, t->nb == 1 ? ST_LOCK : ST_TRYLOCK_GUARD, tenant, NULL, NULL, NULL);
        struct fam_ctx ctx = batch_ctx(b);
        b->r_read = ns;
        ns += b->fam->guard(b->fs, &ctx, stmts + ns);
        if (!wrote)
            b->role = BATCH_CONFIRMS;
        else if (batch_writes(b, stmts, &ns) < 0)
            continue;
        parties++;
    }
    if (parties == 0) {
        txn_end(t, true); /* nothing sent: every batch answered or put back */
        return;
    }
    stmts[ns++] = (struct pg_stmt){.sql = SQL_COMMIT};
    t->committing = true;
    shard_count(s, SHARD_GAUGE_ONE_TRIP);
    if (pg_pipeline(t->pc, stmts, ns, commit_done, t) < 0)
        fail_lost_before_commit(t); /* nothing was sent */
}

/* --- statement batches (FAM_STATEMENTS) ---------------------------------- */

/*
 * While a tenant's requests succeed, its statement batch runs plain: BEGIN,
 * the lock, the statements one after another, and (without keys to record
 * or outcomes that could need undoing) COMMIT, all in one pipeline: one
 * statement per request.  When one fails, or is refused after it ran
 * (reject_if_empty), the transaction is aborted or must not commit, and
 * nothing of it stands: a request alone in it has its answer (a keyed one
 * goes back to have its record looked up first); otherwise the batches go
 * back to their lanes and run again, the failing tenant's batches isolated
 * for a while (lane_isolate): each request in a savepoint of its own, inside
 * the batch's one transaction, and the whole batch still one pipeline.
 * Isolated, request i is a segment ended by a Sync:
 *
 *   ROLLBACK TO SAVEPOINT tq;  SAVEPOINT tq_i;  [Prepare;]  its statement;
 *   SAVEPOINT tq;  Sync
 *
 * A statement that fails skips only the rest of its segment (its SAVEPOINT
 * tq) and leaves the transaction aborted; the next segment's ROLLBACK TO
 * SAVEPOINT tq returns it to the state after the last request that
 * succeeded (after one that succeeded it rolls back nothing).  A trailing
 * ROLLBACK TO SAVEPOINT tq does the same for the last request before
 * COMMIT.  So a failed request changed nothing and its companions commit,
 * in one round trip.  A statement that succeeded but is refused after the
 * fact (reject_if_empty: its result is known only when it arrives) is undone
 * with ROLLBACK TO SAVEPOINT tq_i, which undoes the requests after it too:
 * those run again, in the same transaction, in one more round trip.
 *
 * Several tenants' statement batches share a transaction (a group) the way
 * storefront batches do, when more lanes are ready than connections idle:
 * the requests of all of them follow one another as above (i counts across
 * the group), after a prefix that holds every batch's try-lock, the kind that
 * fails (a division by zero) when the lock is held elsewhere.  The prefix
 * ends before the first savepoint, so a busy lock aborts the whole
 * transaction beyond what any ROLLBACK TO SAVEPOINT can repair: nothing of
 * it runs, and the batches go back to their lanes, the busy one to run
 * alone, waiting for its lock.  A batch whose keys must be looked up first
 * runs alone.  A keyed request that failed before its keys were looked up
 * (it may be the repeat of one that succeeded) sends its batch back to run
 * alone with lookups: what of it succeeded is undone with the savepoint of
 * its first success, the requests after that run again, and the rest of
 * the group commits.
 */
#define STMT_BATCH_MAX PG_MAX_REQUESTS
#define STMT_GROUP_MAX 48 /* requests of a group of several batches */
_Static_assert(16 + 5 * STMT_BATCH_MAX <= PG_MAX_STMTS, "a statement batch must fit in pg.c");
_Static_assert(4 + GROUP_MAX + 5 * STMT_GROUP_MAX + 2 <= PG_MAX_STMTS,
               "a group of statement batches must fit in pg.c");

static const char SQL_SP[] = "SAVEPOINT tq";
static const char SQL_SP_BACK[] = "ROLLBACK TO SAVEPOINT tq";

static void stmt_ran(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost);
static void stmt_one_trip_done(struct pgconn *c, void *arg, PGresult *const *res, int n,
                               bool lost);

/* Position of b's first request among the requests of its transaction. */
static int batch_base(const struct batch *b) { return (int)(b->jobs - b->t->jobs); }

/* Whether request i of b still has to run. */
static bool stmt_pending(const struct batch *b, int i)
{
    return b->jobs[i] && !b->results[i] && b->errs[i].code == TQ_OK && b->dup[i] < 0;
}

/* Add the segments of t's requests from position `from` on that still have
 * to run (rpos set), and the trailing rollback, to stmts.  A request that
 * cannot be bound keeps its error and is left out. */
static void stmt_segments(struct txn *t, int from, struct pg_stmt *stmts, int *ns)
{
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        struct fam_ctx ctx = batch_ctx(b);
        int base = batch_base(b);
        for (int i = from > base ? from - base : 0; i < b->n; i++) {
            b->rpos[i] = -1;
            if (!stmt_pending(b, i))
                continue;
            struct pg_stmt st;
            if (b->fam->bind(b->fs, &ctx, b->jobs[i], i, &st, &b->errs[i]) < 0)
                continue;
            if (t->isolated) {
                stmts[(*ns)++] = (struct pg_stmt){.sql = SQL_SP_BACK};
                stmts[(*ns)++] = (struct pg_stmt){.sql = t->sp_before[base + i]};
            }
            /* prepared once per connection: a Prepare before the first use */
            *ns += pg_prepared(t->pc, &st, &stmts[*ns]);
            b->rpos[i] = *ns - 1;
            if (t->isolated)
                stmts[(*ns)++] = (struct pg_stmt){.sql = SQL_SP, .sync = true};
        }
    }
    if (t->isolated)
        stmts[(*ns)++] = (struct pg_stmt){.sql = SQL_SP_BACK};
}

/* The result that decides request i's outcome: its statement's, or the
 * error that made its segment skip it (a Prepare that failed). */
static const PGresult *stmt_result(const struct batch *b, int i, PGresult *const *res, int n)
{
    int at = b->rpos[i];
    const PGresult *r = at < n ? res[at] : NULL;
    for (int q = at - 1; r && PQresultStatus(r) == PGRES_PIPELINE_ABORTED && q >= at - 2; q--)
        if (res[q] && !result_ok(res[q]) && PQresultStatus(res[q]) != PGRES_PIPELINE_ABORTED)
            r = res[q];
    return r;
}

/* Read the outcome of every request that ran in this pipeline.  A failed
 * statement was rolled back by its savepoint: its error is final.  Returns
 * the position of the first request whose statement succeeded but must not
 * stand (reject_if_empty), answered with its error and still to be undone,
 * or -1. */
static int stmt_outcomes(struct txn *t, PGresult *const *res, int n)
{
    int first = -1; /* (every outcome is read: after COMMIT each one is final) */
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        struct fam_ctx ctx = batch_ctx(b);
        for (int i = 0; i < b->n; i++) {
            if (b->rpos[i] < 0)
                continue;
            const PGresult *r = stmt_result(b, i, res, n);
            b->rpos[i] = -1;
            if (r && PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
                tq_error_set(&b->errs[i], TQ_E_INTERNAL, "%s: its statement was skipped",
                             b->jobs[i]->req.op);
                continue;
            }
            bool undo = true;
            if (b->fam->outcome(&ctx, b->jobs[i], r, &b->results[i], &b->errs[i], &undo) < 0) {
                b->results[i] = NULL;
                if (undo && r && result_ok(r) && first < 0)
                    first = batch_base(b) + i;
            }
        }
    }
    return first;
}

/* The batch and request (*at) whose statement is pipeline statement f, or
 * else whose Prepare is (it comes right before its statement); NULL. */
static struct batch *stmt_owner(struct txn *t, int f, int *at)
{
    for (int prep = 0; prep < 2; prep++)
        for (int k = 0; k < t->nb; k++)
            for (int i = 0; i < t->b[k].n; i++)
                if (t->b[k].jobs[i] && t->b[k].rpos[i] == f + prep) {
                    *at = i;
                    return &t->b[k];
                }
    return NULL;
}

/* The batch holding t's first request with an error, and its index there
 * (*at); NULL when every request succeeded so far. */
static struct batch *stmt_first_error(struct txn *t, int *at)
{
    for (int k = 0; k < t->nb; k++)
        for (int i = 0; i < t->b[k].n; i++)
            if (t->b[k].jobs[i] && t->b[k].errs[i].code != TQ_OK) {
                *at = i;
                return &t->b[k];
            }
    return NULL;
}

/* In a transaction without savepoints request `at` of fb failed, or was
 * refused after it ran (its outcome is in fb->errs[at]): the transaction is
 * aborted, or must not commit, so nothing of it stands.  A request alone in
 * it has its answer (unless it has a key: it may repeat one that succeeded,
 * which only its record can tell); otherwise every batch goes back to its
 * lane to run again, the failing one's lane with each request in a
 * savepoint for a while (lane_isolate), the others as before. */
static void stmt_plain_failed(struct txn *t, struct batch *fb, int at)
{
    bool keyed = fb->jobs[at]->req.key != NULL;
    if (t->nb == 1 && fb->n == 1 && !keyed) {
        reply_all(fb);
        txn_end_with_rollback(t);
        txn_outbox_flush(t->s);
        return;
    }
    shard_count(t->s, SHARD_GAUGE_ISOLATED_RERUNS);
    lane_isolate(fb->lane);
    for (int k = 0; k < t->nb; k++)
        batch_put_back(&t->b[k], false, &t->b[k] == fb && keyed);
    txn_end_with_rollback(t);
}

/* A pipeline without savepoints: whether a request's statement among the
 * first `upto` results failed (the rest of the pipeline was skipped), and
 * then stmt_plain_failed. */
static bool stmt_plain_failure(struct txn *t, PGresult *const *res, int upto)
{
    int f = first_failed(res, upto), at = -1;
    struct batch *b = f >= t->seg_from ? stmt_owner(t, f, &at) : NULL;
    if (!b)
        return false;
    struct fam_ctx ctx = batch_ctx(b);
    bool undo;
    (void)b->fam->outcome(&ctx, b->jobs[at], res[f], &b->results[at], &b->errs[at], &undo);
    stmt_plain_failed(t, b, at);
    return true;
}

/* Requests that failed in a transaction with savepoints keep their lanes
 * isolating a while longer. */
static void stmt_note_failures(struct txn *t)
{
    if (!t->isolated)
        return; /* (a failure without savepoints never gets this far) */
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        for (int i = 0; i < b->n; i++)
            if (b->jobs[i] && b->errs[i].code != TQ_OK && !b->replayed[i]) {
                lane_isolate(b->lane);
                break;
            }
    }
}

/* A group's transaction failed before its requests ran (f: the prefix's
 * failed statement) or at COMMIT (f -1): nothing of it happened.  The
 * batches go back to their lanes: when a try-lock found its lock held, that
 * batch to run alone (waiting for the lock) and the others as they were;
 * otherwise each alone, where an error is its own. */
static void stmt_group_put_back(struct txn *t, PGresult *const *res, int f)
{
    int owner = -1;
    for (int k = 0; f >= 0 && k < t->nb; k++)
        if (t->b[k].r_lock == f)
            owner = k;
    bool busy = owner >= 0 && pg_classify(res[f]) == PG_ERR_GUARD;
    if (busy)
        shard_count(t->s, SHARD_GAUGE_LOCK_BUSY);
    for (int k = 0; k < t->nb; k++)
        if (!batch_answered(&t->b[k]))
            batch_put_back(&t->b[k], !busy || k == owner, false);
}

/* The pipeline failed before the requests (BEGIN, the timeouts, a lock):
 * answer a batch alone, put a group back, and end the transaction.
 * Returns whether it did. */
static bool stmt_prefix_failed(struct txn *t, PGresult *const *res, int n)
{
    int upto = t->seg_from < n ? t->seg_from : n;
    int f = first_failed(res, upto);
    if (f < 0 && upto == t->seg_from)
        return false;
    if (t->nb == 1)
        fail_batch_from_results(&t->b[0], res, upto);
    else
        stmt_group_put_back(t, res, f);
    txn_end_with_rollback(t);
    return true;
}

/* Bind the keys of b's successful requests to their answers (records to
 * write with COMMIT), and give repeats inside the batch the first one's. */
static void stmt_record_keys(struct batch *b)
{
    for (int i = 0; i < b->n; i++) {
        struct job *j = b->jobs[i];
        if (!j || !j->req.key)
            continue;
        if (b->dup[i] >= 0) {
            struct job *first = b->jobs[b->dup[i]];
            char fa[IDEM_FINGERPRINT_HEX], fb[IDEM_FINGERPRINT_HEX];
            bool same = idem_fingerprint(first->req.op, first->req.args, fa) == 0 &&
                        idem_fingerprint(j->req.op, j->req.args, fb) == 0 &&
                        strcmp(fa, fb) == 0;
            if (same && b->results[b->dup[i]]) {
                b->results[i] = json_incref(b->results[b->dup[i]]);
                b->replayed[i] = true;
            } else if (same) {
                b->errs[i] = b->errs[b->dup[i]];
            } else {
                key_reused(&b->errs[i], j);
            }
            continue;
        }
        if (b->replayed[i] || !b->results[i])
            continue; /* answered from a record, or failed: nothing to bind */
        char fp[IDEM_FINGERPRINT_HEX];
        char *resp = jdump(b->results[i], 0, NULL);
        if (idem_fingerprint(j->req.op, j->req.args, fp) < 0 || !resp ||
            pg_text_array_add(&b->new_keys, j->req.key) < 0 ||
            pg_text_array_add(&b->new_fps, fp) < 0 || pg_text_array_add(&b->new_resps, resp) < 0)
            b->oom = true;
        free(resp);
    }
}

/* Whether a keyed request of b failed.  Before its keys were looked up, such
 * a failure may be the repeat of an execution that did succeed (it finds the
 * id or the slot it took itself): only the record can tell. */
static bool stmt_keyed_failure(const struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        if (b->jobs[i] && b->jobs[i]->req.key && b->errs[i].code != TQ_OK)
            return true;
    return false;
}

/* Every request has its outcome: record the keys of those that succeeded,
 * each record written once with its answer, and COMMIT (commit_done
 * answers).  Without a lookup the records go in with a plain INSERT: a key
 * seen before fails it, the transaction rolls back, and the batch runs
 * again with its keys looked up (commit_done). */
static void stmt_commit(struct txn *t)
{
    struct pg_stmt stmts[GROUP_MAX + 1];
    int ns = 0, writers = 0;
    stmt_note_failures(t);
    for (int q = 0; q < t->nb; q++) {
        struct batch *b = &t->b[q];
        b->r_idem = -1;
        b->role = BATCH_OUT;
        if (batch_answered(b))
            continue; /* put back: it runs again */
        stmt_record_keys(b);
        const char *k = pg_text_array_get(&b->new_keys), *f = pg_text_array_get(&b->new_fps),
                   *r = pg_text_array_get(&b->new_resps);
        if (b->oom || (b->new_keys.n > 0 && (!k || !f || !r))) {
            /* (nothing is committed: every batch hears it) */
            for (int x = 0; x < t->nb; x++)
                fail_batch(&t->b[x], TQ_E_INTERNAL, "tenant \"%s\": out of memory recording keys",
                           t->b[x].lane->tenant);
            txn_end_with_rollback(t);
            return;
        }
        if (b->new_keys.n > 0) {
            b->r_idem = ns;
            stmts[ns++] = stmt(t->s, b->lookup ? ST_IDEM_UPSERT : ST_IDEM_INSERT,
                               b->lane->tenant, k, f, r);
        }
        b->role = BATCH_WRITES;
        writers++;
    }
    if (writers == 0) {
        txn_end_with_rollback(t); /* every batch went back to its lane */
        return;
    }
    t->seg_from = ns; /* (all of this pipeline before COMMIT is the batches' own) */
    stmts[ns++] = (struct pg_stmt){.sql = SQL_COMMIT};
    t->committing = true;
    if (pg_pipeline(t->pc, stmts, ns, commit_done, t) < 0)
        fail_lost_before_commit(t);
}

/* Run t's pending requests from position `from` on, in a pipeline of their
 * own inside the open transaction: first (a savepoint, or the rollback to
 * one), then their segments (stmt_ran reads them). */
static void stmt_rerun(struct txn *t, const char *first, int from)
{
    struct pg_stmt stmts[PG_MAX_STMTS];
    int ns = 0;
    t->isolated = true;
    stmts[ns++] = (struct pg_stmt){.sql = first, .sync = true};
    t->seg_from = ns;
    stmt_segments(t, from, stmts, &ns);
    t->nres = ns;
    if (pg_pipeline(t->pc, stmts, ns, stmt_ran, t) < 0)
        fail_lost_before_commit(t);
}

/* Batches with a keyed failure before any lookup, among those starting at
 * or before position *undo (-1: anywhere), go back to their lanes to run
 * with lookups.  What such a batch did is rolled back: when part of it
 * succeeded, *undo becomes the position of its first success and *from
 * that position (its requests are no longer pending; the ones after it run
 * again). */
static void stmt_send_back_keyed(struct txn *t, int *undo, int *from)
{
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        int base = batch_base(b);
        if (*undo >= 0 && base > *undo)
            return;
        if (b->lookup || !b->has_keys || !stmt_keyed_failure(b))
            continue;
        int first = -1;
        for (int i = 0; first < 0 && i < b->n; i++)
            if (b->jobs[i] && b->results[i] && !b->replayed[i])
                first = base + i;
        batch_put_back(b, false, true);
        if (first >= 0 && (*undo < 0 || first < *undo)) {
            *undo = first;
            *from = first;
            return;
        }
    }
}

/* The requests' pipeline is back (keyed batches, or ones whose outcome may
 * need undoing): a request refused after its statement ran is undone and
 * the requests after it run again; then the batches commit. */
static void stmt_ran(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    (void)c;
    struct txn *t = arg;
    if (lost) {
        fail_lost_before_commit(t);
        return;
    }
    if (stmt_prefix_failed(t, res, n))
        return;
    if (!t->isolated && stmt_plain_failure(t, res, n))
        return;
    int undo = stmt_outcomes(t, res, n), at = 0;
    struct batch *fb;
    /* Without savepoints every request with an error (refused after it ran,
     * or not even bound) takes the whole transaction down: the first one
     * decides how it runs again. */
    if (!t->isolated && (fb = stmt_first_error(t, &at)) != NULL) {
        stmt_plain_failed(t, fb, at);
        return;
    }
    int from = undo + 1;
    stmt_send_back_keyed(t, &undo, &from);
    if (undo < 0) {
        stmt_commit(t);
        return;
    }
    /* undo `undo` and what ran after it; run those again on the state before it */
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        int base = batch_base(b);
        for (int i = from > base ? from - base : 0; i < b->n; i++) {
            if (b->replayed[i] || b->errs[i].code == TQ_E_IDEMPOTENCY_KEY_REUSED)
                continue; /* answered from its record: it does not run again */
            json_decref(b->results[i]);
            b->results[i] = NULL;
            if (b->jobs[i] && b->dup[i] < 0)
                b->errs[i].code = TQ_OK;
        }
    }
    stmt_rerun(t, t->sp_undo[undo], from);
}

/* The keys of b, alone in t, were looked up (with the lock): answer repeats
 * from their records, note repeats inside the batch, and run the others. */
static void stmt_keys_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    (void)c;
    struct txn *t = arg;
    struct batch *b = &t->b[0];
    if (lost) {
        fail_lost_before_commit(t);
        return;
    }
    bool ok = n == t->nres;
    for (int i = 0; ok && i < n; i++)
        ok = result_ok(res[i]);
    if (!ok) {
        fail_batch_from_results(b, res, n);
        txn_end_with_rollback(t);
        return;
    }
    if (load_records(b, res[b->r_lookup]) < 0) {
        fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": unreadable idempotency record",
                   b->lane->tenant);
        txn_end_with_rollback(t);
        return;
    }
    for (int i = 0; i < b->n; i++) {
        struct job *j = b->jobs[i];
        b->errs[i].code = TQ_OK;
        b->dup[i] = -1;
        if (!j->req.key)
            continue;
        char fp[IDEM_FINGERPRINT_HEX];
        if (idem_fingerprint(j->req.op, j->req.args, fp) < 0) {
            /* (the whole batch: a request not checked against its record
             * must not run, nor be run again by an undo's rerun) */
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": out of memory fingerprinting a request",
                       b->lane->tenant);
            txn_end_with_rollback(t);
            return;
        }
        if (answer_from_record(b, i, fp))
            continue;
        for (int q = 0; q < i; q++)
            if (b->jobs[q]->req.key && strcmp(b->jobs[q]->req.key, j->req.key) == 0) {
                b->dup[i] = q; /* runs once: the first one's answer, after COMMIT */
                break;
            }
    }
    int pending = 0;
    for (int i = 0; i < b->n; i++)
        pending += stmt_pending(b, i);
    if (pending == 0) {
        /* everything answered from the records: nothing to run or commit */
        stmt_record_keys(b);
        reply_all(b);
        txn_end_with_rollback(t);
        txn_outbox_flush(t->s);
        return;
    }
    stmt_rerun(t, SQL_SP, 0);
}

/* Unkeyed batches sent whole with COMMIT (every outcome final once its
 * statement ran). */
static void stmt_one_trip_done(struct pgconn *c, void *arg, PGresult *const *res, int n,
                               bool lost)
{
    (void)c;
    struct txn *t = arg;
    if (lost) {
        txn_lost_at_commit(t, res, n);
        return;
    }
    bool committed = n >= 1 && result_ok(res[n - 1]) &&
                     strcmp(PQcmdStatus(res[n - 1]), "COMMIT") == 0;
    if (!committed) {
        /* a lock (or, deferred, the COMMIT itself) failed: nothing of it
         * was committed */
        if (!stmt_prefix_failed(t, res, n) &&
            !(!t->isolated && stmt_plain_failure(t, res, n - 1))) {
            if (t->nb == 1)
                fail_batch_from_results(&t->b[0], res + n - 1, 1); /* the COMMIT's own error */
            else
                stmt_group_put_back(t, res, -1);
            txn_end_with_rollback(t);
        }
        return;
    }
    (void)stmt_outcomes(t, res, n); /* every one is final: failures were rolled back alone */
    stmt_note_failures(t);
    for (int k = 0; k < t->nb; k++)
        reply_all(&t->b[k]);
    txn_end(t, true);
    txn_outbox_flush(t->s);
}

/* Start t's statement batches: BEGIN, the timeouts (in stmts, ns of them),
 * each batch's lock (alone: waiting for it; a group: the try-lock that fails
 * when it is held), then either the keys' lookup (a batch alone), or the
 * requests (and COMMIT, when no key is to be recorded and no outcome can
 * need undoing).  Keys are not looked up in the common case: the records
 * are inserted with COMMIT once the answers are known (stmt_commit). */
static void stmt_batch_start(struct txn *t, struct pg_stmt *stmts, int ns)
{
    struct shard *s = t->s;
    enum sql_stmt lock = t->nb > 1 ? ST_TRYLOCK_GUARD : ST_LOCK;
    bool blind = !s->draining;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        const char *tenant = b->lane->tenant;
        const char *key_sql = b->fam->lock_key(b->jobs[0]);
        b->r_lock = ns;
        if (!key_sql)
            stmts[ns++] = stmt(s, lock, tenant, NULL, NULL, NULL);
        else if (sql_lock_text(b->lock_sql, sizeof b->lock_sql, lock, key_sql) >= 0)
            stmts[ns++] = (struct pg_stmt){.sql = b->lock_sql, .nparams = 1, .params = {tenant}};
        else
            b->r_lock = -1; /* (cannot happen: the expression's length is bounded) */
        for (int i = 0; i < b->n; i++) {
            b->dup[i] = -1;
            b->errs[i].code = TQ_OK;
            b->replayed[i] = false;
            b->rpos[i] = -1;
            blind &= b->fam->commits_blind(b->jobs[i]);
        }
        blind &= !b->has_keys;
        if (b->r_lock < 0) {
            for (int q = 0; q < t->nb; q++)
                fail_batch(&t->b[q], TQ_E_INTERNAL, "tenant \"%s\": lock statement too long",
                           t->b[q].lane->tenant);
            txn_end(t, true);
            return;
        }
    }
    struct batch *b = &t->b[0];
    if (t->nb == 1 && b->has_keys && b->lane->recheck_keys) {
        const char *tenant = b->lane->tenant;
        b->lane->recheck_keys = false;
        b->records = json_object();
        for (int i = 0; b->records && i < b->n; i++)
            if (b->jobs[i]->req.key && pg_text_array_add(&b->keys, b->jobs[i]->req.key) < 0)
                break;
        const char *keys = b->records ? pg_text_array_get(&b->keys) : NULL;
        if (!keys) {
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": out of memory", tenant);
            txn_end(t, true);
            return;
        }
        snprintf(t->ttl, sizeof t->ttl, "%d", s->cfg->idempotency_ttl_s);
        b->lookup = true;
        b->r_lookup = ns;
        stmts[ns++] = (struct pg_stmt){
            .sql = t->s->sql.idem_lookup, .nparams = 3, .params = {tenant, keys, t->ttl}};
        t->nres = ns;
        if (pg_pipeline(t->pc, stmts, ns, stmt_keys_done, t) < 0)
            fail_lost_before_commit(t);
        return;
    }
    /* without savepoints while the tenants' requests succeed */
    t->isolated = false;
    for (int k = 0; k < t->nb; k++)
        t->isolated |= lane_take_isolation(t->b[k].lane);
    if (t->isolated)
        stmts[ns++] = (struct pg_stmt){.sql = SQL_SP, .sync = true};
    t->seg_from = ns;
    stmt_segments(t, 0, stmts, &ns);
    pg_pipeline_cb cb = stmt_ran;
    if (blind) {
        stmts[ns++] = (struct pg_stmt){.sql = SQL_COMMIT};
        t->committing = true;
        cb = stmt_one_trip_done;
    }
    t->nres = ns;
    if (pg_pipeline(t->pc, stmts, ns, cb, t) < 0)
        fail_lost_before_commit(t);
}

/* Whether j may join batch b (of the family of its first request): one
 * family, and for statement batches one lock key and the room of one
 * pipeline. */
static bool batch_fits(const struct batch *b, const struct job *j)
{
    if (!b->fam)
        return true;
    if (j->fam != b->fam)
        return false;
    if (b->fam->kind != FAM_STATEMENTS)
        return true;
    const char *k0 = b->fam->lock_key(b->jobs[0]), *k = b->fam->lock_key(j);
    return b->n < STMT_BATCH_MAX && (k0 == k || (k0 && k && strcmp(k0, k) == 0));
}

/* Take up to max_batch - t->njobs requests of lane, all of the family of
 * its first one, into a new batch of t.  Returns the batch, or NULL (lane
 * released) if every one had expired. */
static struct batch *batch_take(struct txn *t, struct lane *lane, uint64_t now)
{
    struct shard *s = t->s;
    struct batch *b = &t->b[t->nb];
    batch_reset(b, false, NULL);
    b->lane = lane;
    b->jobs = t->jobs + t->njobs;
    b->results = t->results + t->njobs;
    b->errs = t->errs + t->njobs;
    b->replayed = t->replayed + t->njobs;
    b->rpos = t->rpos + t->njobs;
    b->dup = t->dup + t->njobs;
    lane->busy = true;
    struct job *j;
    while (t->njobs + b->n < s->cfg->max_batch && lane->head && batch_fits(b, lane->head) &&
           (j = lane_pop(lane)) != NULL) {
        s->queued--;
        if (now >= j->deadline_us) {
            shard_fail_job(s, j, TQ_E_DEADLINE_EXCEEDED,
                           "deadline passed while queued behind the tenant's earlier requests; "
                           "not executed");
            continue;
        }
        b->fam = j->fam;
        b->jobs[b->n] = j;
        b->results[b->n] = NULL;
        b->n++;
        b->keyed_reads |= key_checked_read(j);
        if (j->fam->mutates(j->op)) {
            b->mutating = true;
            b->has_keys |= key_recorded(j);
            if (j->deadline_us < t->change_deadline_us)
                t->change_deadline_us = j->deadline_us;
        }
    }
    if (b->n == 0) {
        lane_release(s, lane);
        b->lane = NULL;
        return NULL;
    }
    b->fs = b->fstate[b->fam->id];
    t->nb++;
    t->njobs += b->n;
    stats_batch(b->n);
    return b;
}

/* Whether lane may join a transaction that already has batches: it has not
 * been asked to run alone, and all it would take fits under max_batch (a
 * lane is not split to fill the rest). */
static bool lane_joins(const struct txn *t, const struct lane *lane)
{
    const struct batch *b0 = &t->b[0];
    bool stmts = b0->fam->kind == FAM_STATEMENTS;
    int limit = t->s->cfg->max_batch;
    if (stmts && limit > STMT_GROUP_MAX)
        limit = STMT_GROUP_MAX;
    uint32_t want = lane->depth < (uint32_t)limit ? lane->depth : (uint32_t)limit;
    /* (a statement batch that looks its keys up first runs alone) */
    return !lane->solo && t->njobs + (int)want <= limit &&
           lane->head->fam->kind == b0->fam->kind &&
           !(stmts && (lane->recheck_keys || b0->lane->recheck_keys));
}

void txn_start(struct txn *t, int lanes)
{
    struct shard *s = t->s;
    struct pgconn *c = t->pc;
    uint64_t now = now_us();
    t->start_us = now;
    t->nb = t->njobs = 0;
    t->change_deadline_us = UINT64_MAX;
    s->inflight++;
    struct lane *lane;
    while (t->nb < lanes && (lane = s->ready.head) != NULL) {
        if (t->nb > 0 && !lane_joins(t, lane))
            break;
        bool alone = lane->solo;
        lane->solo = false;
        ready_pop(&s->ready);
        if (batch_take(t, lane, now) && alone)
            break;
    }
    if (t->nb == 0) {
        txn_end(t, true);
        return;
    }
    stats_txn(t->nb);

    /* Alone, a batch waits for its lock (bounded by lock_timeout_ms and its
     * tightest deadline).  Together, every batch only tries its lock: one
     * tenant locked elsewhere must not hold the others up, nor can two
     * transactions each wait for a lock the other holds. */
    bool mutating = t->change_deadline_us != UINT64_MAX;
    struct pg_stmt stmts[PG_MAX_STMTS]; /* (a statement batch's pipeline is the longest) */
    int ns = 0;
    if (mutating) {
        uint64_t min_left_ms = (t->change_deadline_us - now) / 1000;
        uint64_t lock_ms = (uint64_t)s->cfg->lock_timeout_ms;
        if (min_left_ms < lock_ms)
            lock_ms = min_left_ms ? min_left_ms : 1;
        snprintf(t->tout_lock, sizeof t->tout_lock, "%" PRIu64, lock_ms);
        stmts[ns++] = (struct pg_stmt){.sql = SQL_BEGIN};
        stmts[ns++] = stmt(s, ST_TIMEOUTS, t->tout_lock, s->tout_stmt, s->tout_idle, NULL);
    }
    /* Every batch a change whose state its family holds: one round trip.
     * Not while draining: such a transaction cannot be withdrawn once sent. */
    if (t->b[0].fam->kind == FAM_STATEMENTS) {
        for (int k = 0; k < t->nb; k++) {
            struct batch *b = &t->b[k];
            struct fam_ctx ctx = batch_ctx(b);
            (void)b->fam->begin(b->fs, &ctx, true);
            b->begun = true;
        }
        stmt_batch_start(t, stmts, ns);
        return;
    }
    bool one_trip = mutating && !s->draining;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        struct fam_ctx ctx = batch_ctx(b);
        b->precomputed = b->fam->begin(b->fs, &ctx, b->mutating);
        b->begun = true;
        one_trip &= b->mutating && b->precomputed && !b->lane->recheck_keys && !b->keyed_reads;
    }
    if (one_trip) {
        txn_start_precomputed(t, stmts, ns);
        return;
    }
    /* (without BEGIN, reads only: the pipeline is one implicit transaction) */
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        const char *tenant = b->lane->tenant;
        if (b->mutating) {
            b->r_lock = ns;
            stmts[ns++] = stmt(s, t->nb == 1 ? ST_LOCK : ST_TRYLOCK, tenant, NULL, NULL, NULL);
        }
        struct fam_ctx ctx = batch_ctx(b);
        b->r_read = ns;
        ns += b->fam->read(b->fs, &ctx, stmts + ns);
        if (!(b->mutating && b->has_keys) && !b->keyed_reads)
            continue;
        /* records of this batch, so a key repeated inside it replays */
        b->records = json_object();
        bool ok = b->records != NULL;
        b->lookup = b->lane->recheck_keys || b->keyed_reads;
        b->lane->recheck_keys = false;
        for (int q = 0; ok && b->lookup && q < b->n; q++)
            if (key_recorded(b->jobs[q]) || key_checked_read(b->jobs[q]))
                ok = pg_text_array_add(&b->keys, b->jobs[q]->req.key) == 0;
        const char *keys = ok && b->lookup ? pg_text_array_get(&b->keys) : NULL;
        if (!ok || (b->lookup && !keys)) {
            for (int q = 0; q < t->nb; q++)
                fail_batch(&t->b[q], TQ_E_INTERNAL, "tenant \"%s\": out of memory",
                           t->b[q].lane->tenant);
            txn_end(t, true);
            return;
        }
        if (b->lookup) {
            snprintf(t->ttl, sizeof t->ttl, "%d", s->cfg->idempotency_ttl_s);
            b->r_lookup = ns;
            stmts[ns++] = (struct pg_stmt){
                .sql = t->s->sql.idem_lookup, .nparams = 3, .params = {tenant, keys, t->ttl}};
        }
    }
    t->nres = ns;
    if (pg_pipeline(c, stmts, ns, read_done, t) < 0)
        fail_lost_before_commit(t);
}

/* --- lifecycle ----------------------------------------------------------- */

static const struct op_family *const families[FAM__COUNT] = {
    [FAM_STOREFRONT] = &storefront_family,
    [FAM_SQL] = &sql_family,
};

int txn_init(struct txn *t, struct shard *s, struct pgconn *pc)
{
    t->s = s;
    t->pc = pc;
    for (int k = 0; k < GROUP_MAX; k++) {
        struct batch *b = &t->b[k];
        b->t = t;
        batch_reset(b, false, NULL);
        for (int f = 0; f < FAM__COUNT; f++)
            if (!(b->fstate[f] = families[f]->state_new()))
                return -1;
    }
    size_t n = (size_t)s->cfg->max_batch;
    t->jobs = calloc(n, sizeof *t->jobs);
    t->results = calloc(n, sizeof *t->results);
    t->errs = calloc(n, sizeof *t->errs);
    t->replayed = calloc(n, sizeof *t->replayed);
    t->rpos = calloc(n, sizeof *t->rpos);
    t->dup = calloc(n, sizeof *t->dup);
    for (int i = 0; i < STMT_BATCH_MAX; i++) {
        snprintf(t->sp_before[i], sizeof t->sp_before[i], "SAVEPOINT tq_%d", i);
        snprintf(t->sp_undo[i], sizeof t->sp_undo[i], "ROLLBACK TO SAVEPOINT tq_%d", i);
    }
    return t->jobs && t->results && t->errs && t->replayed && t->rpos && t->dup ? 0 : -1;
}

void txn_destroy(struct txn *t)
{
    for (int k = 0; k < GROUP_MAX; k++) {
        struct batch *b = &t->b[k];
        if (k < t->nb) {
            for (int q = 0; q < b->n; q++)
                job_free(b->jobs[q]);
            b->n = 0;
        }
        /* (the lanes are gone by now: state_free drops the family's state) */
        b->begun = false;
        if (b->t)
            batch_reset(b, false, NULL);
        for (int f = 0; f < FAM__COUNT; f++) {
            if (b->fstate[f])
                families[f]->state_free(b->fstate[f]);
            b->fstate[f] = NULL;
        }
    }
    free(t->jobs);
    free(t->results);
    free(t->errs);
    free(t->replayed);
    free(t->rpos);
    free(t->dup);
}
