/*
 * test_jparse.c - unit tests of jparse (daemon/jparse.h): hand-written
 * cases for every rule (numbers, escapes, surrogates, UTF-8, depth,
 * trailing bytes), each also checked against jansson (jparse_diff.h), the
 * one deliberate difference (integers beyond int64), and 30,000 seeded
 * random mutations of realistic drafts compared with jansson.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jparse_diff.h"

static void same(const char *text)
{
    const char *why = jparse_diff(text, strlen(text));
    CHECK(why == NULL, "%s: %s", text, why ? why : "");
}

static void accepts(const char *text, const char *expect_compact)
{
    char err[160];
    json_t *v = jparse(text, strlen(text), NULL, err, sizeof err);
    CHECK(v != NULL, "%s refused: %s", text, err);
    if (v && expect_compact) {
        char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        CHECK(d && strcmp(d, expect_compact) == 0, "%s read as %s, want %s", text, d ? d : "-",
              expect_compact);
        free(d);
    }
    json_decref(v);
    same(text);
}

static void refuses(const char *text, const char *msg_part)
{
    char err[160];
    json_t *v = jparse(text, strlen(text), NULL, err, sizeof err);
    CHECK(v == NULL, "%s accepted", text);
    CHECK(strstr(err, msg_part) != NULL, "%s: message \"%s\" lacks \"%s\"", text, err, msg_part);
    json_decref(v);
    same(text);
}

static void test_cases(void)
{
    accepts("{}", "{}");
    accepts(" [ ] ", "[]");
    accepts("{\"a\": [1, -2, 3.5, -0, 0, 1e2, 1E-2, 2.5e+3, true, false, null, \"s\"]}",
            "{\"a\":[1,-2,3.5,0,0,100.0,0.01,2500.0,true,false,null,\"s\"]}");
    accepts("\"top-level string\"", "\"top-level string\"");
    accepts("42", "42");
    accepts("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", "\"\\\" \\\\ / \\b \\f \\n \\r \\t\"");
    accepts("\"\\u00e9\\u20ac\\ud83d\\ude00\"", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    accepts("\"caf\xc3\xa9\"", "\"caf\xc3\xa9\"");
    accepts("{\"k\\u0041\": 1, \"k\\u0041\": 2}", "{\"kA\":2}"); /* the last wins */
    accepts("{\"a\\n\": \"x\\ty\", \"b\": {\"c\\\"\": [\"\\u0001\"]}}",
            "{\"a\\n\":\"x\\ty\",\"b\":{\"c\\\"\":[\"\\u0001\"]}}");
    accepts("9223372036854775807", "9223372036854775807");
    accepts("-9223372036854775808", "-9223372036854775808");
    accepts("1e-400", "0.0");
    accepts("\t\r\n[1]\n", "[1]");

    refuses("", "unexpected end");
    refuses("   ", "unexpected end");
    refuses("[1,]", "unexpected character");
    refuses("[1 2]", "expected ','");
    refuses("{\"a\" 1}", "expected ':'");
    refuses("{1: 2}", "expected a string key");
    refuses("{\"a\": 1,}", "expected a string key");
    refuses("[01]", "expected ','");
    refuses("-", "invalid number");
    refuses("1.", "invalid number");
    refuses(".5", "unexpected character");
    refuses("1e", "invalid number");
    refuses("1e+", "invalid number");
    refuses("+1", "unexpected character");
    refuses("1e400", "overflow");
    refuses("tru", "invalid literal");
    refuses("nul", "invalid literal");
    refuses("[true false]", "expected ','");
    refuses("{} {}", "trailing characters");
    refuses("\"abc", "unterminated string");
    refuses("\"ab\\", "unterminated string");
    refuses("\"a\\x\"", "invalid escape");
    refuses("\"\\u12\"", "invalid \\u escape");
    refuses("\"\\u0000\"", "\\u0000");
    refuses("\"\\ud800\"", "high surrogate");
    refuses("\"\\ud800\\u0041\"", "high surrogate");
    refuses("\"\\udc00\"", "lone low surrogate");
    refuses("\"a\tb\"", "control character");
    refuses("\"\xc3\"", "invalid UTF-8");
    refuses("\"\xc0\xaf\"", "invalid UTF-8");       /* overlong */
    refuses("\"\xed\xa0\x80\"", "invalid UTF-8");   /* encoded surrogate */
    refuses("\"\xf4\x90\x80\x80\"", "invalid UTF-8"); /* > U+10FFFF */
    refuses("\"a\\\xc3\xa9\"", "invalid escape");
    refuses("[\xc3\xa9]", "unexpected character");

    /* a NUL byte inside the given length */
    const char nul[] = "[1,\0 2]";
    CHECK(jparse_diff(nul, sizeof nul - 1) == NULL, "NUL byte");
    CHECK(jparse(nul, sizeof nul - 1, NULL, NULL, 0) == NULL, "NUL byte accepted");
    const char nul_after[] = "1\0junk"; /* jansson stops at the NUL and reads 1 */
    CHECK(jparse_diff(nul_after, sizeof nul_after - 1) == NULL, "NUL after a value");
    CHECK(jparse(nul_after, sizeof nul_after - 1, NULL, NULL, 0) == NULL, "NUL after a value");

    /* nesting: JPARSE_MAX_DEPTH levels are fine, one more is not */
    for (int depth = JPARSE_MAX_DEPTH; depth <= JPARSE_MAX_DEPTH + 1; depth++) {
        char *t = malloc((size_t)depth * 2 + 1);
        memset(t, '[', (size_t)depth);
        memset(t + depth, ']', (size_t)depth);
        t[depth * 2] = '\0';
        json_t *v = jparse(t, (size_t)depth * 2, NULL, NULL, 0);
        CHECK((v != NULL) == (depth == JPARSE_MAX_DEPTH), "depth %d", depth);
        json_decref(v);
        CHECK(jparse_diff(t, (size_t)depth * 2) == NULL, "depth %d vs jansson", depth);
        free(t);
    }

    /* the deliberate difference: integers beyond int64 become reals */
    bool big = false;
    json_t *v = jparse("{\"n\": 18446744073709551616, \"m\": 3}", 35, &big, NULL, 0);
    CHECK(v && big, "big integer refused");
    CHECK(json_is_real(json_object_get(v, "n")) &&
              json_real_value(json_object_get(v, "n")) == 18446744073709551616.0,
          "big integer as real");
    CHECK(json_is_integer(json_object_get(v, "m")), "small integers stay integers");
    json_decref(v);
    same("{\"n\": -99999999999999999999}");
}

