/*
 * sql.h - every SQL statement tenantqd sends, and the schema of its tables.
 *
 * One home for the SQL text, so that a statement and the schema it depends
 * on are read together.  The transaction engine and the op families refer
 * to statements by index (enum sql_stmt); sql_prepare_table builds the
 * statements every connection prepares after it connects.  Pure: no I/O.
 */
#ifndef TQ_SQL_H
#define TQ_SQL_H

#include <stdbool.h>

#include "config.h"
#include "pg.h"
#include "storage.h"

/* Statements prepared on every connection (pg_init), by index. */
enum sql_stmt {
    ST_TIMEOUTS,      /* $1 lock_timeout, $2 statement_timeout, $3 idle-in-transaction (ms) */
    ST_LOCK,          /* $1 tenant: wait for the tenant's advisory lock */
    ST_TRYLOCK,       /* $1 tenant: try it, returns whether it was taken */
    ST_TRYLOCK_GUARD, /* $1 tenant: try it, division by zero when it is held */
    ST_SF_SELECT,     /* the storefront row and the storage's statements (storage.h) */
    ST_SF_GUARD,
    ST_SF_UPDATE,
    ST_SF_UPDATE_PUB,
    ST_SF_INSERT,
    ST_IDEM_INSERT,   /* $1 tenant, $2 keys, $3 fingerprints, $4 responses (text[]) */
    ST_IDEM_UPSERT,   /* the same, replacing a record past its TTL */
    ST_IDEM_CLEANUP,  /* $1 TTL (s): deletes up to SQL_CLEANUP_BATCH expired records */
    ST__COUNT
};

/* The advisory-lock statement of kind ST_LOCK, ST_TRYLOCK or
 * ST_TRYLOCK_GUARD over key_sql (an expression of $1, the tenant), into buf
 * (n bytes).  Returns the length written, or -1 when it does not fit. */
int sql_lock_text(char *buf, size_t n, enum sql_stmt kind, const char *key_sql);

/* Statements sent unprepared. */
extern const char SQL_BEGIN[];     /* READ COMMITTED, whatever the role's default */
extern const char SQL_COMMIT[];
extern const char SQL_ROLLBACK[];
/* The constraint a repeated key violates (the fast path of idempotency
 * records counts on it). */
extern const char SQL_IDEM_PKEY[];

/* Records one cleanup pass deletes at most. */
#define SQL_CLEANUP_BATCH 500

/* The schema --init-db creates (idempotent: safe to run again), in schema
 * ("" or quoted; storage_own_schema): tenantq's own tables, the default
 * storefront table only when storefront.  malloc'd; NULL out of memory. */
char *sql_schema(const char *schema, bool storefront);

/*
 * The prepared statements of a connection, over cfg (the advisory-lock
 * statements embed cfg->lock_key_sql; the idempotency statements name the
 * table in [database] schema) and st (the storefront statements, borrowed:
 * st outlives t).  Also the idempotency statement sent unprepared,
 * idem_lookup ($1 tenant, $2 keys (text[]), $3 TTL (s): key, fingerprint,
 * response of the live records; planned with the actual keys each time, as
 * a generic plan once scanned all of a hot tenant's records).
 * Returns 0 or -1 (out of memory); sql_table_free once no connection uses it.
 */
struct sql_table {
    struct pg_stmt prep[ST__COUNT];
    const char *idem_lookup;
    char *owned[8];
    int nowned;
};
int sql_table_init(struct sql_table *t, const tq_config *cfg, const struct storage *st)
    __attribute__((warn_unused_result));
void sql_table_free(struct sql_table *t);

/* Prepared statement which of t, with up to four parameters (NULL = SQL NULL
 * or unused). */
struct pg_stmt sql_stmt(const struct sql_table *t, enum sql_stmt which, const char *p0,
                        const char *p1, const char *p2, const char *p3);

#endif
