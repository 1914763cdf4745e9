/*
 * fuzz_response.c - libFuzzer target for tq_response_decode.
 *
 * Any input must either be rejected with TQ_E_PROTOCOL and a clean message,
 * or decode to a response that re-encodes (tq_response_encode_ok/_error) and
 * decodes again to the same ok flag, result (json_equal), code, message,
 * replayed flag and timing.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tq_response resp, again;
    tq_error err;
    msgpack_sbuffer sb;
    int rc;

    if (tq_response_decode(data, size, &resp, &err) != 0) {
        if (err.code != TQ_E_PROTOCOL)
            fuzz_fail("response error code is not PROTOCOL", tq_code_name(err.code));
        if (resp.result != NULL || resp.message != NULL)
            fuzz_fail("response not zeroed on failure", err.message);
        fuzz_check_message(&err);
        return 0;
    }
    if (resp.ok != (resp.result != NULL) || resp.ok == (resp.message != NULL))
        fuzz_fail("ok/result/message inconsistent", NULL);
    if (!resp.ok && (resp.code == TQ_OK || resp.code >= TQ_CODE__COUNT))
        fuzz_fail("error response with an impossible code", NULL);

    msgpack_sbuffer_init(&sb);
    if (resp.ok)
        rc = tq_response_encode_ok(&sb, resp.result, resp.replayed,
                                   resp.has_timing ? &resp.timing : NULL);
    else
        rc = tq_response_encode_error(&sb, resp.code, resp.message, resp.replayed);
    if (rc != 0)
        fuzz_fail("re-encode of a decoded response failed", NULL);
    if (tq_response_decode(sb.data, sb.size, &again, &err) != 0)
        fuzz_fail("decode of re-encoded response failed", err.message);
    if (again.ok != resp.ok || again.replayed != resp.replayed)
        fuzz_fail("ok/replayed differ", NULL);
    if (resp.ok) {
        if (!json_equal(resp.result, again.result))
            fuzz_fail("result differs", NULL);
        if (again.has_timing != resp.has_timing ||
            memcmp(&again.timing, &resp.timing, sizeof resp.timing) != 0)
            fuzz_fail("timing differs", NULL);
    } else {
        /* the message is compared up to its first NUL: that is what a C
         * caller sees, and what the encoder takes */
        if (again.code != resp.code || strcmp(again.message, resp.message) != 0)
            fuzz_fail("error differs", resp.message);
        if (again.retryable != tq_code_retryable(resp.code))
            fuzz_fail("retryable not derived from the code", NULL);
    }
    tq_response_free(&again);
    tq_response_free(&resp);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
