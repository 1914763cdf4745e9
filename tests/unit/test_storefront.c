/*
 * test_storefront.c - unit tests of the storefront edit logic (storefront.h).
 *
 * Every rule of PROTOCOL.md "Operations" and of the storefront contract gets a
 * direct test, and a seeded random sequence of ops is checked step by step
 * against a small independent model of the draft (section ids per page), so
 * rules that interact (id generation after removals, moves to new pages,
 * publish/discard) are exercised far beyond the hand-written cases.
 *
 * Every failed check prints file:line and what differed; the program exits
 * non-zero if any check failed.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "storefront.h"

/* ---- helpers ---- */

/* Parse JSON written with ' for " (keeps the C strings readable).  Aborts on
 * a syntax error: that is a bug in the test itself. */
static json_t *J(const char *text)
{
    size_t n = strlen(text);
    char *buf = malloc(n + 1);
    if (buf == NULL)
        abort();
    for (size_t i = 0; i <= n; i++)
        buf[i] = text[i] == '\'' ? '"' : text[i];
    json_error_t e;
    json_t *v = json_loads(buf, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (v == NULL) {
        fprintf(stderr, "test bug: bad JSON %s: %s\n", buf, e.text);
        abort();
    }
    free(buf);
    return v;
}

static char *dump(const json_t *v)
{
    if (v == NULL)
        return strdup("(null)");
    return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

static bool same(const json_t *a, const json_t *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return json_equal(a, b);
}

/* A deep copy of a state, to prove later that a failed op changed nothing. */
static sf_state snapshot(const sf_state *st)
{
    sf_state c = {.version = st->version};
    c.draft = st->draft != NULL ? json_deep_copy(st->draft) : NULL;
    c.published = st->published != NULL ? json_deep_copy(st->published) : NULL;
    return c;
}

static bool state_equal(const sf_state *a, const sf_state *b)
{
    return a->version == b->version && same(a->draft, b->draft) &&
           same(a->published, b->published);
}

static void set_draft(sf_state *st, const char *text)
{
    json_decref(st->draft);
    st->draft = J(text);
    st->size_ub = 0;
}

/* Apply op with args given as text (NULL = no args). */
static int apply_t(sf_state *st, sf_op op, const char *args, size_t max, json_t **res,
                   tq_error *err)
{
    json_t *a = args != NULL ? J(args) : NULL;
    memset(err, 0, sizeof *err);
    int rc = sf_apply(st, op, a, max, res, err);
    json_decref(a);
    return rc;
}

/* Expect success with exactly this result; a mutating op must bump the
 * version by one and leave it alone otherwise. */
static void ok_at(int line, sf_state *st, sf_op op, const char *args, size_t max,
                  const char *want)
{
    json_t *res = json_null(); /* must be overwritten */
    tq_error err;
    int64_t v0 = st->version;
    int rc = apply_t(st, op, args, max, &res, &err);
    if (rc != 0) {
        failures++;
        fprintf(stderr, "%s:%d: FAIL: %s %s: expected ok, got %s: %s\n", __FILE__, line,
                sf_op_name(op), args ? args : "", tq_code_name(err.code), err.message);
        return;
    }
    json_t *w = J(want);
    checks++;
    if (!same(res, w)) {
        char *g = dump(res), *e = dump(w);
        failures++;
        fprintf(stderr, "%s:%d: FAIL: %s %s: result %s, expected %s\n", __FILE__, line,
                sf_op_name(op), args ? args : "", g, e);
        free(g);
        free(e);
    }
    int64_t want_v = v0 + (sf_op_mutates(op) ? 1 : 0);
    checks++;
    if (st->version != want_v) {
        failures++;
        fprintf(stderr, "%s:%d: FAIL: version %" PRId64 ", expected %" PRId64 "\n", __FILE__,
                line, st->version, want_v);
    }
    json_decref(w);
    json_decref(res);
}
#define OK(st, op, args, want) ok_at(__LINE__, st, op, args, 0, want)
#define OK_MAX(st, op, args, max, want) ok_at(__LINE__, st, op, args, max, want)

/* Expect failure with this code and a message containing msg (exactly equal
 * if exact); st must be exactly unchanged and *result NULL. */
static void fail_at(int line, sf_state *st, sf_op op, const char *args, size_t max,
                    tq_code code, const char *msg, bool exact)
{
    sf_state before = snapshot(st);
    json_t *res = json_null(); /* must be overwritten */
    tq_error err;
    int rc = apply_t(st, op, args, max, &res, &err);
    checks++;
    if (rc != -1 || err.code != code || res != NULL ||
        (exact ? strcmp(err.message, msg) != 0 : strstr(err.message, msg) == NULL)) {
        failures++;
        fprintf(stderr,
                "%s:%d: FAIL: %s %s: got rc=%d %s \"%s\" result=%s, expected %s %s\"%s\"\n",
                __FILE__, line, sf_op_name(op), args ? args : "", rc, tq_code_name(err.code),
                err.message, res == NULL ? "NULL" : "set", tq_code_name(code),
                exact ? "" : "containing ", msg);
        if (rc == 0)
            json_decref(res);
    }
    checks++;
    if (!state_equal(st, &before)) {
        char *g = dump(st->draft), *e = dump(before.draft);
        failures++;
        fprintf(stderr, "%s:%d: FAIL: failed op changed the state: draft %s, was %s\n",
                __FILE__, line, g, e);
        free(g);
        free(e);
    }
    sf_state_clear(&before);
}
#define FAIL(st, op, args, code, msg) fail_at(__LINE__, st, op, args, 0, code, msg, false)
#define FAIL_EXACT(st, op, args, code, msg) fail_at(__LINE__, st, op, args, 0, code, msg, true)
#define FAIL_MAX(st, op, args, max, code, msg) fail_at(__LINE__, st, op, args, max, code, msg, false)

static void draft_is_at(int line, const sf_state *st, const char *want)
{
    json_t *w = J(want);
    checks++;
    if (!same(st->draft, w)) {
        char *g = dump(st->draft), *e = dump(w);
        failures++;
        fprintf(stderr, "%s:%d: FAIL: draft %s, expected %s\n", __FILE__, line, g, e);
        free(g);
        free(e);
    }
    json_decref(w);
}
#define DRAFT_IS(st, want) draft_is_at(__LINE__, st, want)

/* sf_validate_args alone: rc and message */
static void args_at(int line, sf_op op, const char *args, const char *msg)
{
    json_t *a = args != NULL ? J(args) : NULL;
    tq_error err;
    memset(&err, 0, sizeof err);
    int rc = sf_validate_args(op, a, &err);
    checks++;
    if (msg == NULL ? rc != 0
                    : (rc != -1 || err.code != TQ_E_INVALID_ARGUMENT ||
                       strstr(err.message, msg) == NULL)) {
        failures++;
        fprintf(stderr, "%s:%d: FAIL: validate %s %s: rc=%d %s \"%s\", expected %s%s\n",
                __FILE__, line, sf_op_name(op), args ? args : "(null)", rc,
                tq_code_name(err.code), err.message, msg ? "INVALID_ARGUMENT containing " : "ok",
                msg ? msg : "");
    }
    json_decref(a);
}
#define ARGS_OK(op, args) args_at(__LINE__, op, args, NULL)
#define ARGS_BAD(op, args, msg) args_at(__LINE__, op, args, msg)

static void fresh(sf_state *st)
{
    sf_state_init_empty(st);
}

/* ---- op table ---- */

static void test_ops(void)
{
    static const struct {
        const char *name;
        sf_op op;
        bool mutates, db;
    } t[] = {
        {"ping", SF_OP_PING, false, false},
        {"section.upsert", SF_OP_SECTION_UPSERT, true, true},
        {"section.remove", SF_OP_SECTION_REMOVE, true, true},
        {"section.move", SF_OP_SECTION_MOVE, true, true},
        {"draft.get", SF_OP_DRAFT_GET, false, true},
        {"draft.publish", SF_OP_DRAFT_PUBLISH, true, true},
        {"draft.discard", SF_OP_DRAFT_DISCARD, true, true},
        {"draft.check", SF_OP_DRAFT_CHECK, false, true},
        {"draft.repair", SF_OP_DRAFT_REPAIR, true, true},
    };
    CHECK(sizeof t / sizeof t[0] == SF_OP__COUNT, "table covers every op");
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        sf_op op = SF_OP__COUNT;
        CHECK(sf_op_lookup(t[i].name, strlen(t[i].name), &op) && op == t[i].op, "%s", t[i].name);
        CHECK(strcmp(sf_op_name(t[i].op), t[i].name) == 0, "%s", t[i].name);
        CHECK(sf_op_mutates(t[i].op) == t[i].mutates, "%s", t[i].name);
        CHECK(sf_op_needs_db(t[i].op) == t[i].db, "%s", t[i].name);
    }
    static const char *const bad[] = {"", "pin", "pingg", "PING", "Ping", "section",
                                      "section.", "draft.get ", "section_upsert", "draft"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sf_op op = SF_OP__COUNT;
        CHECK(!sf_op_lookup(bad[i], strlen(bad[i]), &op), "\"%s\" is unknown", bad[i]);
        CHECK(op == SF_OP__COUNT, "out untouched for \"%s\"", bad[i]);
    }
    /* the length counts, not a NUL */
    sf_op op;
    CHECK(!sf_op_lookup("ping\0", 5, &op), "embedded NUL");
    CHECK(sf_op_lookup("pingXYZ", 4, &op) && op == SF_OP_PING, "prefix by length");
    CHECK(!sf_op_lookup("draft.ge", 8, &op), "truncated name");
    CHECK(!sf_op_mutates(SF_OP__COUNT) && !sf_op_needs_db(SF_OP__COUNT), "out of range op");
    CHECK(sf_op_name(SF_OP__COUNT) != NULL, "name of out-of-range op is not NULL");
    /* an op value outside the enum is refused, not trusted */
    sf_state st;
    fresh(&st);
    json_t *res = json_null();
    tq_error err;
    CHECK(sf_validate_args(SF_OP__COUNT, NULL, &err) == -1 && err.code == TQ_E_INVALID_ARGUMENT,
          "validate unknown op");
    CHECK(sf_apply(&st, SF_OP__COUNT, NULL, 0, &res, &err) == -1 && res == NULL &&
              st.version == 0,
          "apply unknown op");
    CHECK(sf_apply(&st, SF_OP_PING, NULL, 0, NULL, &err) == -1 && err.code == TQ_E_INTERNAL,
          "no result pointer");
    sf_state_clear(&st);
}

/* ---- names ---- */

static void test_names(void)
{
    char n64[65], n65[66];
    memset(n64, 'a', 64);
    n64[64] = '\0';
    memset(n65, 'b', 65);
    n65[65] = '\0';
    static const char *const good[] = {"a", "0", "home", "a-b", "a1-2b-c3", "123", "x-1-2-3"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(sf_valid_name(good[i], strlen(good[i])), "\"%s\" is valid", good[i]);
    CHECK(sf_valid_name(n64, 64), "64 bytes");
    static const char *const bad[] = {"", "-", "A", "Home", "hoMe", "-a", "a-", "a--b", "a_b",
                                      "a b", "a.b", "caf\xc3\xa9", "a/b", "--", "a\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!sf_valid_name(bad[i], strlen(bad[i])), "\"%s\" is invalid", bad[i]);
    CHECK(!sf_valid_name(n65, 65), "65 bytes");
    CHECK(!sf_valid_name("ab\0c", 4), "embedded NUL");
    CHECK(sf_valid_name("ab\0c", 2), "length, not NUL, ends the name");
    CHECK(!sf_valid_name(NULL, 0), "NULL");
}

/* ---- sf_validate_args ---- */

static void test_validate_args(void)
{
    char buf[512];
    const char *rule = "must match ^[a-z0-9]+(-[a-z0-9]+)*$ (at most 64 bytes)";
    char n64[65], n65[66];
    memset(n64, 'a', 64);
    n64[64] = '\0';
    memset(n65, 'b', 65);
    n65[65] = '\0';

    /* no-arg ops */
    static const sf_op noargs[] = {SF_OP_PING, SF_OP_DRAFT_GET, SF_OP_DRAFT_PUBLISH,
                                   SF_OP_DRAFT_DISCARD};
    for (size_t i = 0; i < 4; i++) {
        ARGS_OK(noargs[i], "{}");
        ARGS_OK(noargs[i], NULL);
        ARGS_BAD(noargs[i], "{'x':1}", "args.x: unknown argument");
        ARGS_BAD(noargs[i], "{'page':'home'}", "args.page: unknown argument");
        ARGS_BAD(noargs[i], "[]", "args: must be an object");
        ARGS_BAD(noargs[i], "null", "args: must be an object");
        ARGS_BAD(noargs[i], "'x'", "args: must be an object");
    }

    /* section.upsert */
    const sf_op U = SF_OP_SECTION_UPSERT;
    ARGS_OK(U, "{'page':'home','section':{'type':'hero'}}");
    ARGS_OK(U, "{'page':'home','section':{'type':'hero','id':'h-1'},'index':0}");
    ARGS_OK(U, "{'page':'home','section':{'type':'hero','x':[1,{'y':null}],'z':1.5},'index':7}");
    {
        /* depth limit: the section object is level 1, each array one more;
         * 26 levels pass, 27 fail */
        char deep[512];
        for (int levels = 26; levels <= 27; levels++) {
            int n = snprintf(deep, sizeof deep, "{'page':'home','section':{'type':'hero','x':");
            for (int k = 1; k < levels; k++)
                n += snprintf(deep + n, sizeof deep - (size_t)n, "[");
            n += snprintf(deep + n, sizeof deep - (size_t)n, "1");
            for (int k = 1; k < levels; k++)
                n += snprintf(deep + n, sizeof deep - (size_t)n, "]");
            snprintf(deep + n, sizeof deep - (size_t)n, "}}");
            if (levels == 26)
                ARGS_OK(U, deep);
            else
                ARGS_BAD(U, deep, "args.section: nested deeper than 26 levels");
        }
    }
    ARGS_OK(U, "{'page':'home','section':{'type':'hero','n':9.2e18,'m':[-9.2e18,1.5]}}");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero','n':1e19}}", "args.section: holds a number");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero','n':{'x':[-1e300]}}}",
             "args.section: holds a number");
    ARGS_BAD(U, "{}", "args.page: required");
    ARGS_BAD(U, NULL, "args.page: required");
    ARGS_BAD(U, "{'section':{'type':'hero'}}", "args.page: required");
    ARGS_BAD(U, "{'page':'home'}", "args.section: required");
    ARGS_BAD(U, "{'page':1,'section':{'type':'hero'}}", "args.page: must be a string");
    ARGS_BAD(U, "{'page':null,'section':{'type':'hero'}}", "args.page: must be a string");
    ARGS_BAD(U, "{'page':'Home','section':{'type':'hero'}}", "args.page: must match");
    ARGS_BAD(U, "{'page':'','section':{'type':'hero'}}", "args.page: must match");
    ARGS_BAD(U, "{'page':'home','section':[]}", "args.section: must be an object");
    ARGS_BAD(U, "{'page':'home','section':'hero'}", "args.section: must be an object");
    ARGS_BAD(U, "{'page':'home','section':{}}", "args.section.type: required");
    ARGS_BAD(U, "{'page':'home','section':{'id':'a'}}", "args.section.type: required");
    ARGS_BAD(U, "{'page':'home','section':{'type':3}}", "args.section.type: must be a string");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero','id':3}}",
             "args.section.id: must be a string");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero','id':null}}",
             "args.section.id: must be a string");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero','id':''}}", "args.section.id: must match");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'index':-1}",
             "args.index: must be an integer >= 0");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'index':1.0}",
             "args.index: must be an integer >= 0");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'index':true}",
             "args.index: must be an integer >= 0");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'index':'1'}",
             "args.index: must be an integer >= 0");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'index':null}",
             "args.index: must be an integer >= 0");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'idx':1}", "args.idx: unknown argument");
    ARGS_BAD(U, "{'page':'home','section':{'type':'hero'},'id':'a'}", "args.id: unknown argument");
    /* the exact message of the name rule */
    {
        json_t *a = J("{'page':'home','section':{'type':'Hero'}}");
        tq_error err;
        CHECK(sf_validate_args(U, a, &err) == -1, "bad type");
        snprintf(buf, sizeof buf, "args.section.type: %s", rule);
        CHECK(err.code == TQ_E_INVALID_ARGUMENT && strcmp(err.message, buf) == 0, "message \"%s\"",
              err.message);
        json_decref(a);
    }
    /* every malformed name, in each name field */
    static const char *const badnames[] = {"Hero", "HERO", "-hero", "hero-", "he--ro", "he_ro",
                                           "he ro", "", "h\xc3\xa9ro", "-"};
    for (size_t i = 0; i < sizeof badnames / sizeof badnames[0]; i++) {
        snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'hero'}}", badnames[i]);
        ARGS_BAD(U, buf, "args.page: must match");
        snprintf(buf, sizeof buf, "{'page':'home','section':{'type':'%s'}}", badnames[i]);
        ARGS_BAD(U, buf, "args.section.type: must match");
        snprintf(buf, sizeof buf, "{'page':'home','section':{'type':'hero','id':'%s'}}",
                 badnames[i]);
        ARGS_BAD(U, buf, "args.section.id: must match");
        snprintf(buf, sizeof buf, "{'id':'%s'}", badnames[i]);
        ARGS_BAD(SF_OP_SECTION_REMOVE, buf, "args.id: must match");
        snprintf(buf, sizeof buf, "{'id':'%s','page':'home','index':0}", badnames[i]);
        ARGS_BAD(SF_OP_SECTION_MOVE, buf, "args.id: must match");
        snprintf(buf, sizeof buf, "{'id':'a','page':'%s','index':0}", badnames[i]);
        ARGS_BAD(SF_OP_SECTION_MOVE, buf, "args.page: must match");
    }
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'%s','id':'%s'}}", n64, n64, n64);
    ARGS_OK(U, buf);
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'hero'}}", n65);
    ARGS_BAD(U, buf, "args.page: must match");
    snprintf(buf, sizeof buf, "{'page':'home','section':{'type':'%s'}}", n65);
    ARGS_BAD(U, buf, "args.section.type: must match");
    snprintf(buf, sizeof buf, "{'page':'home','section':{'type':'hero','id':'%s'}}", n65);
    ARGS_BAD(U, buf, "args.section.id: must match");
    /* a NUL inside a JSON string does not end the name early */
    ARGS_BAD(U, "{'page':'ho\\u0000me','section':{'type':'hero'}}", "args.page: must match");

    /* section.remove */
    const sf_op R = SF_OP_SECTION_REMOVE;
    ARGS_OK(R, "{'id':'a-1'}");
    ARGS_BAD(R, "{}", "args.id: required");
    ARGS_BAD(R, NULL, "args.id: required");
    ARGS_BAD(R, "{'id':1}", "args.id: must be a string");
    ARGS_BAD(R, "{'id':'a','page':'home'}", "args.page: unknown argument");
    snprintf(buf, sizeof buf, "{'id':'%s'}", n64);
    ARGS_OK(R, buf);
    snprintf(buf, sizeof buf, "{'id':'%s'}", n65);
    ARGS_BAD(R, buf, "args.id: must match");

    /* section.move */
    const sf_op M = SF_OP_SECTION_MOVE;
    ARGS_OK(M, "{'id':'a','page':'home','index':0}");
    ARGS_OK(M, "{'id':'a','page':'home','index':12345}");
    ARGS_BAD(M, "{'page':'home','index':0}", "args.id: required");
    ARGS_BAD(M, "{'id':'a','index':0}", "args.page: required");
    ARGS_BAD(M, "{'id':'a','page':'home'}", "args.index: required");
    ARGS_BAD(M, "{'id':'a','page':'home','index':-3}", "args.index: must be an integer >= 0");
    ARGS_BAD(M, "{'id':'a','page':'home','index':0.5}", "args.index: must be an integer >= 0");
    ARGS_BAD(M, "{'id':'a','page':'home','index':false}", "args.index: must be an integer >= 0");
    ARGS_BAD(M, "{'id':'a','page':7,'index':0}", "args.page: must be a string");
    ARGS_BAD(M, "{'id':'a','page':'home','index':0,'section':{}}",
             "args.section: unknown argument");
    ARGS_BAD(M, "[1]", "args: must be an object");

    /* sf_apply rejects the same things itself, leaving st alone */
    sf_state st;
    fresh(&st);
    FAIL(&st, U, "{'page':'home','section':{'type':'hero'},'index':-1}", TQ_E_INVALID_ARGUMENT,
         "args.index");
    FAIL(&st, SF_OP_PING, "{'a':1}", TQ_E_INVALID_ARGUMENT, "args.a");
    FAIL(&st, R, "{}", TQ_E_INVALID_ARGUMENT, "args.id: required");
    CHECK(st.version == 0, "no version change");
    sf_state_clear(&st);
}

