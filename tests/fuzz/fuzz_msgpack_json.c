/*
 * fuzz_msgpack_json.c - libFuzzer target for tq_msgpack_to_json/tq_pack_json.
 *
 * Any single msgpack value either is rejected (BAD_REQUEST for malformed
 * bytes, INVALID_ARGUMENT for values JSON cannot hold) or converts to JSON
 * that packs back to msgpack and converts again to an equal JSON value.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *j = NULL, *j2 = NULL;
    tq_error err;
    msgpack_sbuffer sb;
    msgpack_packer pk;

    if (tq_msgpack_to_json(data, size, "value", &j, &err) != 0) {
        if (j != NULL)
            fuzz_fail("output set on failure", NULL);
        if (err.code != TQ_E_BAD_REQUEST && err.code != TQ_E_INVALID_ARGUMENT)
            fuzz_fail("unexpected error code", tq_code_name(err.code));
        if (strncmp(err.message, "value", 5) != 0)
            fuzz_fail("message does not name the path", err.message);
        fuzz_check_message(&err);
        return 0;
    }
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (tq_pack_json(&pk, j) != 0)
        fuzz_fail("pack of converted value failed", NULL);
    if (tq_msgpack_to_json(sb.data, sb.size, "value", &j2, &err) != 0)
        fuzz_fail("re-convert failed", err.message);
    if (!json_equal(j, j2))
        fuzz_fail("JSON round trip differs", NULL);
    json_decref(j);
    json_decref(j2);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
