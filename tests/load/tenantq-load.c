/*
 * tenantq-load.c - load generator and correctness checker for tenantqd.
 *
 * N client threads send a mix of storefront edits for T tenants, each thread
 * synchronously (one request outstanding per client, like a service worker):
 *   daemon  through tenantqd with libtenantq (one tq_client per thread);
 *   direct  the pre-tenantq pattern straight to PostgreSQL (one libpq
 *           connection per thread): BEGIN, pg_advisory_xact_lock, SELECT,
 *           sf_apply, INSERT .. ON CONFLICT DO UPDATE, COMMIT per request;
 *   unsafe  the same without the lock, to show the race;
 *   echo    ping against an in-process raw REP echo server: the ceiling of
 *           libtenantq + nanomsg on this machine.
 * direct/unsafe run daemon/storefront.c's sf_apply, the daemon's own edit
 * code, so both sides do the same work per request.
 *
 * Rows are seeded before the clock starts; afterwards the database is
 * checked against what was acknowledged (track.h).  Per-thread latency goes
 * into fixed-size log-bucket histograms (hist.h), merged at the end.
 * README.md describes the workload, the check and the output.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "echo.h"
#include "hist.h"
#include "jdump.h"
#include "jparse.h"
#include "storefront.h"
#include "tenantq.h"
#include "tq_proto.h"
#include "track.h"
#include "workload.h"

#define DEFAULT_ENDPOINT "ipc:///run/tenantq/tenantqd.sock"
#define DEFAULT_DURATION_S 10.0
/* the daemon's default max_draft_bytes, so sf_apply judges sizes alike */
#define MAX_DRAFT_BYTES 1048576
/* error slot for database errors in direct/unsafe mode (not a wire code) */
#define ERR_DB TQ_CODE__COUNT
#define NERR (TQ_CODE__COUNT + 1)

enum mode { MODE_DAEMON, MODE_DIRECT, MODE_UNSAFE, MODE_ECHO };
static const char *const MODE_NAMES[] = {
    [MODE_DAEMON] = "daemon", [MODE_DIRECT] = "direct",
    [MODE_UNSAFE] = "unsafe", [MODE_ECHO] = "echo"};

/* The ops of the mix (a workload's verbs, not wire ops: a remove also
 * re-adds, see README.md). */
enum lop { LOP_UPSERT, LOP_GET, LOP_REMOVE, LOP_PING, LOP_BOOK, LOP_BOOK_LIST, LOP__COUNT };
static const char *const LOP_NAMES[] = {
    [LOP_UPSERT] = "upsert", [LOP_GET] = "get", [LOP_REMOVE] = "remove", [LOP_PING] = "ping",
    [LOP_BOOK] = "booking.create", [LOP_BOOK_LIST] = "booking.list"};

enum dist { DIST_UNIFORM, DIST_ZIPF, DIST_HOT };

struct options {
    enum mode mode;
    char *endpoints;         /* owned, comma-separated (libtenantq syntax) */
    const char *conninfo;    /* "" = libpq environment */
    unsigned clients;
    size_t tenants;
    enum dist dist;
    double zipf_s;
    const char *dist_text;
    unsigned mix[LOP__COUNT];
    unsigned mix_total;
    double collide;
    double duration_s;       /* 0 = use requests */
    uint64_t requests;
    const char *json_path;
    bool check;
    uint64_t seed;
    bool unsafe_page_writes; /* unsafe: write back only the edited pages */
    unsigned async_loops;    /* daemon/echo: 0 = a thread per client */
    enum wl_table table;     /* where the daemon keeps the state: seeding, check */
    bool no_keys;            /* daemon: send edits without an idempotency key */
    const char *hook;        /* run as "HOOK start" / "HOOK stop" around the clock */
};

struct run;
struct worker;
struct loop;

/* What a client does when a request of its current op has been answered
 * (result: NULL unless code is TQ_OK; borrowed). */
typedef void step_fn(struct worker *w, unsigned code, const json_t *result);

struct worker {
    unsigned id;
    pthread_t thread;        /* synchronous clients only */
    struct run *run;
    struct loop *loop;       /* --async: the event loop running this client */
    uint64_t rng;
    uint64_t seq;            /* writes so far, for the rev markers */
    tq_client *client;       /* daemon/echo, synchronous */
    PGconn *pg;              /* direct/unsafe */
    bool setup_failed;
    hist lat;
    _Atomic uint64_t ok;
    _Atomic uint64_t err[NERR];
    /* the op in progress, carried from one of its requests to the next */
    size_t tidx;
    sf_op op;                /* of the request in flight */
    json_t *args;            /* of the request in flight, owned */
    step_fn *then;           /* runs when it is answered */
    step_fn *after_remove;   /* remove_step's continuation */
    uint64_t op_seq;         /* rev marker of the section written */
    bool collide, readd;
    char sec_id[WL_NAME_MAX]; /* section removed */
    uint64_t t0;             /* --async: when the request was started */
    enum lop op_lop;         /* the op of the mix being run */
};

/* --async: one event-loop thread driving several clients through one
 * tq_client's asynchronous calls. */
struct loop {
    pthread_t thread;
    struct run *run;
    tq_client *client;
    unsigned first;          /* its clients: first, first + step, ... */
    unsigned step;
    unsigned active;         /* its clients that have not stopped */
    bool setup_failed;
};

struct run {
    struct options o;
    _Atomic uint64_t booked;     /* booking.create acknowledged */
    _Atomic uint64_t book_unsure; /* booking.create whose outcome is unknown */
    const char *endpoint;    /* the one the workers connect to */
    double *zipf_cdf;        /* owned, tenants entries */
    track *track;
    /* start line: every client connects first, then all start together */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    unsigned ready;          /* clients set up (under mu) */
    bool go;                 /* under mu */
    atomic_bool stop;
    _Atomic int64_t budget;  /* requests left in --requests mode */
    _Atomic unsigned done;   /* threads finished */
    struct worker *w;        /* owned array of clients */
    struct loop *loops;      /* owned array of o.async_loops event loops */
};

/* ---- small utilities ---------------------------------------------------- */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* splitmix64: fast, good enough for picking tenants and ops */
static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double rnd01(uint64_t *s)
{
    return (double)(rnd(s) >> 11) * 0x1.0p-53;
}

