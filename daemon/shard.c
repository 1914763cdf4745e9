/*
 * shard.c - lanes, scheduling and the transaction of a batch.
 *
 * A shard serves ready lanes round-robin: it takes the lane at the head of
 * the ready list, runs up to max_batch of its queued requests in ONE
 * transaction on an idle connection, and puts the lane back at the tail if
 * more work arrived meanwhile.  A lane is never in two transactions at once,
 * so one tenant's requests execute one after another in arrival order, while
 * other tenants use the shard's other connections.
 *
 * Transaction of a batch that changes state (two round trips, pipelined):
 *   BEGIN; set_config(lock_timeout, statement_timeout, ...); advisory lock;
 *   SELECT row; Sync          -> apply every edit in memory, in order
 *   INSERT .. ON CONFLICT DO UPDATE; COMMIT; Sync   -> reply to each request
 * A batch that only reads runs one SELECT (implicit transaction).
 *
 * Must not: block, touch another shard's objects, or reply before COMMIT.
 */
#include "shard.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>

#include "lane.h"
#include "log.h"
#include "metrics.h"
#include "idem.h"
#include "pg.h"

#define SHARD_TICK_MS 20

enum msg_kind { MSG_JOB = 1, MSG_DRAIN, MSG_STOP };

struct shard_msg {
    int kind;
    struct job *job;
};

/* Statements prepared on every connection (pg_init), indexes into prep[]. */
enum { ST_TIMEOUTS, ST_LOCK, ST_SELECT, ST_UPSERT, ST_IDEM_INSERT, ST_IDEM_UPSERT, ST_CLEANUP,
       ST__COUNT };

struct txn {
    struct shard *s;
    struct pgconn *pc;
    struct lane *lane;
    struct job **jobs;
    json_t **results;
    tq_error *errs;
    bool *replayed;            /* answered from an idempotency record */
    int n;
    bool has_keys;             /* some mutating job carries a key */
    bool lookup;               /* this batch read the stored records of its keys */
    bool oom;                  /* recording keys ran out of memory: fail the batch */
    bool committing;           /* COMMIT sent: the batch must not be aborted */
    json_t *records;           /* key -> {"f": fingerprint, "r": result}, stored + this batch */
    struct pg_text_array keys; /* the batch's keys, for the lookup */
    struct pg_text_array new_keys, new_fps, new_resps; /* records to insert with the edit */
    uint64_t start_us;
    sf_state st;
    char *draft_text, *pub_text;
    char tout_lock[16], tout_stmt[16], tout_idle[16], version[24], ttl[16];
};

struct shard {
    struct daemon *d;
    const tq_config *cfg;
    int id;
    pthread_t thread;
    bool thread_started;
    struct event_base *base;
    int pull_sock;             /* shard thread reads */
    int push_sock;             /* front thread writes */
    struct event *ev_pull;
    struct event *ev_tick;
    struct lane_table lanes;
    struct ready_list ready;
    struct pgconn *conns;
    struct txn *txns;          /* txns[i] runs on conns[i] */
    int nconns;
    int inflight;              /* connections running one of our pipelines */
    size_t queued;             /* jobs waiting in lanes */
    uint64_t min_deadline_us;  /* lower bound of the queued jobs' deadlines */
    uint64_t next_cleanup_us;  /* shard 0 expires idempotency records */
    char cleanup_ttl[16];
    msgpack_sbuffer sb;
    char *sql_lock;
    struct pg_stmt prep[ST__COUNT]; /* prepared on every connection */
    bool draining, stopping;
    atomic_bool drained;
    atomic_int connected;
    atomic_uint heartbeat;
    atomic_ulong gauges[SHARD_GAUGE__COUNT];
    struct tq_stats stats;
};

static const char SQL_BEGIN[] = "BEGIN";
static const char SQL_COMMIT[] = "COMMIT";
static const char SQL_ROLLBACK[] = "ROLLBACK";

static const char SQL_TIMEOUTS[] =
    "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true),"
    " set_config('idle_in_transaction_session_timeout', $3, true)";
static const char SQL_SELECT[] =
    "SELECT draft::text, published::text, version FROM tenantq_storefront WHERE tenant = $1";
static const char SQL_UPSERT[] =
    "INSERT INTO tenantq_storefront AS t (tenant, draft, published, version, updated_at)"
    " VALUES ($1, $2::jsonb, $3::jsonb, $4::bigint, now())"
    " ON CONFLICT (tenant) DO UPDATE SET draft = EXCLUDED.draft,"
    " published = EXCLUDED.published, version = EXCLUDED.version, updated_at = now()";
/*
 * Idempotency records, fast path: a batch does not look its keys up; it
 * inserts their records with a plain INSERT before writing the draft, so a
 * key seen before (a retry, a re-send) fails the transaction with a unique
 * violation before anything is written.  The batch then runs again, in
 * order, with its keys looked up first (SQL_IDEM_LOOKUP) and repeats
 * answered from the records.  Retries are rare; the common batch pays one
 * INSERT and no lookup.  text[] parameters keep JSON parsing out.
 */
static const char SQL_IDEM_INSERT[] =
    "INSERT INTO tenantq_idempotency (tenant, key, fingerprint, response)"
    " SELECT $1, k, f, r FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, f, r)";
/* after a lookup: a record past its TTL, not yet deleted, is replaced */
static const char SQL_IDEM_UPSERT[] =
    "INSERT INTO tenantq_idempotency (tenant, key, fingerprint, response)"
    " SELECT $1, k, f, r FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, f, r)"
    " ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
    " response = EXCLUDED.response, created_at = now()";
