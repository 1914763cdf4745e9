/*
 * shard.c - lanes, scheduling and the transactions of batches.
 *
 * A shard serves ready lanes round-robin: an idle connection takes the lane
 * at the head of the ready list and runs up to max_batch of its queued
 * requests (a batch) in ONE transaction.  A lane is never in two
 * transactions at once, so one tenant's requests execute one after another
 * in arrival order, while other tenants use the shard's other connections.
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
 *   per batch: advisory lock (or try-lock); SELECT row; Sync
 *       -> apply every batch's edits in memory, in order; answer the batches
 *          that changed nothing
 *   per batch that changed something: [INSERT key records;]
 *   INSERT .. ON CONFLICT DO UPDATE;  then COMMIT; Sync  -> reply to each request
 * Batches that only read run their SELECTs without BEGIN (one implicit
 * transaction).
 *
 * One round trip (txn_start_cached), when every batch changes state and its
 * tenant's state is in the draft cache: apply first, then
 *   BEGIN; set_config(...); per batch: lock (shared: a try-lock that fails
 *   when busy); guard (SQL_GUARD: fails unless the row still is the cached
 *   version); [INSERT key records;] INSERT .. ON CONFLICT;  COMMIT; Sync
 * A failed guard writes nothing; the batch runs again from the row.
 *
 * Answers wait in the shard's outbox until the callback that produced them
 * has sent the next pipeline (outbox_flush).
 *
 * Must not: block, touch another shard's objects, or reply to a change
 * before COMMIT.
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

#include "draft_cache.h"
#include "lane.h"
#include "log.h"
#include "metrics.h"
#include "idem.h"
#include "jdump.h"
#include "jparse.h"
#include "pg.h"

#define SHARD_TICK_MS 20
#define GROUP_MAX TQ_MAX_BATCH_TENANTS /* batches (tenants) per transaction */
/* The pipelines below, at their largest: BEGIN, timeouts, COMMIT, and per
 * batch lock, select/guard, key records and the draft's write.  pg_send
 * refuses a longer one outright, which would fail a whole transaction. */
#define TXN_MAX_STMTS (3 + 4 * GROUP_MAX)
_Static_assert(TXN_MAX_STMTS <= PG_MAX_STMTS, "a transaction's pipeline must fit in pg.c");

enum msg_kind { MSG_JOB = 1, MSG_DRAIN, MSG_STOP };

struct shard_msg {
    int kind;
    struct job *job;
};

/* Statements prepared on every connection (pg_init), indexes into prep[]. */
enum {
    ST_TIMEOUTS, ST_LOCK, ST_TRYLOCK, ST_TRYLOCK_GUARD, ST_SELECT, ST_GUARD, ST_UPSERT,
    ST_IDEM_INSERT, ST_IDEM_UPSERT, ST_CLEANUP, ST__COUNT
};

/* One tenant's share of a transaction: up to max_batch of its lane's queued
 * requests, in arrival order (slices of the txn's arrays). */
struct batch {
    struct txn *t;
    struct lane *lane;
    struct job **jobs;         /* NULL once answered or put back */
    json_t **results;
    tq_error *errs;
    bool *replayed;            /* answered from an idempotency record */
    int n;
    bool mutating;             /* some job changes state: lock, read, write */
    bool has_keys;             /* some mutating job carries a key */
    bool keyed_reads;          /* some draft.get carries a key: checked, never bound */
    bool lookup;               /* this batch read the stored records of its keys */
    bool oom;                  /* recording keys ran out of memory: fail the batch */
    bool writes;               /* its row (and key records) are written before COMMIT */
    bool confirms;             /* one round trip, nothing to write: answered after COMMIT */
    int r_lock, r_select, r_lookup; /* indexes of its results in the first pipeline, -1 none
                                     * (one round trip: r_select is the guard's) */
    int r_idem, r_upsert;      /* indexes of its writes in the second pipeline, -1 none */
    bool cached;               /* st came from the draft cache: the SELECT says if still valid */
    uint32_t xmin;             /* the row's xmin as read (with st.version: its row version) */
    size_t cost;               /* what st is reckoned at in the draft cache */
    char cached_version[24], cached_xmin[16]; /* SELECT parameters */
    json_t *records;           /* key -> {"f": fingerprint, "r": result}, stored + this batch */
    struct pg_text_array keys; /* the batch's keys, for the lookup */
    struct pg_text_array new_keys, new_fps, new_resps; /* records to insert with the edit */
    sf_state st;
    char *draft_text, *pub_text;
    size_t draft_len, pub_len;
    char version[24];
};

