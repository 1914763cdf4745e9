/*
 * test_vectors.c - the reference codec and libtenantq's routing against the
 * shared wire vectors (proto/wire-vectors.json, path in argv[1]), which the
 * Node client's tests check too, so the two clients cannot drift apart.
 *
 * For every frame: the framing (tcp [u64 length], ipc [0x01][u64 length],
 * then the 4-byte request id, then the body) gives the stored frame bytes;
 * a request encodes (tq_request_encode) to exactly the stored body and
 * decodes back to its fields; a reply or error reply encodes
 * (tq_response_encode_ok/_error) to exactly the stored body and decodes to
 * the stored outcome.  Routing: libtenantq's endpoint order for each vector,
 * and the first choice of 1,000 tenants, equal the stored ones.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <msgpack.h>

#include "check.h"
#include "client_int.h"
#include "tenantq.h"
#include "tq_proto.h"

/* Decode lowercase hex into a malloc'd buffer; NULL if it is not hex. */
static unsigned char *unhex(const char *s, size_t *len)
{
    size_t n = strlen(s);
    if (n % 2 != 0)
        return NULL;
    unsigned char *out = malloc(n / 2 + 1);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            free(out);
            return NULL;
        }
        out[i] = (unsigned char)v;
    }
    *len = n / 2;
    return out;
}

static bool same_bytes(const msgpack_sbuffer *sb, const unsigned char *b, size_t len)
{
    return sb->size == len && memcmp(sb->data, b, len) == 0;
}

static void check_framing(const char *name, json_t *f, const unsigned char *body, size_t blen)
{
    size_t flen = 0;
    unsigned char *fr = unhex(json_string_value(json_object_get(f, "frame")), &flen);
    bool ipc = strcmp(json_string_value(json_object_get(f, "transport")), "ipc") == 0;
    uint32_t id = (uint32_t)json_integer_value(json_object_get(f, "id"));
    size_t hl = ipc ? 9 : 8;
    unsigned char want[9 + 4];
    uint64_t plen = 4 + blen;
    want[0] = 0x01;
    for (int i = 0; i < 8; i++)
        want[hl - 8 + (size_t)i] = (unsigned char)(plen >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        want[hl + (size_t)i] = (unsigned char)(id >> (24 - 8 * i));
    CHECK(fr != NULL && flen == hl + 4 + blen && memcmp(fr, want, hl + 4) == 0 &&
              memcmp(fr + hl + 4, body, blen) == 0, "%s: frame bytes", name);
    CHECK((id & UINT32_C(0x80000000)) != 0, "%s: request id without bit 31", name);
    free(fr);
}

static void check_request(const char *name, json_t *r, const unsigned char *body, size_t len)
{
    const char *key = json_string_value(json_object_get(r, "key"));
    json_t *args = json_object_get(r, "args");
    uint64_t dl = (uint64_t)json_integer_value(json_object_get(r, "deadline_ms"));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = tq_request_encode(&sb, json_string_value(json_object_get(r, "tenant")),
                               json_string_value(json_object_get(r, "op")), args, key, dl);
    CHECK(rc == 0 && same_bytes(&sb, body, len), "%s: tq_request_encode differs", name);
    msgpack_sbuffer_destroy(&sb);

    tq_request req;
    tq_error err;
    rc = tq_request_decode(body, len, &req, &err);
    CHECK(rc == 0, "%s: decode: %s", name, rc == 0 ? "" : err.message);
    if (rc == 0) {
        CHECK(strcmp(req.tenant, json_string_value(json_object_get(r, "tenant"))) == 0 &&
                  strcmp(req.op, json_string_value(json_object_get(r, "op"))) == 0,
              "%s: tenant/op", name);
        CHECK(key == NULL ? req.key == NULL : req.key != NULL && strcmp(req.key, key) == 0,
              "%s: key", name);
        CHECK(req.has_deadline == (dl != 0) && (dl == 0 || req.deadline_ms == dl),
              "%s: deadline", name);
        CHECK(args == NULL || json_equal(req.args, args), "%s: args", name);
        tq_request_free(&req);
    }
}

static void check_reply(const char *name, json_t *e, bool is_error, const unsigned char *body,
                        size_t len)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    bool replayed = json_is_true(json_object_get(e, "replayed"));
    int rc;
    tq_code code = TQ_OK;
    if (is_error) {
        const char *name_s = json_string_value(json_object_get(e, "code"));
        CHECK(tq_code_parse(name_s, strlen(name_s), &code), "%s: code %s", name, name_s);
        rc = tq_response_encode_error(&sb, code,
                                      json_string_value(json_object_get(e, "message")), replayed);
    } else {
        json_t *t = json_object_get(e, "timing");
        tq_timing timing;
        if (json_is_object(t))
            timing = (tq_timing){
                .queue_us = (uint64_t)json_integer_value(json_object_get(t, "queue_us")),
                .exec_us = (uint64_t)json_integer_value(json_object_get(t, "exec_us")),
                .batch = (uint32_t)json_integer_value(json_object_get(t, "batch"))};
        json_t *res = json_object_get(e, "result");
        rc = tq_response_encode_ok(&sb, json_is_null(res) ? NULL : res, replayed,
                                   json_is_object(t) ? &timing : NULL);
    }
    CHECK(rc == 0 && same_bytes(&sb, body, len), "%s: the reference encoder differs", name);
    msgpack_sbuffer_destroy(&sb);

    tq_response resp;
    tq_error err;
    rc = tq_response_decode(body, len, &resp, &err);
    CHECK(rc == 0, "%s: decode: %s", name, rc == 0 ? "" : err.message);
    if (rc != 0)
        return;
    CHECK(resp.ok == !is_error && resp.replayed == replayed, "%s: ok/replayed", name);
    if (is_error)
        CHECK(resp.code == code &&
                  resp.retryable == json_is_true(json_object_get(e, "retryable")) &&
                  strcmp(resp.message, json_string_value(json_object_get(e, "message"))) == 0,
              "%s: error fields", name);
    else
        CHECK(json_equal(resp.result, json_object_get(e, "result")), "%s: result", name);
    tq_response_free(&resp);
}