/* ---- section.upsert ---- */

static void test_upsert_basic(void)
{
    sf_state st;
    fresh(&st);
    const sf_op U = SF_OP_SECTION_UPSERT;

    /* append to an absent page: created, id generated */
    OK(&st, U, "{'page':'home','section':{'type':'hero','headline':'Hi'}}",
       "{'id':'home-hero-main','page':'home','index':0,'created':true,'version':1}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'home-hero-main','type':'hero',"
                  "'headline':'Hi'}]}}}");
    /* index == length appends too */
    OK(&st, U, "{'page':'home','section':{'type':'text','id':'t1'},'index':1}",
       "{'id':'t1','page':'home','index':1,'created':true,'version':2}");
    /* index > length */
    FAIL_EXACT(&st, U, "{'page':'home','section':{'type':'text'},'index':3}",
               TQ_E_INVALID_ARGUMENT, "args.index: 3 is out of range for page \"home\" (0..2)");
    FAIL_EXACT(&st, U, "{'page':'home','section':{'type':'text'},'index':9223372036854775807}",
               TQ_E_INVALID_ARGUMENT,
               "args.index: 9223372036854775807 is out of range for page \"home\" (0..2)");
    /* absent page: only 0 is in range */
    FAIL_EXACT(&st, U, "{'page':'about','section':{'type':'text'},'index':1}",
               TQ_E_INVALID_ARGUMENT, "args.index: 1 is out of range for page \"about\" (0..0)");
    OK(&st, U, "{'page':'about','section':{'type':'text'},'index':0}",
       "{'id':'about-text-main','page':'about','index':0,'created':true,'version':3}");

    /* replace without id: keeps the old id, other fields replaced wholesale */
    OK(&st, U, "{'page':'home','section':{'type':'banner','color':'red'},'index':0}",
       "{'id':'home-hero-main','page':'home','index':0,'created':false,'version':4}");
    /* replace with a new id */
    OK(&st, U, "{'page':'home','section':{'type':'text','id':'t2','body':'x'},'index':1}",
       "{'id':'t2','page':'home','index':1,'created':false,'version':5}");
    /* replace with its own id */
    OK(&st, U, "{'page':'home','section':{'type':'text','id':'t2','body':'y'},'index':1}",
       "{'id':'t2','page':'home','index':1,'created':false,'version':6}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'home-hero-main','type':'banner',"
                  "'color':'red'},{'id':'t2','type':'text','body':'y'}]},"
                  "'about':{'sections':[{'id':'about-text-main','type':'text'}]}}}");

    /* duplicates: same page (append and replace), other page */
    FAIL_EXACT(&st, U, "{'page':'home','section':{'type':'text','id':'t2'}}",
               TQ_E_DUPLICATE_SECTION_ID,
               "section id \"t2\" already exists on page \"home\" at index 1");
    FAIL_EXACT(&st, U, "{'page':'home','section':{'type':'text','id':'t2'},'index':0}",
               TQ_E_DUPLICATE_SECTION_ID,
               "section id \"t2\" already exists on page \"home\" at index 1");
    FAIL_EXACT(&st, U, "{'page':'about','section':{'type':'text','id':'home-hero-main'}}",
               TQ_E_DUPLICATE_SECTION_ID,
               "section id \"home-hero-main\" already exists on page \"home\" at index 0");
    FAIL_EXACT(&st, U,
               "{'page':'about','section':{'type':'text','id':'home-hero-main'},'index':0}",
               TQ_E_DUPLICATE_SECTION_ID,
               "section id \"home-hero-main\" already exists on page \"home\" at index 0");
    FAIL_EXACT(&st, U, "{'page':'new','section':{'type':'text','id':'about-text-main'}}",
               TQ_E_DUPLICATE_SECTION_ID,
               "section id \"about-text-main\" already exists on page \"about\" at index 0");
    /* the failed append to page "new" did not create it */
    CHECK(json_object_get(json_object_get(st.draft, "pages"), "new") == NULL, "no page \"new\"");
    CHECK(st.version == 6, "version %" PRId64, st.version);

    /* args are left as they were (the new section's id goes to the stored
     * copy only), and the stored section is an object of its own: changing
     * the args' section object afterwards does not reach it */
    json_t *args = J("{'page':'home','section':{'type':'faq','items':[1,2]}}");
    char *args_before = dump(args);
    json_t *res = NULL;
    tq_error err;
    CHECK(sf_apply(&st, U, args, 0, &res, &err) == 0, "%s", err.message);
    char *args_after = dump(args);
    CHECK(strcmp(args_before, args_after) == 0, "args changed: %s -> %s", args_before,
          args_after);
    free(args_before);
    free(args_after);
    json_object_set_new(json_object_get(args, "section"), "type", json_string("zzz"));
    json_object_set_new(json_object_get(args, "section"), "extra", json_true());
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'home-hero-main','type':'banner',"
                  "'color':'red'},{'id':'t2','type':'text','body':'y'},"
                  "{'id':'home-faq-main','type':'faq','items':[1,2]}]},"
                  "'about':{'sections':[{'id':'about-text-main','type':'text'}]}}}");
    json_decref(args);
    json_decref(res);
    sf_state_clear(&st);
}