/* Not prepared on purpose: planned with the actual keys each time, so it
 * stays a primary-key probe (a generic plan once scanned all of a hot
 * tenant's records). */
static const char SQL_IDEM_LOOKUP[] =
    "SELECT key, fingerprint, response FROM tenantq_idempotency WHERE tenant = $1"
    " AND key = ANY ($2::text[]) AND created_at > now() - make_interval(secs => $3::int)";
/* small batches, so expiry never holds long locks or competes with edits */
static const char SQL_IDEM_CLEANUP[] =
    "DELETE FROM tenantq_idempotency WHERE ctid IN (SELECT ctid FROM tenantq_idempotency"
    " WHERE created_at < now() - make_interval(secs => $1::int) LIMIT 500)";
#define CLEANUP_BATCH 500
#define CLEANUP_IDLE_S 60

/* A prepared statement of s with its parameters. */
static struct pg_stmt stmt(const struct shard *s, int which, const char *p0, const char *p1,
                           const char *p2, const char *p3)
{
    struct pg_stmt st = s->prep[which];
    st.params[0] = p0;
    st.params[1] = p1;
    st.params[2] = p2;
    st.params[3] = p3;
    return st;
}

static void shard_kick(struct shard *s);
static void sweep(struct shard *s, bool all);

/* --- small helpers ------------------------------------------------------- */

/* Answer j with an error and free it (job_finish_error with a ready message). */
static void fail_job(struct shard *s, struct job *j, tq_code code, const char *msg)
{
    job_finish_error(s->d, &s->sb, j, code, "%s", msg);
}

