/*
 * jparse.h - a fast parser of JSON text into jansson values.
 *
 * The stored drafts come back from PostgreSQL as jsonb's text, several KB
 * per tenant and batch; jansson's own parser (a byte-at-a-time stream
 * lexer) was a third of the daemon's CPU under many-tenant load, while
 * building the same values through jansson's API costs a fifth of that.
 * This parser scans the text directly and builds the values with jansson's
 * constructors, so the rest of the code keeps working on json_t.
 *
 * Accepts exactly what json_loadb(..., JSON_DECODE_ANY) accepts (RFC 8259
 * text: any value at the top, whitespace around it and nothing else;
 * strings of valid UTF-8 with no U+0000; numbers per the RFC's grammar; at
 * most JPARSE_MAX_DEPTH nested arrays/objects; a repeated key: the last
 * wins), with two deliberate differences: an integer beyond int64, which
 * jansson refuses, becomes a real and sets *big_ints; and a NUL byte
 * anywhere is refused (jansson stops reading at the first one and accepts
 * what came before).  The fuzz target fuzz_jparse checks the equivalence
 * against jansson on arbitrary input.
 */
#ifndef TQ_JPARSE_H
#define TQ_JPARSE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define JPARSE_MAX_DEPTH 2048

/*
 * Parse len bytes of text.  Returns a new reference, or NULL with a message
 * in err (errlen bytes, may be 0) naming what was wrong and the byte offset.
 * big_ints may be NULL.
 */
json_t *jparse(const char *text, size_t len, bool *big_ints, char *err, size_t errlen);

/* jparse with flags (0: as jparse).  JPARSE_REJECT_DUPLICATES refuses an
 * object with a repeated key, as json_loadb(..., JSON_REJECT_DUPLICATES)
 * does, instead of letting the last one win: what a caller's text that
 * becomes a msgpack map (libtenantq's args) needs. */
#define JPARSE_REJECT_DUPLICATES 1u
json_t *jparse_with(const char *text, size_t len, unsigned flags, bool *big_ints, char *err,
                    size_t errlen);

#endif