static void test_upsert_generated_ids(void)
{
    sf_state st;
    fresh(&st);
    const sf_op U = SF_OP_SECTION_UPSERT;
    const char *add = "{'page':'home','section':{'type':'hero'}}";
    OK(&st, U, add, "{'id':'home-hero-main','page':'home','index':0,'created':true,'version':1}");
    OK(&st, U, add, "{'id':'home-hero-2','page':'home','index':1,'created':true,'version':2}");
    OK(&st, U, add, "{'id':'home-hero-3','page':'home','index':2,'created':true,'version':3}");
    OK(&st, U, add, "{'id':'home-hero-4','page':'home','index':3,'created':true,'version':4}");
    /* gaps: the first free one is taken */
    OK(&st, SF_OP_SECTION_REMOVE, "{'id':'home-hero-3'}", "{'page':'home','index':2,'version':5}");
    OK(&st, SF_OP_SECTION_REMOVE, "{'id':'home-hero-main'}",
       "{'page':'home','index':0,'version':6}");
    OK(&st, U, add, "{'id':'home-hero-main','page':'home','index':2,'created':true,'version':7}");
    OK(&st, U, add, "{'id':'home-hero-3','page':'home','index':3,'created':true,'version':8}");
    OK(&st, U, add, "{'id':'home-hero-5','page':'home','index':4,'created':true,'version':9}");
    /* ids on other pages count (unique across the draft) */
    sf_state_clear(&st);
    fresh(&st);
    /* ...and only canonical numbers: "-02" and "-3a" are not "-2" and "-3" */
    set_draft(&st, "{'pages':{'other':{'sections':[{'id':'home-hero-main'},{'id':'home-hero-02'},"
                   "{'id':'home-hero-x'},{'id':'home-hero-3a'},{'id':'home-hero-3'}]}}}");
    OK(&st, U, add, "{'id':'home-hero-2','page':'home','index':0,'created':true,'version':1}");
    OK(&st, SF_OP_SECTION_REMOVE, "{'id':'home-hero-2'}", "{'page':'home','index':0,'version':2}");
    set_draft(&st, "{'pages':{'other':{'sections':[{'id':'home-hero-main'},{'id':'home-hero-2'},"
                   "{'id':'home-hero-02'},{'id':'home-hero-x'},{'id':'home-hero-3a'}]}}}");
    st.version = 0;
    OK(&st, U, add, "{'id':'home-hero-3','page':'home','index':0,'created':true,'version':1}");
    /* "-main" is matched exactly */
    set_draft(&st, "{'pages':{'other':{'sections':[{'id':'home-hero-maix'},{'id':'home-hero-mai'},"
                   "{'id':'home-hero-mainn'},{'id':'home-hero-2'}]}}}");
    st.version = 0;
    OK(&st, U, add, "{'id':'home-hero-main','page':'home','index':0,'created':true,'version':1}");
    /* generation uses page AND type */
    OK(&st, U, "{'page':'home','section':{'type':'text'}}",
       "{'id':'home-text-main','page':'home','index':1,'created':true,'version':2}");
    OK(&st, U, "{'page':'home-hero','section':{'type':'x'}}",
       "{'id':'home-hero-x-main','page':'home-hero','index':0,'created':true,'version':3}");
    /* an explicit id in the generated pattern is taken into account */
    OK(&st, U, "{'page':'p','section':{'type':'t','id':'p-t-2'}}",
       "{'id':'p-t-2','page':'p','index':0,'created':true,'version':4}");
    OK(&st, U, "{'page':'p','section':{'type':'t'}}",
       "{'id':'p-t-main','page':'p','index':1,'created':true,'version':5}");
    OK(&st, U, "{'page':'p','section':{'type':'t'}}",
       "{'id':'p-t-3','page':'p','index':2,'created':true,'version':6}");

    /* generated id longer than 64 bytes: explicit id needed */
    char page[65], buf[512];
    memset(page, 'p', 58);
    page[57] = '\0'; /* 57 + "-ab-" + "main" = 65 */
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'ab'}}", page);
    FAIL(&st, U, buf, TQ_E_INVALID_ARGUMENT, "explicit id");
    FAIL(&st, U, buf, TQ_E_INVALID_ARGUMENT, "args.section.id");
    char want[512];
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'ab','id':'ok-id'}}", page);
    snprintf(want, sizeof want, "{'id':'ok-id','page':'%s','index':0,'created':true,'version':7}",
             page);
    OK(&st, U, buf, want);
    /* exactly 64 bytes is fine: 56 + "-ab-" + "main" */
    page[56] = '\0';
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'ab'}}", page);
    {
        json_t *res = NULL;
        tq_error err;
        CHECK(apply_t(&st, U, buf, 0, &res, &err) == 0, "%s", err.message);
        const char *id = json_string_value(json_object_get(res, "id"));
        CHECK(id != NULL && strlen(id) == 64 && sf_valid_name(id, 64), "id %s", id ? id : "-");
        json_decref(res);
        /* the next one is "-2" (61 bytes) */
        CHECK(apply_t(&st, U, buf, 0, &res, &err) == 0, "%s", err.message);
        id = json_string_value(json_object_get(res, "id"));
        CHECK(id != NULL && strlen(id) == 61 && id[60] == '2' && id[59] == '-', "id %s",
              id ? id : "-");
        json_decref(res);
    }
    /* replacing never generates, so a long page/type is fine there */
    memset(page, 'q', 64);
    page[64] = '\0';
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'t','id':'q1'}}", page);
    snprintf(want, sizeof want, "{'id':'q1','page':'%s','index':0,'created':true,'version':10}",
             page);
    OK(&st, U, buf, want);
    snprintf(buf, sizeof buf, "{'page':'%s','section':{'type':'%s'},'index':0}", page, page);
    snprintf(want, sizeof want, "{'id':'q1','page':'%s','index':0,'created':false,'version':11}",
             page);
    OK(&st, U, buf, want);
    sf_state_clear(&st);
}

