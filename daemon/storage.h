/*
 * storage.h - where the storefront state lives ([storage]), and every
 * statement that reads or writes a tenant's state.
 *
 * The [storage] keys name a table (tenantq's own tenantq_storefront by
 * default, or the service's table, e.g. Prisma's "Tenant") and its columns.
 * storage_check.c resolves them against the catalog once at start; this
 * file holds the pure parts: parsing the names as SQL writes them, the
 * canonical form of a tenant for the tenant column's type, and the
 * statements generated from the resolved, quoted names.  A struct storage
 * is filled on the main thread before any other starts and read-only
 * afterwards (every shard builds its prepared statements from it).
 *
 * Must not: splice a name into SQL that did not come out of storage_quote
 * after a catalog check (or the built-in default schema).
 */
#ifndef TQ_STORAGE_H
#define TQ_STORAGE_H

#include <stdbool.h>
#include <stddef.h>

#include <stdio.h>

#include <libpq-fe.h>

#include "config.h"

#define STORAGE_IDENT_MAX 63  /* PostgreSQL's NAMEDATALEN - 1 */
#define STORAGE_QUOTED_MAX 160 /* one quoted identifier: 2 * 63 + 2 + NUL fits */
#define STORAGE_ERR_MAX 512

/* The document column types (draft, published). */
enum storage_doc { STORAGE_DOC_JSONB, STORAGE_DOC_JSON, STORAGE_DOC_TEXT };

/* The tenant column types tenantq can map a tenant string onto.  Each has
 * one canonical text form, which the lanes and the advisory lock use: a
 * tenant string in another form (" 7", "07", an upper-case uuid) would
 * name the same row under another lane and another lock. */
enum storage_key {
    STORAGE_KEY_TEXT,    /* text, varchar(n): any tenant (at most n characters) */
    STORAGE_KEY_UUID,    /* uuid: lower-case 8-4-4-4-12 hex */
    STORAGE_KEY_INT2,    /* smallint, integer, bigint: decimal, no sign but '-', */
    STORAGE_KEY_INT4,    /* no leading zeros, in range */
    STORAGE_KEY_INT8,
};

struct storage {
    /* quoted identifiers ("" = the column is not mapped) */
    char table[2 * STORAGE_QUOTED_MAX + 2]; /* "schema"."name" */
    char tenant[STORAGE_QUOTED_MAX], draft[STORAGE_QUOTED_MAX],
        published[STORAGE_QUOTED_MAX], version[STORAGE_QUOTED_MAX],
        updated_at[STORAGE_QUOTED_MAX];
    char table_name[2 * STORAGE_IDENT_MAX + 2]; /* schema.name, for messages */
    enum storage_doc draft_type, published_type;
    enum storage_key tenant_type;
    int tenant_max_chars;  /* varchar(n): n; 0 = no limit */
    bool updated_at_tz;    /* timestamptz (else timestamp: now() in UTC) */
    bool create_missing;
    bool published_notnull; /* a new row gets {"pages":{}} for a NULL published copy */
    bool no_xmin;          /* a view: no xmin, so no draft cache for it */
    /* the statements (storage_build), owned */
    char *select;     /* $1 tenant, $2 cached version, $3 cached xmin */
    char *guard;      /* the same: division by zero unless the row is that version */
    char *update;     /* $1 tenant, $2 draft, $3 version */
    char *update_pub; /* $1 tenant, $2 draft, $3 version, $4 published */
    char *insert;     /* $1 tenant, $2 draft, $3 version[, $4 published] */
    int insert_nparams;
    char *scan_first; /* $1 page size: tenant::text, draft::text */
    char *scan_next;  /* $1 the last tenant, $2 page size */
};

/*
 * Parse an SQL name as the config writes it: up to max_parts identifiers
 * separated by '.', each unquoted (letters, digits, '_', '$'; folded to
 * lower case as PostgreSQL does) or double-quoted ("" for a quote inside).
 * Writes the identifiers, NUL-terminated, into parts.  Returns the number of
 * parts, or -1 with a message in err (empty, too long, bad character,
 * unterminated quote, too many parts).
 */
int storage_parse_name(const char *text, char parts[][STORAGE_IDENT_MAX + 1], int max_parts,
                       char *err, size_t errlen);

/* name as a quoted identifier (always quoted: "x", quotes doubled) into out
 * of size at least STORAGE_QUOTED_MAX. */
void storage_quote(const char *name, char *out, size_t size);

/* Whether every [storage] key has its default (the storage is tenantq's
 * own tenantq_storefront, which --init-db creates). */
bool storage_is_default(const tq_config *cfg);

/* The built-in default schema, unchecked (the database is unreachable at
 * start and [storage] is the default): in cfg->schema when set.  0, or -1
 * with err. */
int storage_default(struct storage *st, const tq_config *cfg, char *err, size_t errlen);

/* Generate the statements from the names and types in st.  0, or -1 (out
 * of memory). */
int storage_build(struct storage *st) __attribute__((warn_unused_result));

void storage_free(struct storage *st);

/* Whether tenant (len bytes) is in the canonical text form of the tenant
 * column's type: 0, or -1 with a message naming the type and the form. */
int storage_check_tenant(const struct storage *st, const char *tenant, size_t len, char *err,
                         size_t errlen);

/* The quoted form of [database] schema ("" when unset) into out of size
 * STORAGE_QUOTED_MAX.  0, or -1 with a message naming the key. */
int storage_own_schema(const tq_config *cfg, char *out, size_t size, char *err, size_t errlen);

/* storage_check.c: the catalog. */

/* The [storage] names and [database] schema parse (no database): 0, or -1
 * with a message naming the key (--check-config). */
int storage_check_names(const tq_config *cfg, char *err, size_t errlen);

/*
 * Resolve cfg's [storage] on conn: the table (to_regclass), its columns and
 * their types, the unique index and column defaults create_missing needs,
 * the user's privileges.  Returns 0 with st filled and its statements built
 * (storage_free), 1 when the mapping is unusable (one line per problem,
 * "[storage] KEY: why", to problems; the SQL that would fix what can be
 * fixed to fixes, which may be NULL), or -1 with err (the database failed).
 */
int storage_resolve(PGconn *conn, const tq_config *cfg, struct storage *st, FILE *problems,
                    FILE *fixes, char *err, size_t errlen);

/*
 * At start: resolve the storage on a connection of its own.  The default
 * storage is assumed (unchecked) when the database cannot be reached, so the
 * daemon still starts and waits for it; a configured one is retried every
 * second until the database answers.  0, or -1 after printing why to stderr
 * (exit 2).
 */
int storage_open(const tq_config *cfg, struct storage *st);

#endif
