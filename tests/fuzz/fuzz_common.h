/*
 * fuzz_common.h - invariants shared by the codec's libFuzzer targets.
 *
 * A target reports a bug by calling fuzz_fail(), which aborts so that
 * libFuzzer saves the input as a crash-* file.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "tq_proto.h"

static inline void fuzz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz invariant violated: %s (%s)\n", what, detail ? detail : "");
    abort();
}

/* Error messages are single-line text and never empty (PROTOCOL.md). */
static inline void fuzz_check_message(const tq_error *err)
{
    const unsigned char *p = (const unsigned char *)err->message;
    if (*p == '\0')
        fuzz_fail("empty error message", NULL);
    for (; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == 0xc0 || *p == 0xc1 || *p >= 0xf5)
            fuzz_fail("error message contains a raw/control byte", err->message);
}

#endif