/* ---- remove / move ---- */

static const char *const ABC =
    "{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'b','type':'t'},"
    "{'id':'c','type':'t'}]},'about':{'sections':[{'id':'x','type':'t'}]}}}";

static void test_remove(void)
{
    sf_state st;
    fresh(&st);
    set_draft(&st, ABC);
    const sf_op R = SF_OP_SECTION_REMOVE;
    OK(&st, R, "{'id':'b'}", "{'page':'home','index':1,'version':1}"); /* middle */
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'c','type':'t'}]},"
                  "'about':{'sections':[{'id':'x','type':'t'}]}}}");
    OK(&st, R, "{'id':'c'}", "{'page':'home','index':1,'version':2}"); /* last */
    FAIL_EXACT(&st, R, "{'id':'c'}", TQ_E_NOT_FOUND, "section \"c\" not found in the draft");
    FAIL_EXACT(&st, R, "{'id':'home'}", TQ_E_NOT_FOUND, "section \"home\" not found in the draft");
    set_draft(&st, ABC);
    OK(&st, R, "{'id':'a'}", "{'page':'home','index':0,'version':3}"); /* first */
    OK(&st, R, "{'id':'x'}", "{'page':'about','index':0,'version':4}");
    /* the emptied page stays */
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'b','type':'t'},{'id':'c','type':'t'}]},"
                  "'about':{'sections':[]}}}");
    /* nothing there at all */
    sf_state_clear(&st);
    fresh(&st);
    FAIL(&st, R, "{'id':'a'}", TQ_E_NOT_FOUND, "\"a\"");
    set_draft(&st, "{}");
    FAIL(&st, R, "{'id':'a'}", TQ_E_NOT_FOUND, "\"a\"");
    set_draft(&st, "{'pages':{'p':{}}}");
    FAIL(&st, R, "{'id':'a'}", TQ_E_NOT_FOUND, "\"a\"");
    CHECK(st.version == 0, "version %" PRId64, st.version);
    sf_state_clear(&st);
}

static void test_move(void)
{
    sf_state st;
    fresh(&st);
    const sf_op M = SF_OP_SECTION_MOVE;
    set_draft(&st, ABC);
    /* forward within the page: positions count without the moved section */
    OK(&st, M, "{'id':'a','page':'home','index':2}", "{'page':'home','index':2,'version':1}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'b','type':'t'},{'id':'c','type':'t'},"
                  "{'id':'a','type':'t'}]},'about':{'sections':[{'id':'x','type':'t'}]}}}");
    /* backward */
    OK(&st, M, "{'id':'a','page':'home','index':0}", "{'page':'home','index':0,'version':2}");
    DRAFT_IS(&st, ABC);
    OK(&st, M, "{'id':'c','page':'home','index':1}", "{'page':'home','index':1,'version':3}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'c','type':'t'},"
                  "{'id':'b','type':'t'}]},'about':{'sections':[{'id':'x','type':'t'}]}}}");
    /* to the same position: succeeds, a committed change like any other */
    OK(&st, M, "{'id':'c','page':'home','index':1}", "{'page':'home','index':1,'version':4}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'c','type':'t'},"
                  "{'id':'b','type':'t'}]},'about':{'sections':[{'id':'x','type':'t'}]}}}");
    /* same page: len - 1 is the largest index */
    FAIL_EXACT(&st, M, "{'id':'a','page':'home','index':3}", TQ_E_INVALID_ARGUMENT,
               "args.index: 3 is out of range for page \"home\" (0..2)");
    /* across pages: 0..len of the target */
    FAIL_EXACT(&st, M, "{'id':'a','page':'about','index':2}", TQ_E_INVALID_ARGUMENT,
               "args.index: 2 is out of range for page \"about\" (0..1)");
    OK(&st, M, "{'id':'a','page':'about','index':1}", "{'page':'about','index':1,'version':5}");
    OK(&st, M, "{'id':'b','page':'about','index':0}", "{'page':'about','index':0,'version':6}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'c','type':'t'}]},"
                  "'about':{'sections':[{'id':'b','type':'t'},{'id':'x','type':'t'},"
                  "{'id':'a','type':'t'}]}}}");
    /* to a new page: created, only index 0 valid */
    FAIL_EXACT(&st, M, "{'id':'c','page':'shop','index':1}", TQ_E_INVALID_ARGUMENT,
               "args.index: 1 is out of range for page \"shop\" (0..0)");
    OK(&st, M, "{'id':'c','page':'shop','index':0}", "{'page':'shop','index':0,'version':7}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[]},'shop':{'sections':[{'id':'c','type':'t'}]},"
                  "'about':{'sections':[{'id':'b','type':'t'},{'id':'x','type':'t'},"
                  "{'id':'a','type':'t'}]}}}");
    /* sole section of a page onto itself */
    OK(&st, M, "{'id':'c','page':'shop','index':0}", "{'page':'shop','index':0,'version':8}");
    FAIL(&st, M, "{'id':'c','page':'shop','index':1}", TQ_E_INVALID_ARGUMENT, "(0..0)");
    FAIL_EXACT(&st, M, "{'id':'zz','page':'home','index':0}", TQ_E_NOT_FOUND,
               "section \"zz\" not found in the draft");
    /* moving keeps every field of the section */
    set_draft(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t','deep':{'k':[1,2.5,null]}}]}}}");
    OK(&st, M, "{'id':'a','page':'other','index':0}", "{'page':'other','index':0,'version':9}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[]},'other':{'sections':[{'id':'a','type':'t',"
                  "'deep':{'k':[1,2.5,null]}}]}}}");
    /* a target page object without "sections" gets one */
    set_draft(&st, "{'pages':{'home':{'sections':[{'id':'a'}]},'p2':{'title':'T'}}}");
    FAIL(&st, M, "{'id':'a','page':'p2','index':1}", TQ_E_INVALID_ARGUMENT, "(0..0)");
    OK(&st, M, "{'id':'a','page':'p2','index':0}", "{'page':'p2','index':0,'version':10}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[]},'p2':{'title':'T','sections':[{'id':'a'}]}}}");
    sf_state_clear(&st);
}

/* ---- get / ping / publish / discard / versions ---- */

static void test_draft_ops(void)
{
    sf_state st;
    fresh(&st);
    CHECK(st.version == 0 && st.published == NULL, "empty state");
    DRAFT_IS(&st, "{'pages':{}}");
    OK(&st, SF_OP_PING, NULL, "{'pong':true}");
    OK(&st, SF_OP_PING, "{}", "{'pong':true}");
    OK(&st, SF_OP_DRAFT_GET, NULL, "{'draft':{'pages':{}},'version':0}");
    /* discard with nothing published: empty draft */
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'hero'}}",
       "{'id':'home-hero-main','page':'home','index':0,'created':true,'version':1}");
    OK(&st, SF_OP_DRAFT_DISCARD, NULL, "{'version':2}");
    DRAFT_IS(&st, "{'pages':{}}");
    CHECK(st.published == NULL, "still never published");
    /* publish copies; later edits do not reach published */
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'hero','id':'h'}}",
       "{'id':'h','page':'home','index':0,'created':true,'version':3}");
    OK(&st, SF_OP_DRAFT_PUBLISH, "{}", "{'version':4}");
    CHECK(same(st.published, st.draft) && st.published != st.draft, "published is a copy");
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'text','id':'t'}}",
       "{'id':'t','page':'home','index':1,'created':true,'version':5}");
    json_t *pub = J("{'pages':{'home':{'sections':[{'id':'h','type':'hero'}]}}}");
    CHECK(same(st.published, pub), "published unchanged by later edits");
    /* get returns a copy taken now */
    json_t *res = NULL;
    tq_error err;
    CHECK(apply_t(&st, SF_OP_DRAFT_GET, NULL, 0, &res, &err) == 0, "%s", err.message);
    OK(&st, SF_OP_SECTION_REMOVE, "{'id':'h'}", "{'page':'home','index':0,'version':6}");
    json_t *want = J("{'draft':{'pages':{'home':{'sections':[{'id':'h','type':'hero'},"
                     "{'id':'t','type':'text'}]}}},'version':5}");
    CHECK(same(res, want), "get result is a snapshot");
    json_decref(want);
    json_decref(res);
    /* discard restores published (a copy) */
    OK(&st, SF_OP_DRAFT_DISCARD, NULL, "{'version':7}");
    CHECK(same(st.draft, pub) && st.draft != st.published, "draft := published");
    OK(&st, SF_OP_SECTION_REMOVE, "{'id':'h'}", "{'page':'home','index':0,'version':8}");
    CHECK(same(st.published, pub), "published unaffected by edits after discard");
    /* publish again replaces the published doc */
    OK(&st, SF_OP_DRAFT_PUBLISH, NULL, "{'version':9}");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[]}}}");
    CHECK(same(st.published, st.draft), "republished");
    OK(&st, SF_OP_DRAFT_GET, NULL, "{'draft':{'pages':{'home':{'sections':[]}}},'version':9}");
    OK(&st, SF_OP_PING, NULL, "{'pong':true}");
    CHECK(st.version == 9, "ping/get do not count: %" PRId64, st.version);
    json_decref(pub);
    sf_state_clear(&st);
    CHECK(st.draft == NULL && st.published == NULL, "cleared");
}

/* ---- unknown fields survive ---- */