static void fail_batch(struct txn *t, tq_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_batch(struct txn *t, tq_code code, const char *fmt, ...)
{
    char msg[TQ_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (int i = 0; i < t->n; i++) {
        fail_job(t->s, t->jobs[i], code, msg);
        t->jobs[i] = NULL;
    }
}

static void txn_reset(struct txn *t)
{
    for (int i = 0; i < t->n; i++) {
        json_decref(t->results[i]);
        t->results[i] = NULL;
    }
    t->n = 0;
    sf_state_clear(&t->st);
    free(t->draft_text);
    free(t->pub_text);
    t->draft_text = t->pub_text = NULL;
    pg_text_array_free(&t->keys);
    pg_text_array_free(&t->new_keys);
    pg_text_array_free(&t->new_fps);
    pg_text_array_free(&t->new_resps);
    json_decref(t->records);
    t->records = NULL;
    t->has_keys = false;
    t->lookup = false;
    t->oom = false;
    t->committing = false;
}

static void lane_release(struct shard *s, struct lane *lane)
{
    lane->busy = false;
    if (lane->depth > 0)
        ready_push(&s->ready, lane);
    else
        lane_remove(&s->lanes, lane);
}

/* The batch's lane is done (replies sent); the connection may still be busy
 * rolling back.  conn_free says whether it is idle now. */
static void txn_end(struct txn *t, bool conn_free)
{
    struct shard *s = t->s;
    if (t->lane) {
        lane_release(s, t->lane);
        t->lane = NULL;
    }
    txn_reset(t);
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
    struct txn *t = arg;
    t->s->inflight--;
    shard_kick(t->s);
}

/* After an error inside an explicit transaction the session stays aborted
 * until ROLLBACK (TECHNOTES: 25P02 otherwise). */
static void txn_end_with_rollback(struct txn *t)
{
    struct pgconn *c = t->pc;
    bool in_txn = c->state == PGC_IDLE && PQtransactionStatus(c->conn) != PQTRANS_IDLE;
    if (in_txn) {
        struct pg_stmt rb = {.sql = SQL_ROLLBACK};
        if (pg_pipeline(c, &rb, 1, rollback_done, t) == 0) {
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

/* Map the first failed statement of a pipeline to a reply for the batch. */
static void fail_batch_from_results(struct txn *t, PGresult *const *res, int n)
{
    const PGresult *bad = NULL;
    for (int i = 0; i < n && !bad; i++)
        if (!result_ok(res[i]) && res[i] && PQresultStatus(res[i]) != PGRES_PIPELINE_ABORTED)
            bad = res[i];
    const char *state = pg_sqlstate(bad);
    const char *tenant = t->lane->tenant;
    if (state && strcmp(state, "55P03") == 0) {
        atomic_fetch_add_explicit(&t->s->gauges[SHARD_GAUGE_LOCK_TIMEOUTS], 1,
                                  memory_order_relaxed);
        /* The wait was cut at the batch's tightest deadline when that came
         * before lock_timeout_ms: those whose deadline is what ran out hear
         * so; the others hear about the lock.  Nothing changed either way. */
        char lock_msg[TQ_ERRMSG_MAX], dl_msg[TQ_ERRMSG_MAX];
        snprintf(lock_msg, sizeof lock_msg,
                 "tenant \"%s\": advisory lock not acquired within %s ms: it is held elsewhere "
                 "(another tenantqd instance or a direct writer); nothing changed",
                 tenant, t->tout_lock);
        snprintf(dl_msg, sizeof dl_msg,
                 "tenant \"%s\": deadline passed while waiting %s ms for the advisory lock, "
                 "which is held elsewhere (another tenantqd instance or a direct writer); "
                 "not executed",
                 tenant, t->tout_lock);
        uint64_t now = now_us();
        for (int i = 0; i < t->n; i++) {
            bool expired = now + 1000 >= t->jobs[i]->deadline_us;
            fail_job(t->s, t->jobs[i], expired ? TQ_E_DEADLINE_EXCEEDED : TQ_E_LOCK_TIMEOUT,
                     expired ? dl_msg : lock_msg);
            t->jobs[i] = NULL;
        }
        return;
    }
    char detail[256] = "no result";
    if (bad) {
        const char *m = PQresultErrorMessage(bad);
        snprintf(detail, sizeof detail, "%.*s", (int)strcspn(m, "\n"), m);
    }
    if (state && (strcmp(state, "57014") == 0 || strncmp(state, "40", 2) == 0 ||
                  strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
                  strcmp(state, "53300") == 0)) {
        log_info("shard %d tenant \"%s\": transient database error %s: %s", t->s->id, tenant, state,
                 detail);
        fail_batch(t, TQ_E_DB_UNAVAILABLE,
                   "tenant \"%s\": database error %s (%s); not executed", tenant, state, detail);
        return;
    }
    log_err("shard %d tenant \"%s\": database error %s: %s", t->s->id, tenant,
            state ? state : "-", detail);
    fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": database error %s: %s", tenant,
               state ? state : "-", detail);
}

/* Load the tenant's row (or the empty state) from a SELECT result. */
static int load_state(struct txn *t, const PGresult *r, char *why, size_t whylen)
{
    sf_state_clear(&t->st);
    if (PQntuples(r) == 0) {
        sf_state_init_empty(&t->st);
        return 0;
    }
    json_error_t jerr;
    const char *text = PQgetvalue(r, 0, 0);
    t->st.draft = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (t->st.draft) {
        /* An upper bound of the compact size for the max_draft_bytes check,
         * without serialising: jsonb's text has ", " and ": " where compact
         * JSON has none and the same escapes, but prints a real more briefly
         * than jansson's %.17g (at most 24 bytes); every such real has a '.'. */
        size_t len = (size_t)PQgetlength(r, 0, 0), dots = 0;
        for (const char *p = text; (p = memchr(p, '.', len - (size_t)(p - text))) != NULL; p++)
            dots++;
        t->st.size_ub = len + 24 * dots;
    } else {
        /* jsonb prints big numbers without exponent; a direct writer may have
         * stored an integer beyond int64, which jansson refuses as such */
        t->st.draft = json_loads(PQgetvalue(r, 0, 0), JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL,
                                 NULL);
        if (t->st.draft)
            log_warn("shard %d tenant \"%s\": stored draft has integers beyond 64 bits; "
                     "they are read as floating point",
                     t->s->id, t->lane->tenant);
    }
    if (!t->st.draft || !json_is_object(t->st.draft)) {
        snprintf(why, whylen, "stored draft is not a JSON object (%s)", jerr.text);
        return -1;
    }
    if (!PQgetisnull(r, 0, 1)) {
        t->st.published = json_loads(PQgetvalue(r, 0, 1), JSON_DECODE_ANY, &jerr);
        if (!t->st.published)
            t->st.published = json_loads(PQgetvalue(r, 0, 1),
                                         JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
        if (!t->st.published) {
            snprintf(why, whylen, "stored published config is not JSON (%s)", jerr.text);
            return -1;
        }
    }
    t->st.version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    return 0;
}

static void reply_all(struct txn *t)
{
    uint64_t now = now_us();
    for (int i = 0; i < t->n; i++) {
        struct job *j = t->jobs[i];
        t->jobs[i] = NULL;
        if (t->results[i]) {
            tq_timing tm = {.queue_us = t->start_us - j->recv_us,
                            .exec_us = now - t->start_us,
                            .batch = (uint32_t)t->n};
            stats_timing(tm.queue_us, tm.exec_us);
            job_finish_ok(t->s->d, &t->s->sb, j, t->results[i], t->replayed[i], &tm);
        } else {
            fail_job(t->s, j, t->errs[i].code, t->errs[i].message);
        }
    }
}

/* Load the stored idempotency records of this batch's keys. */
static int load_records(struct txn *t, const PGresult *r)
{
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *resp = json_loads(PQgetvalue(r, i, 2), JSON_DECODE_ANY, NULL);
        /* (stored as text: the exact bytes the first answer was built from) */
        json_t *rec = resp ? json_pack("{s:s,s:o}", "f", PQgetvalue(r, i, 1), "r", resp) : NULL;
        if (!rec || json_object_set_new(t->records, PQgetvalue(r, i, 0), rec) < 0)
            return -1;
    }
    return 0;
}

/* Apply the batch in memory, in arrival order: each edit sees the state the
 * ones before it left.  Returns whether anything changed. */
static bool apply_batch(struct txn *t)
{
    int64_t before = t->st.version;
    size_t max = (size_t)t->s->cfg->max_draft_bytes;
    for (int i = 0; i < t->n; i++) {
        struct job *j = t->jobs[i];
        t->errs[i].code = TQ_OK;
        t->replayed[i] = false;
        t->results[i] = NULL;
        bool keyed = j->req.key && sf_op_mutates(j->op) && t->records;
        char fp[IDEM_FINGERPRINT_HEX];
        if (keyed) {
            if (idem_fingerprint(j->req.op, j->req.args, fp) < 0) {
                tq_error_set(&t->errs[i], TQ_E_INTERNAL, "out of memory fingerprinting the request");
                continue;
            }
            json_t *rec = json_object_get(t->records, j->req.key);
            if (rec) {
                /* a repeat: the first execution's answer, never a second effect */
                const char *seen = json_string_value(json_object_get(rec, "f"));
                if (seen && strcmp(seen, fp) == 0) {
                    t->results[i] = json_incref(json_object_get(rec, "r"));
                    t->replayed[i] = true;
                } else {
                    tq_error_set(&t->errs[i], TQ_E_IDEMPOTENCY_KEY_REUSED,
                                 "key \"%s\" was used before for tenant \"%s\" with a different "
                                 "op or args",
                                 j->req.key, j->req.tenant);
                }
                continue;
            }
        }
        if (sf_apply(&t->st, j->op, j->req.args, max, &t->results[i], &t->errs[i]) < 0) {
            t->results[i] = NULL;
            continue;
        }
        if (keyed) {
            /* bind the key to this success; duplicates later in the batch replay it */
            json_t *rec = json_pack("{s:s,s:O}", "f", fp, "r", t->results[i]);
            char *resp = json_dumps(t->results[i], JSON_COMPACT);
            if (!rec || !resp || json_object_set_new(t->records, j->req.key, rec) < 0 ||
                pg_text_array_add(&t->new_keys, j->req.key) < 0 ||
                pg_text_array_add(&t->new_fps, fp) < 0 || pg_text_array_add(&t->new_resps, resp) < 0)
                t->oom = true;
            free(resp);
        }
    }
    return t->st.version != before;
}

/* Whether a request with a key failed in this batch. */
static bool keyed_failure(const struct txn *t)
{
    for (int i = 0; i < t->n; i++)
        if (!t->results[i] && t->jobs[i]->req.key && sf_op_mutates(t->jobs[i]->op))
            return true;
    return false;
}

/* --- the transaction ----------------------------------------------------- */

/* Put the batch back at the head of its lane, unanswered and in order, to
 * run again with its keys looked up first; the transaction is rolled back. */
static void rerun_with_lookup(struct txn *t)
{
    struct shard *s = t->s;
    struct lane *lane = t->lane;
    for (int i = t->n - 1; i >= 0; i--) {
        if (t->jobs[i]->deadline_us < s->min_deadline_us)
            s->min_deadline_us = t->jobs[i]->deadline_us;
        lane_push_front(lane, t->jobs[i]);
        t->jobs[i] = NULL;
        s->queued++;
    }
    lane->recheck_keys = true;
    txn_end_with_rollback(t); /* releases the lane: it is ready again */
}

/* Whether r is the fast path's INSERT of idempotency records failing on a
 * key that already has one. */
static bool key_seen_before(const PGresult *r)
{
    const char *state = pg_sqlstate(r);
    const char *constraint = r ? PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME) : NULL;
    return state && strcmp(state, "23505") == 0 && constraint &&
           strcmp(constraint, "tenantq_idempotency_pkey") == 0;
}

static void commit_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    struct txn *t = arg;
    (void)c;
    if (lost) {
        /* COMMIT was sent: it may or may not have happened */
        fail_batch(t, TQ_E_OUTCOME_UNKNOWN,
                   "tenant \"%s\": database connection lost during COMMIT; the outcome is "
                   "unknown (retry with the same key to learn it)",
                   t->lane->tenant);
        txn_end(t, true);
        return;
    }
    bool ok = n >= 2;
    for (int i = 0; ok && i < n; i++)
        ok = result_ok(res[i]);
    if (ok && strcmp(PQcmdStatus(res[n - 1]), "COMMIT") == 0) {
        reply_all(t);
        txn_end(t, true);
        return;
    }
    if (!t->lookup && n == 3 && key_seen_before(res[0])) {
        /* a key of this batch has a record: nothing was written */
        rerun_with_lookup(t);
        return;
    }
    fail_batch_from_results(t, res, n);
    txn_end_with_rollback(t);
}

/* The connection went away before COMMIT was sent: nothing of the batch
 * happened.  Aborted on purpose when the shutdown grace is over. */
static void fail_lost_before_commit(struct txn *t)
{
    if (t->s->stopping)
        fail_batch(t, TQ_E_SHUTTING_DOWN, "the daemon is shutting down; not executed");
    else
        fail_batch(t, TQ_E_DB_UNAVAILABLE,
                   "tenant \"%s\": database connection lost before commit; not executed",
                   t->lane->tenant);
    txn_end(t, true);
}

static void read_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    struct txn *t = arg;
    (void)c;
    char why[256];
    if (lost) {
        fail_lost_before_commit(t);
        return;
    }
    if (n != 1 || !result_ok(res[0])) {
        fail_batch_from_results(t, res, n);
        txn_end(t, true);
        return;
    }
    if (load_state(t, res[0], why, sizeof why) < 0) {
        log_err("shard %d tenant \"%s\": %s", t->s->id, t->lane->tenant, why);
        fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": %s", t->lane->tenant, why);
        txn_end(t, true);
        return;
    }
    apply_batch(t);
    reply_all(t);
    txn_end(t, true);
}

