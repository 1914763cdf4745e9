/*
 * jword.h - JSON string text 8 bytes at a time (internal to proto/: jparse,
 * jdump and the UTF-8 check).  Drafts are mostly plain ASCII text; these
 * word tests let the scanners skip it a word at a time instead of a byte.
 */
#ifndef TQ_JWORD_H
#define TQ_JWORD_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define JWORD_ONES UINT64_C(0x0101010101010101)
#define JWORD_HIGHS UINT64_C(0x8080808080808080)

/* The 8 bytes at p, in any alignment. */
static inline uint64_t jword_load(const void *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* Whether one of w's bytes needs escaping in JSON text: below 0x20, '"' or
 * '\\' (the "has a byte less than n" and "has a zero byte" word tricks;
 * bytes from 0x80 up, UTF-8 sequences, never match). */
static inline bool jword_special(uint64_t w)
{
    uint64_t quote = w ^ (JWORD_ONES * '"'), bslash = w ^ (JWORD_ONES * '\\');
    return (((w - JWORD_ONES * 0x20) | (quote - JWORD_ONES) | (bslash - JWORD_ONES)) & ~w &
            JWORD_HIGHS) != 0;
}

/* Whether all of w's bytes are ASCII. */
static inline bool jword_ascii(uint64_t w)
{
    return (w & JWORD_HIGHS) == 0;
}

#endif
