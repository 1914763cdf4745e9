/*
 * fuzz_request.c - libFuzzer target for tq_request_decode.
 *
 * Any input must either be rejected with a request-class error code and a
 * clean message, or decode to a request that satisfies the envelope limits
 * and survives encode -> decode unchanged (tenant, op, key, deadline, args
 * compared with json_equal, auth byte for byte; an auth that is not a str
 * is flagged and encodes as absent).  The error path also round-trips the message
 * through an error response, as the daemon does.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error_reply(const tq_error *err)
{
    msgpack_sbuffer sb;
    tq_response resp;
    tq_error e2;
    msgpack_sbuffer_init(&sb);
    if (tq_response_encode_error(&sb, err->code, err->message, false) != 0)
        fuzz_fail("encode error reply", err->message);
    if (tq_response_decode(sb.data, sb.size, &resp, &e2) != 0)
        fuzz_fail("decode own error reply", e2.message);
    if (resp.ok || resp.code != err->code || strcmp(resp.message, err->message) != 0)
        fuzz_fail("error reply round trip", err->message);
    tq_response_free(&resp);
    msgpack_sbuffer_destroy(&sb);
}

static bool streq(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tq_request req, again;
    tq_error err;
    msgpack_sbuffer sb;

    if (tq_request_decode(data, size, &req, &err) != 0) {
        if (err.code != TQ_E_BAD_REQUEST && err.code != TQ_E_UNSUPPORTED_VERSION &&
            err.code != TQ_E_INVALID_ARGUMENT)
            fuzz_fail("unexpected error code", tq_code_name(err.code));
        if (req.tenant != NULL || req.op != NULL || req.args != NULL || req.key != NULL ||
            req.auth != NULL || req.auth_not_str)
            fuzz_fail("request not zeroed on failure", err.message);
        fuzz_check_message(&err);
        check_error_reply(&err);
        return 0;
    }
    if (req.v != 1 || req.tenant_len < 1 || req.tenant_len > TQ_MAX_TENANT_BYTES ||
        strlen(req.tenant) != req.tenant_len)
        fuzz_fail("tenant limits", NULL);
    if (req.op_len < 1 || req.op_len > TQ_MAX_OP_BYTES || strlen(req.op) != req.op_len)
        fuzz_fail("op limits", NULL);
    if (req.key != NULL &&
        (req.key_len < 1 || req.key_len > TQ_MAX_KEY_BYTES || strlen(req.key) != req.key_len))
        fuzz_fail("key limits", NULL);
    if (!json_is_object(req.args))
        fuzz_fail("args is not an object", NULL);
    if (req.has_deadline && (req.deadline_ms < 1 || req.deadline_ms > 86400000))
        fuzz_fail("deadline range", NULL);
    if ((req.auth != NULL && (req.auth_not_str || req.auth[req.auth_len] != '\0')) ||
        (req.auth == NULL && req.auth_len != 0))
        fuzz_fail("auth shape", NULL);

    msgpack_sbuffer_init(&sb);
    if (tq_request_encode_auth(&sb, req.tenant, req.op, req.args, req.key,
                               req.has_deadline ? req.deadline_ms : 0, req.auth,
                               req.auth_len) != 0)
        fuzz_fail("re-encode of a decoded request failed", NULL);
    if (tq_request_decode(sb.data, sb.size, &again, &err) != 0)
        fuzz_fail("decode of re-encoded request failed", err.message);
    if (!streq(req.tenant, again.tenant) || !streq(req.op, again.op) ||
        !streq(req.key, again.key) || req.has_deadline != again.has_deadline ||
        req.deadline_ms != again.deadline_ms || !json_equal(req.args, again.args) ||
        (req.auth == NULL) != (again.auth == NULL) || req.auth_len != again.auth_len ||
        (req.auth != NULL && memcmp(req.auth, again.auth, req.auth_len) != 0) ||
        again.auth_not_str)
        fuzz_fail("request round trip differs", NULL);
    tq_request_free(&again);
    tq_request_free(&req);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