static void locked_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    struct txn *t = arg;
    char why[256];
    if (lost) {
        fail_lost_before_commit(t);
        return;
    }
    bool ok = n == (t->lookup ? 5 : 4);
    for (int i = 0; ok && i < n; i++)
        ok = result_ok(res[i]);
    if (!ok) {
        fail_batch_from_results(t, res, n);
        txn_end_with_rollback(t);
        return;
    }
    if (t->lookup && load_records(t, res[4]) < 0) {
        fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": unreadable idempotency record",
                   t->lane->tenant);
        txn_end_with_rollback(t);
        return;
    }
    if (load_state(t, res[3], why, sizeof why) < 0) {
        log_err("shard %d tenant \"%s\": %s", t->s->id, t->lane->tenant, why);
        fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": %s", t->lane->tenant, why);
        txn_end_with_rollback(t);
        return;
    }
    bool wrote = apply_batch(t);
    if (!t->lookup && t->has_keys && keyed_failure(t)) {
        /* the failure may be a repeat of an edit that did succeed (an id
         * that now exists because of it): only its record can tell */
        rerun_with_lookup(t);
        return;
    }
    if (!wrote) {
        /* nothing to write: every edit failed validation or only read */
        reply_all(t);
        txn_end_with_rollback(t);
        return;
    }
    t->draft_text = json_dumps(t->st.draft, JSON_COMPACT);
    t->pub_text = t->st.published ? json_dumps(t->st.published, JSON_COMPACT | JSON_ENCODE_ANY)
                                  : NULL;
    snprintf(t->version, sizeof t->version, "%" PRId64, t->st.version);
    if (!t->draft_text || (t->st.published && !t->pub_text)) {
        fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": out of memory serialising the draft",
                   t->lane->tenant);
        txn_end_with_rollback(t);
        return;
    }
    struct shard *s = t->s;
    struct pg_stmt stmts[3];
    int ns = 0;
    if (t->new_keys.n > 0) {
        const char *k = pg_text_array_get(&t->new_keys), *f = pg_text_array_get(&t->new_fps),
                   *r = pg_text_array_get(&t->new_resps);
        if (t->oom || !k || !f || !r) {
            fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": out of memory recording keys",
                       t->lane->tenant);
            txn_end_with_rollback(t);
            return;
        }
        stmts[ns++] = stmt(s, t->lookup ? ST_IDEM_UPSERT : ST_IDEM_INSERT, t->lane->tenant, k, f, r);
    }
    stmts[ns++] = stmt(s, ST_UPSERT, t->lane->tenant, t->draft_text, t->pub_text, t->version);
    stmts[ns++] = (struct pg_stmt){.sql = SQL_COMMIT};
    t->committing = true;
    if (pg_pipeline(c, stmts, ns, commit_done, t) < 0)
        fail_lost_before_commit(t); /* nothing was sent */
}