/* jparse_with(JPARSE_REJECT_DUPLICATES): libtenantq's reading of args */
static void strict(const char *text, long dup_at)
{
    char err[160], want[64];
    json_t *v = jparse_with(text, strlen(text), JPARSE_REJECT_DUPLICATES, NULL, err, sizeof err);
    if (dup_at < 0) {
        CHECK(v != NULL, "%s refused: %s", text, err);
    } else {
        snprintf(want, sizeof want, "duplicate object key at byte %ld", dup_at);
        CHECK(v == NULL && strcmp(err, want) == 0, "%s: \"%s\", want \"%s\"", text,
              v ? "accepted" : err, want);
    }
    json_decref(v);
    same(text); /* and exactly where jansson's JSON_REJECT_DUPLICATES refuses */
}

static void test_duplicates(void)
{
    strict("{\"a\":1,\"a\":2}", 7);
    strict("{\"a\":1, \"b\":2,\n \"a\":{}}", 16);
    strict("{\"k\\u0041\":1,\"kA\":2}", 13);            /* equal once unescaped */
    strict("[{\"x\":{\"y\":1,\"y\":1}}]", 13);            /* nested, even with equal values */
    strict("{\"a\":1,\"A\":2,\"a \":3,\"\":4}", -1);     /* different keys */
    strict("[{\"a\":1},{\"a\":2}]", -1);                  /* different objects */
    strict("{\"a\":{\"a\":{\"a\":1}}}", -1);
    /* the default (the stored drafts): the last one wins, as in jansson */
    json_t *v = jparse("{\"a\":1,\"a\":2}", 13, NULL, NULL, 0);
    CHECK(v && json_integer_value(json_object_get(v, "a")) == 2, "jparse: last key wins");
    json_decref(v);
}

/* A draft like the load harness's, with escapes and non-ASCII text. */
static char *sample_draft(void)
{
    json_t *pages = json_object();
    for (int p = 0; p < 4; p++) {
        json_t *secs = json_array();
        for (int s = 0; s < 5; s++)
            json_array_append_new(
                secs, json_pack("{s:s+,s:s,s:s,s:s,s:{s:s,s:i,s:f}}", "id", "page-s", "x",
                                "type", s % 2 ? "text" : "hero", "headline",
                                "Spring \"collection\": caf\xc3\xa9 \xe2\x82\xac 10\n", "body",
                                "Linen shirts\\cotton knits \xf0\x9f\x98\x80 tab\there",
                                "style", "align", "left", "columns", s, "ratio", 1.25 * s));
        char name[16];
        snprintf(name, sizeof name, "page%d", p);
        json_object_set_new(pages, name, json_pack("{s:o}", "sections", secs));
    }
    json_t *draft = json_pack("{s:o,s:n,s:b}", "pages", pages, "meta", "ok", 1);
    char *text = json_dumps(draft, JSON_INDENT(1));
    json_decref(draft);
    return text;
}

static void test_mutations(void)
{
    char *base = sample_draft();
    size_t n = strlen(base);
    char *buf = malloc(n + 64);
    CHECK(jparse_diff(base, n) == NULL, "the sample itself");
    static const char interesting[] = "\"\\{}[],:0123456789-+.eEtrufalsn \x80\xc3\xed\xf4u";
    uint64_t seed = 0x9e3779b97f4a7c15u;
    int disagreements = 0;
    for (int i = 0; i < 30000 && disagreements < 20; i++) {
        memcpy(buf, base, n);
        size_t len = n;
        int edits = 1 + (int)(seed % 3);
        for (int e = 0; e < edits; e++) {
            seed = seed * 6364136223846793005u + 1442695040888963407u;
            size_t at = (size_t)(seed >> 33) % len;
            char c = interesting[(seed >> 20) % (sizeof interesting - 1)];
            switch ((seed >> 8) % 4) {
            case 0: buf[at] = c; break;                                     /* replace */
            case 1: memmove(buf + at + 1, buf + at, len - at); buf[at] = c; len++; break;
            case 2: memmove(buf + at, buf + at + 1, len - at - 1); len--; break; /* delete */
            default: len = at + 1; break;                                   /* truncate */
            }
        }
        const char *why = jparse_diff(buf, len);
        disagreements += why != NULL;
        CHECK(why == NULL, "mutation %d (%zu bytes): %s: %.*s", i, len, why ? why : "", (int)len,
              buf);
    }
    free(buf);
    free(base);
}

int main(void)
{
    test_cases();
    test_duplicates();
    test_mutations();
    printf("test_jparse: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