static void bump(_Atomic uint64_t *a)
{
    /* single writer per counter: no locked read-modify-write needed */
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static const char *err_name(unsigned code)
{
    return code == ERR_DB ? "DB_ERROR" : tq_code_name((tq_code)code);
}

/* Whether a failed change may nevertheless have been committed. */
static bool outcome_unknown(unsigned code)
{
    return code == TQ_E_TIMEOUT || code == TQ_E_OUTCOME_UNKNOWN || code == TQ_E_TRANSPORT ||
           code == TQ_E_PROTOCOL || code == TQ_E_INTERNAL;
}

/* ---- picking tenants and ops ------------------------------------------- */

static double *zipf_cdf_new(size_t n, double s)
{
    double *cdf = malloc(n * sizeof *cdf);
    if (cdf == NULL)
        return NULL;
    double sum = 0;
    for (size_t k = 0; k < n; k++)
        cdf[k] = (sum += pow((double)(k + 1), -s));
    for (size_t k = 0; k < n; k++)
        cdf[k] /= sum;
    cdf[n - 1] = 1.0;
    return cdf;
}

static size_t pick_tenant(struct worker *w)
{
    const struct options *o = &w->run->o;
    switch (o->dist) {
    case DIST_HOT:
        return 0;
    case DIST_ZIPF: {
        /* first k with cdf[k] >= u */
        double u = rnd01(&w->rng);
        const double *cdf = w->run->zipf_cdf;
        size_t lo = 0, hi = o->tenants - 1;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
    case DIST_UNIFORM:
        break;
    }
    return (size_t)(rnd(&w->rng) % o->tenants);
}

static enum lop pick_op(struct worker *w)
{
    const struct options *o = &w->run->o;
    unsigned r = (unsigned)(rnd(&w->rng) % o->mix_total);
    for (int i = 0; i < LOP__COUNT; i++) {
        if (r < o->mix[i])
            return (enum lop)i;
        r -= o->mix[i];
    }
    return LOP_PING;
}

/* ---- executing one request: daemon/echo -------------------------------- */

/* A result as libtenantq hands it over (JSON text) as a value: TQ_OK, or
 * TQ_E_PROTOCOL if it is not JSON. */
static unsigned parse_result(const char *text, json_t **result)
{
    *result = jparse(text, strlen(text), NULL, NULL, 0);
    return *result != NULL ? TQ_OK : TQ_E_PROTOCOL;
}

/* The args of a call as libtenantq takes them (JSON text, NULL = none). */
static char *args_text(json_t *args)
{
    return args != NULL ? jdump(args, 0, NULL) : NULL;
}

/* --keys none: the request encoded here without a key (libtenantq gives
 * every state-changing call one) and sent with tq_call_raw, which does not
 * re-send it on a retry of its own.  For measuring what the daemon's
 * idempotency records cost; nothing makes a re-delivery harmless then. */
static unsigned daemon_exec_unkeyed(struct worker *w, const char *tenant, const char *op,
                                    json_t *args, json_t **result)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    void *reply = NULL;
    size_t len = 0;
    tq_status st;
    unsigned code;
    if (tq_request_encode(&sb, tenant, op, args, NULL, 0) != 0) {
        code = TQ_E_USAGE;
    } else if (tq_call_raw(w->client, sb.data, sb.size, &reply, &len, 0, &st) != 0) {
        code = st.code;
    } else {
        tq_response resp;
        tq_error err;
        if (tq_response_decode(reply, len, &resp, &err) != 0) {
            code = TQ_E_PROTOCOL;
        } else {
            code = resp.ok ? TQ_OK : resp.code;
            if (resp.ok)
                *result = json_incref(resp.result);
            tq_response_free(&resp);
        }
    }
    free(reply);
    msgpack_sbuffer_destroy(&sb);
    return code;
}

static unsigned daemon_exec_name(struct worker *w, const char *tenant, const char *op,
                                 json_t *args, json_t **result)
{
    if (w->run->o.no_keys)
        return daemon_exec_unkeyed(w, tenant, op, args, result);
    char *a = args_text(args);
    char *res = NULL;
    tq_status st;
    int rc = tq_call(w->client, tenant, op, a, NULL, &res, &st);
    free(a);
    if (rc != 0)
        return st.code;
    unsigned code = parse_result(res, result);
    free(res);
    return code;
}

static unsigned daemon_exec(struct worker *w, const char *tenant, sf_op op, json_t *args,
                            json_t **result)
{
    return daemon_exec_name(w, tenant, sf_op_name(op), args, result);
}

/* ---- executing one request: direct/unsafe ------------------------------ */

static const char SQL_LOCK[] = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || $1, 0))";
static const char SQL_SELECT[] =
    "SELECT draft::text, published::text, version FROM tenantq_storefront WHERE tenant = $1";
/* unsafe with --unsafe-write page: put back only the page that was edited */
static const char SQL_WRITE_PAGE[] =
    "UPDATE tenantq_storefront SET draft = jsonb_set(draft, ARRAY['pages', $2], $3::jsonb, true),"
    " version = $4::bigint, updated_at = now() WHERE tenant = $1";
static const char SQL_UPSERT[] =
    "INSERT INTO tenantq_storefront AS t (tenant, draft, published, version, updated_at)"
    " VALUES ($1, $2::jsonb, $3::jsonb, $4::bigint, now())"
    " ON CONFLICT (tenant) DO UPDATE SET draft = EXCLUDED.draft,"
    " published = EXCLUDED.published, version = EXCLUDED.version, updated_at = now()";

/* Run one statement; returns its result (caller PQclear's; NULL if it could
 * not be sent) and whether it succeeded in *ok. */
static PGresult *pg_run(PGconn *c, const char *sql, int n, const char *const *params, bool *ok)
{
    PGresult *last = NULL, *r;
    *ok = false;
    if (!PQsendQueryParams(c, sql, n, NULL, params, NULL, NULL, 0))
        return NULL;
    while ((r = PQgetResult(c)) != NULL) {
        PQclear(last);
        last = r;
    }
    ExecStatusType st = PQresultStatus(last);
    *ok = last != NULL && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);
    return last;
}

static bool pg_simple(PGconn *c, const char *sql, int n, const char *const *params)
{
    bool ok;
    PQclear(pg_run(c, sql, n, params, &ok));
    return ok;
}

/* The tenant's state from a SELECT result (empty state for no row). */
static int load_state(const PGresult *r, sf_state *st)
{
    if (PQntuples(r) == 0) {
        sf_state_init_empty(st);
        return 0;
    }
    /* the daemon's parser, so both sides do the same work */
    st->draft = jparse(PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0), NULL, NULL, 0);
    st->published = PQgetisnull(r, 0, 1) ? NULL
                                          : jparse(PQgetvalue(r, 0, 1),
                                                   (size_t)PQgetlength(r, 0, 1), NULL, NULL, 0);
    st->version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    /* the bound the daemon keeps too, so sf_apply's size check is as cheap */
    st->size_ub = sf_stored_size_ub(PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0));
    return st->draft != NULL && (PQgetisnull(r, 0, 1) || st->published != NULL) ? 0 : -1;
}

/* Write every page of st that differs from before (the pages object as read)
 * with its own jsonb_set; other pages stay as they are in the row, whatever
 * concurrent writers put there.  Returns true on success. */
static bool write_pages(PGconn *c, const char *tenant, const json_t *before, const sf_state *st,
                        const char *version)
{
    const char *name;
    json_t *page;
    json_object_foreach(json_object_get(st->draft, "pages"), name, page) {
        if (json_equal(page, json_object_get(before, name)))
            continue;
        char *text = json_dumps(page, JSON_COMPACT);
        const char *p[4] = {tenant, name, text, version};
        bool ok = text != NULL && pg_simple(c, SQL_WRITE_PAGE, 4, p);
        free(text);
        if (!ok)
            return false;
    }
    return true;
}