/* Start a batch of lane on idle connection i.  The lane is not in the ready
 * list any more. */
static void txn_start(struct shard *s, int i, struct lane *lane)
{
    struct txn *t = &s->txns[i];
    struct pgconn *c = &s->conns[i];
    uint64_t now = now_us();
    bool mutating = false;
    uint64_t min_left_ms = UINT64_MAX;

    t->lane = lane;
    lane->busy = true;
    s->inflight++;
    t->n = 0;
    t->start_us = now;
    struct job *j;
    while (t->n < s->cfg->max_batch && (j = lane_pop(lane)) != NULL) {
        s->queued--;
        if (now >= j->deadline_us) {
            fail_job(s, j, TQ_E_DEADLINE_EXCEEDED,
                     "deadline passed while queued behind the tenant's earlier requests; "
                     "not executed");
            continue;
        }
        t->jobs[t->n] = j;
        t->results[t->n] = NULL;
        t->n++;
        if (sf_op_mutates(j->op)) {
            mutating = true;
            if (j->req.key)
                t->has_keys = true;
            uint64_t left = (j->deadline_us - now) / 1000;
            if (left < min_left_ms)
                min_left_ms = left;
        }
    }
    if (t->n == 0) {
        txn_end(t, true);
        return;
    }
    stats_batch(t->n);
    const char *tenant = lane->tenant;
    int rc;
    if (!mutating) {
        struct pg_stmt sel = stmt(s, ST_SELECT, tenant, NULL, NULL, NULL);
        rc = pg_pipeline(c, &sel, 1, read_done, t);
    } else {
        /* the lock wait is bounded by the batch's tightest deadline too */
        uint64_t lock_ms = (uint64_t)s->cfg->lock_timeout_ms;
        if (min_left_ms < lock_ms)
            lock_ms = min_left_ms ? min_left_ms : 1;
        snprintf(t->tout_lock, sizeof t->tout_lock, "%" PRIu64, lock_ms);
        snprintf(t->tout_stmt, sizeof t->tout_stmt, "%d", s->cfg->statement_timeout_ms);
        snprintf(t->tout_idle, sizeof t->tout_idle, "%d",
                 s->cfg->statement_timeout_ms + s->cfg->lock_timeout_ms + 5000);
        struct pg_stmt stmts[5] = {
            {.sql = SQL_BEGIN},
            stmt(s, ST_TIMEOUTS, t->tout_lock, t->tout_stmt, t->tout_idle, NULL),
            stmt(s, ST_LOCK, tenant, NULL, NULL, NULL),
            stmt(s, ST_SELECT, tenant, NULL, NULL, NULL),
        };
        int ns = 4;
        if (t->has_keys) {
            /* records of this batch, so a key repeated inside it replays */
            t->records = json_object();
            bool ok = t->records != NULL;
            t->lookup = lane->recheck_keys;
            lane->recheck_keys = false;
            for (int k = 0; ok && t->lookup && k < t->n; k++)
                if (t->jobs[k]->req.key && sf_op_mutates(t->jobs[k]->op))
                    ok = pg_text_array_add(&t->keys, t->jobs[k]->req.key) == 0;
            const char *keys = ok && t->lookup ? pg_text_array_get(&t->keys) : NULL;
            if (!ok || (t->lookup && !keys)) {
                fail_batch(t, TQ_E_INTERNAL, "tenant \"%s\": out of memory", tenant);
                txn_end(t, true);
                return;
            }
            if (t->lookup) {
                snprintf(t->ttl, sizeof t->ttl, "%d", s->cfg->idempotency_ttl_s);
                stmts[ns++] = (struct pg_stmt){
                    .sql = SQL_IDEM_LOOKUP, .nparams = 3, .params = {tenant, keys, t->ttl}};
            }
        }
        rc = pg_pipeline(c, stmts, ns, locked_done, t);
    }
    if (rc < 0)
        fail_lost_before_commit(t);
}