/* The transaction running on one connection: one batch, or several tenants'
 * batches sharing BEGIN..COMMIT (see the top of this file). */
struct txn {
    struct shard *s;
    struct pgconn *pc;
    struct job **jobs;         /* max_batch slots each, shared by the batches */
    json_t **results;
    tq_error *errs;
    bool *replayed;
    struct batch b[GROUP_MAX];
    int nb;                    /* batches in this transaction; 0: the slot is free */
    int njobs;
    int nres;                  /* statements of the first pipeline */
    uint64_t change_deadline_us; /* tightest deadline of a state-changing job, or UINT64_MAX */
    bool committing;           /* COMMIT sent: the transaction must not be aborted */
    bool one_trip;             /* sent whole from cached states (txn_start_cached) */
    uint64_t start_us;
    char tout_lock[24], ttl[16];
};

/* An answer waiting in a shard's outbox (reply_all). */
struct reply {
    struct job *job;
    json_t *result;            /* owned; NULL: err */
    tq_error err;
    tq_timing tm;
    bool replayed;
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
    struct dcache cache;       /* parsed states of recently served tenants */
    struct ready_list ready;
    struct pgconn *conns;
    struct txn *txns;          /* txns[i] runs on conns[i] */
    int nconns;
    int inflight;              /* connections running one of our pipelines */
    size_t queued;             /* jobs waiting in lanes */
    uint64_t min_deadline_us;  /* lower bound of the queued jobs' deadlines */
    uint64_t next_cleanup_us;  /* shard 0 expires idempotency records */
    char cleanup_ttl[16];
    char cleanup_lock_ms[16];  /* the cleanup's lock timeout (lock_timeout_ms) */
    /* statement and idle-in-transaction timeouts of every transaction and
     * cleanup pass (fixed by the config) */
    char tout_stmt[16], tout_idle[16];
    bool cleanup_behind;       /* the last pass deleted a whole batch */
    msgpack_sbuffer sb;
    struct reply *outbox;      /* cfg->max_batch answers, nout of them waiting */
    int nout;
    char *sql_lock, *sql_trylock, *sql_trylock_guard; /* over cfg->lock_key_sql */
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
/* $2/$3: the row version the draft cache holds ('-1'/'0' for none): when the
 * row still is that version the JSON is not even read out of TOAST. */
static const char SQL_SELECT[] =
    "SELECT CASE WHEN version = $2::bigint AND xmin = $3::xid THEN NULL ELSE draft::text END,"
    " CASE WHEN version = $2::bigint AND xmin = $3::xid THEN NULL ELSE published::text END,"
    " version, xmin, version = $2::bigint AND xmin = $3::xid"
    " FROM tenantq_storefront WHERE tenant = $1";
/* One round trip from a cached state: fails (division by zero, which aborts
 * the transaction before anything is written) unless the row still is the
 * version the draft cache holds.  After the lock, so it sees the row as the
 * lock's previous holder left it. */
static const char SQL_GUARD[] =
    "SELECT 1 / count(*) AS tenantq_cached_draft_is_current FROM tenantq_storefront"
    " WHERE tenant = $1 AND version = $2::bigint AND xmin = $3::xid";
static const char SQL_UPSERT[] =
    "INSERT INTO tenantq_storefront AS t (tenant, draft, published, version, updated_at)"
    " VALUES ($1, $2::jsonb, $3::jsonb, $4::bigint, now())"
    " ON CONFLICT (tenant) DO UPDATE SET draft = EXCLUDED.draft,"
    " published = EXCLUDED.published, version = EXCLUDED.version, updated_at = now()"
    " RETURNING xmin";
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
/* small batches, so expiry never holds long locks or competes with edits;
 * records locked by someone else are left for a later pass rather than
 * waited for (the pass runs under the transactions' timeouts as well) */
static const char SQL_IDEM_CLEANUP[] =
    "DELETE FROM tenantq_idempotency WHERE ctid IN (SELECT ctid FROM tenantq_idempotency"
    " WHERE created_at < now() - make_interval(secs => $1::int) LIMIT 500"
    " FOR UPDATE SKIP LOCKED)";
#define CLEANUP_BATCH 500
#define CLEANUP_IDLE_S 10        /* rest after a pass that deleted less than a batch */
#define CLEANUP_BEHIND_MS 20     /* next pass after a full batch: more are due */
#define CLEANUP_MAX_WAIT_MS 1000 /* a due pass waits this long for a moment without edits */

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
static void maybe_cleanup(struct shard *s);
static void sweep(struct shard *s, bool all);

/* --- small helpers ------------------------------------------------------- */

/* Answer j with an error and free it (job_finish_error with a ready message). */
static void fail_job(struct shard *s, struct job *j, tq_code code, const char *msg)
{
    job_finish_error(s->d, &s->sb, j, code, "%s", msg);
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
            fail_job(b->t->s, b->jobs[i], code, msg);
        b->jobs[i] = NULL;
    }
}