static unsigned direct_exec(struct worker *w, const char *tenant, sf_op op, const json_t *args,
                            json_t **result)
{
    PGconn *c = w->pg;
    const char *p1[1] = {tenant};
    if (PQstatus(c) != CONNECTION_OK) {
        PQreset(c);
        if (PQstatus(c) != CONNECTION_OK)
            return TQ_E_DB_UNAVAILABLE;
    }
    if (op == SF_OP_PING) {
        /* the nearest thing to ping without a daemon: one round trip */
        if (!pg_simple(c, "SELECT 1", 0, NULL))
            return ERR_DB;
        *result = json_pack("{s:b}", "pong", 1);
        return TQ_OK;
    }
    bool mut = sf_op_mutates(op);
    if (mut) {
        if (!pg_simple(c, "BEGIN", 0, NULL))
            return ERR_DB;
        if (w->run->o.mode == MODE_DIRECT && !pg_simple(c, SQL_LOCK, 1, p1))
            goto db_fail;
    }
    bool ok;
    PGresult *r = pg_run(c, SQL_SELECT, 1, p1, &ok);
    sf_state st = {0};
    int loaded = ok ? load_state(r, &st) : -1;
    PQclear(r);
    if (loaded != 0) {
        sf_state_clear(&st);
        goto db_fail;
    }
    /* the pages as read, to find what the edit changed (page writes only) */
    json_t *before = NULL;
    if (mut && w->run->o.mode == MODE_UNSAFE && w->run->o.unsafe_page_writes &&
        (before = json_deep_copy(json_object_get(st.draft, "pages"))) == NULL) {
        sf_state_clear(&st);
        goto db_fail;
    }
    tq_error err = {0};
    if (sf_apply(&st, op, args, MAX_DRAFT_BYTES, result, &err) != 0) {
        json_decref(before);
        sf_state_clear(&st);
        if (mut)
            (void)pg_simple(c, "ROLLBACK", 0, NULL);
        return err.code;
    }
    if (!mut) {
        sf_state_clear(&st);
        return TQ_OK;
    }
    /* the daemon's serialiser (batch_writes), so both sides do the same work */
    char *draft = jdump(st.draft, st.size_ub, NULL);
    char *published = st.published != NULL ? jdump(st.published, 0, NULL) : NULL;
    char version[24];
    snprintf(version, sizeof version, "%" PRId64, st.version);
    const char *p4[4] = {tenant, draft, published, version};
    bool wrote;
    if (before != NULL)
        wrote = write_pages(c, tenant, before, &st, version);
    else
        wrote = draft != NULL && (st.published == NULL || published != NULL) &&
                pg_simple(c, SQL_UPSERT, 4, p4);
    json_decref(before);
    free(draft);
    free(published);
    sf_state_clear(&st);
    if (!wrote) {
        json_decref(*result);
        *result = NULL;
        goto db_fail;
    }
    if (!pg_simple(c, "COMMIT", 0, NULL)) {
        json_decref(*result);
        *result = NULL;
        /* a lost connection during COMMIT leaves the outcome open */
        return PQstatus(c) == CONNECTION_OK ? ERR_DB : TQ_E_OUTCOME_UNKNOWN;
    }
    return TQ_OK;

db_fail:
    if (PQstatus(c) == CONNECTION_OK)
        (void)pg_simple(c, "ROLLBACK", 0, NULL);
    return ERR_DB;
}

static void record(struct worker *w, sf_op op, unsigned code, uint64_t t0);

/* ---- SQL operations: the example booking ops (systemd/ops/booking) ------ */

/* The statements of the example op files, for the direct baseline: what a
 * service runs the seed's way, one transaction with the lock per request. */
static const char SQL_BOOK[] =
    "INSERT INTO booking (tenant_id, slot, customer) SELECT $1, $2::timestamptz, $3"
    " WHERE NOT EXISTS (SELECT 1 FROM booking WHERE tenant_id = $1 AND slot = $2::timestamptz)"
    " RETURNING id, slot, customer";
static const char SQL_BOOK_LIST[] =
    "SELECT id, slot, customer FROM booking WHERE tenant_id = $1"
    " AND slot >= $2::timestamptz AND slot < $3::timestamptz ORDER BY slot, id";

static unsigned direct_sql(struct worker *w, const char *tenant, const char *sql, int n,
                           const char *const *params, bool *empty)
{
    bool ok;
    if (!pg_simple(w->pg, "BEGIN", 0, NULL))
        return ERR_DB;
    if (!pg_simple(w->pg, SQL_LOCK, 1, &tenant))
        goto fail;
    PGresult *r = pg_run(w->pg, sql, n, params, &ok);
    *empty = ok && PQntuples(r) == 0;
    PQclear(r);
    if (!ok)
        goto fail;
    return pg_simple(w->pg, "COMMIT", 0, NULL) ? TQ_OK : ERR_DB;
fail:
    pg_simple(w->pg, "ROLLBACK", 0, NULL);
    return ERR_DB;
}

/* One booking op: create books a slot no client uses twice (client id and
 * sequence number), list reads a day of the tenant's bookings. */
