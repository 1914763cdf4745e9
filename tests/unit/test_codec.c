/*
 * test_codec.c - unit tests of the wire codec (proto/codec.c, proto/codes.c).
 *
 * Valid messages are built with msgpack_pack_*; hostile ones are written
 * byte by byte so that the tests do not depend on what an encoder is willing
 * to produce.  Every check prints its name when it fails; the exit status is
 * non-zero if any check failed.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_proto.h"

static int n_checks, n_failed;

static void check(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void check(bool ok, const char *file, int line, const char *fmt, ...)
{
    n_checks++;
    if (ok)
        return;
    n_failed++;
    va_list ap;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond, ...) check((cond), __FILE__, __LINE__, __VA_ARGS__)

/* ------------------------------------------------------------ helpers */

typedef struct mp {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mp;

static void mp_init(mp *m)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void mp_free(mp *m)
{
    msgpack_sbuffer_destroy(&m->sb);
}

static void mp_strn(mp *m, const char *s, size_t n)
{
    msgpack_pack_str(&m->pk, n);
    msgpack_pack_str_body(&m->pk, s, n);
}

static void mp_str(mp *m, const char *s)
{
    mp_strn(m, s, strlen(s));
}

static void mp_raw(mp *m, const void *b, size_t n)
{
    msgpack_sbuffer_write(&m->sb, b, n);
}

/* {"v":1,"tenant":"acme","op":"ping", <extra more entries follow>} */
static void start_req(mp *m, uint32_t extra)
{
    mp_init(m);
    msgpack_pack_map(&m->pk, 3 + extra);
    mp_str(m, "v");
    msgpack_pack_uint8(&m->pk, 1);
    mp_str(m, "tenant");
    mp_str(m, "acme");
    mp_str(m, "op");
    mp_str(m, "ping");
}

/* A request whose args hold one entry "x": <raw msgpack bytes>. */
static void req_with_arg(mp *m, const void *raw, size_t n)
{
    start_req(m, 1);
    mp_str(m, "args");
    msgpack_pack_map(&m->pk, 1);
    mp_str(m, "x");
    mp_raw(m, raw, n);
}

/* A request with one envelope field replaced/added: name -> raw bytes. */
static void req_field(mp *m, const char *name, const void *raw, size_t n)
{
    start_req(m, 1);
    mp_str(m, name);
    mp_raw(m, raw, n);
}

/* Text messages may not carry raw control bytes (single-line, printable). */
static bool message_clean(const char *msg)
{
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == 0xc0 || *p == 0xc1 || *p >= 0xf5)
            return false;
    return msg[0] != '\0';
}

static bool req_is_zero(const tq_request *r)
{
    return r->tenant == NULL && r->op == NULL && r->args == NULL && r->key == NULL &&
           !r->has_deadline && r->v == 0;
}

static void expect_req_fail(const char *name, const void *buf, size_t len, tq_code code,
                            const char *needle)
{
    tq_request req;
    tq_error err;
    memset(&req, 0x5a, sizeof req);
    memset(&err, 0, sizeof err);
    int rc = tq_request_decode(buf, len, &req, &err);
    CHECK(rc == -1, "%s: decode must fail", name);
    if (rc == 0) {
        tq_request_free(&req);
        return;
    }
    CHECK(req_is_zero(&req), "%s: request zeroed on failure", name);
    CHECK(err.code == code, "%s: code %s, expected %s (message: %s)", name,
          tq_code_name(err.code), tq_code_name(code), err.message);
    CHECK(needle == NULL || strstr(err.message, needle) != NULL,
          "%s: message \"%s\" should mention \"%s\"", name, err.message, needle);
    CHECK(message_clean(err.message), "%s: message is clean text", name);
}

static void expect_req_fail_mp(const char *name, mp *m, tq_code code, const char *needle)
{
    expect_req_fail(name, m->sb.data, m->sb.size, code, needle);
    mp_free(m);
}

/* Decode must succeed; returns the request (caller frees). */
static bool expect_req_ok(const char *name, const void *buf, size_t len, tq_request *req)
{
    tq_error err = {0};
    int rc = tq_request_decode(buf, len, req, &err);
    CHECK(rc == 0, "%s: decode must succeed (got %s: %s)", name, tq_code_name(err.code),
          err.message);
    return rc == 0;
}

static void expect_req_ok_mp(const char *name, mp *m)
{
    tq_request req;
    if (expect_req_ok(name, m->sb.data, m->sb.size, &req))
        tq_request_free(&req);
    mp_free(m);
}

static void expect_resp_fail(const char *name, const void *buf, size_t len, const char *needle)
{
    tq_response resp;
    tq_error err;
    memset(&resp, 0x5a, sizeof resp);
    memset(&err, 0, sizeof err);
    int rc = tq_response_decode(buf, len, &resp, &err);
    CHECK(rc == -1, "%s: response decode must fail", name);
    if (rc == 0) {
        tq_response_free(&resp);
        return;
    }
    CHECK(resp.result == NULL && resp.message == NULL && !resp.ok,
          "%s: response zeroed on failure", name);
    CHECK(err.code == TQ_E_PROTOCOL, "%s: code %s, expected PROTOCOL", name,
          tq_code_name(err.code));
    CHECK(needle == NULL || strstr(err.message, needle) != NULL,
          "%s: message \"%s\" should mention \"%s\"", name, err.message, needle);
    CHECK(message_clean(err.message), "%s: message is clean text", name);
}

static void expect_resp_fail_mp(const char *name, mp *m, const char *needle)
{
    expect_resp_fail(name, m->sb.data, m->sb.size, needle);
    mp_free(m);
}

/* ------------------------------------------------------------- codes */

static void test_codes(void)
{
    static const tq_code retryable[] = {
        TQ_E_QUEUE_FULL, TQ_E_DEADLINE_EXCEEDED, TQ_E_LOCK_TIMEOUT, TQ_E_DB_UNAVAILABLE,
        TQ_E_OUTCOME_UNKNOWN, TQ_E_SHUTTING_DOWN, TQ_E_TIMEOUT, TQ_E_TRANSPORT,
    };
    static const struct { tq_code c; const char *n; } names[] = {
        {TQ_OK, "OK"}, {TQ_E_BAD_REQUEST, "BAD_REQUEST"},
        {TQ_E_UNSUPPORTED_VERSION, "UNSUPPORTED_VERSION"}, {TQ_E_UNKNOWN_OP, "UNKNOWN_OP"},
        {TQ_E_INVALID_ARGUMENT, "INVALID_ARGUMENT"}, {TQ_E_NOT_FOUND, "NOT_FOUND"},
        {TQ_E_DUPLICATE_SECTION_ID, "DUPLICATE_SECTION_ID"},
        {TQ_E_DRAFT_TOO_LARGE, "DRAFT_TOO_LARGE"},
        {TQ_E_IDEMPOTENCY_KEY_REUSED, "IDEMPOTENCY_KEY_REUSED"},
        {TQ_E_QUEUE_FULL, "QUEUE_FULL"}, {TQ_E_DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"},
        {TQ_E_LOCK_TIMEOUT, "LOCK_TIMEOUT"}, {TQ_E_DB_UNAVAILABLE, "DB_UNAVAILABLE"},
        {TQ_E_OUTCOME_UNKNOWN, "OUTCOME_UNKNOWN"}, {TQ_E_SHUTTING_DOWN, "SHUTTING_DOWN"},
        {TQ_E_INTERNAL, "INTERNAL"}, {TQ_E_TIMEOUT, "TIMEOUT"}, {TQ_E_TRANSPORT, "TRANSPORT"},
        {TQ_E_PROTOCOL, "PROTOCOL"}, {TQ_E_USAGE, "USAGE"}, {TQ_E_REJECTED, "REJECTED"},
        {TQ_E_UNAUTHENTICATED, "UNAUTHENTICATED"},
    };
    CHECK(sizeof names / sizeof names[0] == TQ_CODE__COUNT, "codes: name table covers all");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        tq_code out = TQ_CODE__COUNT;
        CHECK(strcmp(tq_code_name(names[i].c), names[i].n) == 0, "codes: name of %s", names[i].n);
        CHECK(tq_code_parse(names[i].n, strlen(names[i].n), &out) && out == names[i].c,
              "codes: parse %s", names[i].n);
        /* not NUL-terminated: the name followed by more bytes */
        char buf[64];
        snprintf(buf, sizeof buf, "%sXYZ", names[i].n);
        out = TQ_CODE__COUNT;
        CHECK(tq_code_parse(buf, strlen(names[i].n), &out) && out == names[i].c,
              "codes: parse %s with explicit length", names[i].n);
        bool want = false;
        for (size_t k = 0; k < sizeof retryable / sizeof retryable[0]; k++)
            want |= retryable[k] == names[i].c;
        CHECK(tq_code_retryable(names[i].c) == want, "codes: retryable(%s) == %d", names[i].n,
              want);
    }
    tq_code out = TQ_E_NOT_FOUND;
    CHECK(!tq_code_parse("NOPE", 4, &out) && out == TQ_E_NOT_FOUND, "codes: unknown name");
    CHECK(!tq_code_parse("QUEUE_FUL", 9, &out), "codes: prefix is not a name");
    CHECK(!tq_code_parse("QUEUE_FULLX", 11, &out), "codes: longer is not a name");
    CHECK(!tq_code_parse("queue_full", 10, &out), "codes: case-sensitive");
    CHECK(!tq_code_parse("", 0, &out), "codes: empty");
    CHECK(strcmp(tq_code_name(TQ_CODE__COUNT), "UNKNOWN") == 0, "codes: out of range name");
    CHECK(strcmp(tq_code_name((tq_code)-1), "UNKNOWN") == 0, "codes: negative name");
    CHECK(!tq_code_retryable(TQ_CODE__COUNT), "codes: out of range not retryable");

    tq_error err;
    CHECK(tq_error_set(&err, TQ_E_NOT_FOUND, "page %s", "home") == -1, "error_set returns -1");
    CHECK(err.code == TQ_E_NOT_FOUND && strcmp(err.message, "page home") == 0,
          "error_set fills");
    CHECK(tq_error_set(NULL, TQ_E_INTERNAL, "x") == -1, "error_set NULL err");
}