/* Whether j has an idempotency record: only a request that changes state
 * and carries a key. */
static bool key_recorded(const struct job *j)
{
    return j->req.key && sf_op_mutates(j->op);
}

/* Whether j reads with a key: a key bound by an edit is refused
 * (IDEMPOTENCY_KEY_REUSED: another op), else ignored, since a read has no
 * effect to record.  ping never reaches a transaction. */
static bool key_checked_read(const struct job *j)
{
    return j->req.key && !sf_op_mutates(j->op) && j->op != SF_OP_PING;
}

static bool batch_answered(const struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        if (b->jobs[i])
            return false;
    return true;
}

static void batch_reset(struct batch *b)
{
    for (int i = 0; i < b->n; i++) {
        json_decref(b->results[i]);
        b->results[i] = NULL;
    }
    sf_state_clear(&b->st);
    free(b->draft_text);
    free(b->pub_text);
    pg_text_array_free(&b->keys);
    pg_text_array_free(&b->new_keys);
    pg_text_array_free(&b->new_fps);
    pg_text_array_free(&b->new_resps);
    json_decref(b->records);
    struct txn *t = b->t;
    *b = (struct batch){
        .t = t, .r_lock = -1, .r_select = -1, .r_lookup = -1, .r_idem = -1, .r_upsert = -1};
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
        lane_release(s, b->lane);
        batch_reset(b);
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
 * until ROLLBACK (TECHNOTES: 25P02 otherwise). */
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

/* Map the first failed statement of a pipeline to a reply for the batch
 * (a transaction of this one batch: the failure is its own). */
static void fail_batch_from_results(struct batch *b, PGresult *const *res, int n)
{
    struct txn *t = b->t;
    int f = first_failed(res, n);
    const PGresult *bad = f >= 0 ? res[f] : NULL;
    const char *state = pg_sqlstate(bad);
    const char *tenant = b->lane->tenant;
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
        for (int i = 0; i < b->n; i++) {
            if (!b->jobs[i])
                continue;
            bool expired = now + 1000 >= b->jobs[i]->deadline_us;
            fail_job(t->s, b->jobs[i], expired ? TQ_E_DEADLINE_EXCEEDED : TQ_E_LOCK_TIMEOUT,
                     expired ? dl_msg : lock_msg);
            b->jobs[i] = NULL;
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

/* Load the tenant's row (or the empty state) from a SELECT result, unless
 * the state taken from the draft cache is still the row's version. */
static int load_state(struct batch *b, const PGresult *r, char *why, size_t whylen)
{
    struct dcache *cache = &b->t->s->cache;
    if (PQntuples(r) == 0) {
        sf_state_clear(&b->st);
        sf_state_init_empty(&b->st);
        return 0;
    }
    b->xmin = (uint32_t)strtoul(PQgetvalue(r, 0, 3), NULL, 10);
    if (b->cached && PQgetvalue(r, 0, 4)[0] == 't') {
        cache->hits++;
        return 0;
    }
    cache->misses++;
    sf_state_clear(&b->st);
    b->cost = dcache_cost((size_t)PQgetlength(r, 0, 0) + (size_t)PQgetlength(r, 0, 1));
    const char *text = PQgetvalue(r, 0, 0);
    size_t len = (size_t)PQgetlength(r, 0, 0);
    char jerr[160];
    bool big = false, pub_big = false;
    b->st.draft = jparse(text, len, &big, jerr, sizeof jerr);
    if (!b->st.draft || !json_is_object(b->st.draft)) {
        snprintf(why, whylen, "stored draft is not a JSON object (%s)",
                 b->st.draft ? "another JSON value" : jerr);
        return -1;
    }
    b->st.size_ub = sf_stored_size_ub(text, len);
    if (!PQgetisnull(r, 0, 1)) {
        b->st.published =
            jparse(PQgetvalue(r, 0, 1), (size_t)PQgetlength(r, 0, 1), &pub_big, jerr, sizeof jerr);
        if (!b->st.published) {
            snprintf(why, whylen, "stored published config is not JSON (%s)", jerr);
            return -1;
        }
    }
    /* jsonb prints big numbers without exponent; a direct writer may have
     * stored an integer beyond int64, which jansson cannot hold as one */
    if (big || pub_big)
        log_warn("shard %d tenant \"%s\": stored document has integers beyond 64 bits; they "
                 "are read as floating point",
                 b->t->s->id, b->lane->tenant);
    b->st.version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    return 0;
}

/* Send the answers reply_all left in the outbox. */
static void outbox_flush(struct shard *s)
{
    for (int i = 0; i < s->nout; i++) {
        struct reply *r = &s->outbox[i];
        if (r->result) {
            job_finish_ok(s->d, &s->sb, r->job, r->result, r->replayed, &r->tm);
            json_decref(r->result);
        } else {
            fail_job(s, r->job, r->err.code, r->err.message);
        }
    }
    s->nout = 0;
}

/* Answer every request of b still unanswered with its result or error.  The
 * answers wait in the shard's outbox until outbox_flush, so that a callback
 * can start the lane's next transaction before it spends time encoding and
 * sending them (results share nothing with the state: storefront.h). */
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
            outbox_flush(s); /* (a transaction holds at most max_batch) */
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

/* Apply the batch in memory, in arrival order: each edit sees the state the
 * ones before it left.  Returns whether anything changed. */
static bool apply_batch(struct batch *b)
{
    int64_t before = b->st.version;
    size_t max = (size_t)b->t->s->cfg->max_draft_bytes;
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
            json_t *rec = json_object_get(b->records, j->req.key);
            if (rec) {
                /* a repeat: the first execution's answer, never a second effect */
                const char *seen = json_string_value(json_object_get(rec, "f"));
                if (seen && strcmp(seen, fp) == 0) {
                    b->results[i] = json_incref(json_object_get(rec, "r"));
                    b->replayed[i] = true;
                } else {
                    key_reused(&b->errs[i], j);
                }
                continue;
            }
        }
        if (sf_apply(&b->st, j->op, j->req.args, max, &b->results[i], &b->errs[i]) < 0) {
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
    return b->st.version != before;
}

/* Whether a request with a key failed in this batch. */
static bool keyed_failure(const struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        if (!b->results[i] && key_recorded(b->jobs[i]))
            return true;
    return false;
}

/* Keep b's state (the row as committed, or as read) parsed for the tenant's
 * next batch; b's state is empty afterwards. */
static void batch_cache(struct batch *b)
{
    /* xmin below 3 is a special id (2: the row was frozen), which a later
     * write followed by another freeze would show again: never trust it */
    if (b->st.version > 0 && b->xmin >= 3)
        dcache_put(&b->t->s->cache, b->lane->tenant, b->lane->tenant_len, b->lane->hash, &b->st,
                   b->xmin, b->cost);
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
    lane->solo |= solo;
    lane->recheck_keys |= lookup;
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

/* A one-round-trip transaction failed: nothing was written.  The batch
 * whose statement failed decides: a stale cached state runs again from the
 * row; a try-lock that found the lock held, alone; a key seen before, with
 * lookups.  Any other error is the batch's own when it ran alone; shared,
 * the batches run again (the failing one alone). */
static void one_trip_failed(struct txn *t, PGresult *const *res, int n)
{
    int f = first_failed(res, n);
    const char *state = f >= 0 ? pg_sqlstate(res[f]) : NULL;
    bool div0 = state && strcmp(state, "22012") == 0;
    int owner = -1;
    for (int k = 0; k < t->nb && f >= 0; k++) {
        const struct batch *b = &t->b[k];
        if ((b->writes || b->confirms) &&
            (f == b->r_lock || f == b->r_select || f == b->r_idem || f == b->r_upsert))
            owner = k;
    }
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        if (!b->writes && !b->confirms)
            continue; /* answered or put back before sending */
        if (k == owner && div0 && f == b->r_select) {
            atomic_fetch_add_explicit(&t->s->gauges[SHARD_GAUGE_CACHE_STALE], 1,
                                      memory_order_relaxed);
            batch_put_back(b, false, false);
        } else if (k == owner && div0 && f == b->r_lock) {
            atomic_fetch_add_explicit(&t->s->gauges[SHARD_GAUGE_LOCK_BUSY], 1,
                                      memory_order_relaxed);
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

static void commit_done(struct pgconn *c, void *arg, PGresult *const *res, int n, bool lost)
{
    struct txn *t = arg;
    (void)c;
    if (lost) {
        /* The server reported an error on a statement before COMMIT (a
         * lock wait ended by its shutdown, say): it had aborted the
         * transaction, so nothing of it happened.  Only the server's own
         * errors (with a SQLSTATE) say where it stopped: the one libpq makes
         * up for a lost connection goes to the first statement whose result
         * had not arrived, which may be before a COMMIT that did run. */
        int f = first_failed(res, n);
        if (f >= 0 && f < n - 1 && pg_sqlstate(res[f]) != NULL) {
            fail_lost_before_commit(t);
            return;
        }
        /* COMMIT was sent: it may or may not have happened (a batch that
         * only confirmed its validation errors wrote nothing either way) */
        for (int k = 0; k < t->nb; k++) {
            if (t->b[k].confirms)
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
        return;
    }
    bool ok = n >= 2;
    for (int i = 0; ok && i < n; i++)
        ok = result_ok(res[i]);
    if (ok && strcmp(PQcmdStatus(res[n - 1]), "COMMIT") == 0) {
        struct shard *s = t->s;
        for (int k = 0; k < t->nb; k++) {
            struct batch *b = &t->b[k];
            if (t->one_trip && (b->writes || b->confirms))
                s->cache.hits++; /* the guard found the cached state current */
            if (b->confirms) {
                /* the cached state was current: the validation errors stand */
                reply_all(b);
                batch_cache(b);
                continue;
            }
            if (!b->writes)
                continue;
            reply_all(b);
            /* the committed state is the row's new version: keep it parsed */
            const PGresult *up = res[b->r_upsert];
            if (PQntuples(up) == 1) {
                b->st.size_ub = b->draft_len;
                b->xmin = (uint32_t)strtoul(PQgetvalue(up, 0, 0), NULL, 10);
                b->cost = dcache_cost(b->draft_len + b->pub_len);
                batch_cache(b);
            }
        }
        txn_end(t, true); /* may send the lanes' next transaction */
        outbox_flush(s);
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
        writers += t->b[k].writes;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        if (!b->writes)
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

/* Serialise b's new state and add its writes to stmts.  Returns 0, or -1
 * when b was answered with an error instead. */
static int batch_writes(struct batch *b, struct pg_stmt *stmts, int *ns)
{
    struct shard *s = b->t->s;
    const char *tenant = b->lane->tenant;
    b->draft_text = jdump(b->st.draft, b->st.size_ub, &b->draft_len);
    b->pub_text = b->st.published ? jdump(b->st.published, 0, &b->pub_len) : NULL;
    snprintf(b->version, sizeof b->version, "%" PRId64, b->st.version);
    if (!b->draft_text || (b->st.published && !b->pub_text)) {
        fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": out of memory serialising the draft", tenant);
        return -1;
    }
    if (b->new_keys.n > 0) {
        const char *k = pg_text_array_get(&b->new_keys), *f = pg_text_array_get(&b->new_fps),
                   *r = pg_text_array_get(&b->new_resps);
        if (b->oom || !k || !f || !r) {
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": out of memory recording keys", tenant);
            return -1;
        }
        b->r_idem = *ns;
        stmts[(*ns)++] = stmt(s, b->lookup ? ST_IDEM_UPSERT : ST_IDEM_INSERT, tenant, k, f, r);
    }
    b->r_upsert = *ns;
    stmts[(*ns)++] = stmt(s, ST_UPSERT, tenant, b->draft_text, b->pub_text, b->version);
    b->writes = true;
    return 0;
}

/* Whether a pg_try_advisory_xact_lock result says the lock was taken. */
static bool lock_taken(const PGresult *r)
{
    return PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
}

/* The first pipeline is back: every batch has its lock (or not) and its
 * row.  Apply each in memory; those that changed something are written and
 * committed together, the others are answered now. */
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
    struct pg_stmt stmts[2 * GROUP_MAX + 1];
    int ns = 0;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        const char *tenant = b->lane->tenant;
        if (b->mutating && t->nb > 1 && !lock_taken(res[b->r_lock])) {
            /* held elsewhere: not worth making the others wait for */
            atomic_fetch_add_explicit(&t->s->gauges[SHARD_GAUGE_LOCK_BUSY], 1,
                                      memory_order_relaxed);
            batch_put_back(b, true, false);
            continue;
        }
        if (b->lookup && load_records(b, res[b->r_lookup]) < 0) {
            fail_batch(b, TQ_E_INTERNAL, "tenant \"%s\": unreadable idempotency record", tenant);
            continue;
        }
        if (load_state(b, res[b->r_select], why, sizeof why) < 0) {
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
            batch_cache(b);
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
    outbox_flush(s);
}

/*
 * The one-round-trip transaction: every batch of t changes state and found
 * its tenant's state in the draft cache.  Apply them now, and send BEGIN,
 * each batch's lock, guard (SQL_GUARD: the row still is the cached version)
 * and writes, and COMMIT as one pipeline.  A guard that fails (or, shared,
 * a try-lock that finds the lock held) aborts the transaction before
 * anything is written; commit_done then puts the batches back to run again
 * from the stored row.  A batch whose edits all failed validation sends
 * only its lock and guard and is answered after COMMIT, like the rest.
 * stmts holds BEGIN and the timeouts (ns of them) and has room for the rest.
 */
static void txn_start_cached(struct txn *t, struct pg_stmt *stmts, int ns)
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
        stmts[ns++] =
            stmt(s, t->nb == 1 ? ST_LOCK : ST_TRYLOCK_GUARD, tenant, NULL, NULL, NULL);
        b->r_select = ns;
        stmts[ns++] = stmt(s, ST_GUARD, tenant, b->cached_version, b->cached_xmin, NULL);
        if (!wrote)
            b->confirms = true;
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
    atomic_fetch_add_explicit(&s->gauges[SHARD_GAUGE_ONE_TRIP], 1, memory_order_relaxed);
    if (pg_pipeline(t->pc, stmts, ns, commit_done, t) < 0)
        fail_lost_before_commit(t); /* nothing was sent */
}

/* Take up to max_batch - t->njobs requests of lane into a new batch of t.
 * Returns the batch, or NULL (lane released) if every one had expired. */
static struct batch *batch_take(struct txn *t, struct lane *lane, uint64_t now)
{
    struct shard *s = t->s;
    struct batch *b = &t->b[t->nb];
    batch_reset(b);
    b->lane = lane;
    b->jobs = t->jobs + t->njobs;
    b->results = t->results + t->njobs;
    b->errs = t->errs + t->njobs;
    b->replayed = t->replayed + t->njobs;
    lane->busy = true;
    struct job *j;
    while (t->njobs + b->n < s->cfg->max_batch && (j = lane_pop(lane)) != NULL) {
        s->queued--;
        if (now >= j->deadline_us) {
            fail_job(s, j, TQ_E_DEADLINE_EXCEEDED,
                     "deadline passed while queued behind the tenant's earlier requests; "
                     "not executed");
            continue;
        }
        b->jobs[b->n] = j;
        b->results[b->n] = NULL;
        b->n++;
        b->keyed_reads |= key_checked_read(j);
        if (sf_op_mutates(j->op)) {
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
    uint32_t want = lane->depth < (uint32_t)t->s->cfg->max_batch ? lane->depth
                                                                   : (uint32_t)t->s->cfg->max_batch;
    return !lane->solo && t->njobs + (int)want <= t->s->cfg->max_batch;
}

/* Start a transaction on idle connection i with up to `lanes` ready lanes
 * from the head of the ready list. */
static void txn_start(struct shard *s, int i, int lanes)
{
    struct txn *t = &s->txns[i];
    struct pgconn *c = &s->conns[i];
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
    struct pg_stmt stmts[TXN_MAX_STMTS];
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
    /* Every batch a change whose state is cached: one round trip.  Not while
     * draining: such a transaction cannot be withdrawn once sent. */
    bool one_trip = mutating && !s->draining;
    for (int k = 0; k < t->nb; k++) {
        struct batch *b = &t->b[k];
        b->cached = dcache_take(&s->cache, b->lane->tenant, b->lane->tenant_len, b->lane->hash,
                                &b->st, &b->xmin, &b->cost);
        snprintf(b->cached_version, sizeof b->cached_version, "%" PRId64,
                 b->cached ? b->st.version : -1);
        snprintf(b->cached_xmin, sizeof b->cached_xmin, "%" PRIu32, b->cached ? b->xmin : 0);
        one_trip &= b->mutating && b->cached && !b->lane->recheck_keys && !b->keyed_reads;
    }
    if (one_trip) {
        txn_start_cached(t, stmts, ns);
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
        b->r_select = ns;
        stmts[ns++] = stmt(s, ST_SELECT, tenant, b->cached_version, b->cached_xmin, NULL);
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
                .sql = SQL_IDEM_LOOKUP, .nparams = 3, .params = {tenant, keys, t->ttl}};
        }
    }
    t->nres = ns;
    if (pg_pipeline(c, stmts, ns, read_done, t) < 0)
        fail_lost_before_commit(t);
}

/* --- scheduling ---------------------------------------------------------- */

/* How many connections are idle (connected, no transaction, no pipeline);
 * *first is the first of them, or -1. */
static int idle_conns(const struct shard *s, int *first)
{
    int n = 0;
    *first = -1;
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i].state == PGC_IDLE && s->txns[i].nb == 0 && s->conns[i].cb == NULL) {
            if (n++ == 0)
                *first = i;
        }
    return n;
}

static void check_drained(struct shard *s)
{
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_QUEUED], s->queued, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_LANES], s->lanes.count, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_CACHE_HITS], s->cache.hits, memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_CACHE_MISSES], s->cache.misses,
                          memory_order_relaxed);
    atomic_store_explicit(&s->gauges[SHARD_GAUGE_CACHE_BYTES], s->cache.bytes,
                          memory_order_relaxed);
    if (s->draining && s->queued == 0 && s->inflight == 0)
        atomic_store(&s->drained, true);
    if (s->stopping && s->inflight == 0)
        event_base_loopbreak(s->base);
}

