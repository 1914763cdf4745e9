/*
 * idem.c - request fingerprints and text[] literals for idempotency records.
 *
 * The fingerprint is two 64-bit FNV-1a streams (different offsets) over a
 * canonical token stream of the JSON tree: a type tag per value, lengths
 * before every string, object members in sorted key order.  It tells a
 * client's honest repeat from a reuse of its key with other args; it is not
 * a defence against an adversary crafting collisions with their own keys,
 * which could only ever confuse their own requests.
 */
#include "idem.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fp {
    uint64_t a, b;
};

static void fp_bytes(struct fp *h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h->a = (h->a ^ p[i]) * 0x100000001b3ULL;
        h->b = (h->b ^ p[i]) * 0x100000001b3ULL;
    }
}

static void fp_u64(struct fp *h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    fp_bytes(h, b, sizeof b);
}

static void fp_str(struct fp *h, const char *s, size_t len)
{
    fp_u64(h, len);
    fp_bytes(h, s, len);
}

static int cmp_keys(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static int fp_value(struct fp *h, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        const char **keys = malloc((n ? n : 1) * sizeof *keys);
        if (!keys)
            return -1;
        const char *k;
        json_t *child;
        json_object_foreach((json_t *)(uintptr_t)v, k, child)
            keys[i++] = k;
        qsort(keys, n, sizeof *keys, cmp_keys);
        fp_bytes(h, "{", 1);
        fp_u64(h, n);
        int rc = 0;
        for (i = 0; i < n && rc == 0; i++) {
            fp_str(h, keys[i], strlen(keys[i]));
            rc = fp_value(h, json_object_get(v, keys[i]));
        }
        free(keys);
        return rc;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *child;
        fp_bytes(h, "[", 1);
        fp_u64(h, json_array_size(v));
        json_array_foreach(v, i, child)
            if (fp_value(h, child) < 0)
                return -1;
        return 0;
    }
    case JSON_STRING:
        fp_bytes(h, "s", 1);
        fp_str(h, json_string_value(v), json_string_length(v));
        return 0;
    case JSON_INTEGER:
        fp_bytes(h, "i", 1);
        fp_u64(h, (uint64_t)json_integer_value(v));
        return 0;
    case JSON_REAL: {
        double d = json_real_value(v);
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        fp_bytes(h, "r", 1);
        fp_u64(h, bits);
        return 0;
    }
    case JSON_TRUE:
        fp_bytes(h, "t", 1);
        return 0;
    case JSON_FALSE:
        fp_bytes(h, "f", 1);
        return 0;
    case JSON_NULL:
        fp_bytes(h, "n", 1);
        return 0;
    }
    return -1;
}

int idem_fingerprint(const char *op, const json_t *args, char out[IDEM_FINGERPRINT_HEX])
{
    struct fp h = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
    fp_str(&h, op, strlen(op));
    json_t *none = args ? NULL : json_object(); /* no args are {} */
    int rc = fp_value(&h, args ? args : none);
    json_decref(none);
    if (rc < 0)
        return -1;
    snprintf(out, IDEM_FINGERPRINT_HEX, "%016" PRIx64 "%016" PRIx64, h.a, h.b);
    return 0;
}

static int reserve(struct pg_text_array *a, size_t more)
{
    if (a->len + more + 2 <= a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 256;
    while (cap < a->len + more + 2)
        cap *= 2;
    char *p = realloc(a->buf, cap);
    if (!p)
        return -1;
    a->buf = p;
    a->cap = cap;
    return 0;
}

int pg_text_array_add(struct pg_text_array *a, const char *s)
{
    size_t len = strlen(s);
    /* worst case every byte escaped, plus quotes, comma and the braces */
    if (reserve(a, 2 * len + 4) < 0)
        return -1;
    a->buf[a->len++] = a->n == 0 ? '{' : ',';
    a->buf[a->len++] = '"';
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\')
            a->buf[a->len++] = '\\';
        a->buf[a->len++] = s[i];
    }
    a->buf[a->len++] = '"';
    a->n++;
    return 0;
}

const char *pg_text_array_get(struct pg_text_array *a)
{
    if (reserve(a, 2) < 0)
        return NULL;
    if (a->n == 0) {
        memcpy(a->buf, "{}", 3);
        return a->buf;
    }
    a->buf[a->len] = '}';
    a->buf[a->len + 1] = '\0';
    return a->buf;
}

void pg_text_array_free(struct pg_text_array *a)
{
    free(a->buf);
    memset(a, 0, sizeof *a);
}
