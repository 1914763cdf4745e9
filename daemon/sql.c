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
    "INSERT INTO @I (tenant, key, fingerprint, response)"
    " SELECT $1, k, f, r FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, f, r)";
/* after a lookup: a record past its TTL, not yet deleted, is replaced */
static const char SQL_IDEM_UPSERT[] =
    "INSERT INTO @I (tenant, key, fingerprint, response)"
    " SELECT $1, k, f, r FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, f, r)"
    " ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
    " response = EXCLUDED.response, created_at = now()";
static const char SQL_IDEM_LOOKUP[] =
    "SELECT key, fingerprint, response FROM @I WHERE tenant = $1"
    " AND key = ANY ($2::text[]) AND created_at > now() - make_interval(secs => $3::int)";
const char SQL_IDEM_PKEY[] = "tenantq_idempotency_pkey";
/* small batches, so expiry never holds long locks or competes with edits;
 * records locked by someone else are left for a later pass rather than
 * waited for (the pass runs under the transactions' timeouts as well) */
#define STR_(x) #x
#define STR(x) STR_(x)
static const char SQL_IDEM_CLEANUP[] =
    "DELETE FROM @I WHERE ctid IN (SELECT ctid FROM @I"
    " WHERE created_at < now() - make_interval(secs => $1::int) LIMIT " STR(SQL_CLEANUP_BATCH)
    " FOR UPDATE SKIP LOCKED)";

/* Keys are compared bytewise (COLLATE "C"): cheaper than the database's
 * default collation in the primary-key indexes, and what an id means.
 * @N is the own schema, @S the default storefront table, @I the
 * idempotency table (quoted, qualified when [database] schema is set). */
static const char SQL_SCHEMA_BEGIN[] =
    "BEGIN;"
    "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:init-db', 0));";
/* (CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
 * schema exists: a role that only owns its schema can run --init-db again) */
static const char SQL_SCHEMA_NAMESPACE[] =
    "DO $tq$ BEGIN"
    "  IF to_regnamespace('@N') IS NULL THEN CREATE SCHEMA @N; END IF;"
    "END $tq$;";
static const char SQL_SCHEMA_STOREFRONT[] =
    "CREATE TABLE IF NOT EXISTS @S ("
    "  tenant     text COLLATE \"C\" PRIMARY KEY,"
    "  draft      jsonb NOT NULL DEFAULT '{\"pages\":{}}',"
    "  published  jsonb,"
    "  version    bigint NOT NULL DEFAULT 0,"
    "  updated_at timestamptz NOT NULL DEFAULT now());"
    "COMMENT ON TABLE @S IS 'tenantq: per-tenant storefront draft and published config';"
    /* Drafts are TOAST-compressed on every write: lz4 costs the server a
     * fraction of pglz's CPU (pglz_compress was its largest single cost).
     * Kept pglz where the server has no lz4; existing rows convert as they
     * are rewritten.  (The schema name has no single quote: storage.c.) */
    "DO $tq$ BEGIN"
    "  IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '@S'::regclass"
    "             AND attname IN ('draft', 'published') AND attcompression <> 'l') THEN"
    "    ALTER TABLE @S ALTER COLUMN draft SET COMPRESSION lz4,"
    "      ALTER COLUMN published SET COMPRESSION lz4;"
    "  END IF;"
    "EXCEPTION WHEN feature_not_supported THEN"
    "  RAISE NOTICE 'tenantq: this server has no lz4; drafts stay pglz-compressed';"
    "END $tq$;";
static const char SQL_SCHEMA_IDEM[] =
    "CREATE TABLE IF NOT EXISTS @I ("
    "  tenant      text COLLATE \"C\" NOT NULL,"
    "  key         text COLLATE \"C\" NOT NULL,"
    "  fingerprint text NOT NULL,"
    "  response    text NOT NULL,"
    "  created_at  timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (tenant, key));"
    /* BRIN: records arrive in created_at order, and a BRIN insert is nearly free */
    "CREATE INDEX IF NOT EXISTS tenantq_idempotency_created ON @I"
    "  USING brin (created_at);"
    "COMMENT ON TABLE @I IS 'tenantq: idempotency keys, kept idempotency_ttl_s';"
    "COMMIT;";

/* tmpl with every @N, @S and @I replaced by the schema, the storefront
 * table and the idempotency table of schema ("" or quoted); malloc'd. */