static void op_booking(struct worker *w, bool create)
{
    char tenant[WL_NAME_MAX], slot[40], until[40], customer[40];
    wl_tenant_name(tenant, w->tidx);
    time_t t = (time_t)(1893456000 + (uint64_t)w->id * 10000000u + w->seq++ * 60u);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(slot, sizeof slot, "%Y-%m-%dT%H:%M:%SZ", &tm);
    t += 86400;
    gmtime_r(&t, &tm);
    strftime(until, sizeof until, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(customer, sizeof customer, "load-c%u", w->id);
    uint64_t t0 = now_us();
    unsigned code;
    bool empty = false;
    if (w->pg != NULL) {
        const char *p[3] = {tenant, slot, create ? customer : until};
        code = direct_sql(w, tenant, create ? SQL_BOOK : SQL_BOOK_LIST, 3, p, &empty);
        if (code == TQ_OK && create && empty)
            code = TQ_E_REJECTED; /* as reject_if_empty says */
    } else {
        json_t *args = create ? json_pack("{s:s,s:s}", "slot", slot, "customer", customer)
                              : json_pack("{s:s,s:s}", "from", slot, "until", until);
        json_t *result = NULL;
        code = args ? daemon_exec_name(w, tenant, LOP_NAMES[create ? LOP_BOOK : LOP_BOOK_LIST],
                                       args, &result)
                    : TQ_E_USAGE;
        json_decref(result);
        json_decref(args);
    }
    record(w, SF_OP_DRAFT_GET, code, t0); /* (not a storefront edit: nothing to track) */
    if (create && code == TQ_OK)
        atomic_fetch_add(&w->run->booked, 1);
    else if (create && outcome_unknown(code))
        atomic_fetch_add(&w->run->book_unsure, 1);
}

/* ---- one measured request ---------------------------------------------- */

/* Count a request's outcome and latency (us since t0). */
static void record(struct worker *w, sf_op op, unsigned code, uint64_t t0)
{
    hist_record(&w->lat, now_us() - t0);
    if (code == TQ_OK) {
        bump(&w->ok);
    } else {
        bump(&w->err[code < NERR ? code : TQ_E_INTERNAL]);
        if (sf_op_mutates(op) && outcome_unknown(code) && w->run->track != NULL)
            track_uncertain(w->run->track, w->tidx);
    }
}

static void op_end(struct worker *w);

/* The request in flight was answered: run its continuation, then free it. */
static void step_done(struct worker *w, unsigned code, const json_t *result)
{
    json_t *args = w->args;
    step_fn *then = w->then;
    w->args = NULL;
    then(w, code, result); /* may submit the op's next request */
    json_decref(args);
}

/* --async: a reply (or failure) of the request in flight. */
static void on_reply(void *arg, const tq_status *st, const char *result_json, bool replayed)
{
    struct worker *w = arg;
    json_t *result = NULL;
    unsigned code = st->code == TQ_OK ? parse_result(result_json, &result) : st->code;
    record(w, w->op, code, w->t0);
    step_done(w, code, result);
    json_decref(result);
}

/* Send request op(args) of the client's current op (args stolen; NULL =
 * none); then(w, code, result) runs when it is answered: at once for a
 * synchronous client, from its loop's dispatch with --async. */
static void submit(struct worker *w, sf_op op, json_t *args, step_fn *then)
{
    w->op = op;
    w->args = args;
    w->then = then;
    char tenant[WL_NAME_MAX];
    wl_tenant_name(tenant, w->tidx);
    if (w->loop == NULL) {
        json_t *result = NULL;
        uint64_t t0 = now_us();
        unsigned code = w->pg != NULL ? direct_exec(w, tenant, op, args, &result)
                                      : daemon_exec(w, tenant, op, args, &result);
        record(w, op, code, t0);
        step_done(w, code, result);
        json_decref(result);
        return;
    }
    char *a = args_text(args);
    tq_status st;
    w->t0 = now_us();
    int rc = tq_call_async(w->loop->client, tenant, sf_op_name(op), a, NULL, on_reply, w, &st);
    free(a);
    if (rc != 0) {
        /* not started (the loop allows every client a call in flight, so
         * this is a local failure): count it and retire the client, rather
         * than retrying in a tight loop */
        fprintf(stderr, "tenantq-load: client %u: %s: %s\n", w->id, tq_code_name(st.code),
                st.message);
        record(w, op, st.code, w->t0);
        json_decref(w->args);
        w->args = NULL;
        w->loop->active--;
    }
}

static int64_t result_version(const json_t *result)
{
    return (int64_t)json_integer_value(json_object_get(result, "version"));
}

/* A write of a section carrying rev w->op_seq was acknowledged. */
static void note_write(struct worker *w, const json_t *result)
{
    const char *id = json_string_value(json_object_get(result, "id"));
    if (id != NULL && w->run->track != NULL)
        track_write(w->run->track, w->tidx, id, track_rev(w->id, w->op_seq),
                    result_version(result));
}

static void step_end(struct worker *w, unsigned code, const json_t *result)
{
    op_end(w);
}

static void removed(struct worker *w, unsigned code, const json_t *result)
{
    if (code == TQ_OK && w->run->track != NULL)
        track_remove(w->run->track, w->tidx, w->sec_id, result_version(result));
    w->after_remove(w, code, result);
}

/* Remove section w->id, then run then. */
static void remove_step(struct worker *w, step_fn *then)
{
    w->after_remove = then;
    submit(w, SF_OP_SECTION_REMOVE, json_pack("{s:s}", "id", w->sec_id), removed);
}

/* A replace that found the page shorter than the index appended a section
 * with a generated id instead: take it out again so the draft keeps its
 * size. */
static void upserted(struct worker *w, unsigned code, const json_t *result)
{
    if (code == TQ_OK) {
        note_write(w, result);
        const char *made = json_string_value(json_object_get(result, "id"));
        if (!w->collide && json_is_true(json_object_get(result, "created")) && made != NULL) {
            snprintf(w->sec_id, sizeof w->sec_id, "%s", made);
            remove_step(w, step_end);
            return;
        }
    }
    op_end(w);
}

/* Upsert: replace a random section by index, or (--collide) append one with
 * an id from the shared pool. */
static void op_upsert(struct worker *w)
{
    char page[WL_NAME_MAX], id[WL_NAME_MAX], rev[32];
    wl_page_name(page, (unsigned)(rnd(&w->rng) % WL_PAGES));
    w->op_seq = ++w->seq;
    track_rev_text(rev, sizeof rev, w->id, w->op_seq);
    w->collide = w->run->o.collide > 0 && rnd01(&w->rng) < w->run->o.collide;
    json_t *args;
    if (w->collide) {
        wl_pool_id(id, (unsigned)(rnd(&w->rng) % WL_POOL));
        args = json_pack("{s:s, s:o}", "page", page, "section", wl_section(id, rev));
    } else {
        args = json_pack("{s:s, s:I, s:o}", "page", page, "index",
                         (json_int_t)(rnd(&w->rng) % WL_SECTIONS), "section",
                         wl_section(NULL, rev));
    }
    submit(w, SF_OP_SECTION_UPSERT, args, upserted);
}

static void readded(struct worker *w, unsigned code, const json_t *result)
{
    if (code == TQ_OK)
        note_write(w, result);
    op_end(w);
}

static void remove_then_readd(struct worker *w, unsigned code, const json_t *result)
{
    if (code != TQ_OK || !w->readd) {
        op_end(w);
        return;
    }
    char rev[32];
    w->op_seq = ++w->seq;
    track_rev_text(rev, sizeof rev, w->id, w->op_seq);
    const char *page = json_string_value(json_object_get(result, "page"));
    submit(w, SF_OP_SECTION_UPSERT,
           json_pack("{s:s, s:o}", "page", page ? page : "page0", "section",
                     wl_section(w->sec_id, rev)),
           readded);
}

/* Remove: one of the seeded ids, re-added by the same client at the end of
 * its page after the remove was acknowledged; or (with --collide) one of the
 * pool ids, not re-added. */
static void op_remove(struct worker *w)
{
    unsigned seeded = WL_PAGES * WL_SECTIONS;
    unsigned cand = seeded + (w->run->o.collide > 0 ? WL_POOL : 0);
    unsigned k = (unsigned)(rnd(&w->rng) % cand);
    if (k < seeded)
        wl_seeded_id(w->sec_id, k / WL_SECTIONS, k % WL_SECTIONS);
    else
        wl_pool_id(w->sec_id, k - seeded);
    w->readd = k < seeded;
    remove_step(w, remove_then_readd);
}

/* Whether the client may start another op (the run goes on). */
static bool may_start(struct worker *w)
{
    struct run *run = w->run;
    if (atomic_load_explicit(&run->stop, memory_order_relaxed))
        return false;
    return run->o.duration_s > 0 || atomic_fetch_sub(&run->budget, 1) > 0;
}

/* Start the client's next op: pick a tenant and what to do. */
static void start_op(struct worker *w)
{
    w->tidx = pick_tenant(w);
    w->op_lop = pick_op(w);
    switch (w->op_lop) {
    case LOP_UPSERT:
        op_upsert(w);
        break;
    case LOP_REMOVE:
        op_remove(w);
        break;
    case LOP_GET:
        submit(w, SF_OP_DRAFT_GET, NULL, step_end);
        break;
    case LOP_BOOK:
    case LOP_BOOK_LIST:
        op_booking(w, w->op_lop == LOP_BOOK);
        break;
    case LOP_PING:
    case LOP__COUNT:
        submit(w, SF_OP_PING, NULL, step_end);
        break;
    }
}

/* The client's op is complete.  A synchronous client returns to its loop in
 * worker_main; an asynchronous one starts the next op from here. */
static void op_end(struct worker *w)
{
    if (w->loop == NULL)
        return;
    if (may_start(w))
        start_op(w);
    else
        w->loop->active--;
}

/* Report this thread's setup and wait for every thread's, then the start. */
static void start_line(struct run *run)
{
    pthread_mutex_lock(&run->mu);
    run->ready++;
    pthread_cond_broadcast(&run->cond);
    while (!run->go)
        pthread_cond_wait(&run->cond, &run->mu);
    pthread_mutex_unlock(&run->mu);
}

static int worker_setup(struct worker *w)
{
    struct run *run = w->run;
    if (run->o.mode == MODE_DIRECT || run->o.mode == MODE_UNSAFE) {
        w->pg = PQconnectdb(run->o.conninfo);
        if (PQstatus(w->pg) != CONNECTION_OK) {
            fprintf(stderr, "tenantq-load: client %u: %s", w->id, PQerrorMessage(w->pg));
            return -1;
        }
        return 0;
    }
    tq_status st;
    w->client = tq_connect(run->endpoint, &st);
    if (w->client == NULL) {
        fprintf(stderr, "tenantq-load: client %u: %s: %s\n", w->id, tq_code_name(st.code),
                st.message);
        return -1;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct run *run = w->run;
    w->setup_failed = worker_setup(w) != 0;
    start_line(run);
    while (!w->setup_failed && may_start(w))
        start_op(w);
    atomic_fetch_add(&run->done, 1);
    return NULL;
}

/* --async: one thread, one tq_client, clients first, first + step, ...
 * each with one call in flight at a time. */
static void *loop_main(void *arg)
{
    struct loop *l = arg;
    struct run *run = l->run;
    tq_status st;
    unsigned n = 0;
    for (unsigned i = l->first; i < run->o.clients; i += l->step)
        n++;
    int fd = -1;
    l->client = tq_connect(run->endpoint, &st);
    if (l->client != NULL && tq_set_max_inflight(l->client, (int)n) == 0)
        fd = tq_fd(l->client, &st);
    if (fd < 0) {
        fprintf(stderr, "tenantq-load: event loop %u: %s\n", l->first,
                l->client != NULL ? st.message : "cannot connect");
        l->setup_failed = true;
    }
    start_line(run);
    if (!l->setup_failed) {
        for (unsigned i = l->first; i < run->o.clients; i += l->step) {
            struct worker *w = &run->w[i];
            w->loop = l;
            l->active++;
            op_end(w); /* starts its first op, or retires it at once */
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        while (l->active > 0) {
            int t = tq_next_timeout_ms(l->client);
            (void)poll(&pfd, 1, t < 0 || t > 100 ? 100 : t);
            tq_dispatch(l->client);
        }
    }
    atomic_fetch_add(&run->done, 1);
    return NULL;
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tenantq-load --mode daemon|direct|unsafe|echo [-e ENDPOINT]...\n"
            "         [--database CONNINFO] --clients N --tenants N\n"
            "         [--dist uniform|zipf:S|hot] [--mix upsert=80,get=10,remove=10[,ping=0][,booking.create=N,booking.list=N]]\n"
            "         [--collide P] (--duration S | --requests N) [--json FILE] [--no-check]\n"
            "         [--seed N] [--unsafe-write page|document] [--async LOOPS]\n"
            "         [--table default|prisma] [--keys auto|none] [--hook CMD]\n"
            "Drive tenantqd (or PostgreSQL directly) with concurrent storefront edits,\n"
            "report throughput and latency, then check the stored drafts.\n"
            "Exit status: 0 run done and check passed, 1 check failed or no request\n"
            "succeeded, 2 usage or setup error.  See tests/load/README.md.\n");
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= min && v <= max))
        return -1;
    *out = v;
    return 0;
}