static void test_preserve(void)
{
    sf_state st;
    fresh(&st);
    set_draft(&st, "{'theme':{'c':'blue'},'pages':{'home':{'title':'Home','meta':[1],"
                   "'sections':[{'id':'a','type':'t','x':{'y':[true,null,1.25,'s']}}]},"
                   "'empty':{'note':1}},'rev':7}");
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t','z':1}}",
       "{'id':'home-t-main','page':'home','index':1,'created':true,'version':1}");
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'empty','section':{'type':'t','id':'e'}}",
       "{'id':'e','page':'empty','index':0,'created':true,'version':2}");
    OK(&st, SF_OP_SECTION_MOVE, "{'id':'e','page':'home','index':0}",
       "{'page':'home','index':0,'version':3}");
    OK(&st, SF_OP_SECTION_REMOVE, "{'id':'e'}", "{'page':'home','index':0,'version':4}");
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t','q':2},'index':1}",
       "{'id':'home-t-main','page':'home','index':1,'created':false,'version':5}");
    DRAFT_IS(&st, "{'theme':{'c':'blue'},'pages':{'home':{'title':'Home','meta':[1],"
                  "'sections':[{'id':'a','type':'t','x':{'y':[true,null,1.25,'s']}},"
                  "{'id':'home-t-main','type':'t','q':2}]},"
                  "'empty':{'note':1,'sections':[]}},'rev':7}");
    OK(&st, SF_OP_DRAFT_PUBLISH, NULL, "{'version':6}");
    OK(&st, SF_OP_DRAFT_DISCARD, NULL, "{'version':7}");
    CHECK(json_integer_value(json_object_get(st.draft, "rev")) == 7, "top-level field kept");
    /* a draft without "pages" gets one on the first append */
    set_draft(&st, "{'keep':'me'}");
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t'}}",
       "{'id':'home-t-main','page':'home','index':0,'created':true,'version':8}");
    DRAFT_IS(&st, "{'keep':'me','pages':{'home':{'sections':[{'id':'home-t-main','type':'t'}]}}}");
    sf_state_clear(&st);
}

/* ---- DRAFT_TOO_LARGE ---- */

static size_t draft_size(const sf_state *st)
{
    return json_dumpb(st->draft, NULL, 0, JSON_COMPACT);
}

static void test_too_large(void)
{
    sf_state st;
    fresh(&st);
    set_draft(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'b','type':'t'}]},"
                   "'x':{'sections':[]}}}");
    OK(&st, SF_OP_DRAFT_PUBLISH, NULL, "{'version':1}");
    size_t now = draft_size(&st);
    /* the appended section adds exactly this much */
    const char *add = "{'page':'home','section':{'type':'t','id':'c'}}";
    size_t grow = strlen(",{'type':'t','id':'c'}");
    char want[64];
    snprintf(want, sizeof want, "max_draft_bytes = %zu", now + grow - 1);
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT, add, now + grow - 1, TQ_E_DRAFT_TOO_LARGE, want);
    snprintf(want, sizeof want, "%zu bytes", now + grow);
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT, add, now + grow - 1, TQ_E_DRAFT_TOO_LARGE, want);
    /* replacing with something bigger, creating a page, creating "pages" */
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT,
             "{'page':'home','section':{'type':'t','big':'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'},'index':0}",
             now + 10, TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT, "{'page':'newpage','section':{'type':'t'}}", now + 10,
             TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT, "{'page':'x','section':{'type':'t'}}", now + 5,
             TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    /* move to a new page grows the draft by the new page's key */
    FAIL_MAX(&st, SF_OP_SECTION_MOVE, "{'id':'a','page':'newpage','index':0}", now + 5,
             TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    FAIL_MAX(&st, SF_OP_SECTION_MOVE, "{'id':'a','page':'home','index':1}", now - 1,
             TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    /* a page object without sections that gets one, then fails */
    set_draft(&st, "{'pages':{'home':{'t':1}}}");
    now = draft_size(&st);
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t'}}", now + 3,
             TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    set_draft(&st, "{'other':1}");
    now = draft_size(&st);
    FAIL_MAX(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t'}}", now + 3,
             TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes");
    CHECK(st.version == 1, "no version change on DRAFT_TOO_LARGE: %" PRId64, st.version);

    /* exactly at the limit is allowed; 0 means unlimited */
    set_draft(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'b','type':'t'}]},"
                   "'x':{'sections':[]}}}");
    now = draft_size(&st);
    OK_MAX(&st, SF_OP_SECTION_UPSERT, add, now + grow,
           "{'id':'c','page':'home','index':2,'created':true,'version':2}");
    CHECK(draft_size(&st) == now + grow, "size arithmetic of the test: %zu", draft_size(&st));
    /* remove and discard are never refused for size (they are the way back
     * under a lowered limit); move within the same size is refused only if
     * the result is over */
    OK_MAX(&st, SF_OP_SECTION_REMOVE, "{'id':'c'}", 1, "{'page':'home','index':2,'version':3}");
    OK_MAX(&st, SF_OP_DRAFT_DISCARD, NULL, 1, "{'version':4}");
    OK_MAX(&st, SF_OP_DRAFT_PUBLISH, NULL, 1, "{'version':5}");
    OK_MAX(&st, SF_OP_DRAFT_GET, NULL, 1,
           "{'draft':{'pages':{'home':{'sections':[{'id':'a','type':'t'},{'id':'b','type':'t'}]},"
           "'x':{'sections':[]}}},'version':5}");
    OK_MAX(&st, SF_OP_SECTION_MOVE, "{'id':'a','page':'x','index':0}", draft_size(&st),
           "{'page':'x','index':0,'version':6}");
    OK(&st, SF_OP_SECTION_UPSERT,
       "{'page':'home','section':{'type':'t','big':'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'}}",
       "{'id':'home-t-main','page':'home','index':1,'created':true,'version':7}");
    sf_state_clear(&st);
}

/* ---- corrupt stored documents ---- */

static void test_corrupt(void)
{
    static const struct {
        const char *draft, *where;
    } bad[] = {
        {"[]", "draft: must be an object"},
        {"'x'", "draft: must be an object"},
        {"{'pages':[]}", "draft.pages: must be an object"},
        {"{'pages':null}", "draft.pages: must be an object"},
        {"{'pages':{'home':[]}}", "draft.pages.home: must be an object"},
        {"{'pages':{'home':{'sections':{}}}}", "draft.pages.home.sections: must be an array"},
        {"{'pages':{'home':{'sections':'a'}}}", "draft.pages.home.sections: must be an array"},
        {"{'pages':{'ok':{'sections':[]},'home':{'sections':[{'id':'q'},5]}}}",
         "the stored draft.pages.home.sections[1] is not an object"},
        {"{'pages':{'home':{'sections':[{'id':'q'},{'id':5}]}}}",
         "the stored draft.pages.home.sections[1] has no string id"},
        {"{'pages':{'home':{'sections':[{'type':'t'}]}}}",
         "the stored draft.pages.home.sections[0] has no string id"},
        {"{'pages':{'home':{'sections':[{'id':null}]}}}",
         "the stored draft.pages.home.sections[0] has no string id"},
    };
    static const struct {
        sf_op op;
        const char *args;
    } ops[] = {
        {SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t'}}"},
        {SF_OP_SECTION_UPSERT, "{'page':'new','section':{'type':'t','id':'n'}}"},
        {SF_OP_SECTION_UPSERT, "{'page':'new','section':{'type':'t','id':'q'}}"},
        {SF_OP_SECTION_UPSERT, "{'page':'zz','section':{'type':'t'},'index':0}"},
        {SF_OP_SECTION_REMOVE, "{'id':'q'}"},
        {SF_OP_SECTION_REMOVE, "{'id':'nothere'}"},
        {SF_OP_SECTION_MOVE, "{'id':'q','page':'home','index':0}"},
        {SF_OP_SECTION_MOVE, "{'id':'q','page':'zz','index':0}"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++) {
            sf_state st;
            fresh(&st);
            set_draft(&st, bad[i].draft);
            st.version = 3;
            fail_at(__LINE__, &st, ops[j].op, ops[j].args, 100000, TQ_E_INTERNAL, bad[i].where,
                    false);
            sf_state_clear(&st);
        }
    }
    /* no draft at all */
    sf_state st = {0};
    FAIL(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t'}}", TQ_E_INTERNAL,
         "draft");
    FAIL(&st, SF_OP_DRAFT_GET, NULL, TQ_E_INTERNAL, "draft");
    FAIL(&st, SF_OP_DRAFT_PUBLISH, NULL, TQ_E_INTERNAL, "draft");
    /* draft.get, publish and discard do not inspect the shape */
    fresh(&st);
    set_draft(&st, "{'pages':[]}");
    OK(&st, SF_OP_DRAFT_GET, NULL, "{'draft':{'pages':[]},'version':0}");
    OK(&st, SF_OP_DRAFT_DISCARD, NULL, "{'version':1}");
    DRAFT_IS(&st, "{'pages':{}}");
    sf_state_clear(&st);
}

/* ---- out of memory at every allocation: INTERNAL and nothing changed ---- */

static long alloc_budget = -1; /* allocations left before failing; -1 = no limit */

static void *budget_malloc(size_t n)
{
    if (alloc_budget == 0)
        return NULL;
    if (alloc_budget > 0)
        alloc_budget--;
    return malloc(n);
}

static void test_out_of_memory(void)
{
    static const struct {
        sf_op op;
        const char *args;
    } ops[] = {
        {SF_OP_SECTION_UPSERT, "{'page':'new','section':{'type':'t','x':[1,{'y':'z'}]}}"},
        {SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t'}}"},
        {SF_OP_SECTION_UPSERT, "{'page':'bare','section':{'type':'t'}}"},
        {SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'t','id':'n'},'index':0}"},
        {SF_OP_SECTION_MOVE, "{'id':'a','page':'new','index':0}"},
        {SF_OP_SECTION_MOVE, "{'id':'a','page':'bare','index':0}"},
        {SF_OP_SECTION_MOVE, "{'id':'a','page':'home','index':1}"},
        {SF_OP_SECTION_REMOVE, "{'id':'b'}"},
        {SF_OP_DRAFT_GET, NULL},
        {SF_OP_DRAFT_PUBLISH, NULL},
        {SF_OP_DRAFT_DISCARD, NULL},
        {SF_OP_PING, NULL},
    };
    json_set_alloc_funcs(budget_malloc, free);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        for (long budget = 0;; budget++) {
            sf_state st;
            fresh(&st);
            set_draft(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'t'},"
                           "{'id':'b','type':'t','home-t-main':1}]},'bare':{}}}");
            st.published = J("{'pages':{}}");
            sf_state before = snapshot(&st);
            json_t *args = ops[i].args != NULL ? J(ops[i].args) : NULL;
            json_t *res = json_null();
            tq_error err;
            alloc_budget = budget;
            int rc = sf_apply(&st, ops[i].op, args, 1000, &res, &err);
            alloc_budget = -1;
            if (rc != 0) {
                CHECK(err.code == TQ_E_INTERNAL && res == NULL && state_equal(&st, &before),
                      "%s %s, allocation %ld failing: %s \"%s\", state %s", sf_op_name(ops[i].op),
                      ops[i].args ? ops[i].args : "", budget, tq_code_name(err.code), err.message,
                      state_equal(&st, &before) ? "unchanged" : "CHANGED");
            } else {
                CHECK(st.version == before.version + (sf_op_mutates(ops[i].op) ? 1 : 0),
                      "%s version", sf_op_name(ops[i].op));
                json_decref(res);
            }
            json_decref(args);
            sf_state_clear(&before);
            sf_state_clear(&st);
            if (rc == 0 || budget > 1000) {
                /* every op allocates (at least its result): the first tries must fail */
                CHECK(rc == 0 && budget > 0, "%s: succeeded with budget %ld (rc %d)",
                      sf_op_name(ops[i].op), budget, rc);
                break;
            }
        }
    }
    json_set_alloc_funcs(malloc, free);
}

