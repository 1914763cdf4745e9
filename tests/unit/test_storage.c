/*
 * test_storage.c - the storage mapping's pure parts (daemon/storage.h):
 * SQL names as the config writes them, quoting, the tenant column types'
 * canonical forms, and the statements generated from a mapping.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "storage.h"

static int parse(const char *text, char parts[][STORAGE_IDENT_MAX + 1], int max)
{
    char err[STORAGE_ERR_MAX];
    return storage_parse_name(text, parts, max, err, sizeof err);
}

static void test_names(void)
{
    char p[2][STORAGE_IDENT_MAX + 1];
    CHECK(parse("tenant", p, 1) == 1 && strcmp(p[0], "tenant") == 0, "%s", p[0]);
    CHECK(parse("Tenant", p, 1) == 1 && strcmp(p[0], "tenant") == 0, "unquoted folds: %s", p[0]);
    CHECK(parse("\"landingPageConfigDraft\"", p, 1) == 1 &&
              strcmp(p[0], "landingPageConfigDraft") == 0,
          "%s", p[0]);
    CHECK(parse("public.\"Tenant\"", p, 2) == 2 && strcmp(p[0], "public") == 0 &&
              strcmp(p[1], "Tenant") == 0,
          "%s.%s", p[0], p[1]);
    CHECK(parse(" app . t_1$ ", p, 2) == 2 && strcmp(p[1], "t_1$") == 0, "%s", p[1]);
    CHECK(parse("\"a\"\"b.c\"", p, 1) == 1 && strcmp(p[0], "a\"b.c") == 0, "%s", p[0]);
    const char *bad[] = {"", "  ", "a b", "a.b.c", "\"\"", "\"open", "1abc", "a;drop", "a.",
                         ".a", "a..b", "\"x\"y", "a-b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(parse(bad[i], p, 2) < 0, "\"%s\" accepted", bad[i]);
    CHECK(parse("a.b", p, 1) < 0, "two parts where one is allowed");
    char longname[80];
    memset(longname, 'a', 64);
    longname[64] = '\0';
    CHECK(parse(longname, p, 1) < 0, "64-byte identifier accepted");
    longname[63] = '\0';
    CHECK(parse(longname, p, 1) == 1, "63-byte identifier refused");

    char q[STORAGE_QUOTED_MAX];
    storage_quote("a\"b", q, sizeof q);
    CHECK(strcmp(q, "\"a\"\"b\"") == 0, "%s", q);
    memset(longname, '"', 63);
    longname[63] = '\0';
    storage_quote(longname, q, sizeof q);
    CHECK(strlen(q) == 128, "63 quotes quote to %zu bytes", strlen(q));
}

static bool tenant_ok(const struct storage *st, const char *t)
{
    char err[STORAGE_ERR_MAX];
    return storage_check_tenant(st, t, strlen(t), err, sizeof err) == 0;
}

static void test_tenants(void)
{
    struct storage st = {0};
    st.tenant_type = STORAGE_KEY_TEXT;
    CHECK(tenant_ok(&st, "anything at all") && tenant_ok(&st, "A"), "text takes any tenant");
    st.tenant_max_chars = 3;
    CHECK(tenant_ok(&st, "\xc3\xa9\xc3\xa9\xc3\xa9") && !tenant_ok(&st, "abcd"),
          "varchar(3) counts characters");
    st.tenant_type = STORAGE_KEY_UUID;
    CHECK(tenant_ok(&st, "0b6f3c1e-7d4a-4c5e-9f00-123456789abc"), "canonical uuid refused");
    const char *bad_uuid[] = {"0B6F3C1E-7D4A-4C5E-9F00-123456789ABC",
                              "0b6f3c1e7d4a4c5e9f00123456789abc",
                              "{0b6f3c1e-7d4a-4c5e-9f00-123456789abc}",
                              "0b6f3c1e-7d4a-4c5e-9f00-123456789ab", "x"};
    for (size_t i = 0; i < sizeof bad_uuid / sizeof bad_uuid[0]; i++)
        CHECK(!tenant_ok(&st, bad_uuid[i]), "%s accepted", bad_uuid[i]);
    st.tenant_type = STORAGE_KEY_INT2;
    CHECK(tenant_ok(&st, "32767") && tenant_ok(&st, "-32768") && tenant_ok(&st, "0"),
          "smallint range");
    CHECK(!tenant_ok(&st, "32768") && !tenant_ok(&st, "-32769"), "smallint overflow accepted");
    st.tenant_type = STORAGE_KEY_INT8;
    CHECK(tenant_ok(&st, "9223372036854775807") && tenant_ok(&st, "-9223372036854775808"),
          "bigint range");
    const char *bad_int[] = {"9223372036854775808", "-9223372036854775809", "007", "+7", "-0",
                             "", "-", " 7", "7 ", "1e3", "0x10"};
    for (size_t i = 0; i < sizeof bad_int / sizeof bad_int[0]; i++)
        CHECK(!tenant_ok(&st, bad_int[i]), "\"%s\" accepted", bad_int[i]);
}

static void test_statements(void)
{
    tq_config cfg = {.schema = (char *)"", .storage_create_missing = 1};
    struct storage st;
    char err[STORAGE_ERR_MAX];
    CHECK(storage_default(&st, &cfg, err, sizeof err) == 0, "%s", err);
    CHECK(storage_build(&st) == 0, "build");
    CHECK(strstr(st.select, "FROM \"tenantq_storefront\" WHERE \"tenant\" = $1") != NULL, "%s",
          st.select);
    CHECK(strstr(st.update, "\"published\"") == NULL, "the draft update writes published: %s",
          st.update);
    CHECK(strstr(st.update_pub, "\"published\" = $4::jsonb") != NULL, "%s", st.update_pub);
    CHECK(strstr(st.insert, "ON CONFLICT (\"tenant\") DO NOTHING") != NULL && st.insert_nparams == 4,
          "%s", st.insert);
    CHECK(strstr(st.update, "\"updated_at\" = now()") != NULL, "%s", st.update);
    storage_free(&st);

    /* a foreign table: no published copy, timestamp without time zone, a view */
    cfg.schema = (char *)"tq";
    CHECK(storage_default(&st, &cfg, err, sizeof err) == 0, "%s", err);
    CHECK(strcmp(st.table, "\"tq\".\"tenantq_storefront\"") == 0, "%s", st.table);
    st.published[0] = '\0';
    st.updated_at_tz = false;
    st.no_xmin = true;
    st.draft_type = STORAGE_DOC_TEXT;
    CHECK(storage_build(&st) == 0, "build");
    CHECK(strstr(st.select, "xmin") == NULL && strstr(st.update, "xmin") == NULL,
          "a view has no xmin: %s", st.select);
    CHECK(strstr(st.update, "(now() AT TIME ZONE 'UTC')") != NULL && strstr(st.update, "$2::text"),
          "%s", st.update);
    CHECK(st.insert_nparams == 3 && strstr(st.insert, "$4") == NULL, "%s", st.insert);
    storage_free(&st);

    cfg.schema = (char *)"o'brien";
    CHECK(storage_default(&st, &cfg, err, sizeof err) < 0, "a quote in the schema accepted");
}

int main(void)
{
    test_names();
    test_tenants();
    test_statements();
    printf("storage: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