static int parse_mix(const char *text, struct options *o)
{
    memset(o->mix, 0, sizeof o->mix);
    o->mix_total = 0;
    char *copy = strdup(text), *save = NULL;
    if (copy == NULL)
        return -1;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL && rc == 0;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        uint64_t v;
        int i;
        if (eq == NULL || parse_u64(eq + 1, 0, 1000000, &v) != 0) {
            rc = -1;
            break;
        }
        *eq = '\0';
        for (i = 0; i < LOP__COUNT && strcmp(tok, LOP_NAMES[i]) != 0; i++)
            ;
        if (i == LOP__COUNT) {
            rc = -1;
            break;
        }
        o->mix[i] = (unsigned)v;
    }
    free(copy);
    for (int i = 0; i < LOP__COUNT; i++)
        o->mix_total += o->mix[i];
    return rc == 0 && o->mix_total > 0 ? 0 : -1;
}

static int append_endpoint(struct options *o, const char *ep)
{
    size_t old = o->endpoints ? strlen(o->endpoints) : 0;
    char *s = realloc(o->endpoints, old + strlen(ep) + 2);
    if (s == NULL)
        return -1;
    if (old > 0)
        s[old++] = ',';
    strcpy(s + old, ep);
    o->endpoints = s;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    enum { O_DATABASE = 256, O_CLIENTS, O_TENANTS, O_DIST, O_MIX, O_COLLIDE, O_DURATION,
           O_REQUESTS, O_JSON, O_NO_CHECK, O_SEED, O_UNSAFE_WRITE, O_ASYNC,
           O_TABLE, O_KEYS, O_HOOK };
    static const struct option longopts[] = {
        {"mode", required_argument, NULL, 'm'},
        {"endpoint", required_argument, NULL, 'e'},
        {"database", required_argument, NULL, O_DATABASE},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"tenants", required_argument, NULL, O_TENANTS},
        {"dist", required_argument, NULL, O_DIST},
        {"mix", required_argument, NULL, O_MIX},
        {"collide", required_argument, NULL, O_COLLIDE},
        {"duration", required_argument, NULL, O_DURATION},
        {"requests", required_argument, NULL, O_REQUESTS},
        {"json", required_argument, NULL, O_JSON},
        {"no-check", no_argument, NULL, O_NO_CHECK},
        {"seed", required_argument, NULL, O_SEED},
        {"unsafe-write", required_argument, NULL, O_UNSAFE_WRITE},
        {"async", required_argument, NULL, O_ASYNC},
        {"table", required_argument, NULL, O_TABLE},
        {"keys", required_argument, NULL, O_KEYS},
        {"hook", required_argument, NULL, O_HOOK},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.mode = MODE_DAEMON, .conninfo = "", .clients = 8, .tenants = 100,
                          .dist = DIST_UNIFORM, .dist_text = "uniform", .check = true,
                          .seed = (uint64_t)time(NULL), .unsafe_page_writes = true};
    (void)parse_mix("upsert=80,get=10,remove=10", o);
    bool have_mode = false;
    uint64_t v;
    int c, li = -1;
    while ((c = getopt_long(argc, argv, "m:e:h", longopts, &li)) != -1) {
        switch (c) {
        case 'm': {
            int i;
            for (i = 0; i <= MODE_ECHO && strcmp(optarg, MODE_NAMES[i]) != 0; i++)
                ;
            if (i > MODE_ECHO)
                goto bad;
            o->mode = (enum mode)i;
            have_mode = true;
            break;
        }
        case 'e':
            if (append_endpoint(o, optarg) != 0)
                goto bad;
            break;
        case O_DATABASE:
            o->conninfo = optarg;
            break;
        case O_CLIENTS:
            if (parse_u64(optarg, 1, 400, &v) != 0)
                goto bad;
            o->clients = (unsigned)v;
            break;
        case O_TENANTS:
            if (parse_u64(optarg, 1, 999999, &v) != 0)
                goto bad;
            o->tenants = (size_t)v;
            break;
        case O_DIST:
            o->dist_text = optarg;
            if (strcmp(optarg, "uniform") == 0)
                o->dist = DIST_UNIFORM;
            else if (strcmp(optarg, "hot") == 0)
                o->dist = DIST_HOT;
            else if (strncmp(optarg, "zipf:", 5) == 0 &&
                     parse_double(optarg + 5, 1e-3, 100, &o->zipf_s) == 0)
                o->dist = DIST_ZIPF;
            else
                goto bad;
            break;
        case O_MIX:
            if (parse_mix(optarg, o) != 0)
                goto bad;
            break;
        case O_COLLIDE:
            if (parse_double(optarg, 0, 1, &o->collide) != 0)
                goto bad;
            break;
        case O_DURATION:
            if (parse_double(optarg, 0.01, 86400 * 7, &o->duration_s) != 0)
                goto bad;
            break;
        case O_REQUESTS:
            if (parse_u64(optarg, 1, INT64_MAX / 2, &o->requests) != 0)
                goto bad;
            break;
        case O_JSON:
            o->json_path = optarg;
            break;
        case O_NO_CHECK:
            o->check = false;
            break;
        case O_SEED:
            if (parse_u64(optarg, 0, UINT64_MAX, &o->seed) != 0)
                goto bad;
            break;
        case O_UNSAFE_WRITE:
            if (strcmp(optarg, "page") == 0)
                o->unsafe_page_writes = true;
            else if (strcmp(optarg, "document") == 0)
                o->unsafe_page_writes = false;
            else
                goto bad;
            break;
        case O_ASYNC:
            if (parse_u64(optarg, 1, 64, &v) != 0)
                goto bad;
            o->async_loops = (unsigned)v;
            break;
        case O_TABLE:
            if (strcmp(optarg, "default") == 0)
                o->table = WL_TABLE_DEFAULT;
            else if (strcmp(optarg, "prisma") == 0)
                o->table = WL_TABLE_PRISMA;
            else
                goto bad;
            break;
        case O_KEYS:
            if (strcmp(optarg, "auto") == 0)
                o->no_keys = false;
            else if (strcmp(optarg, "none") == 0)
                o->no_keys = true;
            else
                goto bad;
            break;
        case O_HOOK:
            o->hook = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
        li = -1;
    }
    if (optind < argc || !have_mode) {
        fprintf(stderr, "tenantq-load: %s\n", !have_mode ? "--mode is required" : "extra arguments");
        usage(stderr);
        return -1;
    }
    if (o->duration_s > 0 && o->requests > 0) {
        fprintf(stderr, "tenantq-load: give --duration or --requests, not both\n");
        return -1;
    }
    if (o->duration_s <= 0 && o->requests == 0)
        o->duration_s = DEFAULT_DURATION_S;
    if (o->async_loops > 0 && (o->mode == MODE_DIRECT || o->mode == MODE_UNSAFE)) {
        fprintf(stderr, "tenantq-load: --async is for the daemon and echo modes\n");
        return -1;
    }
    if (o->table != WL_TABLE_DEFAULT && o->mode != MODE_DAEMON) {
        /* the baselines' statements are written for tenantq_storefront */
        fprintf(stderr, "tenantq-load: --table prisma is for the daemon mode only\n");
        return -1;
    }
    if (o->no_keys && (o->mode != MODE_DAEMON || o->async_loops > 0)) {
        fprintf(stderr, "tenantq-load: --keys none is for the daemon mode's synchronous clients\n");
        return -1;
    }
    if (o->async_loops > o->clients ||
        (o->async_loops > 0 && (o->clients + o->async_loops - 1) / o->async_loops > TQ_MAX_INFLIGHT)) {
        fprintf(stderr, "tenantq-load: --async needs 1 to --clients loops, at most %d clients each\n",
                TQ_MAX_INFLIGHT);
        return -1;
    }
    if (o->mode == MODE_ECHO) {
        /* the echo server only answers ping */
        memset(o->mix, 0, sizeof o->mix);
        o->mix[LOP_PING] = o->mix_total = 100;
    }
    if (o->endpoints == NULL && append_endpoint(o, DEFAULT_ENDPOINT) != 0)
        return -1;
    return 0;
bad:
    if (li >= 0)
        fprintf(stderr, "tenantq-load: invalid value for --%s: \"%s\"\n", longopts[li].name,
                optarg);
    else
        fprintf(stderr, "tenantq-load: invalid value for -%c: \"%s\"\n", c, optarg);
    return -1;
}

