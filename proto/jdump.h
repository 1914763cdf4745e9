/*
 * jdump.h - a fast writer of compact JSON text from jansson values.
 *
 * Every committed batch serialises its tenant's whole draft for the write;
 * jansson's json_dumps (a callback per token, UTF-8 decoded per code point)
 * was a sixth of the daemon's CPU under many-tenant load.  jdump writes the
 * same bytes as json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY): keys in
 * the object's order, '"', '\\' and control characters escaped exactly as
 * jansson does (\b \f \n \r \t, others \u00XX), other text copied as is
 * (jansson values hold valid UTF-8), integers in decimal, reals as "%.17g"
 * with ".0" added when it would read as an integer and the exponent's '+'
 * and leading zeros dropped.  The unit test compares both byte for byte.
 */
#ifndef TQ_JDUMP_H
#define TQ_JDUMP_H

#include <stddef.h>

#include <jansson.h>

/*
 * The compact JSON text of v (not modified; jansson iterates only non-const
 * objects), NUL-terminated, malloc'd (free() it); its
 * length in *len if len is not NULL.  size_hint: expected length (0 if
 * unknown), to allocate once.  NULL if out of memory or v holds a real that
 * is not finite (jansson cannot hold one either).
 */
char *jdump(json_t *v, size_t size_hint, size_t *len);

/* strlen(jdump(v)) without writing anything, or 0 where jdump gives NULL
 * (a real that is not finite). */
size_t jdump_size(const json_t *v);

#endif
