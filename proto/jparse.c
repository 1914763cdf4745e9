/*
 * jparse.c - see jparse.h.  Recursive descent over the text; a string
 * without escapes is validated and copied once, straight from the text.
 */
#include "jparse.h"
#include "jword.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_proto.h"

struct jp {
    const char *start, *p, *end;
    int depth;
    unsigned flags;            /* JPARSE_* */
    bool big;
    bool failed;
    char *err;
    size_t errlen;
    char *buf;                 /* unescaped string, reused */
    size_t cap;
};

static json_t *fail(struct jp *j, const char *what)
{
    if (!j->failed && j->errlen > 0)
        snprintf(j->err, j->errlen, "%s at byte %zu", what, (size_t)(j->p - j->start));
    j->failed = true;
    return NULL;
}

static void skip_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

/* Skip whitespace, then c if it comes next; returns whether it did. */
static bool eat(struct jp *j, char c)
{
    skip_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static int hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* One \uXXXX escape (j->p after the 'u'), with its low surrogate if it is a
 * high one; appends the UTF-8 to o.  Returns bytes written or 0 on error. */
static size_t unicode_escape(struct jp *j, char *o)
{
    unsigned cp, lo;
    if (hex4(j->p, j->end, &cp) < 0)
        return fail(j, "invalid \\u escape"), 0;
    j->p += 4;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return fail(j, "lone low surrogate in \\u escape"), 0;
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u' ||
            hex4(j->p + 2, j->end, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
            return fail(j, "high surrogate without a low one in \\u escape"), 0;
        j->p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (cp == 0)
        return fail(j, "\\u0000 is not allowed"), 0;
    return put_utf8(o, cp);
}

/* A string; j->p is just past the opening quote.  Sets s and n to its bytes, either
 * inside the text or in j->buf (valid until the next string). */
static int parse_string(struct jp *j, const char **s, size_t *n)
{
    const char *q = j->p;
    while (j->end - q >= 8 && !jword_special(jword_load(q)))
        q += 8;
    while (q < j->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
        q++;
    if (q >= j->end)
        return fail(j, "unterminated string"), -1;
    if (*q == '"') {
        if (!tq_utf8_valid(j->p, (size_t)(q - j->p)))
            return fail(j, "invalid UTF-8 in string"), -1;
        *s = j->p;
        *n = (size_t)(q - j->p);
        j->p = q + 1;
        return 0;
    }
    /* escapes: the result is never longer than the rest of the text */
    size_t need = (size_t)(j->end - j->p);
    if (need > j->cap) {
        char *nb = realloc(j->buf, need);
        if (!nb)
            return fail(j, "out of memory"), -1;
        j->buf = nb;
        j->cap = need;
    }
    size_t len = (size_t)(q - j->p);
    memcpy(j->buf, j->p, len);
    j->p = q;
    for (;;) {
        if (j->p >= j->end)
            return fail(j, "unterminated string"), -1;
        unsigned char c = (unsigned char)*j->p;
        if (c == '"')
            break;
        if (c < 0x20)
            return fail(j, "control character in string"), -1;
        if (c != '\\') {
            j->buf[len++] = (char)c;
            j->p++;
            continue;
        }
        if (++j->p >= j->end)
            return fail(j, "unterminated string"), -1;
        char e = *j->p++;
        switch (e) {
        case '"': case '\\': case '/':
            j->buf[len++] = e;
            break;
        case 'b': j->buf[len++] = '\b'; break;
        case 'f': j->buf[len++] = '\f'; break;
        case 'n': j->buf[len++] = '\n'; break;
        case 'r': j->buf[len++] = '\r'; break;
        case 't': j->buf[len++] = '\t'; break;
        case 'u': {
            size_t w = unicode_escape(j, j->buf + len);
            if (w == 0)
                return -1;
            len += w;
            break;
        }
        default:
            j->p--;
            return fail(j, "invalid escape in string"), -1;
        }
    }
    if (!tq_utf8_valid(j->buf, len))
        return fail(j, "invalid UTF-8 in string"), -1;
    j->p++;
    *s = j->buf;
    *n = len;
    return 0;
}

static json_t *parse_number(struct jp *j)
{
    const char *s = j->p, *p = s;
    bool integer = true;
    if (p < j->end && *p == '-')
        p++;
    if (p < j->end && *p == '0') {
        p++;
    } else if (p < j->end && *p >= '1' && *p <= '9') {
        while (p < j->end && is_digit(*p))
            p++;
    } else {
        return fail(j, "invalid number");
    }
    if (p < j->end && *p == '.') {
        integer = false;
        if (++p >= j->end || !is_digit(*p))
            return fail(j, "invalid number");
        while (p < j->end && is_digit(*p))
            p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        integer = false;
        p++;
        if (p < j->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= j->end || !is_digit(*p))
            return fail(j, "invalid number");
        while (p < j->end && is_digit(*p))
            p++;
    }
    size_t n = (size_t)(p - s);
    char small[64];
    char *text = n < sizeof small ? small : malloc(n + 1);
    if (!text)
        return fail(j, "out of memory");
    memcpy(text, s, n);
    text[n] = '\0';
    json_t *v = NULL;
    bool real = !integer;
    if (integer) {
        errno = 0;
        long long ll = strtoll(text, NULL, 10);
        if (errno == 0) {
            v = json_integer((json_int_t)ll);
        } else {
            j->big = true; /* beyond int64: a real */
            real = true;
        }
    }
    if (real) {
        errno = 0;
        double d = strtod(text, NULL);
        if (errno == ERANGE && isinf(d)) {
            if (text != small)
                free(text);
            return fail(j, "real number overflow");
        }
        v = json_real(d);
    }
    if (text != small)
        free(text);
    if (!v)
        return fail(j, "out of memory");
    j->p = p;
    return v;
}

static json_t *parse_value(struct jp *j);

/* Step into the array or object that opens at j->p: count the depth, skip
 * the bracket and make the empty value (make: json_array or json_object).
 * NULL when nested too deep or out of memory. */
static json_t *enter(struct jp *j, json_t *(*make)(void))
{
    if (++j->depth > JPARSE_MAX_DEPTH)
        return fail(j, "nesting too deep");
    j->p++;
    json_t *v = make();
    return v ? v : fail(j, "out of memory");
}

static json_t *parse_array(struct jp *j)
{
    json_t *arr = enter(j, json_array);
    if (!arr)
        return NULL;
    if (eat(j, ']')) {
        j->depth--;
        return arr;
    }
    for (;;) {
        json_t *v = parse_value(j);
        if (!v || json_array_append_new(arr, v) < 0) {
            json_decref(arr);
            return v ? fail(j, "out of memory") : NULL;
        }
        if (eat(j, ','))
            continue;
        if (eat(j, ']'))
            break;
        json_decref(arr);
        return fail(j, "expected ',' or ']'");
    }
    j->depth--;
    return arr;
}

static json_t *parse_object(struct jp *j)
{
    json_t *obj = enter(j, json_object);
    if (!obj)
        return NULL;
    if (eat(j, '}')) {
        j->depth--;
        return obj;
    }
    for (;;) {
        skip_ws(j);
        if (j->p >= j->end || *j->p != '"') {
            json_decref(obj);
            return fail(j, "expected a string key");
        }
        const char *key_at = j->p++;
        const char *k;
        size_t kn;
        if (parse_string(j, &k, &kn) < 0) {
            json_decref(obj);
            return NULL;
        }
        /* an unescaped key lives in j->buf, which the value may reuse */
        char *kcopy = NULL;
        if (k == j->buf) {
            kcopy = malloc(kn ? kn : 1);
            if (!kcopy) {
                json_decref(obj);
                return fail(j, "out of memory");
            }
            memcpy(kcopy, k, kn);
            k = kcopy;
        }
        json_t *v = NULL;
        if (eat(j, ':'))
            v = parse_value(j);
        else
            fail(j, "expected ':'");
        size_t before = json_object_size(obj);
        int rc = v ? json_object_setn_new_nocheck(obj, k, kn, v) : -1;
        free(kcopy);
        if (rc < 0) {
            json_decref(obj);
            return v ? fail(j, "out of memory") : NULL;
        }
        if ((j->flags & JPARSE_REJECT_DUPLICATES) && json_object_size(obj) == before) {
            json_decref(obj);
            j->p = key_at; /* the offset names the repeated key */
            return fail(j, "duplicate object key");
        }
        if (eat(j, ','))
            continue;
        if (eat(j, '}'))
            break;
        json_decref(obj);
        return fail(j, "expected ',' or '}'");
    }
    j->depth--;
    return obj;
}

static json_t *literal(struct jp *j, const char *word, size_t n, json_t *v)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return fail(j, "invalid literal");
    j->p += n;
    return v;
}

static json_t *parse_value(struct jp *j)
{
    skip_ws(j);
    if (j->p >= j->end)
        return fail(j, "unexpected end of text");
    switch (*j->p) {
    case '{':
        return parse_object(j);
    case '[':
        return parse_array(j);
    case '"': {
        j->p++;
        const char *s;
        size_t n;
        if (parse_string(j, &s, &n) < 0)
            return NULL;
        json_t *v = json_stringn_nocheck(s, n);
        return v ? v : fail(j, "out of memory");
    }
    case 't':
        return literal(j, "true", 4, json_true());
    case 'f':
        return literal(j, "false", 5, json_false());
    case 'n':
        return literal(j, "null", 4, json_null());
    default:
        if (*j->p == '-' || is_digit(*j->p))
            return parse_number(j);
        return fail(j, "unexpected character");
    }
}

json_t *jparse(const char *text, size_t len, bool *big_ints, char *err, size_t errlen)
{
    return jparse_with(text, len, 0, big_ints, err, errlen);
}

json_t *jparse_with(const char *text, size_t len, unsigned flags, bool *big_ints, char *err,
                    size_t errlen)
{
    struct jp j = {.start = text, .p = text, .end = text + len, .flags = flags, .err = err,
                   .errlen = errlen};
    if (errlen > 0)
        err[0] = '\0';
    json_t *v = parse_value(&j);
    if (v) {
        skip_ws(&j);
        if (j.p != j.end) {
            json_decref(v);
            v = fail(&j, "trailing characters after the JSON value");
        }
    }
    free(j.buf);
    if (v && big_ints)
        *big_ints = j.big;
    return v;
}
