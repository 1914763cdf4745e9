/*
 * workload.c - tenant names, seeded draft and section bodies (workload.h).
 */
#include "workload.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Filler so that a section weighs what a real storefront section does
 * (a headline, a paragraph, a little styling): about 300 bytes of JSON. */
static const char HEADLINE[] = "Spring collection: light layers for long evenings";
static const char BODY[] =
    "Linen shirts, cotton knits and easy trousers in warm neutrals. Free returns within "
    "thirty days, delivery in two to four working days.";

void wl_tenant_name(char *buf, size_t idx)
{
    snprintf(buf, WL_NAME_MAX, "load-t%06zu", idx);
}

int wl_tenant_index(const char *name, size_t *idx)
{
    if (strncmp(name, "load-t", 6) != 0 || name[6] < '0' || name[6] > '9')
        return -1;
    char *end;
    unsigned long long v = strtoull(name + 6, &end, 10);
    if (*end != '\0' || end - (name + 6) < 6)
        return -1;
    *idx = (size_t)v;
    return 0;
}

void wl_page_name(char *buf, unsigned page)
{
    snprintf(buf, WL_NAME_MAX, "page%u", page);
}

void wl_seeded_id(char *buf, unsigned page, unsigned n)
{
    snprintf(buf, WL_NAME_MAX, "page%u-s%u", page, n);
}

void wl_pool_id(char *buf, unsigned k)
{
    snprintf(buf, WL_NAME_MAX, "shared-%u", k);
}

json_t *wl_section(const char *id, const char *rev)
{
    json_t *s = json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:i}, s:s}", "type", "text",
                          "headline", HEADLINE, "body", BODY, "style", "align", "left",
                          "theme", "light", "columns", 2, "rev", rev);
    if (s != NULL && id != NULL && json_object_set_new(s, "id", json_string(id)) != 0) {
        json_decref(s);
        return NULL;
    }
    return s;
}

/* The seeded draft as compact JSON text (malloc'd) or NULL. */
static char *seed_draft_text(void)
{
    json_t *pages = json_object();
    json_t *draft = json_pack("{s:o}", "pages", pages);
    if (draft == NULL)
        return NULL;
    for (unsigned p = 0; p < WL_PAGES; p++) {
        char pname[WL_NAME_MAX], id[WL_NAME_MAX];
        wl_page_name(pname, p);
        json_t *secs = json_array();
        if (json_object_set_new(pages, pname, json_pack("{s:o}", "sections", secs)) != 0)
            goto fail;
        for (unsigned n = 0; n < WL_SECTIONS; n++) {
            wl_seeded_id(id, p, n);
            if (json_array_append_new(secs, wl_section(id, "seed")) != 0)
                goto fail;
        }
    }
    char *text = json_dumps(draft, JSON_COMPACT);
    json_decref(draft);
    return text;
fail:
    json_decref(draft);
    return NULL;
}

int wl_seed(PGconn *conn, size_t ntenants, enum wl_table table)
{
    static const char sql_default[] =
        "INSERT INTO tenantq_storefront AS t (tenant, draft, published, version, updated_at)"
        " SELECT 'load-t' || lpad(g::text, 6, '0'), $1::jsonb, NULL, $2::bigint, now()"
        " FROM generate_series(0, $3::int - 1) AS g"
        " ON CONFLICT (tenant) DO UPDATE SET draft = EXCLUDED.draft, published = NULL,"
        " version = EXCLUDED.version, updated_at = now()";
    /* Prisma fills @updatedAt itself (UTC, in a timestamp(3)); "createdAt"
     * and "plan" take their defaults */
    static const char sql_prisma[] =
        "INSERT INTO \"Tenant\" AS t (\"id\", \"name\", \"updatedAt\","
        " \"landingPageConfigDraft\", \"landingPageConfig\", \"version\")"
        " SELECT 'load-t' || lpad(g::text, 6, '0'), 'Load tenant ' || g,"
        " now() AT TIME ZONE 'UTC', $1::jsonb, NULL, $2::int"
        " FROM generate_series(0, $3::int - 1) AS g"
        " ON CONFLICT (\"id\") DO UPDATE SET"
        " \"landingPageConfigDraft\" = EXCLUDED.\"landingPageConfigDraft\","
        " \"landingPageConfig\" = NULL, \"version\" = EXCLUDED.\"version\","
        " \"updatedAt\" = EXCLUDED.\"updatedAt\"";
    const char *sql = table == WL_TABLE_PRISMA ? sql_prisma : sql_default;
    char *draft = seed_draft_text();
    if (draft == NULL) {
        fprintf(stderr, "tenantq-load: cannot build the seeded draft\n");
        return -1;
    }
    char version[24], count[24];
    snprintf(version, sizeof version, "%d", WL_SEED_VERSION);
    snprintf(count, sizeof count, "%zu", ntenants);
    const char *params[3] = {draft, version, count};
    int rc = -1;
    if (!PQsendQueryParams(conn, sql, 3, NULL, params, NULL, NULL, 0)) {
        fprintf(stderr, "tenantq-load: seeding: %s", PQerrorMessage(conn));
    } else {
        rc = 0;
        PGresult *r;
        while ((r = PQgetResult(conn)) != NULL) {
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                fprintf(stderr, "tenantq-load: seeding: %s", PQresultErrorMessage(r));
                rc = -1;
            }
            PQclear(r);
        }
    }
    free(draft);
    return rc;
}

const char *wl_check_sql(enum wl_table table)
{
    if (table == WL_TABLE_PRISMA)
        return "SELECT \"id\", \"landingPageConfigDraft\"::text, \"version\" FROM \"Tenant\""
               " WHERE \"id\" >= 'load-t' AND \"id\" < 'load-u'";
    return "SELECT tenant, draft::text, version FROM tenantq_storefront"
           " WHERE tenant >= 'load-t' AND tenant < 'load-u'";
}
