/*
 * fuzz_jparse.c - libFuzzer target for jparse (proto/jparse.h), the parser
 * of the drafts PostgreSQL returns and of libtenantq's args text: on any
 * input it must agree with jansson (tests/unit/jparse_diff.h: same value or
 * both refuse, also when refusing repeated keys; integers beyond int64 are
 * the one allowed difference), never crash, leak or read past the given
 * length (the input is not NUL-terminated).
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "jparse_diff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *why = jparse_diff((const char *)data, size);
    if (why)
        fuzz_fail(why, NULL);
    return 0;
}
