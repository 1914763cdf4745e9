/*
 * jdump.c - see jdump.h.  One growing buffer, written front to back.
 */
#include "jdump.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct out {
    char *p;
    size_t n, cap;
    bool oom;
    bool count_only;           /* jdump_size: count the bytes, write nothing */
};

static bool reserve(struct out *o, size_t more)
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

static void put(struct out *o, const char *s, size_t n)
{
    if (reserve(o, n)) {
        memcpy(o->p + o->n, s, n);
        o->n += n;
    }
}

static void put_char(struct out *o, char c)
{
    if (reserve(o, 1))
        o->p[o->n++] = c;
}

static void put_string(struct out *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    put_char(o, '"');
    size_t run = 0; /* start of the bytes not copied yet */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(o, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        put(o, esc, len);
    }
    put(o, s + run, n - run);
    put_char(o, '"');
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
    case JSON_INTEGER: {
        char buf[24];
        int len = snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        put(o, buf, (size_t)len);
        return true;
    }
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
