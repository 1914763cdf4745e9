/*
 * sql.c - the SQL text of every statement and the schema (see sql.h).
 *
 * Must not: splice anything but the operator's configured lock_key_sql
 * into a statement; every value travels as a parameter.
 */
#include "sql.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Explicitly READ COMMITTED: a role or database default of serializable or
 * repeatable read would fail a transaction that waited for the advisory
 * lock (40001) as soon as it read the row the lock's holder changed. */
const char SQL_BEGIN[] = "BEGIN ISOLATION LEVEL READ COMMITTED";
const char SQL_COMMIT[] = "COMMIT";
const char SQL_ROLLBACK[] = "ROLLBACK";

static const char SQL_TIMEOUTS[] =
    "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true),"
    " set_config('idle_in_transaction_session_timeout', $3, true)";
/* $2/$3: the row version the draft cache holds ('-1'/'0' for none): when the
 * row still is that version the JSON is not even read out of TOAST. */
static const char SQL_SF_SELECT[] =
    "SELECT CASE WHEN version = $2::bigint AND xmin = $3::xid THEN NULL ELSE draft::text END,"
    " CASE WHEN version = $2::bigint AND xmin = $3::xid THEN NULL ELSE published::text END,"
    " version, xmin, version = $2::bigint AND xmin = $3::xid"
    " FROM tenantq_storefront WHERE tenant = $1";
/* One round trip from a cached state: fails (division by zero, which aborts
 * the transaction before anything is written) unless the row still is the
 * version the draft cache holds.  After the lock, so it sees the row as the
 * lock's previous holder left it. */
static const char SQL_SF_GUARD[] =
    "SELECT 1 / count(*) AS tenantq_cached_draft_is_current FROM tenantq_storefront"
    " WHERE tenant = $1 AND version = $2::bigint AND xmin = $3::xid";
static const char SQL_SF_UPSERT[] =
    "INSERT INTO tenantq_storefront AS t (tenant, draft, published, version, updated_at)"
    " VALUES ($1, $2::jsonb, $3::jsonb, $4::bigint, now())"
    " ON CONFLICT (tenant) DO UPDATE SET draft = EXCLUDED.draft,"
    " published = EXCLUDED.published, version = EXCLUDED.version, updated_at = now()"
    " RETURNING xmin";
/*
 * Idempotency records, fast path: a batch does not look its keys up; it
 * inserts their records with a plain INSERT before its writes, so a key seen
 * before (a retry, a re-send) fails the transaction with a unique violation
 * before anything is written.  The batch then runs again, in order, with its
 * keys looked up first (SQL_IDEM_LOOKUP) and repeats answered from the
 * records.  Retries are rare; the common batch pays one INSERT and no
 * lookup.  text[] parameters keep JSON parsing out.
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
/* A statement batch claims its keys before its statements run (their
 * answers are known only then) and fills the answers in before COMMIT. */
const char SQL_IDEM_RESPOND[] =
    "UPDATE tenantq_idempotency AS i SET response = u.r"
    " FROM unnest($2::text[], $3::text[]) AS u(k, r) WHERE i.tenant = $1 AND i.key = u.k";
const char SQL_IDEM_LOOKUP[] =
    "SELECT key, fingerprint, response FROM tenantq_idempotency WHERE tenant = $1"
    " AND key = ANY ($2::text[]) AND created_at > now() - make_interval(secs => $3::int)";
const char SQL_IDEM_PKEY[] = "tenantq_idempotency_pkey";
/* small batches, so expiry never holds long locks or competes with edits;
 * records locked by someone else are left for a later pass rather than
 * waited for (the pass runs under the transactions' timeouts as well) */
#define STR_(x) #x
#define STR(x) STR_(x)
static const char SQL_IDEM_CLEANUP[] =
    "DELETE FROM tenantq_idempotency WHERE ctid IN (SELECT ctid FROM tenantq_idempotency"
    " WHERE created_at < now() - make_interval(secs => $1::int) LIMIT " STR(SQL_CLEANUP_BATCH)
    " FOR UPDATE SKIP LOCKED)";

/* Keys are compared bytewise (COLLATE "C"): cheaper than the database's
 * default collation in the primary-key indexes, and what an id means. */
