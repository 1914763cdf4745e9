/*
 * scan.c - `tenantqd --scan` (contract: scan.h).
 *
 * The scan reads the [storage] table, resolved against the catalog on the
 * scan's own connection (storage.h, which also writes its statements).
 */
#include "scan.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "jparse.h"
#include "pg.h"
#include "storage.h"
#include "storefront.h"

struct scan_state {
    FILE *out;
    char *last;          /* the last tenant seen (keyset), owned */
    long rows_in_page;
    long scanned, damaged, problems;
};

/* The problems of one stored draft (text, NULL = SQL NULL). */
static json_t *check_text(const char *text, size_t len, size_t *omitted)
{
    *omitted = 0;
    if (text == NULL)
        return json_array(); /* reads as {"pages":{}} */
    char why[160];
    json_t *draft = jparse(text, len, NULL, why, sizeof why);
    if (draft == NULL) {
        char msg[200];
        snprintf(msg, sizeof msg, "the stored draft is not JSON: %s", why);
        return json_pack("[{s:s, s:n, s:n, s:s}]", "problem", "bad_shape", "page", "index",
                         "message", msg);
    }
    if (json_is_null(draft)) {
        json_decref(draft);
        return json_array(); /* JSON null reads as {"pages":{}} too */
    }
    json_t *pbs = sf_check_draft(draft, omitted);
    json_decref(draft);
    return pbs;
}

static int scan_row(void *arg, const PGresult *r)
{
    struct scan_state *s = arg;
    const char *tenant = PQgetvalue(r, 0, 0);
    char *last = strdup(tenant);
    if (last == NULL)
        return -1;
    free(s->last);
    s->last = last;
    s->rows_in_page++;
    s->scanned++;
    size_t omitted;
    json_t *pbs = check_text(PQgetisnull(r, 0, 1) ? NULL : PQgetvalue(r, 0, 1),
                             (size_t)PQgetlength(r, 0, 1), &omitted);
    if (pbs == NULL)
        return -1;
    size_t n = json_array_size(pbs) + omitted;
    int rc = 0;
    if (n > 0) {
        json_t *tv = json_string(tenant);
        json_t *line = json_pack("{s:o, s:o}", "tenant",
                                 tv ? tv : json_stringn_nocheck(tenant, strlen(tenant)),
                                 "problems", json_incref(pbs));
        if (line && omitted)
            json_object_set_new(line, "omitted", json_integer((json_int_t)omitted));
        char *text = line ? json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        if (text) {
            fprintf(s->out, "%s\n", text);
            s->damaged++;
            s->problems += (long)n;
        } else {
            rc = -1;
        }
        free(text);
        json_decref(line);
    }
    json_decref(pbs);
    return rc;
}

int scan_run(const tq_config *cfg, FILE *out)
{
    char err[512];
    PGconn *conn = pg_admin_connect(cfg->conninfo, "tenantqd-scan", cfg->statement_timeout_ms,
                                    err, sizeof err);
    if (conn == NULL) {
        fprintf(stderr, "tenantqd: --scan: cannot connect: %s\n", err);
        return 2;
    }
    struct storage st;
    int resolved = storage_resolve(conn, cfg, &st, stderr, NULL, err, sizeof err);
    if (resolved != 0) {
        if (resolved < 0)
            fprintf(stderr, "tenantqd: --scan: cannot check [storage]: %s\n", err);
        PQfinish(conn);
        return 2;
    }
    struct scan_state s = {.out = out};
    char timeout[24], limit[24];
    snprintf(timeout, sizeof timeout, "%d", cfg->statement_timeout_ms);
    snprintf(limit, sizeof limit, "%d", SCAN_PAGE_ROWS);
    const char *set_params[] = {timeout};
    /* every statement its own implicit read-only transaction */
    int rc = pg_admin_rows(conn,
                           "SELECT set_config('default_transaction_read_only', 'on', false),"
                           " set_config('statement_timeout', $1, false)",
                           1, set_params, cfg->statement_timeout_ms, NULL, NULL, err, sizeof err);
    for (bool first = true; rc == 0; first = false) {
        const char *params[] = {first ? limit : s.last, limit};
        s.rows_in_page = 0;
        rc = pg_admin_rows(conn, first ? st.scan_first : st.scan_next, first ? 1 : 2, params,
                           cfg->statement_timeout_ms, scan_row, &s, err, sizeof err);
        if (s.rows_in_page < SCAN_PAGE_ROWS)
            break;
    }
    free(s.last);
    storage_free(&st);
    PQfinish(conn);
    if (rc < 0) {
        fprintf(stderr, "tenantqd: --scan failed after %ld rows: %s\n", s.scanned, err);
        return 2;
    }
    fprintf(out, "{\"scanned\":%ld,\"tenants_with_problems\":%ld,\"problems\":%ld}\n", s.scanned,
            s.damaged, s.problems);
    fflush(out);
    return s.damaged > 0 ? 1 : 0;
}