/* ---- reporting ---------------------------------------------------------- */

struct totals {
    uint64_t ok, errors, err[NERR];
    hist lat;
};

static void collect_totals(struct run *run, struct totals *t)
{
    memset(t, 0, sizeof *t);
    hist_init(&t->lat);
    for (unsigned i = 0; i < run->o.clients; i++) {
        struct worker *w = &run->w[i];
        t->ok += atomic_load_explicit(&w->ok, memory_order_relaxed);
        for (unsigned c = 0; c < NERR; c++) {
            uint64_t n = atomic_load_explicit(&w->err[c], memory_order_relaxed);
            t->err[c] += n;
            t->errors += n;
        }
        hist_merge_into(&t->lat, &w->lat);
    }
}

static void mix_text(const struct options *o, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < LOP__COUNT; i++)
        if (o->mix[i] > 0 && n < len)
            n += (size_t)snprintf(buf + n, len - n, "%s%s=%u", n ? "," : "", LOP_NAMES[i],
                                  o->mix[i]);
}

static void print_table(const struct run *run, const struct totals *t, double secs,
                        const track_result *chk, bool checked)
{
    const struct options *o = &run->o;
    char mix[128];
    mix_text(o, mix, sizeof mix);
    uint64_t n = t->ok + t->errors;
    printf("\ntenantq-load  mode %s  clients %u  tenants %zu  dist %s  mix %s  collide %.2f\n",
           MODE_NAMES[o->mode], o->clients, o->tenants, o->dist_text, mix, o->collide);
    printf("  duration      %10.2f s\n", secs);
    printf("  requests      %10" PRIu64 "   ok %" PRIu64 "   errors %" PRIu64 "\n", n, t->ok,
           t->errors);
    printf("  throughput    %10.1f req/s\n", secs > 0 ? (double)n / secs : 0.0);
    printf("  latency (us)  p50 %" PRIu64 "   p90 %" PRIu64 "   p99 %" PRIu64 "   p99.9 %" PRIu64
           "   max %" PRIu64 "\n",
           hist_quantile(&t->lat, 0.5), hist_quantile(&t->lat, 0.9), hist_quantile(&t->lat, 0.99),
           hist_quantile(&t->lat, 0.999), hist_max(&t->lat));
    for (unsigned c = 0; c < NERR; c++)
        if (t->err[c] > 0)
            printf("  error         %-24s %" PRIu64 "\n", err_name(c), t->err[c]);
    if (!checked) {
        printf("  check         skipped\n");
        return;
    }
    printf("  check         %s: tenants %" PRIu64 " (uncertain %" PRIu64 "), duplicate ids %" PRIu64
           " (in %" PRIu64 " tenants), lost acknowledged %" PRIu64 ", version deficit %" PRIu64
           "\n",
           chk->passed ? "PASSED" : "FAILED", chk->tenants_checked, chk->tenants_uncertain,
           chk->duplicate_ids, chk->tenants_with_duplicates, chk->lost_acknowledged,
           chk->version_deficit);
}

