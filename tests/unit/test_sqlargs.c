/*
 * test_sqlargs.c - args to text parameters (daemon/sqlargs.h): the admission
 * check (missing, unknown, args.tenant, not a map, an op without arguments),
 * messages that name the argument and stay one clean line for hostile keys,
 * and the value mapping: strings verbatim (quotes, SQL, backslashes, empty,
 * non-ASCII), integers exact at the int64 limits, reals as their shortest
 * round-trip text (checked on 100,000 random bit patterns), booleans, nil as
 * NULL, maps and arrays as compact JSON, the tenant for :tenant.
 */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jparse.h"
#include "sqlargs.h"

static opfile_def *def_of(const char *sql)
{
    char err[OPFILE_ERR_MAX];
    opfile_def *d = opfile_parse("t.sql", sql, strlen(sql), err, sizeof err);
    CHECK(d != NULL, "%s", err);
    return d;
}

static json_t *args_of(const char *text)
{
    json_t *a = jparse(text, strlen(text), NULL, NULL, 0);
    CHECK(a != NULL, "bad test args %s", text);
    return a;
}

static void refused_(int line, const opfile_def *d, const char *args, const char *want)
{
    json_t *a = args_of(args);
    tq_error err = {0};
    CHECK(sqlargs_check(d, a, &err) < 0, "line %d: %s accepted", line, args);
    CHECK(err.code == TQ_E_INVALID_ARGUMENT, "line %d: code %d", line, err.code);
    CHECK(strstr(err.message, want) != NULL, "line %d: message [%s], want [%s]", line,
          err.message, want);
    for (const unsigned char *p = (const unsigned char *)err.message; *p; p++)
        CHECK(*p >= 0x20 && *p != 0x7f, "line %d: control byte in [%s]", line, err.message);
    /* bind refuses the same and owns nothing */
    sqlargs b;
    tq_error err2 = {0};
    CHECK(sqlargs_bind(d, a, "t", &b, &err2) < 0 && strcmp(err.message, err2.message) == 0,
          "line %d: bind differs", line);
    CHECK(b.n == 0 && b.owned[0] == NULL, "line %d: bind left state", line);
    json_decref(a);
}
#define REFUSED(d, args, want) refused_(__LINE__, d, args, want)

static void test_check(void)
{
    opfile_def *d = def_of("SELECT :tenant, :slot, :customer, :slot");
    json_t *a = args_of("{\"customer\":\"x\",\"slot\":\"y\"}");
    tq_error err = {0};
    CHECK(sqlargs_check(d, a, &err) == 0, "good args: %s", err.message);
    json_decref(a);
    REFUSED(d, "{\"customer\":\"x\"}", "args.slot: missing (this op takes slot, customer)");
    REFUSED(d, "{}", "args.slot: missing");
    REFUSED(d, "{\"customer\":\"x\",\"slot\":\"y\",\"colour\":1}",
            "args.colour: unknown argument (this op takes slot, customer)");
    REFUSED(d, "{\"customer\":\"x\",\"slot\":\"y\",\"tenant\":\"other\"}",
            "args.tenant: not an argument: the tenant is the request's tenant field");
    REFUSED(d, "{\"tenant\":\"other\"}", "args.tenant: not an argument");
    REFUSED(d, "[1]", "args: must be a map (this op takes slot, customer)");
    /* names are case-sensitive */
    REFUSED(d, "{\"customer\":\"x\",\"Slot\":\"y\"}", "args.slot: missing");
    /* a hostile key is shown cut and without control characters */
    REFUSED(d,
            "{\"customer\":\"x\",\"slot\":\"y\",\"a\\n\\u001b[31mb\\u00e9"
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\":1}",
            "args.a??[31mb\xc3\xa9xxxxxxxxxxxxxxxxxxxxxx...: unknown argument");
    opfile_free(d);

    /* :tenant only: no arguments at all */
    d = def_of("SELECT count(*) FROM booking WHERE tenant_id = :tenant");
    a = args_of("{}");
    CHECK(sqlargs_check(d, a, &err) == 0, "no args: %s", err.message);
    json_decref(a);
    REFUSED(d, "{\"x\":null}", "args.x: unknown argument (this op takes no arguments)");
    opfile_free(d);

    /* without :tenant, "tenant" is still never an argument */
    d = def_of("SELECT 1");
    REFUSED(d, "{\"tenant\":\"x\"}", "args.tenant: not an argument");
    opfile_free(d);
}