/* --- scheduling ---------------------------------------------------------- */

static int idle_conn(struct shard *s)
{
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i].state == PGC_IDLE && s->txns[i].lane == NULL &&
            s->conns[i].cb == NULL)
            return i;
    return -1;
}

static void check_drained(struct shard *s)
{
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_QUEUED], s->queued, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_LANES], s->lanes.count, memory_order_relaxed);
    if (s->draining && s->queued == 0 && s->inflight == 0)
        atomic_store(&s->drained, true);
    if (s->stopping && s->inflight == 0)
        event_base_loopbreak(s->base);
}

static void shard_kick(struct shard *s)
{
    struct lane *lane;
    if (s->stopping && s->queued > 0)
        sweep(s, true); /* e.g. a batch put back to rerun: nothing new starts now */
    while ((lane = s->ready.head) != NULL) {
        /* requests that need no database pass through the lane at once */
        while (lane->head && !sf_op_needs_db(lane->head->op)) {
            struct job *j = lane_pop(lane);
            s->queued--;
            /* only ping needs no database (sf_op_needs_db) */
            json_t *res = json_pack("{s:b}", "pong", 1);
            if (res)
                job_finish_ok(s->d, &s->sb, j, res, false, NULL);
            else
                fail_job(s, j, TQ_E_INTERNAL, "out of memory");
            json_decref(res);
        }
        if (lane->depth == 0) {
            ready_pop(&s->ready);
            lane_remove(&s->lanes, lane);
            continue;
        }
        int i = idle_conn(s);
        if (i < 0)
            break;
        ready_pop(&s->ready);
        txn_start(s, i, lane);
    }
    check_drained(s);
}

static void admit(struct shard *s, struct job *j)
{
    struct lane *lane = lane_get(&s->lanes, j->req.tenant, j->req.tenant_len, j->hash, true);
    if (!lane) {
        fail_job(s, j, TQ_E_QUEUE_FULL, "out of memory for a new tenant lane; nothing was queued");
        return;
    }
    if (lane->depth >= (uint32_t)s->cfg->max_queue_per_tenant) {
        char msg[TQ_ERRMSG_MAX];
        snprintf(msg, sizeof msg,
                 "tenant \"%s\" already has %u requests queued (max_queue_per_tenant); nothing "
                 "was queued",
                 lane->tenant, lane->depth);
        fail_job(s, j, TQ_E_QUEUE_FULL, msg);
        if (lane->depth == 0 && !lane->busy && !lane->ready)
            lane_remove(&s->lanes, lane);
        return;
    }
    lane_push(lane, j);
    s->queued++;
    if (j->deadline_us < s->min_deadline_us)
        s->min_deadline_us = j->deadline_us;
    if (!lane->busy)
        ready_push(&s->ready, lane);
}

/* Answer queued jobs whose deadline passed (or all, when stopping). */
static void sweep(struct shard *s, bool all)
{
    uint64_t now = now_us();
    if (!all && (s->queued == 0 || now < s->min_deadline_us))
        return;
    bool db_up = atomic_load(&s->connected) > 0;
    uint64_t min = UINT64_MAX;
    for (size_t b = 0; b <= s->lanes.mask; b++) {
        for (struct lane *l = s->lanes.buckets[b]; l; l = l->hnext) {
            struct job **pp = &l->head, *prev = NULL;
            while (*pp) {
                struct job *j = *pp;
                if (all || now >= j->deadline_us) {
                    *pp = j->next;
                    if (l->tail == j)
                        l->tail = prev;
                    l->depth--;
                    s->queued--;
                    if (all)
                        fail_job(s, j, TQ_E_SHUTTING_DOWN,
                                 "the daemon is shutting down; not executed");
                    else if (!db_up)
                        fail_job(s, j, TQ_E_DB_UNAVAILABLE,
                                 "no database connection before the deadline; not executed");
                    else
                        fail_job(s, j, TQ_E_DEADLINE_EXCEEDED,
                                 "deadline passed while queued; not executed");
                } else {
                    if (j->deadline_us < min)
                        min = j->deadline_us;
                    prev = j;
                    pp = &j->next;
                }
            }
        }
    }
    s->min_deadline_us = min;
    /* emptied lanes are still in the ready list: shard_kick drops them */
}