static void shard_kick(struct shard *s)
{
    struct lane *lane;
    maybe_cleanup(s); /* (before the lanes take the idle connections) */
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
        int i, idle = idle_conns(s, &i);
        if (idle == 0)
            break;
        /* spread the ready lanes over the idle connections; a connection
         * takes several only when there are more lanes than connections */
        size_t share = (s->ready.count + (size_t)idle - 1) / (size_t)idle;
        int lanes = share < (size_t)s->cfg->max_batch_tenants ? (int)share
                                                               : s->cfg->max_batch_tenants;
        txn_start(s, i, lanes);
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
             * cleanly; so does a cleanup pass or a ROLLBACK.  A batch whose
             * COMMIT is out finishes (bounded by the server's timeouts, and
             * by pg_pipeline_limit_ms if the server stops answering). */
            for (int i = 0; i < s->nconns; i++)
                if (pg_busy(&s->conns[i]) &&
                    (s->txns[i].nb == 0 || !s->txns[i].committing))
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
    int f = lost ? -1 : first_failed(res, n);
    long deleted = (!lost && f < 0 && n == 2) ? atol(PQcmdTuples(res[1])) : 0;
    if (f >= 0)
        log_warn("shard %d: idempotency cleanup failed: %s", s->id,
                 PQresultErrorMessage(res[f]));
    if (deleted > 0)
        log_debug("shard %d: expired %ld idempotency records", s->id, deleted);
    /* a full batch means more are due: come back soon, else rest a while */
    s->cleanup_behind = deleted >= CLEANUP_BATCH;
    s->next_cleanup_us =
        now_us() + (s->cleanup_behind ? CLEANUP_BEHIND_MS * 1000u : CLEANUP_IDLE_S * 1000000u);
    check_drained(s);
    shard_kick(s);
}