/* bind args to d and compare each parameter's text (NULL = SQL NULL). */
static void bound_(int line, const opfile_def *d, const char *args, const char *const *want)
{
    json_t *a = args_of(args);
    sqlargs b;
    tq_error err = {0};
    const char *tenant = "acme";
    CHECK(sqlargs_bind(d, a, tenant, &b, &err) == 0, "line %d: %s", line, err.message);
    CHECK(b.n == (int)d->nparams, "line %d: n %d", line, b.n);
    for (int k = 0; k < b.n; k++) {
        if (want[k] == NULL)
            CHECK(b.values[k] == NULL, "line %d: $%d is [%s], want NULL", line, k + 1,
                  b.values[k]);
        else
            CHECK(b.values[k] && strcmp(b.values[k], want[k]) == 0, "line %d: $%d is [%s], want [%s]",
                  line, k + 1, b.values[k] ? b.values[k] : "NULL", want[k]);
        if ((int)k == d->tenant_index)
            CHECK(b.values[k] == tenant, "line %d: the tenant is not the caller's", line);
    }
    sqlargs_clear(&b);
    sqlargs_clear(&b); /* twice is fine */
    json_decref(a);
}
#define BOUND(d, args, ...) bound_(__LINE__, d, args, (const char *const[]){__VA_ARGS__})

static void test_values(void)
{
    opfile_def *d = def_of("SELECT :v, :tenant");
    BOUND(d, "{\"v\":\"plain\"}", "plain", "acme");
    BOUND(d, "{\"v\":\"\"}", "", "acme");
    BOUND(d, "{\"v\":\"'); DROP TABLE booking; --\"}", "'); DROP TABLE booking; --", "acme");
    BOUND(d, "{\"v\":\"back\\\\slash \\\"quote\\\" $1 :tenant\"}",
          "back\\slash \"quote\" $1 :tenant", "acme");
    BOUND(d, "{\"v\":\"caf\\u00e9 \\ud83d\\ude00 \\n\\t\"}", "caf\xc3\xa9 \xf0\x9f\x98\x80 \n\t",
          "acme");
    BOUND(d, "{\"v\":0}", "0", "acme");
    BOUND(d, "{\"v\":-1}", "-1", "acme");
    BOUND(d, "{\"v\":9007199254740993}", "9007199254740993", "acme");
    BOUND(d, "{\"v\":9223372036854775807}", "9223372036854775807", "acme");
    BOUND(d, "{\"v\":-9223372036854775808}", "-9223372036854775808", "acme");
    BOUND(d, "{\"v\":0.1}", "0.1", "acme");
    BOUND(d, "{\"v\":1.5}", "1.5", "acme");
    BOUND(d, "{\"v\":-2.5e-10}", "-2.5e-10", "acme");
    BOUND(d, "{\"v\":1e300}", "1e+300", "acme");
    BOUND(d, "{\"v\":1.0}", "1", "acme");
    BOUND(d, "{\"v\":0.30000000000000004}", "0.30000000000000004", "acme");
    BOUND(d, "{\"v\":5e-324}", "5e-324", "acme");
    BOUND(d, "{\"v\":123456789012.5}", "123456789012.5", "acme");
    BOUND(d, "{\"v\":true}", "true", "acme");
    BOUND(d, "{\"v\":false}", "false", "acme");
    BOUND(d, "{\"v\":null}", NULL, "acme");
    BOUND(d, "{\"v\": {\"b\": [1, 2.5, \"x\", null, {}], \"a\": true}}",
          "{\"b\":[1,2.5,\"x\",null,{}],\"a\":true}", "acme");
    BOUND(d, "{\"v\":[]}", "[]", "acme");
    BOUND(d, "{\"v\":[\"a\\\"b\"]}", "[\"a\\\"b\"]", "acme");
    opfile_free(d);

    /* many parameters, each its own slot, the tenant in the middle */
    d = def_of("SELECT :a, :b, :tenant, :c, :a");
    BOUND(d, "{\"c\":3,\"b\":\"2\",\"a\":[1]}", "[1]", "2", "acme", "3");
    opfile_free(d);
}

/* The shortest text reads back as the same double, and no shorter %.Ng does. */
static void test_real_text(void)
{
    uint64_t x = 88172645463325252u;
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d;
        memcpy(&d, &x, sizeof d);
        if (!isfinite(d))
            continue;
        char buf[32], shorter[32];
        sqlargs_real_text(d, buf);
        if (strtod(buf, NULL) != d)
            bad++;
        /* no text with fewer significant digits reads back as d */
        int p = 1;
        for (; p < 17; p++) {
            snprintf(shorter, sizeof shorter, "%.*g", p, d);
            if (strtod(shorter, NULL) == d)
                break;
        }
        snprintf(shorter, sizeof shorter, "%.*g", p, d);
        if (strcmp(shorter, buf) != 0)
            bad++;
    }
    CHECK(bad == 0, "%d doubles do not round-trip or are not shortest", bad);
    char buf[32];
    CHECK(strcmp(sqlargs_real_text(-0.0, buf), "-0") == 0, "-0.0: %s", buf);
    CHECK(strcmp(sqlargs_real_text(1.7976931348623157e308, buf), "1.7976931348623157e+308") == 0,
          "DBL_MAX: %s", buf);
}

int main(void)
{
    test_check();
    test_values();
    test_real_text();
    printf("test_sqlargs: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