/* ---- repair: draft.check and draft.repair ---- */

/* The damaged draft of the repair tests: every problem kind, duplicates
 * within a page and across pages, a taken generated id. */
#define DAMAGED                                                                                \
    "{'pages':{'home':{'sections':[{'id':'a','type':'hero'},{'id':'a','type':'hero','x':1},"   \
    "{'type':'text'},{'id':'Bad','type':'hero'},{'id':'b','type':'Bad!'},{'id':7,'type':'t'}," \
    "3,{'id':null,'type':'hero'},{'id':'home-hero-main','type':'hero'}]},"                   \
    "'about':{'sections':[{'id':'a','type':'hero'}]},'x':{'sections':{}},'y':[]},'keep':[1]}"

/* Apply draft.check/draft.repair and return the result (NULL on error). */
static json_t *run_repair_op(sf_state *st, sf_op op, const char *args, size_t max)
{
    json_t *res = NULL;
    tq_error err;
    if (apply_t(st, op, args, max, &res, &err) != 0) {
        CHECK(0, "%s %s: %s %s", sf_op_name(op), args ? args : "", tq_code_name(err.code),
              err.message);
        return NULL;
    }
    return res;
}

/* The problems of a list as "kind@page/index,...", '-' for a null. */
static void kinds(const json_t *list, char *out, size_t size)
{
    size_t n = 0;
    out[0] = '\0';
    size_t i;
    const json_t *p;
    json_array_foreach(list, i, p) {
        const json_t *page = json_object_get(p, "page"), *ix = json_object_get(p, "index");
        char at[24] = "-";
        if (json_is_integer(ix))
            snprintf(at, sizeof at, "%" JSON_INTEGER_FORMAT, json_integer_value(ix));
        n += (size_t)snprintf(out + n, size - n, "%s%s@%s/%s", i ? "," : "",
                              json_string_value(json_object_get(p, "problem")),
                              json_is_string(page) ? json_string_value(page) : "-", at);
        if (n >= size)
            return;
    }
}

static bool ids_unique(const json_t *draft);

static void test_repair_check(void)
{
    sf_state st;
    fresh(&st);
    st.version = 4;
    set_draft(&st, DAMAGED);
    sf_state before = snapshot(&st);
    json_t *r = run_repair_op(&st, SF_OP_DRAFT_CHECK, NULL, 0);
    char got[1024];
    kinds(json_object_get(r, "problems"), got, sizeof got);
    CHECK(strcmp(got, "duplicate_id@home/1,missing_id@home/2,bad_id@home/3,bad_type@home/4,"
                      "bad_id@home/5,bad_shape@home/6,missing_id@home/7,duplicate_id@about/0,"
                      "bad_shape@x/-,bad_shape@y/-") == 0,
          "problems: %s", got);
    CHECK(json_integer_value(json_object_get(r, "version")) == 4 && state_equal(&st, &before),
          "check is read-only and reports the version");
    const json_t *dup = json_array_get(json_object_get(r, "problems"), 7);
    CHECK(strcmp(json_string_value(json_object_get(dup, "id")), "a") == 0 &&
              strstr(json_string_value(json_object_get(dup, "message")),
                     "first occurrence is on page \"home\" at index 0") != NULL,
          "a duplicate names its first occurrence");
    CHECK(json_object_get(json_array_get(json_object_get(r, "problems"), 1), "id") == NULL,
          "no id on a missing_id");
    CHECK(json_object_get(r, "omitted") == NULL, "nothing omitted");
    json_decref(r);

    /* whole-document shapes, and the checker on its own */
    static const char *const shapes[] = {"[1]", "'text'", "{'pages':[]}", "{'pages':3}"};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        json_t *d = J(shapes[i]);
        size_t omitted = 9;
        json_t *pbs = sf_check_draft(d, &omitted);
        kinds(pbs, got, sizeof got);
        CHECK(strcmp(got, "bad_shape@-/-") == 0 && omitted == 0, "%s: %s", shapes[i], got);
        json_decref(pbs);
        json_decref(d);
    }
    json_t *pbs = sf_check_draft(NULL, NULL);
    CHECK(json_array_size(pbs) == 0, "no draft: no problems");
    json_decref(pbs);
    json_t *d = J("{'other':1}");
    pbs = sf_check_draft(d, NULL);
    CHECK(pbs != NULL && json_array_size(pbs) == 0, "no pages: no problems");
    json_decref(pbs);
    json_decref(d);

    /* an id longer than the clip limit is clipped on a character boundary */
    char big[400];
    int n = snprintf(big, sizeof big, "{'pages':{'p':{'sections':[{'type':'t','id':'");
    for (int k = 0; k < 100; k++)
        n += snprintf(big + n, sizeof big - (size_t)n, "\xc3\xa9"); /* 2 bytes each */
    snprintf(big + n, sizeof big - (size_t)n, "'}]}}}");
    d = J(big);
    pbs = sf_check_draft(d, NULL);
    const char *id = json_string_value(json_object_get(json_array_get(pbs, 0), "id"));
    CHECK(id != NULL && strlen(id) == SF_CLIP_MAX, "clipped id: %zu bytes", id ? strlen(id) : 0);
    json_decref(pbs);
    json_decref(d);
    sf_state_clear(&before);
    sf_state_clear(&st);
}

static void test_repair_fix(void)
{
    sf_state st;
    fresh(&st);
    st.version = 4;
    set_draft(&st, DAMAGED);
    sf_state before = snapshot(&st);
    static const char *const want_renamed =
        "[{'page':'home','index':1,'from':'a','to':'home-hero-2'},"
        "{'page':'home','index':2,'from':null,'to':'home-text-main'},"
        "{'page':'home','index':7,'from':null,'to':'home-hero-3'},"
        "{'page':'about','index':0,'from':'a','to':'about-hero-main'}]";
    char got[1024];

    /* a dry run reports what a repair would do, and changes nothing */
    json_t *r = run_repair_op(&st, SF_OP_DRAFT_REPAIR, "{'dry_run':true}", 0);
    json_t *w = J(want_renamed);
    CHECK(same(json_object_get(r, "renamed"), w), "dry run renamed %s",
          dump(json_object_get(r, "renamed")));
    CHECK(json_integer_value(json_object_get(r, "version")) == 4 && state_equal(&st, &before),
          "dry run: state and version unchanged");
    json_decref(r);

    /* the repair: first occurrences keep their id, one version */
    r = run_repair_op(&st, SF_OP_DRAFT_REPAIR, "{'dry_run':false}", 0);
    CHECK(same(json_object_get(r, "renamed"), w), "renamed %s",
          dump(json_object_get(r, "renamed")));
    kinds(json_object_get(r, "unrepaired"), got, sizeof got);
    CHECK(strcmp(got, "bad_id@home/3,bad_type@home/4,bad_id@home/5,bad_shape@home/6,"
                      "bad_shape@x/-,bad_shape@y/-") == 0,
          "unrepaired: %s", got);
    CHECK(json_integer_value(json_object_get(r, "version")) == 5 && st.version == 5,
          "one version");
    DRAFT_IS(&st, "{'pages':{'home':{'sections':[{'id':'a','type':'hero'},"
                  "{'id':'home-hero-2','type':'hero','x':1},{'type':'text','id':'home-text-main'},"
                  "{'id':'Bad','type':'hero'},{'id':'b','type':'Bad!'},{'id':7,'type':'t'},3,"
                  "{'id':'home-hero-3','type':'hero'},{'id':'home-hero-main','type':'hero'}]},"
                  "'about':{'sections':[{'id':'about-hero-main','type':'hero'}]},"
                  "'x':{'sections':{}},'y':[]},'keep':[1]}");
    json_decref(r);
    json_decref(w);

    /* a repeat finds nothing to rename: no change, no version */
    sf_state_clear(&before);
    before = snapshot(&st);
    r = run_repair_op(&st, SF_OP_DRAFT_REPAIR, NULL, 0);
    CHECK(json_array_size(json_object_get(r, "renamed")) == 0 &&
              json_array_size(json_object_get(r, "unrepaired")) == 6 &&
              json_integer_value(json_object_get(r, "version")) == 5 && state_equal(&st, &before),
          "repeat repair is a no-op");
    json_decref(r);

    /* an unrepairable duplicate: its type breaks the rule, so no id is made */
    set_draft(&st, "{'pages':{'p':{'sections':[{'id':'a','type':'t'},{'id':'a','type':'T'},"
                   "{'type':'t'}]},'P':{'sections':[{'type':'t'}]}}}");
    r = run_repair_op(&st, SF_OP_DRAFT_REPAIR, NULL, 0);
    kinds(json_object_get(r, "unrepaired"), got, sizeof got);
    CHECK(strcmp(got, "duplicate_id@p/1,bad_type@p/1,bad_shape@P/-,missing_id@P/0") == 0,
          "unrepaired: %s", got);
    CHECK(strstr(json_string_value(json_object_get(json_array_get(
                     json_object_get(r, "unrepaired"), 0), "message")),
                 "no id can be generated") != NULL,
          "says why");
    CHECK(json_array_size(json_object_get(r, "renamed")) == 1 && st.version == 6,
          "the fixable one is renamed");
    json_decref(r);

    /* over max_draft_bytes: refused, nothing changed */
    set_draft(&st, "{'pages':{'p':{'sections':[{'type':'t'}]}}}");
    FAIL_MAX(&st, SF_OP_DRAFT_REPAIR, NULL, 40, TQ_E_DRAFT_TOO_LARGE, "max_draft_bytes = 40");

    /* arguments */
    ARGS_OK(SF_OP_DRAFT_REPAIR, NULL);
    ARGS_OK(SF_OP_DRAFT_REPAIR, "{'dry_run':false}");
    ARGS_BAD(SF_OP_DRAFT_REPAIR, "{'dry_run':1}", "args.dry_run: must be a boolean");
    ARGS_BAD(SF_OP_DRAFT_REPAIR, "{'dry_run':'true'}", "args.dry_run: must be a boolean");
    ARGS_BAD(SF_OP_DRAFT_REPAIR, "{'dry':true}", "args.dry: unknown argument");
    ARGS_BAD(SF_OP_DRAFT_CHECK, "{'dry_run':true}", "args.dry_run: unknown argument");
    sf_state_clear(&before);
    sf_state_clear(&st);
}