static int write_json(const struct run *run, const struct totals *t, double secs,
                      const track_result *chk, bool checked)
{
    const struct options *o = &run->o;
    char mix[128];
    mix_text(o, mix, sizeof mix);
    uint64_t n = t->ok + t->errors;
    json_t *errors = json_object();
    for (unsigned c = 0; c < NERR; c++)
        if (t->err[c] > 0)
            json_object_set_new(errors, err_name(c), json_integer((json_int_t)t->err[c]));
    json_t *check;
    if (checked)
        check = json_pack("{s:I, s:I, s:b, s:I, s:I, s:I, s:I}", "duplicate_ids",
                          (json_int_t)chk->duplicate_ids, "lost_acknowledged",
                          (json_int_t)chk->lost_acknowledged, "passed", chk->passed,
                          "tenants_with_duplicates", (json_int_t)chk->tenants_with_duplicates,
                          "version_deficit", (json_int_t)chk->version_deficit, "tenants_checked",
                          (json_int_t)chk->tenants_checked, "tenants_uncertain",
                          (json_int_t)chk->tenants_uncertain);
    else
        check = json_pack("{s:n, s:n, s:n, s:b}", "duplicate_ids", "lost_acknowledged", "passed",
                          "skipped", 1);
    json_t *doc = json_pack(
        "{s:s, s:i, s:I, s:s, s:s, s:f, s:f, s:I, s:I, s:I, s:o, s:f,"
        " s:{s:I, s:I, s:I, s:I, s:I}, s:o}",
        "mode", MODE_NAMES[o->mode], "clients", (int)o->clients, "tenants", (json_int_t)o->tenants,
        "dist", o->dist_text, "mix", mix, "collide", o->collide, "duration_s", secs, "requests",
        (json_int_t)n, "ok", (json_int_t)t->ok, "errors_total", (json_int_t)t->errors, "errors",
        errors, "throughput_rps", secs > 0 ? (double)n / secs : 0.0, "latency_us", "p50",
        (json_int_t)hist_quantile(&t->lat, 0.5), "p90", (json_int_t)hist_quantile(&t->lat, 0.9),
        "p99", (json_int_t)hist_quantile(&t->lat, 0.99), "p999",
        (json_int_t)hist_quantile(&t->lat, 0.999), "max", (json_int_t)hist_max(&t->lat), "check",
        check);
    if (doc == NULL || json_dump_file(doc, o->json_path, JSON_INDENT(2)) != 0) {
        fprintf(stderr, "tenantq-load: cannot write %s\n", o->json_path);
        json_decref(doc);
        return -1;
    }
    json_decref(doc);
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

static PGconn *db_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "tenantq-load: database: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Fail fast with a clear message if the daemon does not answer at all. */
static int daemon_preflight(const char *endpoint)
{
    tq_status st;
    tq_client *c = tq_connect(endpoint, &st);
    int rc = -1;
    if (c != NULL) {
        tq_set_timeout(c, 3000);
        char tenant[WL_NAME_MAX];
        wl_tenant_name(tenant, 0);
        rc = tq_call(c, tenant, "ping", NULL, NULL, NULL, &st);
        tq_close(c);
    }
    if (rc != 0)
        fprintf(stderr, "tenantq-load: %s: %s: %s\n", endpoint, tq_code_name(st.code),
                st.message);
    return rc;
}

static void progress(struct run *run, uint64_t start, uint64_t *last_n, uint64_t *last_t)
{
    struct totals *t = malloc(sizeof *t);
    if (t == NULL)
        return;
    collect_totals(run, t);
    uint64_t now = now_us(), n = t->ok + t->errors;
    double dt = (double)(now - *last_t) / 1e6;
    fprintf(stderr, "[%6.1fs] %9.0f req/s  total %" PRIu64 "  errors %" PRIu64 "  p99 %" PRIu64
                    " us\n",
            (double)(now - start) / 1e6, dt > 0 ? (double)(n - *last_n) / dt : 0.0, n, t->errors,
            hist_quantile(&t->lat, 0.99));
    *last_n = n;
    *last_t = now;
    free(t);
}

/* After a run with booking ops: every acknowledged booking is stored, no
 * slot twice; prints one line.  0 or -1 (a check failed). */
static int booking_check(struct run *run, PGconn *db)
{
    bool ok;
    PGresult *r = pg_run(db,
                         "SELECT count(*), count(*) - count(DISTINCT (tenant_id, slot)) FROM booking"
                         " WHERE customer LIKE 'load-c%'",
                         0, NULL, &ok);
    if (!ok) {
        fprintf(stderr, "tenantq-load: booking check: %s", PQerrorMessage(db));
        PQclear(r);
        return -1;
    }
    uint64_t stored = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    uint64_t dups = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    uint64_t acked = atomic_load(&run->booked), unsure = atomic_load(&run->book_unsure);
    bool pass = dups == 0 && stored >= acked && stored <= acked + unsure;
    printf("booking check: %s: %" PRIu64 " acknowledged, %" PRIu64 " outcome unknown, %" PRIu64
           " stored, %" PRIu64 " slots booked twice\n",
           pass ? "passed" : "FAILED", acked, unsure, stored, dups);
    return pass ? 0 : -1;
}

/* --hook: "CMD PHASE" through the shell, waited for.  A failing hook is
 * reported and does not change the run. */
static void run_hook(const char *hook, const char *phase)
{
    if (hook == NULL)
        return;
    size_t n = strlen(hook) + strlen(phase) + 2;
    char *cmd = malloc(n);
    if (cmd == NULL)
        return;
    snprintf(cmd, n, "%s %s", hook, phase);
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "tenantq-load: hook \"%s\" failed (status %d)\n", cmd, rc);
    free(cmd);
}

