/*
 * test_jdump.c - jdump (daemon/jdump.h) must write exactly the bytes of
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY): hand-picked values (every
 * escape, control characters, non-ASCII text, integer limits, reals that
 * need ".0", exponents of both signs, nesting, empty containers, key order)
 * and 20,000 seeded random documents compared byte for byte; the text also
 * parses back (jparse) to an equal value, and jdump_size agrees with both.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jdump.h"
#include "jparse.h"

static void same(json_t *v, const char *what)
{
    char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t len = 0;
    char *got = jdump(v, 0, &len);
    CHECK(want && got && strcmp(want, got) == 0, "%s: jdump %s, json_dumps %s", what,
          got ? got : "-", want ? want : "-");
    CHECK(got && len == strlen(got), "%s: length", what);
    CHECK(got && jdump_size(v) == len, "%s: jdump_size %zu, jdump wrote %zu", what, jdump_size(v),
          len);
    CHECK(json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY) == jdump_size(v),
          "%s: jdump_size differs from json_dumpb's", what);
    if (got) {
        json_t *back = jparse(got, len, NULL, NULL, 0);
        CHECK(back && json_equal(back, v), "%s: does not parse back", what);
        json_decref(back);
    }
    free(want);
    free(got);
}

static void test_cases(void)
{
    static const double reals[] = {0.0, -0.0, 1.0, -1.5, 0.1, 1e20, 1e21, 1e22, 1e-5, 1e-7,
                                   123456789012345678.0, 2.5e-300, 1.7976931348623157e308,
                                   5e-324, 3.14159, 100.0, 1e100, -2e-10};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        json_t *r = json_real(reals[i]);
        char what[64];
        snprintf(what, sizeof what, "real %.17g", reals[i]);
        same(r, what);
        json_decref(r);
    }
    static const json_int_t ints[] = {0, 1, -1, 42, INT64_MAX, INT64_MIN, 1000000007};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        json_t *v = json_integer(ints[i]);
        same(v, "integer");
        json_decref(v);
    }
    const char s[] = "q\" b\\ / \b \f \n \r \t \x01 \x1f \x7f caf\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80";
    json_t *v = json_stringn(s, sizeof s - 1);
    same(v, "escapes");
    json_decref(v);
    v = json_pack("{s:{}, s:[], s:[{}, [], n, b, b], s:s}", "o", "a", "mix", 1, 0, "k\"ey",
                  "v\n");
    CHECK(v != NULL, "pack");
    same(v, "containers");
    json_decref(v);
    v = json_object();
    for (int i = 20; i > 0; i--) {
        char k[8];
        snprintf(k, sizeof k, "k%d", i);
        json_object_set_new(v, k, json_integer(i));
    }
    json_object_del(v, "k7");
    json_object_set_new(v, "k7", json_integer(7));
    same(v, "key order");
    json_decref(v);
    v = json_real(1.0);
    char *big = jdump(v, 1 << 20, NULL); /* a large hint is only a first allocation */
    CHECK(big && strcmp(big, "1.0") == 0, "with a hint: %s", big ? big : "-");
    free(big);
    json_decref(v);
}

static uint64_t rng = 88172645463325252u;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static json_t *random_string(void)
{
    static const char *const parts[] = {"a", "Z", " ", "\"", "\\", "/", "\n", "\t", "\x01",
                                        "\x1f", "\x7f", "\xc3\xa9", "\xe2\x82\xac",
                                        "\xf0\x9f\x98\x80", "page", "-s3"};
    char buf[128];
    size_t n = 0;
    int parts_n = (int)(next() % 8);
    for (int i = 0; i < parts_n; i++) {
        const char *p = parts[next() % (sizeof parts / sizeof parts[0])];
        size_t l = strlen(p);
        memcpy(buf + n, p, l);
        n += l;
    }
    return json_stringn(buf, n);
}

static json_t *random_value(int depth)
{
    switch (next() % (depth > 4 ? 5 : 7)) {
    case 0: return random_string();
    case 1: return json_integer((json_int_t)(next() >> (next() % 64)) * (next() % 2 ? 1 : -1));
    case 2: {
        double d = (double)(int64_t)next() / (double)(1 + next() % 1000000);
        if (next() % 3 == 0)
            d = ldexp(d, (int)(next() % 2000) - 1000);
        return json_real(isfinite(d) ? d : 0.5);
    }
    case 3: return next() % 2 ? json_true() : json_false();
    case 4: return json_null();
    case 5: {
        json_t *a = json_array();
        for (int i = (int)(next() % 5); i > 0; i--)
            json_array_append_new(a, random_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = (int)(next() % 5); i > 0; i--) {
            json_t *k = random_string();
            json_object_set_new(o, json_string_value(k), random_value(depth + 1));
            json_decref(k);
        }
        return o;
    }
    }
}

/* Every byte that needs an escape, at every offset of the 8-byte words the
 * writer skips plain text in, between runs of plain ASCII and UTF-8. */
static void test_escape_offsets(void)
{
    static const char special[] = {'"', '\\', '\n', '\t', '\b', '\f', '\r', 0x01, 0x1f, 0x7f};
    char buf[64];
    for (size_t s = 0; s < sizeof special; s++)
        for (size_t at = 0; at < 40; at++) {
            size_t n = 0;
            for (size_t i = 0; i < at; i++)
                buf[n++] = i % 5 == 4 ? ' ' : (char)('a' + i % 26);
            buf[n++] = special[s];
            static const char tail[] = "tail \xc3\xa9\xe2\x82\xac text";
            memcpy(buf + n, tail, sizeof tail - 1);
            n += sizeof tail - 1;
            json_t *v = json_stringn(buf, n);
            char what[48];
            snprintf(what, sizeof what, "byte 0x%02x at offset %zu", (unsigned char)special[s], at);
            same(v, what);
            json_decref(v);
        }
}

int main(void)
{
    test_escape_offsets();
    test_cases();
    for (int i = 0; i < 20000; i++) {
        json_t *v = random_value(0);
        char what[32];
        snprintf(what, sizeof what, "random document %d", i);
        same(v, what);
        json_decref(v);
    }
    printf("test_jdump: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
