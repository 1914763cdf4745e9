/*
 * storage_check.c - resolving [storage] against the catalog (contract:
 * storage.h, storage_resolve and storage_open).
 *
 * The configured names are parsed here (storage_parse_name) and looked up
 * by value: the table through to_regclass() of its quoted form, the
 * columns in pg_attribute by exact name.  Only names the catalog returned
 * are quoted into statements.  Every problem is reported, not just the
 * first, each with the key it concerns and, where one exists, the SQL that
 * would fix it (which tenantqd never runs on a table it does not own).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "log.h"
#include "pg.h"
#include "storage.h"

/* Built-in type oids (pg_type.dat; fixed across releases). */
enum {
    OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25, OID_JSON = 114,
    OID_VARCHAR = 1043, OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_UUID = 2950,
    OID_JSONB = 3802,
};

struct column {
    char name[STORAGE_IDENT_MAX + 1];
    unsigned type;
    int typmod;
    bool notnull, has_default;
    int attnum;
    char type_name[64];
};

struct catalog {
    bool found;
    char oid[16], relkind, nspname[STORAGE_IDENT_MAX + 1], relname[STORAGE_IDENT_MAX + 1];
    bool can_select, can_update, can_insert;
    struct column *cols;
    int ncols, cap;
    int unique_attnums[64];
    int nunique;
};

static int table_row(void *arg, const PGresult *r)
{
    struct catalog *c = arg;
    c->found = true;
    snprintf(c->oid, sizeof c->oid, "%s", PQgetvalue(r, 0, 0));
    c->relkind = PQgetvalue(r, 0, 1)[0];
    snprintf(c->nspname, sizeof c->nspname, "%s", PQgetvalue(r, 0, 2));
    snprintf(c->relname, sizeof c->relname, "%s", PQgetvalue(r, 0, 3));
    c->can_select = PQgetvalue(r, 0, 4)[0] == 't';
    c->can_update = PQgetvalue(r, 0, 5)[0] == 't';
    c->can_insert = PQgetvalue(r, 0, 6)[0] == 't';
    return 0;
}

static int column_row(void *arg, const PGresult *r)
{
    struct catalog *c = arg;
    if (c->ncols == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        struct column *n = realloc(c->cols, (size_t)cap * sizeof *n);
        if (!n)
            return -1;
        c->cols = n;
        c->cap = cap;
    }
    struct column *col = &c->cols[c->ncols++];
    snprintf(col->name, sizeof col->name, "%s", PQgetvalue(r, 0, 0));
    col->type = (unsigned)strtoul(PQgetvalue(r, 0, 1), NULL, 10);
    col->typmod = atoi(PQgetvalue(r, 0, 2));
    col->notnull = PQgetvalue(r, 0, 3)[0] == 't';
    col->has_default = PQgetvalue(r, 0, 4)[0] == 't';
    snprintf(col->type_name, sizeof col->type_name, "%s", PQgetvalue(r, 0, 5));
    col->attnum = atoi(PQgetvalue(r, 0, 6));
    return 0;
}

static int unique_row(void *arg, const PGresult *r)
{
    struct catalog *c = arg;
    if (c->nunique < (int)(sizeof c->unique_attnums / sizeof c->unique_attnums[0]))
        c->unique_attnums[c->nunique++] = atoi(PQgetvalue(r, 0, 0));
    return 0;
}

static const char SQL_TABLE[] =
    "SELECT c.oid, c.relkind, n.nspname, c.relname, has_table_privilege(c.oid, 'SELECT'),"
    " has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'INSERT')"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)";
static const char SQL_COLUMNS[] =
    "SELECT attname, atttypid, atttypmod, attnotnull,"
    " atthasdef OR attidentity <> '' OR attgenerated <> '', format_type(atttypid, atttypmod),"
    " attnum FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped"
    " ORDER BY attnum";
/* single-column unique indexes without predicate or expression: what
 * ON CONFLICT (tenant) can use */
static const char SQL_UNIQUE[] =
    "SELECT indkey[0] FROM pg_index WHERE indrelid = $1::oid AND indisunique AND indnkeyatts = 1"
    " AND indpred IS NULL AND indexprs IS NULL";

/* A problem of the mapping, and what would fix it. */
struct report {
    FILE *problems, *fixes;
    int n;
};

