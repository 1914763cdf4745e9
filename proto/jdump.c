/*
 * jdump.c - see jdump.h.  One growing buffer, written front to back.
 */
#include "jdump.h"
#include "jword.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct out {
    char *p;
    size_t n, cap;
    bool oom;
    bool count_only;           /* jdump_size: count the bytes, write nothing */
};

/* Make room for more bytes; false when nothing is to be written (counting,
 * or out of memory).  Counting adds more to o->n here. */
static bool reserve_slow(struct out *o, size_t more)
{
    if (o->count_only) {
        o->n += more;
        return false;          /* nothing to copy */
    }
    if (o->oom)
        return false;
    if (o->n + more <= o->cap)
        return true;
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->n + more)
        cap *= 2;
    char *np = realloc(o->p, cap);
    if (!np) {
        o->oom = true;
        return false;
    }
    o->p = np;
    o->cap = cap;
    return true;
}

/* (the common case inline: a draft is written a few bytes at a time) */
static inline bool reserve(struct out *o, size_t more)
{
    return (o->p != NULL && o->n + more <= o->cap) || reserve_slow(o, more);
}

static void put(struct out *o, const char *s, size_t n)
{
    if (reserve(o, n)) {
        memcpy(o->p + o->n, s, n);
        o->n += n;
    }
}

static inline void put_char(struct out *o, char c)
{
    if (reserve(o, 1))
        o->p[o->n++] = c;
}

static bool needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

/* The offset of the first byte from i on that needs escaping, or n. */
static size_t next_escape(const char *s, size_t i, size_t n)
{
    for (;;) {
        /* text is mostly plain: skip it 8 bytes at a time */
        while (n - i >= 8 && !jword_special(jword_load(s + i)))
            i += 8;
        if (i == n || needs_escape((unsigned char)s[i]))
            return i;
        i++;
    }
}

/* The escape of c (which needs one) into esc; returns its length. */
static size_t escape(unsigned char c, char esc[6])
{
    static const char hex[] = "0123456789ABCDEF";
    esc[0] = '\\';
    switch (c) {
    case '"': esc[1] = '"'; return 2;
    case '\\': esc[1] = '\\'; return 2;
    case '\b': esc[1] = 'b'; return 2;
    case '\f': esc[1] = 'f'; return 2;
    case '\n': esc[1] = 'n'; return 2;
    case '\r': esc[1] = 'r'; return 2;
    case '\t': esc[1] = 't'; return 2;
    default:
        esc[1] = 'u';
        esc[2] = '0';
        esc[3] = '0';
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
}

/* The string in quotes, escaped as jansson does.  Room for the plain case
 * is made once; an escape makes room again for the rest. */
static void put_string(struct out *o, const char *s, size_t n)
{
    char esc[6];
    if (o->count_only) {
        o->n += n + 2;
        for (size_t i = next_escape(s, 0, n); i < n; i = next_escape(s, i + 1, n))
            o->n += escape((unsigned char)s[i], esc) - 1;
        return;
    }
    if (!reserve(o, n + 2))
        return;
    o->p[o->n++] = '"';
    size_t run = 0; /* start of the bytes not copied yet */
    for (size_t i = next_escape(s, 0, n);; i = next_escape(s, i + 1, n)) {
        memcpy(o->p + o->n, s + run, i - run);
        o->n += i - run;
        if (i == n)
            break;
        size_t len = escape((unsigned char)s[i], esc);
        /* the escape, the rest unescaped and the closing quote */
        if (!reserve(o, len + (n - i - 1) + 1))
            return;
        memcpy(o->p + o->n, esc, len);
        o->n += len;
        run = i + 1;
    }
    o->p[o->n++] = '"';
}

/* As "%" JSON_INTEGER_FORMAT prints it, without printf's cost. */
static void put_int(struct out *o, json_int_t v)
{
    char buf[24];
    char *end = buf + sizeof buf, *p = end;
    uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        *--p = '-';
    put(o, p, (size_t)(end - p));
}

/* As jansson's jsonp_dtostr with precision 17. */
static bool put_real(struct out *o, double d)
{
    if (!isfinite(d))
        return false;
    char buf[40];
    int len = snprintf(buf, sizeof buf, "%.17g", d);
    if (len < 0 || (size_t)len >= sizeof buf - 3)
        return false;
    if (!strchr(buf, '.') && !strchr(buf, 'e')) {
        buf[len++] = '.';
        buf[len++] = '0';
        buf[len] = '\0';
    }
    /* "1e+20" -> "1e20", "1e-05" -> "1e-5" */
    char *e = strchr(buf, 'e');
    if (e) {
        char *start = e + 1;     /* the exponent's sign */
        char *end = start + 1;   /* its first digit */
        if (*start == '-')
            start++;             /* a '-' stays */
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, (size_t)len - (size_t)(end - buf) + 1);
            len -= (int)(end - start);
        }
    }
    put(o, buf, (size_t)len);
    return true;
}

static bool put_value(struct out *o, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        put_char(o, '{');
        bool first = true;
        const char *key;
        size_t klen;
        json_t *val;
        void *tmp;
        json_object_keylen_foreach_safe(v, tmp, key, klen, val)
        {
            if (!first)
                put_char(o, ',');
            first = false;
            put_string(o, key, klen);
            put_char(o, ':');
            if (!put_value(o, val))
                return false;
        }
        put_char(o, '}');
        return true;
    }
    case JSON_ARRAY: {
        put_char(o, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i > 0)
                put_char(o, ',');
            if (!put_value(o, json_array_get(v, i)))
                return false;
        }
        put_char(o, ']');
        return true;
    }
    case JSON_STRING:
        put_string(o, json_string_value(v), json_string_length(v));
        return true;
    case JSON_INTEGER:
        put_int(o, json_integer_value(v));
        return true;
    case JSON_REAL:
        return put_real(o, json_real_value(v));
    case JSON_TRUE:
        put(o, "true", 4);
        return true;
    case JSON_FALSE:
        put(o, "false", 5);
        return true;
    case JSON_NULL:
        put(o, "null", 4);
        return true;
    }
    return false;
}

size_t jdump_size(const json_t *v)
{
    /* jansson iterates only non-const values; nothing is modified here */
    union {
        const json_t *c;
        json_t *m;
    } u = {.c = v};
    struct out o = {.count_only = true};
    return v && put_value(&o, u.m) ? o.n : 0;
}

char *jdump(json_t *v, size_t size_hint, size_t *len)
{
    struct out o = {0};
    if (size_hint > 0 && !reserve(&o, size_hint + 1))
        return NULL;
    if (!v || !put_value(&o, v) || !reserve(&o, 1)) {
        free(o.p);
        return NULL;
    }
    o.p[o.n] = '\0';
    if (len)
        *len = o.n;
    return o.p;
}
