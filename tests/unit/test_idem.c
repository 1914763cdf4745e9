/*
 * test_idem.c - the idempotency records' pure helpers (daemon/idem.h): the
 * request fingerprint (what a key is bound to) and text[] literals.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "check.h"
#include "idem.h"

static void fp(const char *op, const char *args_json, char out[IDEM_FINGERPRINT_HEX])
{
    json_error_t e;
    json_t *args = args_json ? json_loads(args_json, 0, &e) : NULL;
    CHECK(!args_json || args, "bad test JSON %s", args_json);
    CHECK(idem_fingerprint(op, args, out) == 0, "fingerprint of %s %s", op,
          args_json ? args_json : "(none)");
    json_decref(args);
}

static bool same(const char *op1, const char *a1, const char *op2, const char *a2)
{
    char x[IDEM_FINGERPRINT_HEX], y[IDEM_FINGERPRINT_HEX];
    fp(op1, a1, x);
    fp(op2, a2, y);
    return strcmp(x, y) == 0;
}

static void test_fingerprint(void)
{
    char x[IDEM_FINGERPRINT_HEX];
    fp("section.upsert", "{\"page\":\"home\",\"section\":{\"type\":\"hero\",\"id\":\"a\"}}", x);
    CHECK(strlen(x) == 32 && strspn(x, "0123456789abcdef") == 32, "32 hex digits: %s", x);
    /* canonical: key order does not matter, at any depth */
    CHECK(same("op", "{\"a\":1,\"b\":{\"x\":1,\"y\":2}}", "op", "{\"b\":{\"y\":2,\"x\":1},\"a\":1}"),
          "key order changed the fingerprint");
    /* what must differ */
    CHECK(!same("op", "{\"a\":1}", "op2", "{\"a\":1}"), "op ignored");
    CHECK(!same("op", "{\"a\":1}", "op", "{\"a\":2}"), "value ignored");
    CHECK(!same("op", "{\"a\":1}", "op", "{\"a\":\"1\"}"), "integer vs string");
    CHECK(!same("op", "{\"a\":1}", "op", "{\"a\":1.0}"), "integer vs real");
    CHECK(!same("op", "{\"a\":true}", "op", "{\"a\":1}"), "boolean vs integer");
    CHECK(!same("op", "{\"a\":null}", "op", "{}"), "null vs absent");
    CHECK(!same("op", "{\"a\":[1,2]}", "op", "{\"a\":[2,1]}"), "array order ignored");
    CHECK(!same("op", "{\"ab\":\"c\"}", "op", "{\"a\":\"bc\"}"), "strings not length-prefixed");
    CHECK(!same("op", "{\"a\":[[]]}", "op", "{\"a\":[]}"), "nesting ignored");
    CHECK(!same("o", "{\"p\":1}", "op", "{\"\":1}"), "op and args run together");
    fp("ping", "{}", x);
    char again[IDEM_FINGERPRINT_HEX];
    fp("ping", NULL, again);
    CHECK(strcmp(x, again) == 0, "no args is {}: %s vs %s", x, again);
}

static void test_text_array(void)
{
    struct pg_text_array a = {0};
    CHECK(strcmp(pg_text_array_get(&a), "{}") == 0, "empty");
    const char *items[] = {"plain", "with \"quote\"", "back\\slash", "", "NULL", "a,b {c}"};
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++)
        CHECK(pg_text_array_add(&a, items[i]) == 0, "add %s", items[i]);
    const char *want = "{\"plain\",\"with \\\"quote\\\"\",\"back\\\\slash\",\"\",\"NULL\","
                       "\"a,b {c}\"}";
    const char *got = pg_text_array_get(&a);
    CHECK(got && strcmp(got, want) == 0, "literal %s", got ? got : "(null)");
    CHECK(a.n == 6, "count %zu", a.n);
    pg_text_array_free(&a);
}

int main(void)
{
    test_fingerprint();
    test_text_array();
    printf("idem: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