/* endpoints joined with commas, as tq_connect takes them */
static tq_client *connect_list(json_t *eps)
{
    char list[2048] = "";
    size_t i;
    json_t *e;
    json_array_foreach(eps, i, e) {
        if (i > 0)
            strcat(list, ",");
        strcat(list, json_string_value(e));
    }
    tq_status st;
    tq_client *c = tq_connect(list, &st);
    CHECK(c != NULL, "tq_connect(%s): %s", list, st.message);
    return c;
}

static void check_routing(json_t *root)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(root, "routing"), i, v) {
        tq_client *c = connect_list(json_object_get(v, "endpoints"));
        if (c == NULL)
            continue;
        uint8_t order[TQ_MAX_ENDPOINTS];
        const char *tenant = json_string_value(json_object_get(v, "tenant"));
        endpoint_order(c, tenant, order);
        json_t *want = json_object_get(v, "order");
        for (size_t k = 0; k < json_array_size(want); k++)
            CHECK(order[k] == json_integer_value(json_array_get(want, k)),
                  "routing of \"%s\": position %zu is endpoint %u", tenant, k, order[k]);
        tq_close(c);
    }
    json_t *bulk = json_object_get(root, "routing_bulk");
    tq_client *c = connect_list(json_object_get(bulk, "endpoints"));
    const char *best = json_string_value(json_object_get(bulk, "first_choice"));
    json_int_t n = json_integer_value(json_object_get(bulk, "count"));
    CHECK(c != NULL && best != NULL && (json_int_t)strlen(best) == n, "routing_bulk shape");
    int differ = 0;
    for (json_int_t t = 0; c != NULL && best != NULL && t < n && t < (json_int_t)strlen(best);
         t++) {
        char tenant[32];
        snprintf(tenant, sizeof tenant, "tenant-%lld", (long long)t);
        uint8_t order[TQ_MAX_ENDPOINTS];
        endpoint_order(c, tenant, order);
        differ += order[0] != (uint8_t)(best[t] - '0');
    }
    CHECK(differ == 0, "routing_bulk: %d of %lld tenants go elsewhere", differ, (long long)n);
    tq_close(c);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s proto/wire-vectors.json\n", argv[0]);
        return 2;
    }
    json_error_t jerr;
    json_t *root = json_load_file(argv[1], 0, &jerr);
    if (root == NULL) {
        fprintf(stderr, "%s:%d: %s\n", argv[1], jerr.line, jerr.text);
        return 1;
    }
    size_t i;
    json_t *f;
    int n_frames = 0;
    json_array_foreach(json_object_get(root, "frames"), i, f) {
        const char *name = json_string_value(json_object_get(f, "name"));
        const char *kind = json_string_value(json_object_get(f, "kind"));
        size_t len = 0;
        unsigned char *body = unhex(json_string_value(json_object_get(f, "body")), &len);
        CHECK(name != NULL && kind != NULL && body != NULL, "frame %zu: shape", i);
        if (body == NULL || name == NULL || kind == NULL)
            continue;
        check_framing(name, f, body, len);
        if (strcmp(kind, "request") == 0)
            check_request(name, json_object_get(f, "request"), body, len);
        else
            check_reply(name, json_object_get(f, strcmp(kind, "error") == 0 ? "error" : "reply"),
                        strcmp(kind, "error") == 0, body, len);
        free(body);
        n_frames++;
    }
    CHECK(n_frames >= 10, "only %d frames", n_frames);
    check_routing(root);
    json_decref(root);
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