/* ------------------------------------------------------ request basics */

static void test_request_roundtrip(void)
{
    json_error_t jerr;
    json_t *args = json_loads("{\"page\":\"home\",\"index\":2,\"section\":{\"type\":\"hero\","
                              "\"headline\":\"Caf\\u00e9 \\u65e5\\u672c \\ud83d\\ude00\","
                              "\"n\":-5,\"big\":9223372036854775807,"
                              "\"small\":-9223372036854775808,\"f\":1.25,\"t\":true,"
                              "\"no\":false,\"z\":null,\"arr\":[1,\"x\",[],{}]}}",
                              0, &jerr);
    CHECK(args != NULL, "roundtrip: test JSON parses (%s)", jerr.text);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(tq_request_encode(&sb, "acme-1", "section.upsert", args, "k-123", 2500) == 0,
          "roundtrip: encode");
    tq_request req;
    if (expect_req_ok("roundtrip", sb.data, sb.size, &req)) {
        CHECK(req.v == 1, "roundtrip: v");
        CHECK(strcmp(req.tenant, "acme-1") == 0 && req.tenant_len == 6, "roundtrip: tenant");
        CHECK(strcmp(req.op, "section.upsert") == 0 && req.op_len == 14, "roundtrip: op");
        CHECK(req.key != NULL && strcmp(req.key, "k-123") == 0 && req.key_len == 5,
              "roundtrip: key");
        CHECK(req.has_deadline && req.deadline_ms == 2500, "roundtrip: deadline");
        CHECK(json_equal(req.args, args), "roundtrip: args equal");
        tq_request_free(&req);
        CHECK(req_is_zero(&req), "free zeroes the request");
        tq_request_free(&req); /* idempotent */
    }

    /* key order on the wire: v, tenant, op, args, key, deadline_ms */
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&up, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS &&
          off == sb.size, "roundtrip: raw unpack");
    static const char *order[] = {"v", "tenant", "op", "args", "key", "deadline_ms"};
    CHECK(up.data.type == MSGPACK_OBJECT_MAP && up.data.via.map.size == 6, "request map size");
    for (uint32_t i = 0; i < 6 && i < up.data.via.map.size; i++) {
        msgpack_object_str k = up.data.via.map.ptr[i].key.via.str;
        CHECK(k.size == strlen(order[i]) && memcmp(k.ptr, order[i], k.size) == 0,
              "request key #%u is %s", i, order[i]);
    }
    msgpack_unpacked_destroy(&up);

    /* absent optionals */
    msgpack_sbuffer_clear(&sb);
    CHECK(tq_request_encode(&sb, "t", "ping", NULL, NULL, 0) == 0, "encode minimal");
    if (expect_req_ok("minimal", sb.data, sb.size, &req)) {
        CHECK(json_is_object(req.args) && json_object_size(req.args) == 0,
              "minimal: args is empty object");
        CHECK(req.key == NULL && !req.has_deadline, "minimal: no key, no deadline");
        tq_request_free(&req);
    }
    CHECK(sb.data[0] == (char)0x83, "minimal: map of 3 entries");

    /* encoder refusals leave the buffer as it was */
    size_t before = sb.size;
    json_t *arr = json_array();
    CHECK(tq_request_encode(&sb, "t", "ping", arr, NULL, 0) == -1, "encode: args not object");
    CHECK(tq_request_encode(&sb, NULL, "ping", NULL, NULL, 0) == -1, "encode: NULL tenant");
    json_t *deep = json_object();
    json_t *cur = deep;
    for (int i = 0; i < TQ_MAX_DEPTH; i++) { /* args + 32 levels: one too deep */
        json_object_set_new(cur, "d", json_object());
        cur = json_object_get(cur, "d");
    }
    CHECK(tq_request_encode(&sb, "t", "ping", deep, NULL, 0) == -1, "encode: args too deep");
    CHECK(sb.size == before, "encode: failures leave the buffer unchanged");
    json_decref(arr);
    json_decref(deep);

    msgpack_sbuffer_destroy(&sb);
    json_decref(args);
}