static void on_pull(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct shard *s = arg;
    for (;;) {
        struct shard_msg m;
        int rc = nn_recv(s->pull_sock, &m, sizeof m, NN_DONTWAIT);
        if (rc < 0) {
            if (nn_errno() != EAGAIN && nn_errno() != EINTR)
                log_err("shard %d: inbox: %s", s->id, nn_strerror(nn_errno()));
            break;
        }
        if (rc != (int)sizeof m)
            continue;
        switch (m.kind) {
        case MSG_JOB:
            if (s->stopping)
                fail_job(s, m.job, TQ_E_SHUTTING_DOWN, "the daemon is shutting down; not executed");
            else
                admit(s, m.job);
            break;
        case MSG_DRAIN:
            s->draining = true;
            break;
        case MSG_STOP:
            s->draining = true;
            s->stopping = true;
            sweep(s, true);
            /* The grace is over: a batch still waiting for its lock or its
             * read has committed nothing, so closing its connection fails it
             * cleanly.  A batch whose COMMIT is out finishes (bounded by
             * statement_timeout). */
            for (int i = 0; i < s->nconns; i++)
                if (s->txns[i].lane && !s->txns[i].committing)
                    pg_abort(&s->conns[i], "shutdown grace is over");
            break;
        }
    }
    shard_kick(s);
}

static void cleanup_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    (void)c;
    struct shard *s = arg;
    s->inflight--;
    long deleted = (!lost && n == 1 && result_ok(res[0])) ? atol(PQcmdTuples(res[0])) : 0;
    if (!lost && n == 1 && !result_ok(res[0]))
        log_warn("shard %d: idempotency cleanup failed: %s", s->id,
                 res[0] ? PQresultErrorMessage(res[0]) : "no result");
    if (deleted > 0)
        log_debug("shard %d: expired %ld idempotency records", s->id, deleted);
    /* a full batch means more are due: come back soon, else rest a while */
    s->next_cleanup_us = now_us() + (deleted >= CLEANUP_BATCH ? 200000u : CLEANUP_IDLE_S * 1000000u);
    check_drained(s);
    shard_kick(s);
}

/* Expire idempotency records in small batches, on shard 0 only, and only
 * when a connection is idle: edits always come first. */
static void maybe_cleanup(struct shard *s)
{
    if (s->id != 0 || s->draining || now_us() < s->next_cleanup_us || s->ready.head)
        return;
    int i = idle_conn(s);
    if (i < 0)
        return;
    struct pg_stmt del = stmt(s, ST_CLEANUP, s->cleanup_ttl, NULL, NULL, NULL);
    if (pg_pipeline(&s->conns[i], &del, 1, cleanup_done, s) == 0)
        s->inflight++;
    s->next_cleanup_us = now_us() + CLEANUP_IDLE_S * 1000000u;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct shard *s = arg;
    atomic_fetch_add_explicit(&s->heartbeat, 1, memory_order_relaxed);
    sweep(s, false);
    shard_kick(s);
    maybe_cleanup(s);
}

static void on_conn_state(struct pgconn *c, void *owner)
{
    struct shard *s = owner;
    (void)c;
    int up = 0;
    unsigned long reconnects = 0;
    for (int i = 0; i < s->nconns; i++) {
        up += s->conns[i].state == PGC_IDLE || s->conns[i].state == PGC_BUSY;
        reconnects += s->conns[i].reconnects;
    }
    atomic_store(&s->connected, up);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_RECONNECTS], reconnects, memory_order_relaxed);
    shard_kick(s);
}

static void *shard_main(void *arg)
{
    struct shard *s = arg;
    tls_stats = &s->stats;
    for (int i = 0; i < s->nconns; i++)
        pg_start(&s->conns[i]);
    event_base_dispatch(s->base);
    log_debug("shard %d: loop done", s->id);
    return NULL;
}

/* --- lifecycle ----------------------------------------------------------- */

struct shard *shard_create(struct daemon *d, int id)
{
    const tq_config *cfg = d->cfg;
    struct shard *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->d = d;
    s->cfg = cfg;
    s->id = id;
    s->pull_sock = s->push_sock = -1;
    s->min_deadline_us = UINT64_MAX;
    s->next_cleanup_us = now_us() + 5000000u; /* let startup settle first */
    snprintf(s->cleanup_ttl, sizeof s->cleanup_ttl, "%d", cfg->idempotency_ttl_s);
    msgpack_sbuffer_init(&s->sb);
    if (lane_table_init(&s->lanes) < 0)
        goto fail;
    s->base = event_base_new();
    if (!s->base)
        goto fail;

    char url[64];
    snprintf(url, sizeof url, "inproc://tenantq-shard-%d", id);
    s->pull_sock = nn_socket(AF_SP, NN_PULL);
    s->push_sock = nn_socket(AF_SP, NN_PUSH);
    if (s->pull_sock < 0 || s->push_sock < 0 || nn_bind(s->pull_sock, url) < 0 ||
        nn_connect(s->push_sock, url) < 0) {
        log_err("shard %d: inproc socket: %s", id, nn_strerror(nn_errno()));
        goto fail;
    }
    int rcvfd;
    size_t sz = sizeof rcvfd;
    if (nn_getsockopt(s->pull_sock, NN_SOL_SOCKET, NN_RCVFD, &rcvfd, &sz) < 0)
        goto fail;
    s->ev_pull = event_new(s->base, rcvfd, EV_READ | EV_PERSIST, on_pull, s);
    s->ev_tick = event_new(s->base, -1, EV_PERSIST, on_tick, s);
    struct timeval tick = {0, SHARD_TICK_MS * 1000};
    if (!s->ev_pull || !s->ev_tick || event_add(s->ev_pull, NULL) < 0 ||
        event_add(s->ev_tick, &tick) < 0)
        goto fail;

