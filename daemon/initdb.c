/*
 * initdb.c - `tenantqd --init-db` (contract: initdb.h).
 */
#include "initdb.h"

#include <stdlib.h>

#include "pg.h"
#include "sql.h"
#include "storage.h"

int initdb_run(const tq_config *cfg, FILE *out)
{
    char err[STORAGE_ERR_MAX], schema[STORAGE_QUOTED_MAX];
    if (storage_check_names(cfg, err, sizeof err) < 0 ||
        storage_own_schema(cfg, schema, sizeof schema, err, sizeof err) < 0) {
        fprintf(stderr, "tenantqd: %s\n", err);
        return 2;
    }
    PGconn *conn = pg_admin_connect(cfg->conninfo, "tenantqd-init-db", cfg->statement_timeout_ms,
                                    err, sizeof err);
    if (!conn) {
        fprintf(stderr, "tenantqd: --init-db: cannot connect: %s\n", err);
        return 1;
    }
    int rc = 1;
    char *sql = sql_schema(schema, storage_is_default(cfg));
    if (!sql) {
        fprintf(stderr, "tenantqd: --init-db: out of memory\n");
        goto out;
    }
    if (pg_admin_script(conn, sql, cfg->statement_timeout_ms, err, sizeof err) < 0) {
        fprintf(stderr, "tenantqd: --init-db failed: %s\n", err);
        goto out;
    }
    struct storage st;
    int r = storage_resolve(conn, cfg, &st, stderr, out, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "tenantqd: --init-db: cannot check [storage]: %s\n", err);
        goto out;
    }
    if (r == 1) {
        fprintf(stderr, "tenantqd: [storage] %s is not usable yet: tenantqd never alters it; "
                        "the SQL above (on stdout) would fix what it can\n",
                cfg->storage_table);
        rc = 2;
        goto out;
    }
    storage_free(&st);
    fprintf(out, "tenantqd: schema ready (storage %s%s)\n", st.table_name,
            st.no_xmin ? ", a view: no draft cache" : "");
    rc = 0;
out:
    free(sql);
    PQfinish(conn);
    return rc;
}