static void test_envelope(void)
{
    mp m;

    /* the root */
    expect_req_fail("empty input", "", 0, TQ_E_BAD_REQUEST, "empty");
    expect_req_fail("root array", "\x91\x01", 2, TQ_E_BAD_REQUEST, "must be a msgpack map");
    expect_req_fail("root int", "\x01", 1, TQ_E_BAD_REQUEST, "must be a msgpack map");
    expect_req_fail("root nil", "\xc0", 1, TQ_E_BAD_REQUEST, "must be a msgpack map");
    expect_req_fail("root str", "\xa1x", 2, TQ_E_BAD_REQUEST, "must be a msgpack map");
    expect_req_fail("reserved byte c1", "\xc1", 1, TQ_E_BAD_REQUEST, "0xc1");

    /* keys */
    start_req(&m, 1);
    msgpack_pack_int(&m.pk, 7);
    msgpack_pack_int(&m.pk, 7);
    expect_req_fail_mp("non-string envelope key", &m, TQ_E_BAD_REQUEST, "key #4");
    start_req(&m, 1);
    mp_str(&m, "tenant");
    mp_str(&m, "other");
    expect_req_fail_mp("duplicate tenant", &m, TQ_E_BAD_REQUEST, "duplicate key \"tenant\"");
    start_req(&m, 1);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    expect_req_fail_mp("duplicate v", &m, TQ_E_BAD_REQUEST, "duplicate");
    start_req(&m, 2);
    mp_str(&m, "zz");
    msgpack_pack_nil(&m.pk);
    mp_str(&m, "zz");
    msgpack_pack_true(&m.pk);
    expect_req_fail_mp("duplicate unknown key", &m, TQ_E_BAD_REQUEST, "duplicate");
    start_req(&m, 3);
    mp_str(&m, "extra");
    msgpack_pack_bin(&m.pk, 2);
    msgpack_pack_bin_body(&m.pk, "\xff\xfe", 2);
    mp_strn(&m, "\xff\xfe", 2);  /* unknown key, not even UTF-8: ignored */
    msgpack_pack_nil(&m.pk);
    mp_str(&m, "trace");
    msgpack_pack_map(&m.pk, 0);
    expect_req_ok_mp("unknown keys ignored", &m);

    /* v */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "tenant");
    mp_str(&m, "acme");
    mp_str(&m, "op");
    mp_str(&m, "ping");
    expect_req_fail_mp("v missing", &m, TQ_E_BAD_REQUEST, "v: missing");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_str(&m, "v");
    mp_str(&m, "1");
    mp_str(&m, "tenant");
    mp_str(&m, "acme");
    mp_str(&m, "op");
    mp_str(&m, "ping");
    expect_req_fail_mp("v string", &m, TQ_E_BAD_REQUEST, "v: must be an unsigned integer");
    static const struct { const char *name; const char *raw; size_t n; tq_code code; } vs[] = {
        {"v -1 (fixint)", "\xff", 1, TQ_E_BAD_REQUEST},
        {"v -1 (int64)", "\xd3\xff\xff\xff\xff\xff\xff\xff\xff", 9, TQ_E_BAD_REQUEST},
        {"v 1.0 float", "\xcb\x3f\xf0\0\0\0\0\0\0", 9, TQ_E_BAD_REQUEST},
        {"v true", "\xc3", 1, TQ_E_BAD_REQUEST},
        {"v nil", "\xc0", 1, TQ_E_BAD_REQUEST},
        {"v 2", "\x02", 1, TQ_E_UNSUPPORTED_VERSION},
        {"v 0", "\x00", 1, TQ_E_UNSUPPORTED_VERSION},
        {"v 2^32+1", "\xcf\0\0\0\x01\0\0\0\x01", 9, TQ_E_UNSUPPORTED_VERSION},
        {"v uint64 max", "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, TQ_E_UNSUPPORTED_VERSION},
    };
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        mp_init(&m);
        msgpack_pack_map(&m.pk, 3);
        mp_str(&m, "tenant");
        mp_str(&m, "acme");
        mp_str(&m, "v");
        mp_raw(&m, vs[i].raw, vs[i].n);
        mp_str(&m, "op");
        mp_str(&m, "ping");
        expect_req_fail_mp(vs[i].name, &m, vs[i].code, "v:");
    }
    static const struct { const char *name; const char *raw; size_t n; } v1[] = {
        {"v 1 as uint8", "\xcc\x01", 2}, {"v 1 as uint64", "\xcf\0\0\0\0\0\0\0\x01", 9},
        {"v 1 as int64", "\xd3\0\0\0\0\0\0\0\x01", 9}, {"v 1 as int8", "\xd0\x01", 2},
    };
    for (size_t i = 0; i < sizeof v1 / sizeof v1[0]; i++) {
        mp_init(&m);
        msgpack_pack_map(&m.pk, 3);
        mp_str(&m, "op");
        mp_str(&m, "ping");
        mp_str(&m, "tenant");
        mp_str(&m, "acme");
        mp_str(&m, "v");
        mp_raw(&m, v1[i].raw, v1[i].n);
        expect_req_ok_mp(v1[i].name, &m);
    }
    /* the version wins over other envelope errors */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 2);
    mp_str(&m, "tenant");
    msgpack_pack_int(&m.pk, 5);
    expect_req_fail_mp("v 2 before tenant check", &m, TQ_E_UNSUPPORTED_VERSION, "v:");

    /* tenant */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "op");
    mp_str(&m, "ping");
    expect_req_fail_mp("tenant missing", &m, TQ_E_BAD_REQUEST, "tenant: missing");
    char long_s[300];
    memset(long_s, 't', sizeof long_s);
    const struct { const char *name; const char *s; size_t n; bool ok; } tenants[] = {
        {"tenant empty", "", 0, false},
        {"tenant 1 byte", "a", 1, true},
        {"tenant utf-8", "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf", 19, true},
        {"tenant with space", "acme corp", 9, true},
        {"tenant control 0x01", "ac\x01me", 5, false},
        {"tenant NUL", "ac\0me", 5, false},
        {"tenant newline", "acme\n", 5, false},
        {"tenant DEL", "ac\x7fme", 5, false},
        {"tenant C1 U+0085", "ac\xc2\x85me", 6, false},
        {"tenant C1 U+009F", "\xc2\x9f", 2, false},
        {"tenant U+00A0 ok", "\xc2\xa0", 2, true},
        {"tenant overlong c0 80", "a\xc0\x80", 3, false},
        {"tenant overlong c1 bf", "a\xc1\xbf", 3, false},
        {"tenant overlong e0 80 80", "a\xe0\x80\x80", 4, false},
        {"tenant overlong e0 9f bf", "\xe0\x9f\xbf", 3, false},
        {"tenant overlong f0 8f bf bf", "\xf0\x8f\xbf\xbf", 4, false},
        {"tenant surrogate ed a0 80", "\xed\xa0\x80", 3, false},
        {"tenant surrogate ed bf bf", "\xed\xbf\xbf", 3, false},
        {"tenant U+D7FF ok", "\xed\x9f\xbf", 3, true},
        {"tenant > U+10FFFF", "\xf4\x90\x80\x80", 4, false},
        {"tenant f5", "\xf5\x80\x80\x80", 4, false},
        {"tenant ff", "a\xff", 2, false},
        {"tenant lone continuation", "\x80", 1, false},
        {"tenant truncated 3-byte", "a\xe2\x82", 3, false},
        {"tenant truncated 4-byte", "\xf0\x9f\x98", 3, false},
        {"tenant bad continuation", "\xe2\x28\xa1", 3, false},
        {"tenant 128 bytes", long_s, 128, true},
        {"tenant 129 bytes", long_s, 129, false},
    };
    for (size_t i = 0; i < sizeof tenants / sizeof tenants[0]; i++) {
        mp_init(&m);
        msgpack_pack_map(&m.pk, 3);
        mp_str(&m, "v");
        msgpack_pack_uint8(&m.pk, 1);
        mp_str(&m, "tenant");
        mp_strn(&m, tenants[i].s, tenants[i].n);
        mp_str(&m, "op");
        mp_str(&m, "ping");
        if (tenants[i].ok) {
            tq_request req;
            if (expect_req_ok(tenants[i].name, m.sb.data, m.sb.size, &req)) {
                CHECK(req.tenant_len == tenants[i].n &&
                      memcmp(req.tenant, tenants[i].s, tenants[i].n) == 0 &&
                      req.tenant[req.tenant_len] == '\0', "%s: copied", tenants[i].name);
                tq_request_free(&req);
            }
            mp_free(&m);
        } else {
            expect_req_fail_mp(tenants[i].name, &m, TQ_E_BAD_REQUEST, "tenant");
        }
    }
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "tenant");
    msgpack_pack_bin(&m.pk, 4);
    msgpack_pack_bin_body(&m.pk, "acme", 4);
    mp_str(&m, "op");
    mp_str(&m, "ping");
    expect_req_fail_mp("tenant as bin", &m, TQ_E_BAD_REQUEST, "tenant: must be a string");

    /* raw bytes never reach the message */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "tenant");
    mp_strn(&m, "EVIL\xff", 5);
    mp_str(&m, "op");
    mp_str(&m, "ping");
    {
        tq_request req;
        tq_error err = {0};
        CHECK(tq_request_decode(m.sb.data, m.sb.size, &req, &err) == -1 &&
              strstr(err.message, "EVIL") == NULL, "tenant content not echoed in message");
    }
    mp_free(&m);

    /* op */
    const struct { const char *name; const char *s; size_t n; bool ok; } ops[] = {
        {"op empty", "", 0, false},
        {"op 64 bytes", long_s, 64, true},
        {"op 65 bytes", long_s, 65, false},
        {"op control", "pi\tng", 5, false},
        {"op invalid utf-8", "pi\xffng", 5, false},
        {"op unknown name is fine here", "no.such.op", 10, true},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        mp_init(&m);
        msgpack_pack_map(&m.pk, 3);
        mp_str(&m, "v");
        msgpack_pack_uint8(&m.pk, 1);
        mp_str(&m, "op");
        mp_strn(&m, ops[i].s, ops[i].n);
        mp_str(&m, "tenant");
        mp_str(&m, "acme");
        if (ops[i].ok)
            expect_req_ok_mp(ops[i].name, &m);
        else
            expect_req_fail_mp(ops[i].name, &m, TQ_E_BAD_REQUEST, "op");
    }
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "tenant");
    mp_str(&m, "acme");
    expect_req_fail_mp("op missing", &m, TQ_E_BAD_REQUEST, "op: missing");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "tenant");
    mp_str(&m, "acme");
    mp_str(&m, "op");
    msgpack_pack_uint8(&m.pk, 3);
    expect_req_fail_mp("op integer", &m, TQ_E_BAD_REQUEST, "op: must be a string");

    /* args */
    req_field(&m, "args", "\xc0", 1);
    {
        tq_request req;
        if (expect_req_ok("args nil", m.sb.data, m.sb.size, &req)) {
            CHECK(json_is_object(req.args) && json_object_size(req.args) == 0,
                  "args nil: empty object");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    req_field(&m, "args", "\x80", 1);
    expect_req_ok_mp("args empty map", &m);
    req_field(&m, "args", "\x91\x01", 2);
    expect_req_fail_mp("args array", &m, TQ_E_BAD_REQUEST, "args: must be a map");
    req_field(&m, "args", "\xa1x", 2);
    expect_req_fail_mp("args string", &m, TQ_E_BAD_REQUEST, "args: must be a map");
    req_field(&m, "args", "\x07", 1);
    expect_req_fail_mp("args int", &m, TQ_E_BAD_REQUEST, "args: must be a map");

    /* key */
    const struct { const char *name; const char *s; size_t n; bool ok; } keys[] = {
        {"key 1 byte", "k", 1, true},
        {"key 128 bytes", long_s, 128, true},
        {"key empty", "", 0, false},
        {"key 129 bytes", long_s, 129, false},
        {"key control", "k\x1b", 2, false},
        {"key invalid utf-8", "k\xc3", 2, false},
        {"key surrogate", "\xed\xb0\x80", 3, false},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        start_req(&m, 1);
        mp_str(&m, "key");
        mp_strn(&m, keys[i].s, keys[i].n);
        if (keys[i].ok) {
            tq_request req;
            if (expect_req_ok(keys[i].name, m.sb.data, m.sb.size, &req)) {
                CHECK(req.key != NULL && req.key_len == keys[i].n &&
                      memcmp(req.key, keys[i].s, keys[i].n) == 0, "%s: copied", keys[i].name);
                tq_request_free(&req);
            }
            mp_free(&m);
        } else {
            expect_req_fail_mp(keys[i].name, &m, TQ_E_BAD_REQUEST, "key");
        }
    }
    req_field(&m, "key", "\x2a", 1);
    expect_req_fail_mp("key integer", &m, TQ_E_BAD_REQUEST, "key: must be a string");
    req_field(&m, "key", "\xc0", 1);
    {
        tq_request req;
        if (expect_req_ok("key nil = absent", m.sb.data, m.sb.size, &req)) {
            CHECK(req.key == NULL, "key nil: no key");
            tq_request_free(&req);
        }
        mp_free(&m);
    }

    /* deadline_ms */
    static const struct { const char *name; const char *raw; size_t n; uint64_t want; } dl[] = {
        {"deadline 1", "\x01", 1, 1},
        {"deadline 86400000", "\xce\x05\x26\x5c\x00", 5, 86400000},
        {"deadline as uint64", "\xcf\0\0\0\0\0\0\x27\x10", 9, 10000},
        {"deadline 0", "\x00", 1, 0},
        {"deadline 86400001", "\xce\x05\x26\x5c\x01", 5, 0},
        {"deadline negative", "\xd0\xf6", 2, 0},
        {"deadline negative fixint", "\xff", 1, 0},
        {"deadline uint64 max", "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, 0},
        {"deadline float", "\xcb\x40\x59\0\0\0\0\0\0", 9, 0},
        {"deadline string", "\xa3" "100", 4, 0},
    };
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++) {
        req_field(&m, "deadline_ms", dl[i].raw, dl[i].n);
        if (dl[i].want != 0) {
            tq_request req;
            if (expect_req_ok(dl[i].name, m.sb.data, m.sb.size, &req)) {
                CHECK(req.has_deadline && req.deadline_ms == dl[i].want, "%s: value",
                      dl[i].name);
                tq_request_free(&req);
            }
            mp_free(&m);
        } else {
            expect_req_fail_mp(dl[i].name, &m, TQ_E_BAD_REQUEST, "deadline_ms");
        }
    }
    req_field(&m, "deadline_ms", "\xc0", 1);
    {
        tq_request req;
        if (expect_req_ok("deadline nil = absent", m.sb.data, m.sb.size, &req)) {
            CHECK(!req.has_deadline, "deadline nil: absent");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
}

/* ----------------------------------------------------- args -> JSON */

static void test_args(void)
{
    mp m;
    static const struct { const char *name; const char *raw; size_t n; const char *needle; } bad[] = {
        {"bin8", "\xc4\x02\x01\x02", 4, "bin"},
        {"bin16 empty", "\xc5\x00\x00", 3, "bin"},
        {"fixext1", "\xd4\x01\x00", 3, "ext"},
        {"fixext16", "\xd8\x05" "0123456789abcdef", 18, "ext"},
        {"ext8", "\xc7\x01\x07\xaa", 4, "ext"},
        {"ext8 empty", "\xc7\x00\x07", 3, "ext"},
        {"float64 NaN", "\xcb\x7f\xf8\0\0\0\0\0\0", 9, "NaN"},
        {"float64 +Inf", "\xcb\x7f\xf0\0\0\0\0\0\0", 9, "infinite"},
        {"float64 -Inf", "\xcb\xff\xf0\0\0\0\0\0\0", 9, "infinite"},
        {"float32 NaN", "\xca\x7f\xc0\0\0", 5, "NaN"},
        {"float32 +Inf", "\xca\x7f\x80\0\0", 5, "infinite"},
        {"uint64 max", "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, "int64"},
        {"uint64 2^63", "\xcf\x80\0\0\0\0\0\0\0", 9, "int64"},
        {"string invalid utf-8", "\xa3" "a\xff" "b", 4, "UTF-8"},
        {"string surrogate", "\xa3\xed\xa0\x80", 4, "UTF-8"},
        {"string overlong", "\xa2\xc0\xaf", 3, "UTF-8"},
        {"int key", "\x81\x01\x02", 3, "map key #1 is an integer"},
        {"nil key", "\x81\xc0\x02", 3, "key #1"},
        {"array key", "\x81\x90\x02", 3, "key #1"},
        {"bin key", "\x81\xc4\x01k\x02", 5, "key #1"},
        {"invalid utf-8 key", "\x82\xa1k\x01\xa2\xff\xfe\x02", 8, "key #2"},
        {"duplicate key", "\x83\xa1" "a\x01\xa1" "b\x02\xa1" "a\x03", 10, "args.x.a: duplicate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        req_with_arg(&m, bad[i].raw, bad[i].n);
        char name[96];
        snprintf(name, sizeof name, "args %s", bad[i].name);
        expect_req_fail_mp(name, &m, TQ_E_INVALID_ARGUMENT, bad[i].needle);
        /* the same value as the whole buffer of tq_msgpack_to_json */
        json_t *out = (json_t *)1;
        tq_error err = {0};
        CHECK(tq_msgpack_to_json(bad[i].raw, bad[i].n, "val", &out, &err) == -1 && out == NULL,
              "to_json %s fails", bad[i].name);
        CHECK(err.code == TQ_E_INVALID_ARGUMENT && strncmp(err.message, "val", 3) == 0,
              "to_json %s: INVALID_ARGUMENT naming val (%s)", bad[i].name, err.message);
    }

    /* the dotted path of the offending field */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 4);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "tenant");
    mp_str(&m, "acme");
    mp_str(&m, "op");
    mp_str(&m, "section.upsert");
    mp_str(&m, "args");
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "page");
    mp_str(&m, "home");
    mp_str(&m, "section");
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "type");
    mp_str(&m, "hero");
    mp_str(&m, "items");
    msgpack_pack_array(&m.pk, 3);
    msgpack_pack_int(&m.pk, 1);
    mp_str(&m, "two");
    msgpack_pack_bin(&m.pk, 1);
    msgpack_pack_bin_body(&m.pk, "\x00", 1);
    expect_req_fail_mp("path of a bin in an array", &m, TQ_E_INVALID_ARGUMENT,
                       "args.section.items[2]: binary data");

    /* control characters and raw bytes in keys are not echoed */
    req_with_arg(&m, "\x81\xa4" "a\nb\x7f" "\xc7\x00\x01", 9);
    expect_req_fail_mp("control chars in key path", &m, TQ_E_INVALID_ARGUMENT, "args.x.a?b?:");

    /* a very long key path is cut, still clean */
    {
        char raw[1200];
        size_t n = 0;
        for (int lvl = 0; lvl < 5; lvl++) {
            raw[n++] = (char)0x81;
            raw[n++] = (char)0xd9;
            raw[n++] = (char)100;
            memset(raw + n, 'k', 100);
            n += 100;
        }
        raw[n++] = (char)0xc4; /* bin8 of 0 bytes */
        raw[n++] = 0;
        req_with_arg(&m, raw, n);
        expect_req_fail_mp("long path truncated", &m, TQ_E_INVALID_ARGUMENT, "...");
    }

    /* values that are fine */
    req_with_arg(&m, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9);
    {
        tq_request req;
        if (expect_req_ok("int64 max as uint64", m.sb.data, m.sb.size, &req)) {
            CHECK(json_integer_value(json_object_get(req.args, "x")) == INT64_MAX,
                  "int64 max value");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    req_with_arg(&m, "\xd3\x80\0\0\0\0\0\0\0", 9);
    {
        tq_request req;
        if (expect_req_ok("int64 min", m.sb.data, m.sb.size, &req)) {
            CHECK(json_integer_value(json_object_get(req.args, "x")) == INT64_MIN,
                  "int64 min value");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    req_with_arg(&m, "\xca\x3f\xc0\0\0", 5);
    {
        tq_request req;
        if (expect_req_ok("float32 1.5", m.sb.data, m.sb.size, &req)) {
            CHECK(json_real_value(json_object_get(req.args, "x")) == 1.5, "float32 value");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    req_with_arg(&m, "\xcb\x80\0\0\0\0\0\0\0", 9);
    expect_req_ok_mp("float64 -0.0", &m);
    req_with_arg(&m, "\x82\xa0\x01\xa2\xc3\xa9\xc0", 7);
    {
        tq_request req;
        if (expect_req_ok("empty and utf-8 keys", m.sb.data, m.sb.size, &req)) {
            json_t *x = json_object_get(req.args, "x");
            CHECK(json_integer_value(json_object_get(x, "")) == 1, "empty key value");
            CHECK(json_is_null(json_object_get(x, "\xc3\xa9")), "utf-8 key value");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    /* regression: msgpack-c hands out a NULL ptr for "" (found by fuzzing) */
    req_with_arg(&m, "\x92\xa0\xa0", 3);
    {
        tq_request req;
        if (expect_req_ok("empty strings", m.sb.data, m.sb.size, &req)) {
            json_t *x = json_object_get(req.args, "x");
            CHECK(json_string_length(json_array_get(x, 0)) == 0 &&
                  json_string_length(json_array_get(x, 1)) == 0, "empty strings kept");
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    {
        json_t *out = NULL;
        tq_error e = {0};
        CHECK(tq_msgpack_to_json("\xa0", 1, "v", &out, &e) == 0 && json_is_string(out) &&
              json_string_length(out) == 0, "to_json of a lone empty string (%s)", e.message);
        json_decref(out);
        CHECK(tq_msgpack_to_json("\x81\xa0\xa0", 3, "v", &out, &e) == 0 &&
              json_is_string(json_object_get(out, "")), "to_json empty key and value");
        json_decref(out);
    }

    /* U+0000: jansson C-string keys and PostgreSQL jsonb cannot hold it */
    req_with_arg(&m, "\x82\xa1k\x01\xa3" "a\0b" "\x02", 9);
    expect_req_fail_mp("key with NUL", &m, TQ_E_INVALID_ARGUMENT, "key #2 contains U+0000");
    req_with_arg(&m, "\x92\x01\xa3" "a\0b", 6);
    expect_req_fail_mp("string with NUL", &m, TQ_E_INVALID_ARGUMENT, "args.x[1]: strings must");
    req_with_arg(&m, "\xa1\0", 2);
    expect_req_fail_mp("string of one NUL", &m, TQ_E_INVALID_ARGUMENT, "U+0000");

    /* insertion order is kept */
    req_with_arg(&m, "\x83\xa1z\x01\xa1" "a\x02\xa1m\x03", 10);
    {
        tq_request req;
        if (expect_req_ok("key order", m.sb.data, m.sb.size, &req)) {
            const char *k;
            json_t *v;
            char order[4] = {0};
            int i = 0;
            json_object_foreach(json_object_get(req.args, "x"), k, v) {
                if (i < 3)
                    order[i++] = k[0];
            }
            CHECK(strcmp(order, "zam") == 0, "key order preserved (%s)", order);
            tq_request_free(&req);
        }
        mp_free(&m);
    }

    /* tq_msgpack_to_json basics */
    json_t *out = NULL;
    tq_error err = {0};
    CHECK(tq_msgpack_to_json("\x92\x01\xa1x", 4, "v", &out, &err) == 0, "to_json array");
    json_t *want = json_pack("[is]", 1, "x");
    CHECK(out != NULL && json_equal(out, want), "to_json array value");
    json_decref(want);
    json_decref(out);
    CHECK(tq_msgpack_to_json("\xc0", 1, "v", &out, &err) == 0 && json_is_null(out),
          "to_json nil");
    json_decref(out);
    CHECK(tq_msgpack_to_json("\x92\x01", 2, "v", &out, &err) == -1 &&
          err.code == TQ_E_BAD_REQUEST, "to_json truncated is BAD_REQUEST");
    CHECK(tq_msgpack_to_json("\x01\x01", 2, "v", &out, &err) == -1 &&
          err.code == TQ_E_BAD_REQUEST && strstr(err.message, "trailing") != NULL,
          "to_json trailing is BAD_REQUEST");
}

/* -------------------------------------------------- malformed bytes */

static void nested_arrays(mp *m, int n, bool empty_inner)
{
    for (int i = 0; i < n; i++)
        mp_raw(m, empty_inner && i == n - 1 ? "\x90" : "\x91", 1);
    if (!empty_inner)
        mp_raw(m, "\x01", 1);
}

static void test_malformed(void)
{
    mp m;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    json_t *args = json_pack("{s:s,s:{s:s,s:[i,f,n]}}", "page", "home", "section", "type",
                             "hero", "list", 1, 2.5);
    CHECK(tq_request_encode(&sb, "acme", "section.upsert", args, "key-1", 500) == 0,
          "malformed: base encode");
    json_decref(args);

    /* trailing bytes */
    char *buf = malloc(sb.size + 2);
    memcpy(buf, sb.data, sb.size);
    buf[sb.size] = '\0';
    buf[sb.size + 1] = (char)0xc0;
    expect_req_fail("one trailing byte", buf, sb.size + 1, TQ_E_BAD_REQUEST, "1 trailing");
    expect_req_fail("two trailing bytes", buf, sb.size + 2, TQ_E_BAD_REQUEST, "2 trailing");
    free(buf);

    /* every proper prefix */
    for (size_t n = 0; n < sb.size; n++) {
        char name[64];
        snprintf(name, sizeof name, "truncated to %zu of %zu bytes", n, sb.size);
        /* copy, so that ASan catches any read past the prefix */
        char *pre = malloc(n > 0 ? n : 1);
        memcpy(pre, sb.data, n);
        expect_req_fail(name, pre, n, TQ_E_BAD_REQUEST, NULL);
        free(pre);
    }
    msgpack_sbuffer_destroy(&sb);

    /* container headers claiming more than is there */
    expect_req_fail("map32 4G entries", "\xdf\xff\xff\xff\xff\xa1v\x01", 8, TQ_E_BAD_REQUEST,
                    "claims 4294967295 elements");
    expect_req_fail("array32 4G entries", "\xdd\xff\xff\xff\xff\x01\x02", 7, TQ_E_BAD_REQUEST,
                    "claims");
    expect_req_fail("map16 65535 entries", "\xde\xff\xff\xa1v\x01", 6, TQ_E_BAD_REQUEST,
                    "claims");
    expect_req_fail("array32 8M entries (a huge claimed array)", "\xdd\x00\x80\x00\x00", 5,
                    TQ_E_BAD_REQUEST, "claims");
    req_with_arg(&m, "\xdd\xff\xff\xff\xff\x01\x01\x01", 8);
    expect_req_fail_mp("array32 4G inside args", &m, TQ_E_BAD_REQUEST, "claims");
    req_with_arg(&m, "\xdf\x10\x00\x00\x00\x01\x01\x01", 8);
    expect_req_fail_mp("map32 inside args", &m, TQ_E_BAD_REQUEST, "claims");
    /* each container alone fits, together they owe more than remains */
    expect_req_fail("sum of owed elements", "\x92\x93\x01\x01\x01", 5, TQ_E_BAD_REQUEST,
                    "claims");
    {
        unsigned char many[40];
        memset(many, 0xdd, sizeof many); /* 8 nested array32 headers */
        for (int i = 0; i < 8; i++) {
            many[i * 5 + 1] = 0x7f;
            many[i * 5 + 2] = many[i * 5 + 3] = many[i * 5 + 4] = 0xff;
        }
        expect_req_fail("8 nested array32 headers", many, sizeof many, TQ_E_BAD_REQUEST,
                        "claims");
    }
    expect_req_fail("str32 4G", "\x81\xa1v\xdb\xff\xff\xff\xff" "abc", 11, TQ_E_BAD_REQUEST,
                    "truncated");
    expect_req_fail("bin32 4G", "\x81\xa1v\xc6\xff\xff\xff\xff" "abc", 11, TQ_E_BAD_REQUEST,
                    "truncated");
    expect_req_fail("ext32 4G", "\x81\xa1v\xc9\xff\xff\xff\xff\x01" "abc", 12,
                    TQ_E_BAD_REQUEST, "truncated");
    expect_req_fail("header cut", "\x81\xa1v\xcd\x01", 5, TQ_E_BAD_REQUEST, "truncated");
    expect_req_fail("length field cut", "\x81\xa1v\xda\x01", 5, TQ_E_BAD_REQUEST, "truncated");
    req_with_arg(&m, "\xc1", 1);
    expect_req_fail_mp("0xc1 inside args", &m, TQ_E_BAD_REQUEST, "0xc1");

    /* depth: 5000 nested arrays as the whole message and inside args */
    mp_init(&m);
    nested_arrays(&m, 5000, false);
    expect_req_fail_mp("5000-deep arrays", &m, TQ_E_BAD_REQUEST, "nesting deeper than 32");
    {
        start_req(&m, 1);
        mp_str(&m, "args");
        msgpack_pack_map(&m.pk, 1);
        mp_str(&m, "x");
        nested_arrays(&m, 5000, false);
        expect_req_fail_mp("5000-deep arrays in args", &m, TQ_E_BAD_REQUEST, "nesting");
    }
    /* envelope 1 + args 2 + 30 arrays = 32: accepted; 31 arrays: rejected */
    for (int empty = 0; empty <= 1; empty++) {
        start_req(&m, 1);
        mp_str(&m, "args");
        msgpack_pack_map(&m.pk, 1);
        mp_str(&m, "x");
        nested_arrays(&m, 30, empty);
        {
            tq_request req;
            if (expect_req_ok(empty ? "depth 32 (empty inner) accepted" : "depth 32 accepted",
                              m.sb.data, m.sb.size, &req)) {
                int d = 0;
                json_t *x = json_object_get(req.args, "x");
                while (json_is_array(x)) {
                    d++;
                    x = json_array_get(x, 0);
                }
                CHECK(d == 30, "depth 32: 30 arrays decoded (%d)", d);
                /* and it re-encodes (the encoder enforces the same limit) */
                msgpack_sbuffer_init(&sb);
                CHECK(tq_request_encode(&sb, req.tenant, req.op, req.args, NULL, 0) == 0,
                      "depth 32 re-encodes");
                msgpack_sbuffer_destroy(&sb);
                tq_request_free(&req);
            }
            mp_free(&m);
        }
        start_req(&m, 1);
        mp_str(&m, "args");
        msgpack_pack_map(&m.pk, 1);
        mp_str(&m, "x");
        nested_arrays(&m, 31, empty);
        expect_req_fail_mp(empty ? "depth 33 (empty inner) rejected" : "depth 33 rejected",
                           &m, TQ_E_BAD_REQUEST, "nesting deeper than 32");
    }
    /* the same at the top level of tq_msgpack_to_json */
    for (int n = 31; n <= 33; n++) {
        json_t *out = NULL;
        tq_error err = {0};
        mp_init(&m);
        nested_arrays(&m, n, false);
        int rc = tq_msgpack_to_json(m.sb.data, m.sb.size, "v", &out, &err);
        CHECK((rc == 0) == (n <= TQ_MAX_DEPTH), "to_json depth %d", n);
        json_decref(out);
        mp_free(&m);
    }
    /* nested maps count the same way */
    {
        mp_init(&m);
        for (int i = 0; i < 33; i++) {
            msgpack_pack_map(&m.pk, 1);
            mp_str(&m, "k");
        }
        msgpack_pack_nil(&m.pk);
        json_t *out = NULL;
        tq_error err = {0};
        CHECK(tq_msgpack_to_json(m.sb.data, m.sb.size, "v", &out, &err) == -1 &&
              strstr(err.message, "nesting") != NULL, "33 nested maps rejected");
        mp_free(&m);
    }
}

/* ------------------------------------------------------------ responses */

static void test_responses(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    tq_response resp;
    tq_error err = {0};

    /* ok with result, replayed and timing */
    json_t *result = json_pack("{s:s,s:s,s:i,s:b,s:i,s:[]}", "id", "home-hero-main", "page",
                               "home", "index", 0, "created", 1, "version", 7, "empty");
    tq_timing t = {.queue_us = 1234, .exec_us = UINT64_MAX, .batch = 64};
    CHECK(tq_response_encode_ok(&sb, result, true, &t) == 0, "resp ok: encode");
    CHECK(tq_response_decode(sb.data, sb.size, &resp, &err) == 0, "resp ok: decode (%s)",
          err.message);
    CHECK(resp.ok && resp.code == TQ_OK && resp.message == NULL, "resp ok: ok");
    CHECK(resp.result != NULL && json_equal(resp.result, result), "resp ok: result equal");
    CHECK(resp.replayed, "resp ok: replayed");
    CHECK(resp.has_timing && resp.timing.queue_us == 1234 && resp.timing.exec_us == UINT64_MAX &&
          resp.timing.batch == 64, "resp ok: timing");
    tq_response_free(&resp);
    CHECK(resp.result == NULL && resp.message == NULL, "resp free zeroes");

    /* key order v, ok, result, replayed, timing */
    {
        msgpack_unpacked up;
        size_t off = 0;
        static const char *order[] = {"v", "ok", "result", "replayed", "timing"};
        msgpack_unpacked_init(&up);
        CHECK(msgpack_unpack_next(&up, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS,
              "resp ok: raw unpack");
        CHECK(up.data.type == MSGPACK_OBJECT_MAP && up.data.via.map.size == 5,
              "resp ok: 5 keys");
        for (uint32_t i = 0; i < 5 && i < up.data.via.map.size; i++) {
            msgpack_object_str k = up.data.via.map.ptr[i].key.via.str;
            CHECK(k.size == strlen(order[i]) && memcmp(k.ptr, order[i], k.size) == 0,
                  "response key #%u is %s", i, order[i]);
        }
        msgpack_unpacked_destroy(&up);
    }
    /* every proper prefix of a valid response is rejected */
    for (size_t n = 0; n < sb.size; n++) {
        char name[64];
        char *pre = malloc(n > 0 ? n : 1);
        memcpy(pre, sb.data, n);
        snprintf(name, sizeof name, "resp truncated to %zu", n);
        expect_resp_fail(name, pre, n, NULL);
        free(pre);
    }
    {
        char *tb = malloc(sb.size + 1);
        memcpy(tb, sb.data, sb.size);
        tb[sb.size] = 0x01;
        expect_resp_fail("resp trailing byte", tb, sb.size + 1, "trailing");
        free(tb);
    }
    json_decref(result);

    /* ok, minimal: nil result, no replayed, no timing */
    msgpack_sbuffer_clear(&sb);
    CHECK(tq_response_encode_ok(&sb, NULL, false, NULL) == 0, "resp nil: encode");
    CHECK(sb.size == 1 + 2 + 1 + 3 + 1 + 7 + 1, "resp nil: exact size %zu", sb.size);
    CHECK(tq_response_decode(sb.data, sb.size, &resp, &err) == 0 && resp.ok &&
          json_is_null(resp.result) && !resp.replayed && !resp.has_timing, "resp nil: decode");
    tq_response_free(&resp);

    /* errors: every wire code, with and without replayed */
    for (int c = TQ_E_BAD_REQUEST; c <= TQ_E_INTERNAL; c++) {
        for (int rep = 0; rep <= 1; rep++) {
            char msg[64];
            snprintf(msg, sizeof msg, "failure %d: page \"home\" \xe2\x80\x94 ok", c);
            msgpack_sbuffer_clear(&sb);
            CHECK(tq_response_encode_error(&sb, (tq_code)c, msg, rep) == 0, "resp err %s: encode",
                  tq_code_name((tq_code)c));
            memset(&err, 0, sizeof err);
            int rc = tq_response_decode(sb.data, sb.size, &resp, &err);
            CHECK(rc == 0, "resp err %s: decode (%s)", tq_code_name((tq_code)c), err.message);
            if (rc != 0)
                continue;
            CHECK(!resp.ok && resp.code == (tq_code)c && resp.result == NULL,
                  "resp err %s: code", tq_code_name((tq_code)c));
            CHECK(resp.message != NULL && strcmp(resp.message, msg) == 0,
                  "resp err %s: message", tq_code_name((tq_code)c));
            CHECK(resp.retryable == tq_code_retryable((tq_code)c), "resp err %s: retryable",
                  tq_code_name((tq_code)c));
            CHECK(resp.replayed == rep && !resp.has_timing, "resp err %s: replayed",
                  tq_code_name((tq_code)c));
            tq_response_free(&resp);
        }
    }
    /* message from an unvalidated source is made valid UTF-8 */
    msgpack_sbuffer_clear(&sb);
    CHECK(tq_response_encode_error(&sb, TQ_E_INTERNAL, "db said \xff\xc3(\xe2\x82", false) == 0,
          "resp err: encode bad utf-8 message");
    CHECK(tq_response_decode(sb.data, sb.size, &resp, &err) == 0 && resp.message != NULL &&
          strcmp(resp.message, "db said ?" "?(?" "?") == 0, "resp err: sanitized message (%s)",
          resp.message != NULL ? resp.message : "(null)");
    tq_response_free(&resp);
    msgpack_sbuffer_clear(&sb);
    CHECK(tq_response_encode_error(&sb, TQ_E_QUEUE_FULL, NULL, false) == 0 &&
          tq_response_decode(sb.data, sb.size, &resp, &err) == 0 &&
          strcmp(resp.message, "QUEUE_FULL") == 0 && resp.retryable,
          "resp err: NULL message uses the code name");
    tq_response_free(&resp);

    /* result deeper than the decoder allows is refused at encode time */
    {
        json_t *deep = json_array(), *cur = deep;
        for (int i = 0; i < TQ_MAX_DEPTH - 1; i++) {
            json_t *n = json_array();
            json_array_append_new(cur, n);
            cur = n;
        }
        size_t before = sb.size;
        CHECK(tq_response_encode_ok(&sb, deep, false, NULL) == -1 && sb.size == before,
              "resp: too-deep result refused, buffer unchanged");
        json_t *inner = json_array_get(deep, 0);
        msgpack_sbuffer_clear(&sb);
        CHECK(tq_response_encode_ok(&sb, inner, false, NULL) == 0 &&
              tq_response_decode(sb.data, sb.size, &resp, &err) == 0 &&
              json_equal(resp.result, inner), "resp: result at the depth limit round-trips");
        tq_response_free(&resp);
        json_decref(deep);
    }

    /* hostile / malformed responses */
    mp m;
    expect_resp_fail("resp empty", "", 0, "empty");
    expect_resp_fail("resp not a map", "\x93\x01\x02\x03", 4, "must be a msgpack map");
    expect_resp_fail("resp map32 4G", "\xdf\xff\xff\xff\xff\xa1v\x01", 8, "claims");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "result");
    msgpack_pack_nil(&m.pk);
    expect_resp_fail_mp("resp ok missing", &m, "ok: missing");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "ok");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "result");
    msgpack_pack_nil(&m.pk);
    expect_resp_fail_mp("resp ok not bool", &m, "ok: must be a boolean");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "ok");
    msgpack_pack_true(&m.pk);
    mp_str(&m, "result");
    msgpack_pack_nil(&m.pk);
    expect_resp_fail_mp("resp v missing", &m, "v: missing");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 2);
    mp_str(&m, "ok");
    msgpack_pack_true(&m.pk);
    mp_str(&m, "result");
    msgpack_pack_nil(&m.pk);
    expect_resp_fail_mp("resp v 2", &m, "v: version 2");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "ok");
    msgpack_pack_true(&m.pk);
    expect_resp_fail_mp("resp ok without result", &m, "result: missing");
    mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "ok");
    msgpack_pack_false(&m.pk);
    expect_resp_fail_mp("resp error missing", &m, "error: missing");

    /* error objects */
    static const struct { const char *name; const char *raw; size_t n; const char *needle; } eb[] = {
        {"error not a map", "\xa3" "bad", 4, "error: must be a map"},
        {"error without code", "\x82\xa7message\xa1x\xa9retryable\xc2", 22, "code: missing"},
        {"error code int", "\x83\xa4" "code\x05\xa7message\xa1x\xa9retryable\xc2", 28,
         "code: must be a string"},
        {"error code empty", "\x83\xa4" "code\xa0\xa7message\xa1x\xa9retryable\xc2", 28,
         "code: must not be empty"},
        {"error without message", "\x82\xa4" "code\xa2OK\xa9retryable\xc2", 20,
         "message: missing"},
        {"error message bad utf-8", "\x83\xa4" "code\xa1X\xa7message\xa1\xff\xa9retryable\xc2",
         29, "UTF-8"},
        {"error without retryable", "\x82\xa4" "code\xa1X\xa7message\xa1x", 18,
         "retryable: missing"},
        {"error retryable nil", "\x83\xa4" "code\xa1X\xa7message\xa1x\xa9retryable\xc0", 29,
         "retryable: must be a boolean"},
        {"error duplicate code", "\x84\xa4" "code\xa1X\xa4" "code\xa1Y\xa7message\xa1x"
         "\xa9retryable\xc2", 36, "duplicate"},
        {"error int key", "\x84\x01\x01\xa4" "code\xa1X\xa7message\xa1x\xa9retryable\xc2",
         31, "key #1"},
    };
    for (size_t i = 0; i < sizeof eb / sizeof eb[0]; i++) {
        mp_init(&m);
        msgpack_pack_map(&m.pk, 3);
        mp_str(&m, "v");
        msgpack_pack_uint8(&m.pk, 1);
        mp_str(&m, "ok");
        msgpack_pack_false(&m.pk);
        mp_str(&m, "error");
        mp_raw(&m, eb[i].raw, eb[i].n);
        expect_resp_fail_mp(eb[i].name, &m, eb[i].needle);
    }

    /* unknown code: still an error, code PROTOCOL, message preserved */
    static const struct { const char *name; const char *code; } unk[] = {
        {"unknown code", "TEAPOT"}, {"code OK in error", "OK"},
    };
    for (size_t i = 0; i < sizeof unk / sizeof unk[0]; i++) {
        mp_init(&m);
        msgpack_pack_map(&m.pk, 4);
        mp_str(&m, "v");
        msgpack_pack_uint8(&m.pk, 1);
        mp_str(&m, "ok");
        msgpack_pack_false(&m.pk);
        mp_str(&m, "error");
        msgpack_pack_map(&m.pk, 4);
        mp_str(&m, "code");
        mp_str(&m, unk[i].code);
        mp_str(&m, "message");
        mp_str(&m, "I'm a teapot");
        mp_str(&m, "retryable");
        msgpack_pack_true(&m.pk);
        mp_str(&m, "detail");       /* unknown keys ignored */
        msgpack_pack_map(&m.pk, 0);
        mp_str(&m, "future");
        msgpack_pack_array(&m.pk, 0);
        memset(&err, 0, sizeof err);
        int rc = tq_response_decode(m.sb.data, m.sb.size, &resp, &err);
        CHECK(rc == 0, "%s: decodes (%s)", unk[i].name, err.message);
        if (rc == 0) {
            CHECK(!resp.ok && resp.code == TQ_E_PROTOCOL && resp.retryable &&
                  strcmp(resp.message, "I'm a teapot") == 0, "%s: PROTOCOL, message kept",
                  unk[i].name);
            tq_response_free(&resp);
        }
        mp_free(&m);
    }

    /* ok/result/error combinations and optional members */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 4);
    mp_str(&m, "v");
    msgpack_pack_uint8(&m.pk, 1);
    mp_str(&m, "ok");
    msgpack_pack_true(&m.pk);
    mp_str(&m, "result");
    msgpack_pack_nil(&m.pk);
    mp_str(&m, "error");
    msgpack_pack_map(&m.pk, 0);
    expect_resp_fail_mp("resp ok with error", &m, "error: present");
    static const struct { const char *name; const char *key; const char *raw; size_t n;
                          const char *needle; } opt[] = {
        {"replayed not bool", "replayed", "\x01", 1, "replayed: must be a boolean"},
        {"timing not map", "timing", "\x01", 1, "timing: must be a map"},
        {"timing missing batch", "timing", "\x82\xa8queue_us\x01\xa7" "exec_us\x02", 20,
         "batch: missing"},
        {"timing batch too big", "timing",
         "\x83\xa8queue_us\x01\xa7" "exec_us\x02\xa5" "batch\xcf\0\0\0\x01\0\0\0\0", 35,
         "batch"},
        {"timing negative", "timing",
         "\x83\xa8queue_us\xff\xa7" "exec_us\x02\xa5" "batch\x01", 27, "queue_us"},
        {"result with bin", "result", "\x91\xc4\x00", 3, "response.result[0]: binary"},
        {"result with NaN", "result", "\xcb\x7f\xf8\0\0\0\0\0\0", 9, "NaN"},
        {"result with dup keys", "result", "\x82\xa1" "a\x01\xa1" "a\x02", 7, "duplicate"},
    };
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
        bool is_result = strcmp(opt[i].key, "result") == 0;
        mp_init(&m);
        msgpack_pack_map(&m.pk, is_result ? 3 : 4);
        mp_str(&m, "v");
        msgpack_pack_uint8(&m.pk, 1);
        mp_str(&m, "ok");
        msgpack_pack_true(&m.pk);
        if (!is_result) {
            mp_str(&m, "result");
            msgpack_pack_nil(&m.pk);
        }
        mp_str(&m, opt[i].key);
        mp_raw(&m, opt[i].raw, opt[i].n);
        expect_resp_fail_mp(opt[i].name, &m, opt[i].needle);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* tq_utf8_valid skips ASCII 8 bytes at a time: every sequence, valid or
 * not, at every offset around those words. */
static void test_utf8_offsets(void)
{
    static const char *const valid[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                        "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf", "\x7f"};
    static const char *const invalid[] = {"\x80", "\xbf", "\xc0\xaf", "\xc1\xbf", "\xc3",
                                          "\xe2\x82", "\xe0\x80\xaf", "\xed\xa0\x80",
                                          "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                                          "\xff", "\xc3\x28"};
    char buf[64];
    for (size_t at = 0; at < 24; at++) {
        for (int pass = 0; pass < 2; pass++) {
            const char *const *seqs = pass ? invalid : valid;
            size_t nseqs = pass ? sizeof invalid / sizeof *invalid : sizeof valid / sizeof *valid;
            for (size_t k = 0; k < nseqs; k++) {
                size_t n = 0, l = strlen(seqs[k]);
                for (size_t i = 0; i < at; i++)
                    buf[n++] = (char)('a' + i % 26);
                memcpy(buf + n, seqs[k], l);
                n += l;
                memcpy(buf + n, " tail text", 10);
                n += 10;
                CHECK(tq_utf8_valid(buf, n) == !pass, "%s sequence #%zu after %zu ASCII bytes",
                      pass ? "invalid" : "valid", k, at);
                /* cut just after the sequence: a truncated one stays invalid */
                CHECK(tq_utf8_valid(buf, at + l) == !pass, "sequence #%zu (%s) at the end, %zu",
                      k, pass ? "invalid" : "valid", at);
            }
        }
    }
}

/* auth: kept as sent whatever it holds (the daemon decides), never a
 * reason to refuse the request; nil is absent; another type is flagged. */
static void test_auth(void)
{
    mp m;
    tq_request req;
    struct { const char *name; const char *raw; size_t n; const char *want; size_t want_len;
             bool not_str; } cases[] = {
        {"auth str", "\xa3tok", 4, "tok", 3, false},
        {"auth empty str", "\xa0", 1, "", 0, false},
        {"auth with NUL and control bytes", "\xa4\x00\t\xff!", 5, "\x00\t\xff!", 4, false},
        {"auth nil", "\xc0", 1, NULL, 0, false},
        {"auth integer", "\x07", 1, NULL, 0, true},
        {"auth bin", "\xc4\x03tok", 5, NULL, 0, true},
        {"auth map", "\x81\xa1k\xa1v", 5, NULL, 0, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        req_field(&m, "auth", cases[i].raw, cases[i].n);
        if (expect_req_ok(cases[i].name, m.sb.data, m.sb.size, &req)) {
            CHECK(req.auth_not_str == cases[i].not_str, "%s: auth_not_str", cases[i].name);
            if (cases[i].want == NULL)
                CHECK(req.auth == NULL && req.auth_len == 0, "%s: no auth", cases[i].name);
            else
                CHECK(req.auth != NULL && req.auth_len == cases[i].want_len &&
                          memcmp(req.auth, cases[i].want, req.auth_len) == 0 &&
                          req.auth[req.auth_len] == '\0',
                      "%s: auth kept as sent", cases[i].name);
            tq_request_free(&req);
        }
        mp_free(&m);
    }
    /* a repeated auth is a duplicate key like any other */
    start_req(&m, 2);
    mp_str(&m, "auth");
    mp_str(&m, "a");
    mp_str(&m, "auth");
    mp_str(&m, "b");
    expect_req_fail_mp("auth twice", &m, TQ_E_BAD_REQUEST, "duplicate key \"auth\"");

    /* the encoder: absent without a token, a str with one (NUL inside kept) */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(tq_request_encode_auth(&sb, "acme", "ping", NULL, "k", 0, "s\0cret", 7) == 0,
          "encode with auth");
    if (expect_req_ok("encoded auth", sb.data, sb.size, &req)) {
        CHECK(req.auth_len == 7 && memcmp(req.auth, "s\0cret", 7) == 0 &&
                  strcmp(req.key, "k") == 0,
              "encoded auth decodes to the same bytes");
        tq_request_free(&req);
    }
    msgpack_sbuffer_clear(&sb);
    CHECK(tq_request_encode_auth(&sb, "acme", "ping", NULL, NULL, 0, NULL, 5) == 0,
          "encode without auth");
    if (expect_req_ok("encoded without auth", sb.data, sb.size, &req)) {
        CHECK(req.auth == NULL && !req.auth_not_str, "no auth encoded");
        tq_request_free(&req);
    }
    msgpack_sbuffer_destroy(&sb);

    /* what a token may be (the daemon's file, tq_set_auth) */
    char big[TQ_MAX_AUTH_BYTES + 2];
    memset(big, 'a', sizeof big);
    CHECK(tq_auth_valid("s3cret token", 12), "token: spaces inside are fine");
    CHECK(tq_auth_valid("caf\xc3\xa9", 5), "token: UTF-8");
    CHECK(tq_auth_valid(big, TQ_MAX_AUTH_BYTES), "token: 4096 bytes");
    CHECK(!tq_auth_valid(big, TQ_MAX_AUTH_BYTES + 1), "token: 4097 bytes");
    CHECK(!tq_auth_valid("", 0) && !tq_auth_valid(NULL, 0), "token: empty");
    CHECK(!tq_auth_valid("a\tb", 3) && !tq_auth_valid("a\0b", 3) &&
              !tq_auth_valid("a\xc2\x85", 3),
          "token: control characters");
    CHECK(!tq_auth_valid("a\xff", 2), "token: invalid UTF-8");
}

int main(void)
{
    test_utf8_offsets();
    test_auth();
    test_codes();
    test_request_roundtrip();
    test_envelope();
    test_args();
    test_malformed();
    test_responses();
    printf("test_codec: %d checks, %d failed\n", n_checks, n_failed);
    return n_failed == 0 ? 0 : 1;
}