const char SQL_SCHEMA[] =
    "BEGIN;"
    "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:init-db', 0));"
    "CREATE TABLE IF NOT EXISTS tenantq_storefront ("
    "  tenant     text COLLATE \"C\" PRIMARY KEY,"
    "  draft      jsonb NOT NULL DEFAULT '{\"pages\":{}}',"
    "  published  jsonb,"
    "  version    bigint NOT NULL DEFAULT 0,"
    "  updated_at timestamptz NOT NULL DEFAULT now());"
    "COMMENT ON TABLE tenantq_storefront IS 'tenantq: per-tenant storefront draft and published config';"
    /* Drafts are TOAST-compressed on every write: lz4 costs the server a
     * fraction of pglz's CPU (pglz_compress was its largest single cost).
     * Kept pglz where the server has no lz4; existing rows convert as they
     * are rewritten. */
    "DO $tq$ BEGIN"
    "  IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'tenantq_storefront'::regclass"
    "             AND attname IN ('draft', 'published') AND attcompression <> 'l') THEN"
    "    ALTER TABLE tenantq_storefront ALTER COLUMN draft SET COMPRESSION lz4,"
    "      ALTER COLUMN published SET COMPRESSION lz4;"
    "  END IF;"
    "EXCEPTION WHEN feature_not_supported THEN"
    "  RAISE NOTICE 'tenantq: this server has no lz4; drafts stay pglz-compressed';"
    "END $tq$;"
    "CREATE TABLE IF NOT EXISTS tenantq_idempotency ("
    "  tenant      text COLLATE \"C\" NOT NULL,"
    "  key         text COLLATE \"C\" NOT NULL,"
    "  fingerprint text NOT NULL,"
    "  response    text NOT NULL,"
    "  created_at  timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (tenant, key));"
    /* BRIN: records arrive in created_at order, and a BRIN insert is nearly free */
    "CREATE INDEX IF NOT EXISTS tenantq_idempotency_created ON tenantq_idempotency"
    "  USING brin (created_at);"
    "COMMENT ON TABLE tenantq_idempotency IS 'tenantq: idempotency keys, kept idempotency_ttl_s';"
    "COMMIT;";

int sql_table_init(struct sql_table *t, const tq_config *cfg)
{
    static const struct {
        const char *name;
        const char *sql;
        int nparams;
    } prep[ST__COUNT] = {
        [ST_TIMEOUTS] = {"tq_timeouts", SQL_TIMEOUTS, 3},
        [ST_LOCK] = {"tq_lock", NULL, 1},
        [ST_TRYLOCK] = {"tq_trylock", NULL, 1},
        [ST_TRYLOCK_GUARD] = {"tq_trylock_guard", NULL, 1},
        [ST_SF_SELECT] = {"tq_select", SQL_SF_SELECT, 3},
        [ST_SF_GUARD] = {"tq_guard", SQL_SF_GUARD, 3},
        [ST_SF_UPSERT] = {"tq_upsert", SQL_SF_UPSERT, 4},
        [ST_IDEM_INSERT] = {"tq_idem_insert", SQL_IDEM_INSERT, 4},
        [ST_IDEM_UPSERT] = {"tq_idem_upsert", SQL_IDEM_UPSERT, 4},
        [ST_IDEM_CLEANUP] = {"tq_idem_cleanup", SQL_IDEM_CLEANUP, 1},
    };
    /* the lock statements, over the operator's key expression; the
     * one-round-trip try-lock must stop the writes sent after it when the
     * lock is held, hence the division */
    static const char *const lock_sql[3][2] = {
        {"SELECT pg_advisory_xact_lock((", ")::bigint)"},
        {"SELECT pg_try_advisory_xact_lock((", ")::bigint)"},
        {"SELECT 1 / pg_try_advisory_xact_lock((", ")::bigint)::int AS tenantq_lock_is_free"},
    };
    memset(t, 0, sizeof *t);
    for (int i = 0; i < ST__COUNT; i++)
        t->prep[i] = (struct pg_stmt){
            .name = prep[i].name, .sql = prep[i].sql, .nparams = prep[i].nparams};
    size_t room = strlen(cfg->lock_key_sql) + 128;
    for (int i = 0; i < 3; i++) {
        if (!(t->owned[i] = malloc(room))) {
            sql_table_free(t);
            return -1;
        }
        snprintf(t->owned[i], room, "%s%s%s", lock_sql[i][0], cfg->lock_key_sql,
                 lock_sql[i][1]);
        t->prep[ST_LOCK + i].sql = t->owned[i];
    }
    return 0;
}

void sql_table_free(struct sql_table *t)
{
    for (int i = 0; i < 3; i++) {
        free(t->owned[i]);
        t->owned[i] = NULL;
    }
}

struct pg_stmt sql_stmt(const struct sql_table *t, enum sql_stmt which, const char *p0,
                        const char *p1, const char *p2, const char *p3)
{
    struct pg_stmt st = t->prep[which];
    st.params[0] = p0;
    st.params[1] = p1;
    st.params[2] = p2;
    st.params[3] = p3;
    return st;
}
