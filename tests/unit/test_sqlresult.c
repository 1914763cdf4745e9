/*
 * test_sqlresult.c - PGresult to {"rows","count"} (daemon/sqlresult.h), on
 * results built with libpq's own PQmakeEmptyPGresult / PQsetResultAttrs /
 * PQsetvalue (no server): every mapped type with its edge values (int8 at
 * both limits, numeric integers beyond int64, NaN and infinities, json and
 * jsonb as values, too deep json), NULL, duplicate column names, invalid
 * UTF-8, the count of row-returning and other statements, other statuses.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jdump.h"
#include "sqlresult.h"

struct col {
    const char *name;
    unsigned int oid;
};

/* A PGRES_TUPLES_OK result with the given columns and rows of texts
 * (NULL = SQL NULL). */
static PGresult *make(const struct col *cols, int ncols, const char *const *cells, int nrows)
{
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc att[16];
    memset(att, 0, sizeof att);
    for (int c = 0; c < ncols; c++) {
        att[c].name = (char *)(uintptr_t)cols[c].name;
        att[c].typid = cols[c].oid;
        att[c].typlen = -1;
        att[c].atttypmod = -1;
    }
    CHECK(PQsetResultAttrs(res, ncols, att), "PQsetResultAttrs");
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++) {
            const char *v = cells[r * ncols + c];
            CHECK(PQsetvalue(res, r, c, (char *)(uintptr_t)v, v ? (int)strlen(v) : -1),
                  "PQsetvalue");
        }
    return res;
}

/* The compact JSON of res's conversion must be want. */
static void same_(int line, PGresult *res, const char *want)
{
    tq_error err = {0};
    json_t *j = sqlresult_to_json(res, &err);
    CHECK(j != NULL, "line %d: %s", line, err.message);
    char *got = j ? jdump(j, 0, NULL) : NULL;
    CHECK(got && strcmp(got, want) == 0, "line %d:\n got %s\nwant %s", line, got ? got : "-",
          want);
    free(got);
    json_decref(j);
    PQclear(res);
}
#define SAME(res, want) same_(__LINE__, res, want)

/* One value of a column of type oid, as compact JSON. */
static void value_(int line, unsigned int oid, const char *text, const char *want)
{
    const struct col c = {"v", oid};
    char expect[512];
    snprintf(expect, sizeof expect, "{\"rows\":[{\"v\":%s}],\"count\":1}", want);
    same_(line, make(&c, 1, &text, 1), expect);
}
#define VALUE(oid, text, want) value_(__LINE__, oid, text, want)