static void problem(struct report *rp, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(struct report *rp, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(rp->problems, "[storage] %s: ", key);
    vfprintf(rp->problems, fmt, ap);
    fputc('\n', rp->problems);
    va_end(ap);
    rp->n++;
}

static void fix(struct report *rp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fix(struct report *rp, const char *fmt, ...)
{
    if (!rp->fixes)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(rp->fixes, fmt, ap);
    fputc('\n', rp->fixes);
    va_end(ap);
}

static const struct column *find_column(const struct catalog *c, const char *name)
{
    for (int i = 0; i < c->ncols; i++)
        if (strcmp(c->cols[i].name, name) == 0)
            return &c->cols[i];
    return NULL;
}

enum col_role { ROLE_TENANT, ROLE_DRAFT, ROLE_PUBLISHED, ROLE_VERSION, ROLE_UPDATED_AT, ROLE__N };

static const char *const role_key[ROLE__N] = {"tenant_column", "draft_column", "published_column",
                                              "version_column", "updated_at_column"};
/* what --init-db suggests for a missing column */
static const char *const role_add[ROLE__N] = {
    NULL, "jsonb NOT NULL DEFAULT '{\"pages\":{}}'", "jsonb", "bigint NOT NULL DEFAULT 0",
    "timestamp(3) NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')"};

/* Check one mapped column's type; fills st. */
static void check_type(struct report *rp, struct storage *st, enum col_role role,
                       const struct column *col, const char *table)
{
    const char *key = role_key[role];
    char q[STORAGE_QUOTED_MAX];
    storage_quote(col->name, q, sizeof q);
    switch (role) {
    case ROLE_TENANT:
        switch (col->type) {
        case OID_TEXT: st->tenant_type = STORAGE_KEY_TEXT; return;
        case OID_VARCHAR:
            st->tenant_type = STORAGE_KEY_TEXT;
            st->tenant_max_chars = col->typmod > 4 ? col->typmod - 4 : 0;
            return;
        case OID_UUID: st->tenant_type = STORAGE_KEY_UUID; return;
        case OID_INT2: st->tenant_type = STORAGE_KEY_INT2; return;
        case OID_INT4: st->tenant_type = STORAGE_KEY_INT4; return;
        case OID_INT8: st->tenant_type = STORAGE_KEY_INT8; return;
        }
        problem(rp, key, "column %s is %s; tenantq maps a tenant onto text, varchar, uuid, "
                         "smallint, integer or bigint",
                q, col->type_name);
        return;
    case ROLE_DRAFT:
    case ROLE_PUBLISHED: {
        enum storage_doc *t = role == ROLE_DRAFT ? &st->draft_type : &st->published_type;
        if (col->type == OID_JSONB || col->type == OID_JSON || col->type == OID_TEXT) {
            *t = col->type == OID_JSONB  ? STORAGE_DOC_JSONB
                 : col->type == OID_JSON ? STORAGE_DOC_JSON
                                         : STORAGE_DOC_TEXT;
            return;
        }
        problem(rp, key, "column %s is %s; a document column must be jsonb, json or text", q,
                col->type_name);
        fix(rp, "ALTER TABLE %s ALTER COLUMN %s TYPE jsonb USING %s::text::jsonb;", table, q, q);
        return;
    }
    case ROLE_VERSION:
        if (col->type == OID_INT8 || col->type == OID_INT4)
            return;
        problem(rp, key, "column %s is %s; the version must be bigint or integer", q,
                col->type_name);
        return;
    case ROLE_UPDATED_AT:
        if (col->type == OID_TIMESTAMPTZ || col->type == OID_TIMESTAMP) {
            st->updated_at_tz = col->type == OID_TIMESTAMPTZ;
            return;
        }
        problem(rp, key, "column %s is %s; updated_at must be timestamp or timestamptz", q,
                col->type_name);
        return;
    case ROLE__N:
        return;
    }
}

/* The configured table's name parts: [storage] table, or the default table
 * in [database] schema. */
static int table_parts(const tq_config *cfg, char parts[2][STORAGE_IDENT_MAX + 1], int *n,
                       char *err, size_t errlen)
{
    char why[STORAGE_ERR_MAX - 64];
    if (storage_is_default(cfg) && cfg->schema[0]) {
        if (storage_parse_name(cfg->schema, parts, 1, why, sizeof why) < 0) {
            snprintf(err, errlen, "[database] schema: %s", why);
            return -1;
        }
        snprintf(parts[1], sizeof parts[1], "tenantq_storefront");
        *n = 2;
        return 0;
    }
    if ((*n = storage_parse_name(cfg->storage_table, parts, 2, why, sizeof why)) < 0) {
        snprintf(err, errlen, "[storage] table: %s", why);
        return -1;
    }
    return 0;
}

int storage_check_names(const tq_config *cfg, char *err, size_t errlen)
{
    char parts[2][STORAGE_IDENT_MAX + 1];
    int n;
    if (table_parts(cfg, parts, &n, err, errlen) < 0)
        return -1;
    const char *const names[ROLE__N] = {cfg->storage_tenant_column, cfg->storage_draft_column,
                                        cfg->storage_published_column, cfg->storage_version_column,
                                        cfg->storage_updated_at_column};
    char why[STORAGE_ERR_MAX - 64];
    for (int r = 0; r < ROLE__N; r++) {
        bool optional = r == ROLE_PUBLISHED || r == ROLE_UPDATED_AT;
        if (optional && !names[r][0])
            continue;
        if (storage_parse_name(names[r], parts, 1, why, sizeof why) < 0) {
            snprintf(err, errlen, "[storage] %s: %s", role_key[r], why);
            return -1;
        }
    }
    char schema[STORAGE_QUOTED_MAX];
    return storage_own_schema(cfg, schema, sizeof schema, err, errlen);
}

int storage_resolve(PGconn *conn, const tq_config *cfg, struct storage *st, FILE *problems,
                    FILE *fixes, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    if (storage_check_names(cfg, err, errlen) < 0)
        return -1;
    char parts[2][STORAGE_IDENT_MAX + 1], quoted[2 * STORAGE_QUOTED_MAX + 2];
    int n;
    (void)table_parts(cfg, parts, &n, err, errlen);
    storage_quote(parts[0], quoted, STORAGE_QUOTED_MAX);
    if (n == 2) {
        size_t at = strlen(quoted);
        quoted[at++] = '.';
        storage_quote(parts[1], quoted + at, STORAGE_QUOTED_MAX);
    }
    struct catalog c = {0};
    struct report rp = {.problems = problems, .fixes = fixes};
    int rc = -1;
    const int tmo = cfg->statement_timeout_ms;
    const char *p1[] = {quoted};
    if (pg_admin_rows(conn, SQL_TABLE, 1, p1, tmo, table_row, &c, err, errlen) < 0)
        goto out;
    const char *shown = storage_is_default(cfg) && !cfg->schema[0] ? "tenantq_storefront"
                                                                   : cfg->storage_table;
    if (!c.found) {
        problem(&rp, "table", "%s does not exist (or is not visible on the search_path)",
                storage_is_default(cfg) && cfg->schema[0] ? quoted : shown);
        if (storage_is_default(cfg))
            fix(&rp, "-- tenantqd --init-db creates tenantq's default table");
        rc = 1;
        goto out;
    }
    char nsp[STORAGE_QUOTED_MAX], rel[STORAGE_QUOTED_MAX];
    storage_quote(c.nspname, nsp, sizeof nsp);
    storage_quote(c.relname, rel, sizeof rel);
    snprintf(st->table, sizeof st->table, "%s.%s", nsp, rel);
    snprintf(st->table_name, sizeof st->table_name, "%s.%s", c.nspname, c.relname);
    if (c.relkind != 'r' && c.relkind != 'p' && c.relkind != 'v' && c.relkind != 'f') {
        problem(&rp, "table", "%s is not a table or a view (relkind '%c')", st->table, c.relkind);
        rc = 1;
        goto out;
    }
    /* a view (or foreign table) has no xmin tenantq could trust: no draft cache */
    st->no_xmin = c.relkind == 'v' || c.relkind == 'f';
    st->create_missing = cfg->storage_create_missing != 0;
    const char *p2[] = {c.oid};
    if (pg_admin_rows(conn, SQL_COLUMNS, 1, p2, tmo, column_row, &c, err, errlen) < 0 ||
        pg_admin_rows(conn, SQL_UNIQUE, 1, p2, tmo, unique_row, &c, err, errlen) < 0)
        goto out;
    if (!c.can_select || !c.can_update || (st->create_missing && !c.can_insert))
        problem(&rp, "table", "the database user lacks %s on %s",
                !c.can_select ? "SELECT" : !c.can_update ? "UPDATE" : "INSERT (create_missing)",
                st->table);

    const char *const names[ROLE__N] = {cfg->storage_tenant_column, cfg->storage_draft_column,
                                        cfg->storage_published_column, cfg->storage_version_column,
                                        cfg->storage_updated_at_column};
    char *const out[ROLE__N] = {st->tenant, st->draft, st->published, st->version,
                                st->updated_at};
    const struct column *mapped[ROLE__N] = {0};
    for (int r = 0; r < ROLE__N; r++) {
        if (!names[r][0])
            continue; /* (only the optional ones may be empty: storage_check_names) */
        char part[1][STORAGE_IDENT_MAX + 1], why[128];
        (void)storage_parse_name(names[r], part, 1, why, sizeof why);
        char q[STORAGE_QUOTED_MAX];
        storage_quote(part[0], q, sizeof q);
        for (int o = 0; o < r; o++)
            if (mapped[o] && strcmp(mapped[o]->name, part[0]) == 0)
                problem(&rp, role_key[r], "column %s is already mapped as %s", q, role_key[o]);
        const struct column *col = find_column(&c, part[0]);
        if (!col) {
            problem(&rp, role_key[r], "%s has no column %s", st->table, q);
            if (role_add[r])
                fix(&rp, "ALTER TABLE %s ADD COLUMN %s %s;", st->table, q, role_add[r]);
            continue;
        }
        mapped[r] = col;
        snprintf(out[r], STORAGE_QUOTED_MAX, "%s", q);
        check_type(&rp, st, (enum col_role)r, col, st->table);
    }
    if (mapped[ROLE_PUBLISHED] && mapped[ROLE_PUBLISHED]->notnull)
        st->published_notnull = true;
    if (mapped[ROLE_TENANT]) {
        bool unique = false;
        for (int i = 0; i < c.nunique; i++)
            unique = unique || c.unique_attnums[i] == mapped[ROLE_TENANT]->attnum;
        if (st->create_missing && st->no_xmin)
            problem(&rp, "create_missing",
                    "%s is a view: tenantq cannot insert rows through it (no unique index for "
                    "ON CONFLICT); set create_missing = false",
                    st->table);
        else if (st->create_missing && !unique) {
            problem(&rp, "create_missing",
                    "needs a unique index on %s's tenant column %s (or create_missing = false)",
                    st->table, st->tenant);
            fix(&rp, "CREATE UNIQUE INDEX ON %s (%s);", st->table, st->tenant);
        } else if (!unique && !st->no_xmin) {
            log_warn("[storage] tenant_column: no unique index on %s (%s): a tenant with two "
                     "rows fails every edit",
                     st->table, st->tenant);
        }
    }
    if (st->create_missing && !st->no_xmin) {
        /* a new row gets only the mapped columns: the others need defaults */
        for (int i = 0; i < c.ncols; i++) {
            const struct column *col = &c.cols[i];
            bool is_mapped = false;
            for (int r = 0; r < ROLE__N; r++)
                is_mapped = is_mapped || mapped[r] == col;
            if (is_mapped || !col->notnull || col->has_default)
                continue;
            char q[STORAGE_QUOTED_MAX];
            storage_quote(col->name, q, sizeof q);
            problem(&rp, "create_missing",
                    "column %s of %s is NOT NULL without a default, so tenantq cannot create "
                    "rows (set create_missing = false, or give it a default)",
                    q, st->table);
            fix(&rp, "-- or: ALTER TABLE %s ALTER COLUMN %s SET DEFAULT <value>;", st->table, q);
        }
    }
    if (rp.n > 0) {
        rc = 1;
        goto out;
    }
    if (storage_build(st) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = 0;
out:
    free(c.cols);
    return rc;
}

int storage_open(const tq_config *cfg, struct storage *st)
{
    char err[STORAGE_ERR_MAX];
    bool dflt = storage_is_default(cfg);
    for (int attempt = 0;; attempt++) {
        PGconn *conn = pg_admin_connect(cfg->conninfo, "tenantqd-check",
                                        cfg->statement_timeout_ms, err, sizeof err);
        if (conn) {
            char *text = NULL;
            size_t len = 0;
            FILE *problems = open_memstream(&text, &len);
            if (!problems) {
                PQfinish(conn);
                log_err("out of memory");
                return -1;
            }
            int rc = storage_resolve(conn, cfg, st, problems, NULL, err, sizeof err);
            fclose(problems);
            PQfinish(conn);
            if (rc == 1) {
                fprintf(stderr, "%s", text);
                fprintf(stderr, "tenantqd: the storage is unusable; tenantqd --init-db prints "
                                "the SQL that would fix it\n");
            } else if (rc < 0) {
                fprintf(stderr, "tenantqd: cannot check [storage]: %s\n", err);
            }
            free(text);
            return rc == 0 ? 0 : -1;
        }
        if (dflt) {
            /* the default schema needs no look-up: start, and let the
             * shards reconnect until the database is there */
            log_warn("cannot connect to the database to check [storage] (%.*s); assuming "
                     "tenantq's default table",
                     (int)strcspn(err, "\n"), err);
            if (storage_default(st, cfg, err, sizeof err) < 0 || storage_build(st) < 0) {
                fprintf(stderr, "tenantqd: %s\n", err);
                return -1;
            }
            return 0;
        }
        if (attempt % 10 == 0)
            log_warn("cannot connect to the database to check [storage] (%.*s); retrying",
                     (int)strcspn(err, "\n"), err);
        sleep(1);
    }
}