/* Expire idempotency records in small batches, on shard 0 only.  Edits come
 * first: a due pass waits for an idle connection that no ready lane wants,
 * but for at most CLEANUP_MAX_WAIT_MS; then it takes the next connection
 * that comes free ahead of the lanes, so that a shard busy all the time
 * still keeps up.  While behind (the last pass deleted a whole batch) it
 * does not wait: one CLEANUP_BATCH DELETE per CLEANUP_BEHIND_MS, up to
 * ~25,000 records a second, on one connection. */
static void maybe_cleanup(struct shard *s)
{
    if (s->id != 0 || s->draining) /* (called on every kick: no clock read first) */
        return;
    uint64_t now = now_us();
    if (now < s->next_cleanup_us)
        return;
    if (s->ready.head && !s->cleanup_behind &&
        now < s->next_cleanup_us + CLEANUP_MAX_WAIT_MS * 1000u)
        return;
    int i;
    if (idle_conns(s, &i) == 0)
        return;
    /* one implicit transaction: the timeouts apply to the DELETE */
    struct pg_stmt del[2] = {
        stmt(s, ST_TIMEOUTS, s->cleanup_lock_ms, s->tout_stmt, s->tout_idle, NULL),
        stmt(s, ST_CLEANUP, s->cleanup_ttl, NULL, NULL, NULL),
    };
    if (pg_pipeline(&s->conns[i], del, 2, cleanup_done, s) == 0)
        s->inflight++;
    s->next_cleanup_us = now + CLEANUP_IDLE_S * 1000000u;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct shard *s = arg;
    atomic_fetch_add_explicit(&s->heartbeat, 1, memory_order_relaxed);
    sweep(s, false);
    shard_kick(s); /* (and maybe_cleanup) */
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
    snprintf(s->cleanup_lock_ms, sizeof s->cleanup_lock_ms, "%d", cfg->lock_timeout_ms);
    snprintf(s->tout_stmt, sizeof s->tout_stmt, "%d", cfg->statement_timeout_ms);
    snprintf(s->tout_idle, sizeof s->tout_idle, "%d", pg_pipeline_limit_ms(cfg));
    msgpack_sbuffer_init(&s->sb);
    s->outbox = calloc((size_t)cfg->max_batch, sizeof *s->outbox);
    if (!s->outbox || lane_table_init(&s->lanes) < 0 ||
        dcache_init(&s->cache, (size_t)cfg->draft_cache_mb * 1024 * 1024 / (size_t)cfg->shards) < 0)
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

    size_t room = strlen(cfg->lock_key_sql) + 128;
    s->sql_lock = malloc(room);
    s->sql_trylock = malloc(room);
    s->sql_trylock_guard = malloc(room);
    if (!s->sql_lock || !s->sql_trylock || !s->sql_trylock_guard)
        goto fail;
    snprintf(s->sql_lock, room, "SELECT pg_advisory_xact_lock((%s)::bigint)", cfg->lock_key_sql);
    snprintf(s->sql_trylock, room, "SELECT pg_try_advisory_xact_lock((%s)::bigint)",
             cfg->lock_key_sql);
    /* one round trip: a lock held elsewhere must stop the writes sent after it */
    snprintf(s->sql_trylock_guard, room,
             "SELECT 1 / pg_try_advisory_xact_lock((%s)::bigint)::int AS tenantq_lock_is_free",
             cfg->lock_key_sql);
    static const struct {
        const char *name;
        const char *sql;
        int nparams;
    } prep[ST__COUNT] = {
        [ST_TIMEOUTS] = {"tq_timeouts", SQL_TIMEOUTS, 3},
        [ST_LOCK] = {"tq_lock", NULL, 1},
        [ST_TRYLOCK] = {"tq_trylock", NULL, 1},
        [ST_TRYLOCK_GUARD] = {"tq_trylock_guard", NULL, 1},
        [ST_SELECT] = {"tq_select", SQL_SELECT, 3},
        [ST_GUARD] = {"tq_guard", SQL_GUARD, 3},
        [ST_UPSERT] = {"tq_upsert", SQL_UPSERT, 4},
        [ST_IDEM_INSERT] = {"tq_idem_insert", SQL_IDEM_INSERT, 4},
        [ST_IDEM_UPSERT] = {"tq_idem_upsert", SQL_IDEM_UPSERT, 4},
        [ST_CLEANUP] = {"tq_idem_cleanup", SQL_IDEM_CLEANUP, 1},
    };
    for (int i = 0; i < ST__COUNT; i++)
        s->prep[i] = (struct pg_stmt){.name = prep[i].name, .sql = prep[i].sql,
                                      .nparams = prep[i].nparams};
    s->prep[ST_LOCK].sql = s->sql_lock;
    s->prep[ST_TRYLOCK].sql = s->sql_trylock;
    s->prep[ST_TRYLOCK_GUARD].sql = s->sql_trylock_guard;

    s->nconns = cfg->connections_per_shard;
    s->conns = calloc((size_t)s->nconns, sizeof *s->conns);
    s->txns = calloc((size_t)s->nconns, sizeof *s->txns);
    if (!s->conns || !s->txns)
        goto fail;
    for (int i = 0; i < s->nconns; i++) {
        struct txn *t = &s->txns[i];
        t->s = s;
        t->pc = &s->conns[i];
        for (int k = 0; k < GROUP_MAX; k++) {
            t->b[k].t = t;
            batch_reset(&t->b[k]);
        }
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
        for (int k = 0; k < t->nb; k++) {
            struct batch *b = &t->b[k];
            for (int q = 0; q < b->n; q++)
                job_free(b->jobs[q]);
            batch_reset(b);
        }
        free(t->jobs);
        free(t->results);
        free(t->errs);
        free(t->replayed);
    }
    for (int i = 0; s->conns && i < s->nconns; i++)
        pg_destroy(&s->conns[i]);
    dcache_destroy(&s->cache);
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
    free(s->sql_trylock);
    free(s->sql_trylock_guard);
    free(s->outbox);
    msgpack_sbuffer_destroy(&s->sb);
    free(s);
}