static char *subst(const char *tmpl, const char *schema)
{
    char sf[STORAGE_QUOTED_MAX + 24], idem[STORAGE_QUOTED_MAX + 24];
    snprintf(sf, sizeof sf, "%s%s\"tenantq_storefront\"", schema, schema[0] ? "." : "");
    snprintf(idem, sizeof idem, "%s%s\"tenantq_idempotency\"", schema, schema[0] ? "." : "");
    size_t room = strlen(tmpl) + 1;
    for (const char *p = tmpl; (p = strchr(p, '@')) != NULL; p++)
        room += sizeof idem;
    char *out = malloc(room), *o = out;
    if (!out)
        return NULL;
    for (const char *p = tmpl; *p; p++) {
        const char *with = NULL;
        if (p[0] == '@' && p[1] == 'N')
            with = schema;
        else if (p[0] == '@' && p[1] == 'S')
            with = sf;
        else if (p[0] == '@' && p[1] == 'I')
            with = idem;
        if (with) {
            o = stpcpy(o, with);
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

char *sql_schema(const char *schema, bool storefront)
{
    char *parts[4] = {subst(SQL_SCHEMA_BEGIN, schema),
                      subst(schema[0] ? SQL_SCHEMA_NAMESPACE : "", schema),
                      subst(storefront ? SQL_SCHEMA_STOREFRONT : "", schema),
                      subst(SQL_SCHEMA_IDEM, schema)};
    char *all = NULL;
    if (parts[0] && parts[1] && parts[2] && parts[3] &&
        (all = malloc(strlen(parts[0]) + strlen(parts[1]) + strlen(parts[2]) + strlen(parts[3]) +
                      1)) != NULL)
        stpcpy(stpcpy(stpcpy(stpcpy(all, parts[0]), parts[1]), parts[2]), parts[3]);
    for (int i = 0; i < 4; i++)
        free(parts[i]);
    return all;
}

int sql_lock_text(char *buf, size_t n, enum sql_stmt kind, const char *key_sql)
{
    /* The lock statements, over the operator's key expression.  A try-lock
     * sent ahead of writes in the same pipeline must stop them when the
     * lock is held, hence the division. */
    static const char *const text[3][2] = {
        {"SELECT pg_advisory_xact_lock((", ")::bigint)"},
        {"SELECT pg_try_advisory_xact_lock((", ")::bigint)"},
        {"SELECT 1 / pg_try_advisory_xact_lock((", ")::bigint)::int AS tenantq_lock_is_free"},
    };
    if (kind < ST_LOCK || kind > ST_TRYLOCK_GUARD)
        return -1;
    int w = snprintf(buf, n, "%s%s%s", text[kind - ST_LOCK][0], key_sql, text[kind - ST_LOCK][1]);
    return w < 0 || (size_t)w >= n ? -1 : w;
}

int sql_table_init(struct sql_table *t, const tq_config *cfg, const struct storage *st)
{
    static const struct {
        const char *name;
        const char *tmpl; /* idempotency statements over @I */
        int nparams;
    } prep[ST__COUNT] = {
        [ST_TIMEOUTS] = {"tq_timeouts", NULL, 3},
        [ST_LOCK] = {"tq_lock", NULL, 1},
        [ST_TRYLOCK] = {"tq_trylock", NULL, 1},
        [ST_TRYLOCK_GUARD] = {"tq_trylock_guard", NULL, 1},
        [ST_SF_SELECT] = {"tq_select", NULL, 3},
        [ST_SF_GUARD] = {"tq_guard", NULL, 3},
        [ST_SF_UPDATE] = {"tq_update", NULL, 3},
        [ST_SF_UPDATE_PUB] = {"tq_update_pub", NULL, 4},
        [ST_SF_INSERT] = {"tq_insert", NULL, 4},
        [ST_IDEM_INSERT] = {"tq_idem_insert", SQL_IDEM_INSERT, 4},
        [ST_IDEM_UPSERT] = {"tq_idem_upsert", SQL_IDEM_UPSERT, 4},
        [ST_IDEM_CLEANUP] = {"tq_idem_cleanup", SQL_IDEM_CLEANUP, 1},
    };
    memset(t, 0, sizeof *t);
    char schema[STORAGE_QUOTED_MAX], err[STORAGE_ERR_MAX];
    if (storage_own_schema(cfg, schema, sizeof schema, err, sizeof err) < 0)
        return -1; /* (checked at start) */
    for (int i = 0; i < ST__COUNT; i++) {
        t->prep[i] = (struct pg_stmt){.name = prep[i].name, .nparams = prep[i].nparams};
        if (prep[i].tmpl && !(t->prep[i].sql = t->owned[t->nowned++] = subst(prep[i].tmpl, schema)))
            goto oom;
    }
    t->prep[ST_TIMEOUTS].sql = SQL_TIMEOUTS;
    t->prep[ST_SF_SELECT].sql = st->select;
    t->prep[ST_SF_GUARD].sql = st->guard;
    t->prep[ST_SF_UPDATE].sql = st->update;
    t->prep[ST_SF_UPDATE_PUB].sql = st->update_pub;
    t->prep[ST_SF_INSERT].sql = st->insert;
    t->prep[ST_SF_INSERT].nparams = st->insert_nparams;
    if (!(t->idem_lookup = t->owned[t->nowned++] = subst(SQL_IDEM_LOOKUP, schema)))
        goto oom;
    size_t room = strlen(cfg->lock_key_sql) + 128;
    for (int i = ST_LOCK; i <= ST_TRYLOCK_GUARD; i++) {
        char *sql = t->owned[t->nowned++] = malloc(room);
        if (!sql || sql_lock_text(sql, room, (enum sql_stmt)i, cfg->lock_key_sql) < 0)
            goto oom;
        t->prep[i].sql = sql;
    }
    return 0;
oom:
    sql_table_free(t);
    return -1;
}

void sql_table_free(struct sql_table *t)
{
    for (int i = 0; i < t->nowned; i++) {
        free(t->owned[i]);
        t->owned[i] = NULL;
    }
    t->nowned = 0;
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