static void test_types(void)
{
    VALUE(SQLRESULT_INT2OID, "-32768", "-32768");
    VALUE(SQLRESULT_INT4OID, "2147483647", "2147483647");
    VALUE(SQLRESULT_INT8OID, "9223372036854775807", "9223372036854775807");
    VALUE(SQLRESULT_INT8OID, "-9223372036854775808", "-9223372036854775808");
    VALUE(SQLRESULT_INT8OID, "9007199254740993", "9007199254740993"); /* beyond 2^53 */
    VALUE(SQLRESULT_NUMERICOID, "42", "42");
    VALUE(SQLRESULT_NUMERICOID, "-7", "-7");
    VALUE(SQLRESULT_NUMERICOID, "12.50", "12.5");
    VALUE(SQLRESULT_NUMERICOID, "0.1", "0.10000000000000001"); /* the double 0.1 */
    VALUE(SQLRESULT_NUMERICOID, "99999999999999999999", "1e20");
    VALUE(SQLRESULT_NUMERICOID, "NaN", "\"NaN\"");
    VALUE(SQLRESULT_NUMERICOID, "Infinity", "\"Infinity\"");
    char huge[400] = "1";
    memset(huge + 1, '0', 350);
    char huge_json[404];
    snprintf(huge_json, sizeof huge_json, "\"%s\"", huge);
    VALUE(SQLRESULT_NUMERICOID, huge, huge_json); /* beyond the double range: text */
    VALUE(SQLRESULT_FLOAT8OID, "1.5", "1.5");
    VALUE(SQLRESULT_FLOAT8OID, "-1e-300", "-1e-300");
    VALUE(SQLRESULT_FLOAT8OID, "NaN", "\"NaN\"");
    VALUE(SQLRESULT_FLOAT8OID, "-Infinity", "\"-Infinity\"");
    VALUE(SQLRESULT_FLOAT4OID, "2.5", "2.5");
    VALUE(SQLRESULT_BOOLOID, "t", "true");
    VALUE(SQLRESULT_BOOLOID, "f", "false");
    VALUE(SQLRESULT_JSONBOID, "{\"a\": [1, 2.5, \"x\", null, {\"b\": true}]}",
          "{\"a\":[1,2.5,\"x\",null,{\"b\":true}]}");
    VALUE(SQLRESULT_JSONOID, "[9223372036854775807, \"caf\xc3\xa9\"]",
          "[9223372036854775807,\"caf\xc3\xa9\"]");
    VALUE(SQLRESULT_JSONBOID, "\"just a string\"", "\"just a string\"");
    VALUE(SQLRESULT_JSONBOID, "null", "null"); /* JSON null, not SQL NULL: same in JSON */
    VALUE(SQLRESULT_JSONOID, "1e400", "\"1e400\"");
    /* a json value too deep for a reply is its text */
    char deep[128] = "", want[160];
    for (int i = 0; i < 29; i++)
        strcat(deep, "[");
    for (int i = 0; i < 29; i++)
        strcat(deep, "]");
    snprintf(want, sizeof want, "\"%s\"", deep);
    VALUE(SQLRESULT_JSONBOID, deep, want);
    char ok[128] = "";
    for (int i = 0; i < 28; i++)
        strcat(ok, "[");
    for (int i = 0; i < 28; i++)
        strcat(ok, "]");
    VALUE(SQLRESULT_JSONBOID, ok, ok);
    /* everything else is its text */
    VALUE(1184 /* timestamptz */, "2026-03-01 10:00:00+00", "\"2026-03-01 10:00:00+00\"");
    VALUE(25 /* text */, "it's \"quoted\"\n", "\"it's \\\"quoted\\\"\\n\"");
    VALUE(2950 /* uuid */, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
          "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
    VALUE(26 /* oid: not mapped */, "42", "\"42\"");
    VALUE(17 /* bytea */, "\\x0001", "\"\\\\x0001\"");
}

static void test_rows(void)
{
    static const struct col cols[] = {
        {"id", SQLRESULT_INT8OID}, {"slot", 1184}, {"note", 25}, {"meta", SQLRESULT_JSONBOID}};
    static const char *const cells[] = {
        "1", "2026-03-01 10:00:00+00", NULL, "{\"k\": 1}",
        "2", "2026-03-01 11:00:00+00", "", NULL,
    };
    SAME(make(cols, 4, cells, 2),
         "{\"rows\":[{\"id\":1,\"slot\":\"2026-03-01 10:00:00+00\",\"note\":null,\"meta\":{\"k\":1}},"
         "{\"id\":2,\"slot\":\"2026-03-01 11:00:00+00\",\"note\":\"\",\"meta\":null}],\"count\":2}");
    /* no rows */
    SAME(make(cols, 4, NULL, 0), "{\"rows\":[],\"count\":0}");
    /* two columns of one name: the later wins */
    static const struct col dup[] = {{"a", SQLRESULT_INT4OID}, {"a", 25}};
    static const char *const dcells[] = {"1", "two"};
    SAME(make(dup, 2, dcells, 1), "{\"rows\":[{\"a\":\"two\"}],\"count\":1}");
    /* a statement without rows: count from the command tag (none here) */
    SAME(PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK), "{\"rows\":[],\"count\":0}");
}

static void test_refused(void)
{
    tq_error err = {0};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    json_t *j = sqlresult_to_json(res, &err);
    CHECK(j == NULL && err.code == TQ_E_INTERNAL && strstr(err.message, "PGRES_FATAL_ERROR"),
          "error status: %s", err.message);
    CHECK(sqlresult_count(res) == -1, "count of an error");
    PQclear(res);
    static const struct col cols[] = {{"ok", 25}, {"bad", 25}};
    static const char *const cells[] = {"fine", "\xff\xfe"};
    res = make(cols, 2, cells, 1);
    j = sqlresult_to_json(res, &err);
    CHECK(j == NULL && strstr(err.message, "row 1, column 2: the value is not valid UTF-8"),
          "invalid UTF-8: %s", err.message);
    PQclear(res);
    static const struct col badname[] = {{"\xc3", 25}};
    static const char *const one[] = {"x"};
    res = make(badname, 1, one, 1);
    j = sqlresult_to_json(res, &err);
    CHECK(j == NULL && strstr(err.message, "column 1: its name is not valid UTF-8"),
          "invalid name: %s", err.message);
    PQclear(res);
    /* invalid UTF-8 inside json text: its text is not valid either */
    CHECK(sqlresult_value(SQLRESULT_JSONBOID, "\"\xff\"", 3) == NULL, "json with bad UTF-8");
    /* garbage in a typed column (not what a server sends) is kept as text */
    json_t *v = sqlresult_value(SQLRESULT_INT4OID, "12x", 3);
    CHECK(json_is_string(v) && strcmp(json_string_value(v), "12x") == 0, "int junk");
    json_decref(v);
    v = sqlresult_value(SQLRESULT_INT8OID, "99999999999999999999", 20);
    CHECK(json_is_string(v), "int8 overflow kept as text");
    json_decref(v);
    v = sqlresult_value(SQLRESULT_BOOLOID, "true", 4);
    CHECK(json_is_string(v), "bool junk");
    json_decref(v);
    v = sqlresult_value(SQLRESULT_INT4OID, "", 0);
    CHECK(json_is_string(v), "empty int");
    json_decref(v);
}

int main(void)
{
    test_types();
    test_rows();
    test_refused();
    printf("test_sqlresult: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