/* Hostile sizes: 10k sections, capped lists, deep nesting below sections. */
static void test_repair_hostile(void)
{
    enum { N = 10000 };
    json_t *secs = json_array();
    for (int i = 0; i < N; i++)
        json_array_append_new(secs, json_pack("{s:s}", "type", "hero"));
    sf_state st;
    fresh(&st);
    json_decref(st.draft);
    st.draft = json_pack("{s:{s:{s:o}}}", "pages", "home", "sections", secs);
    json_t *r = run_repair_op(&st, SF_OP_DRAFT_CHECK, NULL, 0);
    CHECK(json_array_size(json_object_get(r, "problems")) == SF_PROBLEMS_MAX &&
              json_integer_value(json_object_get(r, "omitted")) == N - SF_PROBLEMS_MAX,
          "check: capped list");
    json_decref(r);
    r = run_repair_op(&st, SF_OP_DRAFT_REPAIR, NULL, 0);
    CHECK(json_array_size(json_object_get(r, "renamed")) == SF_PROBLEMS_MAX &&
              json_integer_value(json_object_get(r, "renamed_omitted")) == N - SF_PROBLEMS_MAX &&
              st.version == 1,
          "repair: every section renamed, the list capped");
    json_decref(r);
    CHECK(ids_unique(st.draft), "generated ids unique and valid");
    const json_t *last = json_array_get(
        json_object_get(json_object_get(json_object_get(st.draft, "pages"), "home"), "sections"),
        N - 1);
    CHECK(strcmp(json_string_value(json_object_get(last, "id")), "home-hero-10000") == 0,
          "last generated id");

    /* deep nesting inside a section is never walked */
    json_t *deep = json_array();
    json_t *v = deep;
    for (int i = 0; i < 5000; i++) {
        json_t *in = json_array();
        json_array_append_new(v, in);
        v = in;
    }
    json_decref(st.draft);
    st.draft = json_pack("{s:{s:{s:[{s:s,s:o}]}}}", "pages", "p", "sections", "type", "t", "x",
                         deep);
    size_t omitted;
    json_t *pbs = sf_check_draft(st.draft, &omitted);
    CHECK(json_array_size(pbs) == 1, "deep section: one missing_id");
    json_decref(pbs);
    sf_state_clear(&st);
}

/* Running out of memory anywhere in a repair changes nothing. */
static void test_repair_out_of_memory(void)
{
    json_set_alloc_funcs(budget_malloc, free);
    for (long budget = 0;; budget++) {
        sf_state st;
        fresh(&st);
        set_draft(&st, DAMAGED);
        sf_state before = snapshot(&st);
        json_t *res = NULL;
        tq_error err;
        alloc_budget = budget;
        int rc = sf_apply(&st, SF_OP_DRAFT_REPAIR, NULL, 100000, &res, &err);
        alloc_budget = -1;
        if (rc != 0)
            CHECK(err.code == TQ_E_INTERNAL && res == NULL && state_equal(&st, &before),
                  "allocation %ld failing: %s, state %s", budget, err.message,
                  state_equal(&st, &before) ? "unchanged" : "CHANGED");
        else
            CHECK(st.version == 1 && budget > 0, "version after %ld", budget);
        json_decref(res);
        sf_state_clear(&before);
        sf_state_clear(&st);
        if (rc == 0 || budget > 5000)
            break;
    }
    json_set_alloc_funcs(malloc, free);
}

/* ---- random sequence against a model ---- */

#define M_PAGES 3
#define M_SECS 64
#define M_IDLEN 72

static const char *const m_page_names[M_PAGES] = {"home", "about", "shop"};
static const char *const m_types[] = {"hero", "text"};
static const char *const m_explicit[] = {"s1", "s2", "s3", "s4", "s5", "s6"};

/* The model: which pages exist and the id of each of their sections. */
typedef struct mdoc {
    bool exists[M_PAGES];
    size_t n[M_PAGES];
    char id[M_PAGES][M_SECS][M_IDLEN];
} mdoc;

static bool m_find(const mdoc *d, const char *id, int *pg, size_t *ix)
{
    for (int p = 0; p < M_PAGES; p++)
        for (size_t i = 0; i < d->n[p]; i++)
            if (strcmp(d->id[p][i], id) == 0) {
                *pg = p;
                *ix = i;
                return true;
            }
    return false;
}

static size_t m_total(const mdoc *d)
{
    return d->n[0] + d->n[1] + d->n[2];
}

static void m_insert(mdoc *d, int p, size_t ix, const char *id)
{
    memmove(d->id[p][ix + 1], d->id[p][ix], (d->n[p] - ix) * M_IDLEN);
    snprintf(d->id[p][ix], M_IDLEN, "%s", id);
    d->n[p]++;
    d->exists[p] = true;
}

static void m_erase(mdoc *d, int p, size_t ix)
{
    memmove(d->id[p][ix], d->id[p][ix + 1], (d->n[p] - ix - 1) * M_IDLEN);
    d->n[p]--;
}

/* Does the real draft hold exactly the model's pages and ids, in order? */
static bool m_matches(const json_t *draft, const mdoc *d, char *why, size_t whylen)
{
    json_t *pages = json_object_get(draft, "pages");
    size_t want_pages = 0;
    for (int p = 0; p < M_PAGES; p++)
        want_pages += d->exists[p];
    if (want_pages == 0 && pages == NULL)
        return true;
    if (!json_is_object(pages) || json_object_size(pages) != want_pages) {
        snprintf(why, whylen, "page count %zu, model %zu", json_object_size(pages), want_pages);
        return false;
    }
    for (int p = 0; p < M_PAGES; p++) {
        if (!d->exists[p])
            continue;
        json_t *secs = json_object_get(json_object_get(pages, m_page_names[p]), "sections");
        if (json_array_size(secs) != d->n[p]) {
            snprintf(why, whylen, "page %s: %zu sections, model %zu", m_page_names[p],
                     json_array_size(secs), d->n[p]);
            return false;
        }
        for (size_t i = 0; i < d->n[p]; i++) {
            const char *id = json_string_value(json_object_get(json_array_get(secs, i), "id"));
            if (id == NULL || strcmp(id, d->id[p][i]) != 0) {
                snprintf(why, whylen, "page %s[%zu]: id %s, model %s", m_page_names[p], i,
                         id ? id : "(none)", d->id[p][i]);
                return false;
            }
        }
    }
    return true;
}

/* Ids unique across the whole draft, and every id a valid name. */
static bool ids_unique(const json_t *draft)
{
    json_t *pages = json_object_get(draft, "pages");
    json_t *seen = json_object();
    bool ok = true;
    const char *pname;
    json_t *page;
    json_object_foreach(pages, pname, page) {
        json_t *secs = json_object_get(page, "sections");
        for (size_t i = 0; i < json_array_size(secs); i++) {
            json_t *idv = json_object_get(json_array_get(secs, i), "id");
            const char *id = json_string_value(idv);
            if (id == NULL || !sf_valid_name(id, json_string_length(idv)) ||
                json_object_get(seen, id) != NULL)
                ok = false;
            else
                json_object_set_new(seen, id, json_true());
        }
    }
    json_decref(seen);
    return ok;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
    /* xorshift64*: fixed seed, same sequence on every run and platform */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32) % n;
}

/* Pick an id: mostly one that exists, sometimes an explicit-pool or made-up one. */
static const char *pick_id(const mdoc *d)
{
    size_t total = m_total(d);
    if (total > 0 && rnd(3) != 0) {
        size_t k = rnd((uint32_t)total);
        for (int p = 0; p < M_PAGES; p++) {
            if (k < d->n[p])
                return d->id[p][k];
            k -= d->n[p];
        }
    }
    return rnd(4) == 0 ? "nope" : m_explicit[rnd(6)];
}