    s->sql_lock = malloc(strlen(cfg->lock_key_sql) + 64);
    if (!s->sql_lock)
        goto fail;
    sprintf(s->sql_lock, "SELECT pg_advisory_xact_lock((%s)::bigint)", cfg->lock_key_sql);
    static const struct {
        const char *name;
        const char *sql;
        int nparams;
    } prep[ST__COUNT] = {
        [ST_TIMEOUTS] = {"tq_timeouts", SQL_TIMEOUTS, 3},
        [ST_LOCK] = {"tq_lock", NULL, 1},
        [ST_SELECT] = {"tq_select", SQL_SELECT, 1},
        [ST_UPSERT] = {"tq_upsert", SQL_UPSERT, 4},
        [ST_IDEM_INSERT] = {"tq_idem_insert", SQL_IDEM_INSERT, 4},
        [ST_IDEM_UPSERT] = {"tq_idem_upsert", SQL_IDEM_UPSERT, 4},
        [ST_CLEANUP] = {"tq_idem_cleanup", SQL_IDEM_CLEANUP, 1},
    };
    for (int i = 0; i < ST__COUNT; i++)
        s->prep[i] = (struct pg_stmt){.name = prep[i].name,
                                      .sql = prep[i].sql ? prep[i].sql : s->sql_lock,
                                      .nparams = prep[i].nparams};

    s->nconns = cfg->connections_per_shard;
    s->conns = calloc((size_t)s->nconns, sizeof *s->conns);
    s->txns = calloc((size_t)s->nconns, sizeof *s->txns);
    if (!s->conns || !s->txns)
        goto fail;
    for (int i = 0; i < s->nconns; i++) {
        struct txn *t = &s->txns[i];
        t->s = s;
        t->pc = &s->conns[i];
        t->jobs = calloc((size_t)cfg->max_batch, sizeof *t->jobs);
        t->results = calloc((size_t)cfg->max_batch, sizeof *t->results);
        t->errs = calloc((size_t)cfg->max_batch, sizeof *t->errs);
        t->replayed = calloc((size_t)cfg->max_batch, sizeof *t->replayed);
        if (!t->jobs || !t->results || !t->errs || !t->replayed ||
            pg_init(&s->conns[i], s->base, cfg, id, i, on_conn_state, s, s->prep, ST__COUNT) < 0)
            goto fail;
    }
    return s;
fail:
    log_err("shard %d: cannot be created", id);
    shard_destroy(s);
    return NULL;
}

int shard_start(struct shard *s)
{
    if (pthread_create(&s->thread, NULL, shard_main, s) != 0)
        return -1;
    s->thread_started = true;
    return 0;
}

static int send_msg(struct shard *s, int kind, struct job *job)
{
    struct shard_msg m = {.kind = kind, .job = job};
    return nn_send(s->push_sock, &m, sizeof m, NN_DONTWAIT) == (int)sizeof m ? 0 : -1;
}

int shard_submit(struct shard *s, struct job *job) { return send_msg(s, MSG_JOB, job); }
int shard_request_drain(struct shard *s) { return send_msg(s, MSG_DRAIN, NULL); }
int shard_request_stop(struct shard *s) { return send_msg(s, MSG_STOP, NULL); }
bool shard_drained(const struct shard *s) { return atomic_load(&s->drained); }
int shard_connected(const struct shard *s) { return atomic_load(&s->connected); }
unsigned shard_heartbeat(const struct shard *s) { return atomic_load(&s->heartbeat); }
struct tq_stats *shard_stats(struct shard *s) { return &s->stats; }
unsigned long shard_gauge(const struct shard *s, enum shard_gauge g)
{
    return atomic_load_explicit(&s->gauges[g], memory_order_relaxed);
}

void shard_destroy(struct shard *s)
{
    if (!s)
        return;
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    /* the thread is gone: its objects are ours now */
    if (s->lanes.buckets) {
        for (size_t b = 0; b <= s->lanes.mask; b++) {
            struct lane *l = s->lanes.buckets[b];
            while (l) {
                struct lane *next = l->hnext;
                struct job *j;
                while ((j = lane_pop(l)) != NULL) {
                    atomic_fetch_sub(&s->d->pending, 1);
                    job_free(j);
                }
                free(l);
                l = next;
            }
        }
        lane_table_destroy(&s->lanes);
    }
    for (int i = 0; s->txns && i < s->nconns; i++) {
        struct txn *t = &s->txns[i];
        for (int k = 0; t->jobs && k < t->n; k++)
            job_free(t->jobs[k]);
        if (t->results)
            txn_reset(t);
        free(t->jobs);
        free(t->results);
        free(t->errs);
        free(t->replayed);
    }
    for (int i = 0; s->conns && i < s->nconns; i++)
        pg_destroy(&s->conns[i]);
    free(s->conns);
    free(s->txns);
    if (s->ev_pull)
        event_free(s->ev_pull);
    if (s->ev_tick)
        event_free(s->ev_tick);
    if (s->pull_sock >= 0)
        nn_close(s->pull_sock);
    if (s->push_sock >= 0)
        nn_close(s->push_sock);
    if (s->base)
        event_base_free(s->base);
    free(s->sql_lock);
    msgpack_sbuffer_destroy(&s->sb);
    free(s);
}