int main(int argc, char **argv)
{
    struct run run;
    memset(&run, 0, sizeof run);
    pthread_mutex_init(&run.mu, NULL);
    pthread_cond_init(&run.cond, NULL);
    if (parse_options(argc, argv, &run.o) != 0)
        return 2;
    struct options *o = &run.o;
    int status = 2;
    echo_server *echo = NULL;
    PGconn *db = NULL;
    bool db_mode = o->mode != MODE_ECHO;
    /* pure ping runs change nothing: no seeding, nothing to check */
    unsigned booking = o->mix[LOP_BOOK] + o->mix[LOP_BOOK_LIST];
    bool seeded = db_mode && o->mix[LOP_PING] + booking < o->mix_total;
    bool checked = seeded && o->check;
    if (booking && o->async_loops > 0) {
        fprintf(stderr, "tenantq-load: the booking ops run on synchronous clients only\n");
        goto out;
    }

    if (o->dist == DIST_ZIPF && (run.zipf_cdf = zipf_cdf_new(o->tenants, o->zipf_s)) == NULL)
        goto out;
    run.endpoint = o->endpoints;
    if (o->mode == MODE_ECHO) {
        if ((echo = echo_start()) == NULL)
            goto out;
        run.endpoint = echo_endpoint(echo);
    }
    if (o->mode == MODE_DAEMON && daemon_preflight(run.endpoint) != 0)
        goto out;
    if (booking && db_mode) {
        /* the example schema (systemd/ops/booking/schema.sql), emptied of
         * earlier runs' bookings */
        if ((db = db_connect(o->conninfo)) == NULL ||
            !pg_simple(db, "CREATE TABLE IF NOT EXISTS booking (id bigserial PRIMARY KEY,"
                           " tenant_id text NOT NULL, slot timestamptz NOT NULL,"
                           " customer text NOT NULL, booked_at timestamptz NOT NULL DEFAULT now())",
                       0, NULL) ||
            !pg_simple(db, "CREATE INDEX IF NOT EXISTS booking_tenant_slot ON booking"
                           " (tenant_id, slot)", 0, NULL) ||
            !pg_simple(db, "DELETE FROM booking WHERE customer LIKE 'load-c%'", 0, NULL)) {
            fprintf(stderr, "tenantq-load: booking schema: %s", db ? PQerrorMessage(db) : "\n");
            goto out;
        }
    }
    if (seeded) {
        if ((db == NULL && (db = db_connect(o->conninfo)) == NULL) || wl_seed(db, o->tenants, o->table) != 0)
            goto out;
        if ((run.track = track_new(o->tenants, WL_SEED_VERSION)) == NULL)
            goto out;
    }

    run.w = calloc(o->clients, sizeof *run.w);
    if (run.w == NULL)
        goto out;
    atomic_init(&run.stop, false);
    atomic_init(&run.done, 0);
    atomic_init(&run.budget, (int64_t)o->requests);
    for (unsigned i = 0; i < o->clients; i++) {
        struct worker *w = &run.w[i];
        w->id = i;
        w->run = &run;
        w->rng = o->seed ^ (UINT64_C(0x9e3779b97f4a7c15) * (i + 1));
        hist_init(&w->lat);
    }
    /* threads: a client each, or --async event loops */
    unsigned threads = o->async_loops > 0 ? o->async_loops : o->clients;
    if (o->async_loops > 0 && (run.loops = calloc(threads, sizeof *run.loops)) == NULL)
        goto out;
    unsigned started = 0;
    for (; started < threads; started++) {
        int rc;
        if (run.loops != NULL) {
            struct loop *l = &run.loops[started];
            *l = (struct loop){.run = &run, .first = started, .step = threads};
            rc = pthread_create(&l->thread, NULL, loop_main, l);
        } else {
            rc = pthread_create(&run.w[started].thread, NULL, worker_main, &run.w[started]);
        }
        if (rc != 0) {
            fprintf(stderr, "tenantq-load: cannot start thread %u\n", started);
            break;
        }
    }
    bool setup_failed = started < threads;
    pthread_mutex_lock(&run.mu);
    while (run.ready < started)
        pthread_cond_wait(&run.cond, &run.mu);
    for (unsigned i = 0; i < started; i++)
        setup_failed |= run.loops != NULL ? run.loops[i].setup_failed : run.w[i].setup_failed;
    if (setup_failed)
        atomic_store(&run.stop, true); /* before go: nobody sends anything */
    else
        run_hook(o->hook, "start"); /* (every client waits at the start line) */
    run.go = true;
    pthread_cond_broadcast(&run.cond);
    pthread_mutex_unlock(&run.mu);
    uint64_t start = now_us();

    bool tty = isatty(STDERR_FILENO);
    uint64_t deadline = o->duration_s > 0 ? start + (uint64_t)(o->duration_s * 1e6) : UINT64_MAX;
    uint64_t next_tick = start + 1000000, last_n = 0, last_t = start;
    while (atomic_load(&run.done) < started) {
        uint64_t now = now_us();
        if (now >= deadline)
            atomic_store(&run.stop, true);
        if (tty && now >= next_tick && !atomic_load(&run.stop)) {
            progress(&run, start, &last_n, &last_t);
            next_tick += 1000000;
        }
        struct timespec nap = {0, 5 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(run.loops != NULL ? run.loops[i].thread : run.w[i].thread, NULL);
    double secs = (double)(now_us() - start) / 1e6;
    if (setup_failed)
        goto out;
    run_hook(o->hook, "stop"); /* before the check reads every row */

    struct totals *tot = malloc(sizeof *tot);
    if (tot == NULL)
        goto out;
    collect_totals(&run, tot);
    track_result chk = {0};
    /* the check reads on a new connection: the one that seeded sat idle
     * through the run, and the server may have changed meanwhile (a
     * primary killed and its standby promoted: tests/integration/
     * test_failover.py gives a multi-host conninfo) */
    if (db != NULL && (checked || booking)) {
        PQfinish(db);
        if ((db = db_connect(o->conninfo)) == NULL) {
            free(tot);
            goto out;
        }
    }
    if (checked && track_check(run.track, db, o->table, &chk) != 0) {
        free(tot);
        goto out;
    }
    print_table(&run, tot, secs, &chk, checked);
    status = (checked && !chk.passed) || tot->ok == 0 ? 1 : 0;
    if (booking && db_mode && o->check && booking_check(&run, db) != 0)
        status = 1;
    if (o->json_path != NULL && write_json(&run, tot, secs, &chk, checked) != 0)
        status = 2;
    free(tot);

out:
    if (run.w != NULL)
        for (unsigned i = 0; i < o->clients; i++) {
            tq_close(run.w[i].client);
            if (run.w[i].pg != NULL)
                PQfinish(run.w[i].pg);
        }
    free(run.w);
    if (run.loops != NULL)
        for (unsigned i = 0; i < o->async_loops; i++)
            tq_close(run.loops[i].client);
    free(run.loops);
    echo_stop(echo);
    track_free(run.track);
    if (db != NULL)
        PQfinish(db);
    free(run.zipf_cdf);
    free(o->endpoints);
    pthread_cond_destroy(&run.cond);
    pthread_mutex_destroy(&run.mu);
    return status;
}