static void test_sequence(void)
{
    sf_state st;
    fresh(&st);
    mdoc draft = {0}, published = {0};
    bool ever_published = false;
    int64_t successes = 0;
    int counts[SF_OP__COUNT][2] = {{0}};
    int too_large = 0;
    char args[512], why[256];
    const int steps = 10000;
    int step_failures_before = failures;
    /* the last KEEP results, kept alive with their text as first seen: the
     * daemon encodes a batch's results after later edits (and the next
     * batch) changed the state, so no result may share a value with it */
    enum { KEEP = 16 };
    json_t *kept[KEEP] = {NULL};
    char *kept_text[KEEP] = {NULL};

    for (int step = 0; step < steps && failures - step_failures_before < 5; step++) {
        sf_op op;
        uint32_t r = rnd(100);
        if (r < 40)
            op = SF_OP_SECTION_UPSERT;
        else if (r < 58)
            op = SF_OP_SECTION_REMOVE;
        else if (r < 83)
            op = SF_OP_SECTION_MOVE;
        else if (r < 88)
            op = SF_OP_DRAFT_GET;
        else if (r < 92)
            op = SF_OP_DRAFT_PUBLISH;
        else if (r < 95)
            op = SF_OP_DRAFT_DISCARD;
        else if (r < 97)
            op = rnd(2) ? SF_OP_DRAFT_CHECK : SF_OP_DRAFT_REPAIR;
        else
            op = SF_OP_PING;

        /* what the model expects */
        mdoc next = draft;
        tq_code expect = TQ_OK;
        int pg = (int)rnd(M_PAGES);
        const char *pname = m_page_names[pg];
        switch (op) {
        case SF_OP_SECTION_UPSERT: {
            const char *type = m_types[rnd(2)];
            const char *id = rnd(2) ? m_explicit[rnd(6)] : NULL;
            if (m_total(&draft) >= M_SECS - 2 || (id == NULL && rnd(3) == 0 && draft.n[pg] > 0))
                id = pick_id(&draft); /* bias towards collisions when full */
            long ix = -1;
            if (rnd(2))
                ix = (long)rnd((uint32_t)draft.n[pg] + 2); /* sometimes out of range */
            int n = snprintf(args, sizeof args, "{'page':'%s','section':{'type':'%s','n':%d",
                             pname, type, step);
            if (id != NULL)
                n += snprintf(args + n, sizeof args - (size_t)n, ",'id':'%s'", id);
            n += snprintf(args + n, sizeof args - (size_t)n, "}");
            if (ix >= 0)
                snprintf(args + n, sizeof args - (size_t)n, ",'index':%ld}", ix);
            else
                snprintf(args + n, sizeof args - (size_t)n, "}");
            size_t len = draft.n[pg];
            size_t at = ix < 0 ? len : (size_t)ix;
            int dp = -1;
            size_t di = 0;
            if (at > len) {
                expect = TQ_E_INVALID_ARGUMENT;
            } else if (id != NULL && m_find(&draft, id, &dp, &di) && !(dp == pg && di == at)) {
                expect = TQ_E_DUPLICATE_SECTION_ID;
            } else if (at < len) {
                if (id != NULL)
                    snprintf(next.id[pg][at], M_IDLEN, "%s", id);
            } else {
                char gen[M_IDLEN];
                if (id == NULL) {
                    snprintf(gen, sizeof gen, "%s-%s-main", pname, type);
                    for (int k = 2; m_find(&draft, gen, &dp, &di); k++)
                        snprintf(gen, sizeof gen, "%s-%s-%d", pname, type, k);
                    id = gen;
                }
                if (m_total(&draft) >= M_SECS - 1)
                    expect = TQ_E_INTERNAL; /* the model is full: never generated */
                else
                    m_insert(&next, pg, len, id);
            }
            break;
        }
        case SF_OP_SECTION_REMOVE: {
            const char *id = pick_id(&draft);
            snprintf(args, sizeof args, "{'id':'%s'}", id);
            int dp = -1;
            size_t di = 0;
            if (!m_find(&draft, id, &dp, &di))
                expect = TQ_E_NOT_FOUND;
            else
                m_erase(&next, dp, di);
            break;
        }
        case SF_OP_SECTION_MOVE: {
            const char *id = pick_id(&draft);
            int dp = -1;
            size_t di = 0;
            bool found = m_find(&draft, id, &dp, &di);
            size_t tlen = draft.n[pg] - (found && dp == pg ? 1 : 0);
            size_t ix = rnd((uint32_t)tlen + 2);
            snprintf(args, sizeof args, "{'id':'%s','page':'%s','index':%zu}", id, pname, ix);
            if (!found) {
                expect = TQ_E_NOT_FOUND;
            } else if (ix > tlen) {
                expect = TQ_E_INVALID_ARGUMENT;
            } else {
                char keep[M_IDLEN];
                snprintf(keep, sizeof keep, "%s", id);
                m_erase(&next, dp, di);
                m_insert(&next, pg, ix, keep);
            }
            break;
        }
        case SF_OP_DRAFT_DISCARD:
            next = ever_published ? published : (mdoc){0};
            snprintf(args, sizeof args, "{}");
            break;
        default:
            snprintf(args, sizeof args, "{}");
            break;
        }
        if (expect == TQ_E_INTERNAL)
            continue; /* model capacity reached: skip this op */

        /* sometimes a size limit just around the current size */
        size_t max = 0;
        if (rnd(10) == 0)
            max = draft_size(&st) + rnd(60);
        else if (step % 4 != 0)
            max = 1u << 20; /* a far limit: sf_apply keeps a size bound instead of serialising */

        sf_state before = snapshot(&st);
        json_t *res = NULL;
        tq_error err;
        int rc = apply_t(&st, op, args, max, &res, &err);
        tq_code got = rc == 0 ? TQ_OK : err.code;

        if (got == TQ_E_DRAFT_TOO_LARGE && expect == TQ_OK) {
            /* legitimate only if the unlimited result really is over the limit */
            sf_state probe = snapshot(&before);
            json_t *pres = NULL;
            tq_error perr;
            CHECK(apply_t(&probe, op, args, 0, &pres, &perr) == 0 && draft_size(&probe) > max,
                  "step %d: DRAFT_TOO_LARGE but the result fits (%zu <= %zu)", step,
                  draft_size(&probe), max);
            json_decref(pres);
            sf_state_clear(&probe);
            expect = TQ_E_DRAFT_TOO_LARGE;
            too_large++;
        } else if (got == TQ_OK && max > 0 &&
                   (op == SF_OP_SECTION_UPSERT || op == SF_OP_SECTION_MOVE)) {
            /* (remove and discard are never refused for size) */
            CHECK(draft_size(&st) <= max, "step %d: draft %zu bytes over the limit %zu", step,
                  draft_size(&st), max);
        }
        CHECK(got == expect, "step %d: %s %s: got %s (%s), model expects %s", step,
              sf_op_name(op), args, tq_code_name(got), rc ? err.message : "", tq_code_name(expect));
        counts[op][rc == 0]++;
        if (rc == 0) {
            CHECK(res != NULL, "step %d: result", step);
            if (op == SF_OP_DRAFT_CHECK || op == SF_OP_DRAFT_REPAIR) {
                /* the ops above keep every rule: nothing to report or repair */
                const char *list = op == SF_OP_DRAFT_CHECK ? "problems" : "renamed";
                CHECK(state_equal(&st, &before) &&
                          json_array_size(json_object_get(res, list)) == 0 &&
                          json_array_size(json_object_get(res, "unrepaired")) == 0,
                      "step %d: %s found something in a valid draft", step, sf_op_name(op));
            } else if (sf_op_mutates(op)) {
                successes++;
                CHECK(json_integer_value(json_object_get(res, "version")) == st.version,
                      "step %d: result version", step);
            } else {
                CHECK(state_equal(&st, &before), "step %d: %s changed the state", step,
                      sf_op_name(op));
            }
            if (op == SF_OP_DRAFT_PUBLISH) {
                published = next;
                ever_published = true;
            }
            if (expect == TQ_OK)
                draft = next;
        } else {
            CHECK(res == NULL, "step %d: no result on failure", step);
            CHECK(state_equal(&st, &before), "step %d: failed %s changed the state", step,
                  sf_op_name(op));
        }
        CHECK(st.version == successes, "step %d: version %" PRId64 " != %" PRId64 " successes",
              step, st.version, successes);
        CHECK(st.size_ub == 0 || st.size_ub >= draft_size(&st),
              "step %d: size bound %zu below the real size %zu", step, st.size_ub,
              draft_size(&st));
        CHECK(ids_unique(st.draft), "step %d: duplicate or invalid ids", step);
        CHECK(m_matches(st.draft, &draft, why, sizeof why), "step %d after %s %s: %s", step,
              sf_op_name(op), args, why);
        if (ever_published)
            CHECK(m_matches(st.published, &published, why, sizeof why), "step %d published: %s",
                  step, why);
        for (int k = 0; k < KEEP; k++) {
            if (kept[k] == NULL)
                continue;
            char *now = json_dumps(kept[k], JSON_COMPACT | JSON_SORT_KEYS);
            CHECK(now != NULL && strcmp(now, kept_text[k]) == 0,
                  "step %d: an earlier result changed with the state: %s -> %s", step,
                  kept_text[k], now ? now : "?");
            free(now);
        }
        int slot = step % KEEP;
        json_decref(kept[slot]);
        free(kept_text[slot]);
        kept[slot] = res; /* (the reference res held) */
        kept_text[slot] = res ? json_dumps(res, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (res == NULL)
            kept[slot] = NULL;
        sf_state_clear(&before);
    }
    for (int k = 0; k < KEEP; k++) {
        json_decref(kept[k]);
        free(kept_text[k]);
    }
    /* the sequence must actually have exercised both outcomes of every edit */
    for (int op = 0; op < SF_OP__COUNT; op++)
        CHECK(counts[op][1] > 0, "%s never succeeded", sf_op_name((sf_op)op));
    CHECK(counts[SF_OP_SECTION_UPSERT][0] > 100 && counts[SF_OP_SECTION_REMOVE][0] > 100 &&
              counts[SF_OP_SECTION_MOVE][0] > 100,
          "too few failures: %d %d %d", counts[SF_OP_SECTION_UPSERT][0],
          counts[SF_OP_SECTION_REMOVE][0], counts[SF_OP_SECTION_MOVE][0]);
    CHECK(too_large > 10, "too few DRAFT_TOO_LARGE: %d", too_large);
    printf("sequence: %" PRId64 " committed changes, %d DRAFT_TOO_LARGE, final draft %zu bytes\n",
           successes, too_large, draft_size(&st));
    sf_state_clear(&st);
}

/* Stored values a direct writer can leave behind: the largest version (the
 * next one cannot be numbered) and a published copy that is not an object
 * (draft.discard would copy it into the draft and break every later op). */
static void test_stored_extremes(void)
{
    sf_state st;
    fresh(&st);
    st.version = INT64_MAX;
    FAIL(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'hero'}}", TQ_E_INTERNAL,
         "largest there is");
    FAIL(&st, SF_OP_DRAFT_PUBLISH, NULL, TQ_E_INTERNAL, "largest there is");
    OK(&st, SF_OP_DRAFT_GET, NULL, "{'draft':{'pages':{}},'version':9223372036854775807}");
    st.version = INT64_MAX - 1;
    OK(&st, SF_OP_DRAFT_PUBLISH, NULL, "{'version':9223372036854775807}");
    sf_state_clear(&st);

    fresh(&st);
    st.published = J("['not','an','object']");
    FAIL(&st, SF_OP_DRAFT_DISCARD, NULL, TQ_E_INTERNAL, "published config is not a JSON object");
    OK(&st, SF_OP_SECTION_UPSERT, "{'page':'home','section':{'type':'hero'}}",
       "{'id':'home-hero-main','page':'home','index':0,'created':true,'version':1}");
    OK(&st, SF_OP_DRAFT_PUBLISH, NULL, "{'version':2}");
    OK(&st, SF_OP_DRAFT_DISCARD, NULL, "{'version':3}");
    sf_state_clear(&st);
}

int main(void)
{
    test_ops();
    test_names();
    test_validate_args();
    test_upsert_basic();
    test_upsert_generated_ids();
    test_remove();
    test_move();
    test_draft_ops();
    test_stored_extremes();
    test_preserve();
    test_too_large();
    test_corrupt();
    test_out_of_memory();
    test_repair_check();
    test_repair_fix();
    test_repair_hostile();
    test_repair_out_of_memory();
    test_sequence();
    if (failures > 0) {
        fprintf(stderr, "test_storefront: %d of %d checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_storefront: all %d checks passed\n", checks);
    return 0;
}
