/*
 * codec.c - strict msgpack codec of wire protocol v1 (PROTOCOL.md).
 *
 * Decoding is two-pass.  First prescan() walks the raw bytes with an explicit
 * stack and rejects everything msgpack-c would mishandle: truncation, trailing
 * bytes, the reserved byte 0xc1, nesting deeper than TQ_MAX_DEPTH and
 * container headers that claim more elements than bytes remain (msgpack-c
 * preallocates 24/48 bytes per claimed element before reading any of them,
 * before reading any).  Only a buffer that passed is given to
 * msgpack_unpack_next, whose objects are then validated and converted into
 * jansson trees or copied strings.  No msgpack object escapes this file.
 *
 * Messages put into tq_error never quote raw input bytes: they name fields,
 * lengths and offsets.  Map keys appear in paths only after UTF-8 validation
 * and with control characters replaced.
 *
 * Pure: no I/O, no global state.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_proto.h"
#include "jword.h"

int tq_error_set(tq_error *err, tq_code code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ------------------------------------------------------------------ text */

bool tq_utf8_valid(const void *text, size_t n)
{
    const unsigned char *s = text;
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8 && jword_ascii(jword_load(s + i))) {
            i += 8;
            continue;
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf; /* range of the 2nd byte */
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;  /* overlong */
            else if (c == 0xed)
                hi = 0x9f;  /* surrogates U+D800..DFFF */
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;  /* overlong */
            else if (c == 0xf4)
                hi = 0x8f;  /* > U+10FFFF */
        } else {
            return false;   /* continuation byte, C0/C1 overlong, F5..FF */
        }
        if (n - i - 1 < need)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

/* Offset of the first control character (C0, DEL, C1) in valid UTF-8, or
 * (size_t)-1.  C1 controls are U+0080..U+009F, encoded as C2 80..C2 9F. */
static size_t find_control(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return i;
        if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return i;
    }
    return (size_t)-1;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p != NULL && n > 0) {
        memcpy(p, s, n);
        p[n] = '\0';
    } else if (p != NULL) {
        p[0] = '\0';
    }
    return p;
}

/* ------------------------------------------------------------ pre-scan */

static uint64_t be_read(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/*
 * Walk exactly one msgpack value at the start of p[0..len).  On success
 * *consumed is its size (the caller decides about trailing bytes).  Checks
 * every header against the bytes that are really there, so that nothing
 * downstream ever allocates for data that does not exist: the sum of all
 * elements still owed by open containers never exceeds the bytes left.
 */
static int prescan(const unsigned char *p, size_t len, size_t *consumed, const char *what,
                   tq_code code, tq_error *err)
{
    uint64_t owed[TQ_MAX_DEPTH + 1]; /* elements still to read, per open level */
    uint64_t owed_total = 1;
    int top = 0;
    size_t pos = 0;

    if (len == 0)
        return tq_error_set(err, code, "%s: empty message (expected one msgpack map)", what);
    owed[0] = 1;
    for (;;) {
        while (top >= 0 && owed[top] == 0)
            top--;
        if (top < 0)
            break;
        owed[top]--;
        owed_total--;
        if (pos >= len)
            return tq_error_set(err, code, "%s: truncated msgpack (input ends at offset %zu)",
                                what, pos);

        size_t start = pos;
        unsigned char b = p[pos++];
        size_t lenbytes = 0;   /* size of a following length/count field */
        uint64_t payload = 0;  /* raw bytes after the header */
        uint64_t elems = 0;    /* container elements (maps: 2 per entry) */
        bool container = false;

        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool: the byte is the value */
        } else if (b >= 0x80 && b <= 0x8f) {
            container = true;
            elems = 2u * (b & 0x0fu);
        } else if (b >= 0x90 && b <= 0x9f) {
            container = true;
            elems = b & 0x0fu;
        } else if (b >= 0xa0 && b <= 0xbf) {
            payload = b & 0x1fu;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;                    /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;                    /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;                    /* bin32, str32 */
            case 0xc7: lenbytes = 1; payload = 1; break;                  /* ext8 (+type) */
            case 0xc8: lenbytes = 2; payload = 1; break;                  /* ext16 */
            case 0xc9: lenbytes = 4; payload = 1; break;                  /* ext32 */
            case 0xca: payload = 4; break;                                /* float32 */
            case 0xcb: payload = 8; break;                                /* float64 */
            case 0xcc: case 0xd0: payload = 1; break;                     /* (u)int8 */
            case 0xcd: case 0xd1: payload = 2; break;
            case 0xce: case 0xd2: payload = 4; break;
            case 0xcf: case 0xd3: payload = 8; break;
            case 0xd4: payload = 2; break;                                /* fixext1..16 */
            case 0xd5: payload = 3; break;
            case 0xd6: payload = 5; break;
            case 0xd7: payload = 9; break;
            case 0xd8: payload = 17; break;
            case 0xdc: container = true; lenbytes = 2; break;             /* array16 */
            case 0xdd: container = true; lenbytes = 4; break;             /* array32 */
            case 0xde: container = true; lenbytes = 2; break;             /* map16 */
            case 0xdf: container = true; lenbytes = 4; break;             /* map32 */
            default: /* 0xc1 is reserved ("never used") */
                return tq_error_set(err, code,
                                    "%s: invalid msgpack type byte 0x%02x at offset %zu",
                                    what, b, start);
            }
        }
        if (lenbytes > 0) {
            if (len - pos < lenbytes)
                return tq_error_set(err, code,
                                    "%s: truncated msgpack header at offset %zu", what, start);
            uint64_t n = be_read(p + pos, lenbytes);
            pos += lenbytes;
            if (!container)
                payload += n;
            else if (b == 0xde || b == 0xdf)
                elems = 2 * n;
            else
                elems = n;
        }
        if (payload > len - pos)
            return tq_error_set(err, code,
                                "%s: truncated msgpack: value at offset %zu needs %" PRIu64
                                " bytes, %zu remain", what, start, payload, len - pos);
        pos += (size_t)payload;
        if (!container)
            continue;
        if (top + 1 > TQ_MAX_DEPTH)
            return tq_error_set(err, code,
                                "%s: nesting deeper than %d levels at offset %zu", what,
                                TQ_MAX_DEPTH, start);
        /* every owed element needs at least one byte */
        if (elems > len - pos || owed_total + elems > len - pos)
            return tq_error_set(err, code,
                                "%s: container at offset %zu claims %" PRIu64
                                " elements but only %zu bytes remain", what, start,
                                (b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf
                                    ? elems / 2 : elems,
                                len - pos);
        if (elems > 0) {
            owed[++top] = elems;
            owed_total += elems;
        }
    }
    *consumed = pos;
    return 0;
}

/* Pre-scan, then unpack with msgpack-c.  On success the caller owns *up and
 * must msgpack_unpacked_destroy it; on failure nothing is left to free. */
static int unpack_strict(const void *buf, size_t len, const char *what, tq_code code,
                         msgpack_unpacked *up, tq_error *err)
{
    size_t consumed = 0;
    if (buf == NULL && len > 0)
        return tq_error_set(err, code, "%s: no buffer", what);
    if (prescan(buf, len, &consumed, what, code, err) != 0)
        return -1;
    if (consumed != len)
        return tq_error_set(err, code,
                            "%s: %zu trailing bytes after the msgpack value (which ends at"
                            " offset %zu)", what, len - consumed, consumed);
    msgpack_unpacked_init(up);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(up, buf, len, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len) {
        msgpack_unpacked_destroy(up);
        return tq_error_set(err, code, "%s: msgpack could not be unpacked (error %d at offset"
                            " %zu)", what, (int)rc, off);
    }
    return 0;
}

static const char *type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "a negative integer";
    case MSGPACK_OBJECT_FLOAT32: return "a float32";
    case MSGPACK_OBJECT_FLOAT64: return "a float64";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_BIN: return "bin data";
    case MSGPACK_OBJECT_EXT: return "an ext value";
    }
    return "an unknown type";
}

/* -------------------------------------------------------- msgpack -> JSON */

/* Dotted path of the value being converted, for error messages. */
struct path {
    char buf[200];
    size_t len;
    bool truncated;
};

struct path_mark {
    size_t len;
    bool truncated;
};

static struct path_mark path_mark(const struct path *p)
{
    return (struct path_mark){p->len, p->truncated};
}

static void path_reset(struct path *p, struct path_mark m)
{
    p->len = m.len;
    p->truncated = m.truncated;
    p->buf[p->len] = '\0';
}

/* Append bytes that are valid UTF-8, whole code points only, replacing
 * control characters by '?' so messages stay single-line text. */
static void path_append(struct path *p, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t room = sizeof p->buf - 4; /* keep space for "..." + NUL */
    size_t i = 0;
    if (p->truncated)
        return;
    while (i < n) {
        size_t cl = u[i] < 0x80 ? 1 : u[i] < 0xe0 ? 2 : u[i] < 0xf0 ? 3 : 4;
        if (cl > n - i)
            cl = n - i;
        if (p->len + cl > room) {
            memcpy(p->buf + p->len, "...", 3);
            p->len += 3;
            p->truncated = true;
            break;
        }
        if (u[i] < 0x20 || u[i] == 0x7f || (cl == 2 && u[i] == 0xc2 && u[i + 1] <= 0x9f)) {
            p->buf[p->len++] = '?';
        } else {
            memcpy(p->buf + p->len, s + i, cl);
            p->len += cl;
        }
        i += cl;
    }
    p->buf[p->len] = '\0';
}

static void path_push_index(struct path *p, uint32_t idx)
{
    char tmp[16];
    int n = snprintf(tmp, sizeof tmp, "[%" PRIu32 "]", idx);
    path_append(p, tmp, (size_t)n);
}

static void path_push_key(struct path *p, const char *k, size_t n)
{
    path_append(p, ".", 1);
    path_append(p, k, n);
}

static json_t *oom(tq_error *err, const struct path *p)
{
    tq_error_set(err, TQ_E_INTERNAL, "%s: out of memory", p->buf);
    return NULL;
}

/* Convert one validated-by-prescan object.  Depth is bounded by prescan, so
 * recursion is bounded by TQ_MAX_DEPTH. */
static json_t *obj_to_json(const msgpack_object *o, struct path *p, tq_code code, tq_error *err)
{
    json_t *j;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX) {
            tq_error_set(err, code, "%s: integer %" PRIu64 " is beyond the int64 range",
                         p->buf, o->via.u64);
            return NULL;
        }
        j = json_integer((json_int_t)o->via.u64);
        return j != NULL ? j : oom(err, p);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        j = json_integer((json_int_t)o->via.i64);
        return j != NULL ? j : oom(err, p);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64)) {
            tq_error_set(err, code, "%s: NaN and infinite floats cannot be represented in JSON",
                         p->buf);
            return NULL;
        }
        j = json_real(o->via.f64);
        return j != NULL ? j : oom(err, p);
    case MSGPACK_OBJECT_STR:
        if (!tq_utf8_valid(o->via.str.ptr, o->via.str.size)) {
            tq_error_set(err, code, "%s: string of %" PRIu32 " bytes is not valid UTF-8",
                         p->buf, o->via.str.size);
            return NULL;
        }
        /* jansson's C-string APIs and PostgreSQL jsonb both break on U+0000 */
        if (o->via.str.size > 0 && memchr(o->via.str.ptr, 0, o->via.str.size) != NULL) {
            tq_error_set(err, code, "%s: strings must not contain U+0000 (NUL)", p->buf);
            return NULL;
        }
        /* msgpack-c leaves ptr NULL for "", which jansson would refuse */
        j = json_stringn_nocheck(o->via.str.size > 0 ? o->via.str.ptr : "", o->via.str.size);
        return j != NULL ? j : oom(err, p);
    case MSGPACK_OBJECT_BIN:
        tq_error_set(err, code, "%s: binary data (bin, %" PRIu32 " bytes) cannot be represented"
                     " in JSON", p->buf, o->via.bin.size);
        return NULL;
    case MSGPACK_OBJECT_EXT:
        tq_error_set(err, code, "%s: msgpack ext type %d cannot be represented in JSON",
                     p->buf, (int)o->via.ext.type);
        return NULL;
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        if (a == NULL)
            return oom(err, p);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            struct path_mark m = path_mark(p);
            path_push_index(p, i);
            json_t *c = obj_to_json(&o->via.array.ptr[i], p, code, err);
            if (c == NULL || json_array_append_new(a, c) != 0) {
                if (c != NULL)
                    oom(err, p);
                json_decref(a);
                return NULL;
            }
            path_reset(p, m);
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *obj = json_object();
        if (obj == NULL)
            return oom(err, p);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                tq_error_set(err, code, "%s: map key #%" PRIu32 " is %s, but JSON object keys"
                             " must be strings", p->buf, i + 1, type_name(kv->key.type));
                goto map_fail;
            }
            size_t kn = kv->key.via.str.size;
            const char *k = kn > 0 ? kv->key.via.str.ptr : ""; /* ptr may be NULL */
            if (!tq_utf8_valid(k, kn)) {
                tq_error_set(err, code, "%s: map key #%" PRIu32 " (%zu bytes) is not valid UTF-8",
                             p->buf, i + 1, kn);
                goto map_fail;
            }
            if (kn > 0 && memchr(k, 0, kn) != NULL) {
                tq_error_set(err, code, "%s: map key #%" PRIu32 " contains U+0000 (NUL)",
                             p->buf, i + 1);
                goto map_fail;
            }
            struct path_mark m = path_mark(p);
            path_push_key(p, k, kn);
            if (json_object_getn(obj, k, kn) != NULL) {
                tq_error_set(err, code, "%s: duplicate map key", p->buf);
                goto map_fail;
            }
            json_t *c = obj_to_json(&kv->val, p, code, err);
            if (c == NULL)
                goto map_fail;
            if (json_object_setn_new_nocheck(obj, k, kn, c) != 0) {
                oom(err, p);
                goto map_fail;
            }
            path_reset(p, m);
        }
        return obj;
    map_fail:
        json_decref(obj);
        return NULL;
    }
    }
    tq_error_set(err, code, "%s: unknown msgpack type %d", p->buf, (int)o->type);
    return NULL;
}

static json_t *convert(const msgpack_object *o, const char *name, tq_code code, tq_error *err)
{
    struct path p = {.len = 0, .truncated = false};
    p.buf[0] = '\0';
    path_append(&p, name, strlen(name));
    return obj_to_json(o, &p, code, err);
}

int tq_msgpack_to_json(const void *buf, size_t len, const char *path, json_t **out,
                       tq_error *err)
{
    msgpack_unpacked up;
    const char *name = path != NULL ? path : "value";
    *out = NULL;
    if (unpack_strict(buf, len, name, TQ_E_BAD_REQUEST, &up, err) != 0)
        return -1;
    json_t *j = convert(&up.data, name, TQ_E_INVALID_ARGUMENT, err);
    msgpack_unpacked_destroy(&up);
    if (j == NULL)
        return -1;
    *out = j;
    return 0;
}

/* ----------------------------------------------------------- map fields */

static int cmp_str(const void *a, const void *b)
{
    const msgpack_object_str *x = *(const msgpack_object_str *const *)a;
    const msgpack_object_str *y = *(const msgpack_object_str *const *)b;
    size_t n = x->size < y->size ? x->size : y->size;
    int c = n > 0 ? memcmp(x->ptr, y->ptr, n) : 0;
    if (c != 0)
        return c;
    return x->size < y->size ? -1 : x->size > y->size;
}

/*
 * Index the entries of a protocol map (envelope, error, timing): every key
 * must be a string and unique; vals[i] gets the value whose key equals
 * names[i] or NULL.  Unknown keys are ignored.
 */
static int map_fields(const msgpack_object_map *m, const char *what, const char *const *names,
                      size_t nnames, const msgpack_object **vals, tq_code code, tq_error *err)
{
    for (size_t j = 0; j < nnames; j++)
        vals[j] = NULL;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            return tq_error_set(err, code, "%s: key #%" PRIu32 " is %s, keys must be strings",
                                what, i + 1, type_name(k->type));
        for (size_t j = 0; j < nnames; j++) {
            if (k->via.str.size == strlen(names[j]) &&
                memcmp(k->via.str.ptr, names[j], k->via.str.size) == 0) {
                if (vals[j] != NULL)
                    return tq_error_set(err, code, "%s: duplicate key \"%s\"", what, names[j]);
                vals[j] = &m->ptr[i].val;
            }
        }
    }
    if (m->size < 2)
        return 0;
    /* Unknown keys are ignored but must still be unique; sorting keeps this
     * O(n log n) for hostile maps with many entries. */
    const msgpack_object_str **keys = malloc(m->size * sizeof *keys);
    if (keys == NULL)
        return tq_error_set(err, TQ_E_INTERNAL, "%s: out of memory", what);
    for (uint32_t i = 0; i < m->size; i++)
        keys[i] = &m->ptr[i].key.via.str;
    qsort(keys, m->size, sizeof *keys, cmp_str);
    int rc = 0;
    for (uint32_t i = 1; i < m->size; i++) {
        if (cmp_str(&keys[i - 1], &keys[i]) == 0) {
            rc = tq_error_set(err, code, "%s: duplicate key (an unknown key of %" PRIu32
                              " bytes appears twice)", what, keys[i]->size);
            break;
        }
    }
    free(keys);
    return rc;
}

/* Optional fields treat nil as absent. */
static const msgpack_object *present(const msgpack_object *o)
{
    return o != NULL && o->type != MSGPACK_OBJECT_NIL ? o : NULL;
}

static int get_uint(const msgpack_object *o, const char *field, uint64_t *out, tq_code code,
                    tq_error *err)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return tq_error_set(err, code, "%s: must be an unsigned integer, got %" PRId64, field,
                            o->via.i64);
    return tq_error_set(err, code, "%s: must be an unsigned integer, got %s", field,
                        type_name(o->type));
}

/* Validate a text field and copy it NUL-terminated into *out. */
static int get_text(const msgpack_object *o, const char *field, size_t maxlen, bool no_controls,
                    char **out, size_t *outlen, tq_code code, tq_error *err)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return tq_error_set(err, code, "%s: must be a string, got %s", field,
                            type_name(o->type));
    const char *s = o->via.str.ptr;
    size_t n = o->via.str.size;
    if (n == 0)
        return tq_error_set(err, code, "%s: must not be empty", field);
    if (maxlen > 0 && n > maxlen)
        return tq_error_set(err, code, "%s: is %zu bytes long, the limit is %zu bytes", field,
                            n, maxlen);
    if (!tq_utf8_valid(s, n))
        return tq_error_set(err, code, "%s: is not valid UTF-8 (%zu bytes)", field, n);
    if (no_controls) {
        size_t at = find_control((const unsigned char *)s, n);
        if (at != (size_t)-1)
            return tq_error_set(err, code, "%s: contains a control character at byte %zu",
                                field, at);
    }
    *out = dup_bytes(s, n);
    if (*out == NULL)
        return tq_error_set(err, TQ_E_INTERNAL, "%s: out of memory", field);
    if (outlen != NULL)
        *outlen = n;
    return 0;
}

/* --------------------------------------------------------------- request */

enum { RQ_V, RQ_TENANT, RQ_OP, RQ_ARGS, RQ_KEY, RQ_DEADLINE, RQ_AUTH, RQ__N };
static const char *const request_keys[RQ__N] = {
    [RQ_V] = "v", [RQ_TENANT] = "tenant", [RQ_OP] = "op", [RQ_ARGS] = "args",
    [RQ_KEY] = "key", [RQ_DEADLINE] = "deadline_ms", [RQ_AUTH] = "auth",
};

bool tq_auth_valid(const char *s, size_t n)
{
    return s != NULL && n >= 1 && n <= TQ_MAX_AUTH_BYTES && tq_utf8_valid(s, n) &&
           find_control((const unsigned char *)s, n) == (size_t)-1;
}

#define TQ_MAX_DEADLINE_MS 86400000u

static int request_fields(const msgpack_object *root, tq_request *req, tq_error *err)
{
    const msgpack_object *f[RQ__N];
    const tq_code bad = TQ_E_BAD_REQUEST;
    uint64_t u;

    if (root->type != MSGPACK_OBJECT_MAP)
        return tq_error_set(err, bad, "request: must be a msgpack map, got %s",
                            type_name(root->type));
    if (map_fields(&root->via.map, "request", request_keys, RQ__N, f, bad, err) != 0)
        return -1;

    /* the version first: another version may have another envelope */
    if (f[RQ_V] == NULL)
        return tq_error_set(err, bad, "v: missing (the protocol version, 1)");
    if (get_uint(f[RQ_V], "v", &u, bad, err) != 0)
        return -1;
    if (u != TQ_PROTO_VERSION)
        return tq_error_set(err, TQ_E_UNSUPPORTED_VERSION,
                            "v: protocol version %" PRIu64 " is not supported (supported: %d)",
                            u, TQ_PROTO_VERSION);
    req->v = (uint32_t)u;

    if (f[RQ_TENANT] == NULL)
        return tq_error_set(err, bad, "tenant: missing");
    if (get_text(f[RQ_TENANT], "tenant", TQ_MAX_TENANT_BYTES, true, &req->tenant,
                 &req->tenant_len, bad, err) != 0)
        return -1;

    if (f[RQ_OP] == NULL)
        return tq_error_set(err, bad, "op: missing");
    if (get_text(f[RQ_OP], "op", TQ_MAX_OP_BYTES, true, &req->op, &req->op_len, bad, err) != 0)
        return -1;

    const msgpack_object *a = present(f[RQ_ARGS]);
    if (a == NULL) {
        req->args = json_object();
        if (req->args == NULL)
            return tq_error_set(err, TQ_E_INTERNAL, "args: out of memory");
    } else if (a->type != MSGPACK_OBJECT_MAP) {
        return tq_error_set(err, bad, "args: must be a map, got %s", type_name(a->type));
    } else {
        req->args = convert(a, "args", TQ_E_INVALID_ARGUMENT, err);
        if (req->args == NULL)
            return -1;
    }

    const msgpack_object *k = present(f[RQ_KEY]);
    if (k != NULL && get_text(k, "key", TQ_MAX_KEY_BYTES, true, &req->key, &req->key_len, bad,
                              err) != 0)
        return -1;

    const msgpack_object *d = present(f[RQ_DEADLINE]);
    if (d != NULL) {
        if (get_uint(d, "deadline_ms", &u, bad, err) != 0)
            return -1;
        if (u < 1 || u > TQ_MAX_DEADLINE_MS)
            return tq_error_set(err, bad, "deadline_ms: %" PRIu64 " is out of range 1..%u", u,
                                TQ_MAX_DEADLINE_MS);
        req->has_deadline = true;
        req->deadline_ms = u;
    }

    /* kept as sent, never refused here: a daemon without a token ignores
     * it, one with a token refuses anything else as UNAUTHENTICATED */
    const msgpack_object *au = present(f[RQ_AUTH]);
    if (au != NULL && au->type != MSGPACK_OBJECT_STR) {
        req->auth_not_str = true;
    } else if (au != NULL) {
        req->auth = dup_bytes(au->via.str.ptr, au->via.str.size);
        if (req->auth == NULL)
            return tq_error_set(err, TQ_E_INTERNAL, "auth: out of memory");
        req->auth_len = au->via.str.size;
    }
    return 0;
}

int tq_request_decode(const void *buf, size_t len, tq_request *req, tq_error *err)
{
    msgpack_unpacked up;
    memset(req, 0, sizeof *req);
    if (unpack_strict(buf, len, "request", TQ_E_BAD_REQUEST, &up, err) != 0)
        return -1;
    int rc = request_fields(&up.data, req, err);
    msgpack_unpacked_destroy(&up);
    if (rc != 0)
        tq_request_free(req);
    return rc;
}

void tq_request_free(tq_request *req)
{
    if (req == NULL)
        return;
    free(req->tenant);
    free(req->op);
    free(req->key);
    if (req->auth != NULL)
        explicit_bzero(req->auth, req->auth_len);
    free(req->auth);
    json_decref(req->args);
    memset(req, 0, sizeof *req);
}

/* -------------------------------------------------------------- packing */

static int pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    if (n > UINT32_MAX)
        return -1;
    if (msgpack_pack_str(pk, n) != 0)
        return -1;
    return n > 0 ? msgpack_pack_str_body(pk, s, n) : 0;
}

static int pack_cstr(msgpack_packer *pk, const char *s)
{
    return pack_strn(pk, s, strlen(s));
}

/* levels: how many nesting levels the value may still use (1 = scalars and
 * empty or flat containers only), so that we never emit what TQ_MAX_DEPTH
 * decoding would reject. */
static int pack_json(msgpack_packer *pk, const json_t *v, int levels)
{
    if (v == NULL)
        return -1;
    switch (json_typeof(v)) {
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, (int64_t)json_integer_value(v));
    case JSON_REAL: {
        double d = json_real_value(v);
        return isfinite(d) ? msgpack_pack_double(pk, d) : -1;
    }
    case JSON_STRING:
        return pack_strn(pk, json_string_value(v), json_string_length(v));
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (levels < 1 || n > UINT32_MAX || msgpack_pack_array(pk, n) != 0)
            return -1;
        for (size_t i = 0; i < n; i++)
            if (pack_json(pk, json_array_get(v, i), levels - 1) != 0)
                return -1;
        return 0;
    }
    case JSON_OBJECT: {
        const char *key;
        size_t klen;
        json_t *val;
        size_t n = json_object_size(v);
        if (levels < 1 || n > UINT32_MAX || msgpack_pack_map(pk, n) != 0)
            return -1;
        /* insertion order (jansson >= 2.8); keylen variant keeps embedded NULs */
        json_object_keylen_foreach((json_t *)(uintptr_t)v, key, klen, val) {
            if (pack_strn(pk, key, klen) != 0 || pack_json(pk, val, levels - 1) != 0)
                return -1;
        }
        return 0;
    }
    }
    return -1;
}

int tq_pack_json(msgpack_packer *pk, const json_t *value)
{
    return pack_json(pk, value, TQ_MAX_DEPTH);
}

/* Undo a partial append on failure so sb holds only whole messages. */
static int finish(msgpack_sbuffer *sb, size_t start, int rc)
{
    if (rc != 0) {
        sb->size = start;
        return -1;
    }
    return 0;
}

int tq_request_encode(msgpack_sbuffer *sb, const char *tenant, const char *op,
                      const json_t *args, const char *key, uint64_t deadline_ms)
{
    return tq_request_encode_auth(sb, tenant, op, args, key, deadline_ms, NULL, 0);
}

int tq_request_encode_auth(msgpack_sbuffer *sb, const char *tenant, const char *op,
                           const json_t *args, const char *key, uint64_t deadline_ms,
                           const char *auth, size_t auth_len)
{
    msgpack_packer pk;
    size_t start;
    int rc;

    if (sb == NULL || tenant == NULL || op == NULL || (args != NULL && !json_is_object(args)))
        return -1;
    start = sb->size;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    rc = msgpack_pack_map(&pk, 3 + (args != NULL) + (key != NULL) + (deadline_ms != 0) +
                                   (auth != NULL));
    rc = rc || pack_cstr(&pk, "v") || msgpack_pack_unsigned_int(&pk, TQ_PROTO_VERSION);
    rc = rc || pack_cstr(&pk, "tenant") || pack_cstr(&pk, tenant);
    rc = rc || pack_cstr(&pk, "op") || pack_cstr(&pk, op);
    if (args != NULL)  /* args sits at depth 2 */
        rc = rc || pack_cstr(&pk, "args") || pack_json(&pk, args, TQ_MAX_DEPTH - 1);
    if (key != NULL)
        rc = rc || pack_cstr(&pk, "key") || pack_cstr(&pk, key);
    if (deadline_ms != 0)
        rc = rc || pack_cstr(&pk, "deadline_ms") || msgpack_pack_uint64(&pk, deadline_ms);
    if (auth != NULL)
        rc = rc || pack_cstr(&pk, "auth") || pack_strn(&pk, auth, auth_len);
    return finish(sb, start, rc);
}

/* ------------------------------------------------------------- responses */

static int pack_timing(msgpack_packer *pk, const tq_timing *t)
{
    return msgpack_pack_map(pk, 3) ||
           pack_cstr(pk, "queue_us") || msgpack_pack_uint64(pk, t->queue_us) ||
           pack_cstr(pk, "exec_us") || msgpack_pack_uint64(pk, t->exec_us) ||
           pack_cstr(pk, "batch") || msgpack_pack_uint32(pk, t->batch);
}

int tq_response_encode_ok(msgpack_sbuffer *sb, const json_t *result, bool replayed,
                          const tq_timing *timing)
{
    msgpack_packer pk;
    if (sb == NULL)
        return -1;
    size_t start = sb->size;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 3 + replayed + (timing != NULL));
    rc = rc || pack_cstr(&pk, "v") || msgpack_pack_unsigned_int(&pk, TQ_PROTO_VERSION);
    rc = rc || pack_cstr(&pk, "ok") || msgpack_pack_true(&pk);
    rc = rc || pack_cstr(&pk, "result") ||
         (result != NULL ? pack_json(&pk, result, TQ_MAX_DEPTH - 1) : msgpack_pack_nil(&pk));
    if (replayed)
        rc = rc || pack_cstr(&pk, "replayed") || msgpack_pack_true(&pk);
    if (timing != NULL)
        rc = rc || pack_cstr(&pk, "timing") || pack_timing(&pk, timing);
    return finish(sb, start, rc);
}

/* Messages may be built from data that was never validated (database text,
 * library strerror): replace every byte that is not part of a valid UTF-8
 * sequence so the peer's strict decoder accepts the reply. */
static char *sanitize_utf8(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t i = 0;
    if (out == NULL)
        return NULL;
    while (i < n) {
        size_t cl = 1;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            cl = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (cl > n - i || !tq_utf8_valid(s + i, cl)) {
                out[i++] = '?';
                continue;
            }
        }
        memcpy(out + i, s + i, cl);
        i += cl;
    }
    out[n] = '\0';
    return out;
}

int tq_response_encode_error(msgpack_sbuffer *sb, tq_code code, const char *message,
                             bool replayed)
{
    msgpack_packer pk;
    if (sb == NULL)
        return -1;
    if (message == NULL)
        message = tq_code_name(code);
    size_t mlen = strlen(message);
    char *msg = sanitize_utf8(message, mlen);
    if (msg == NULL)
        return -1;
    size_t start = sb->size;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 3 + replayed);
    rc = rc || pack_cstr(&pk, "v") || msgpack_pack_unsigned_int(&pk, TQ_PROTO_VERSION);
    rc = rc || pack_cstr(&pk, "ok") || msgpack_pack_false(&pk);
    rc = rc || pack_cstr(&pk, "error") || msgpack_pack_map(&pk, 3) ||
         pack_cstr(&pk, "code") || pack_cstr(&pk, tq_code_name(code)) ||
         pack_cstr(&pk, "message") || pack_strn(&pk, msg, mlen) ||
         pack_cstr(&pk, "retryable") ||
         (tq_code_retryable(code) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    if (replayed)
        rc = rc || pack_cstr(&pk, "replayed") || msgpack_pack_true(&pk);
    free(msg);
    return finish(sb, start, rc);
}

enum { RS_V, RS_OK, RS_RESULT, RS_ERROR, RS_REPLAYED, RS_TIMING, RS__N };
static const char *const response_keys[RS__N] = {
    [RS_V] = "v", [RS_OK] = "ok", [RS_RESULT] = "result", [RS_ERROR] = "error",
    [RS_REPLAYED] = "replayed", [RS_TIMING] = "timing",
};
enum { ER_CODE, ER_MESSAGE, ER_RETRYABLE, ER__N };
static const char *const error_keys[ER__N] = {
    [ER_CODE] = "code", [ER_MESSAGE] = "message", [ER_RETRYABLE] = "retryable",
};
enum { TM_QUEUE, TM_EXEC, TM_BATCH, TM__N };
static const char *const timing_keys[TM__N] = {
    [TM_QUEUE] = "queue_us", [TM_EXEC] = "exec_us", [TM_BATCH] = "batch",
};

static int get_bool(const msgpack_object *o, const char *field, bool *out, tq_error *err)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return tq_error_set(err, TQ_E_PROTOCOL, "%s: must be a boolean, got %s", field,
                            type_name(o->type));
    *out = o->via.boolean;
    return 0;
}

static int response_error(const msgpack_object *e, tq_response *resp, tq_error *err)
{
    const tq_code P = TQ_E_PROTOCOL;
    const msgpack_object *f[ER__N];
    char *code = NULL;
    size_t code_len = 0;

    if (e == NULL)
        return tq_error_set(err, P, "response.error: missing although ok is false");
    if (e->type != MSGPACK_OBJECT_MAP)
        return tq_error_set(err, P, "response.error: must be a map, got %s",
                            type_name(e->type));
    if (map_fields(&e->via.map, "response.error", error_keys, ER__N, f, P, err) != 0)
        return -1;
    if (f[ER_CODE] == NULL)
        return tq_error_set(err, P, "response.error.code: missing");
    if (f[ER_MESSAGE] == NULL)
        return tq_error_set(err, P, "response.error.message: missing");
    if (f[ER_RETRYABLE] == NULL)
        return tq_error_set(err, P, "response.error.retryable: missing");
    if (get_bool(f[ER_RETRYABLE], "response.error.retryable", &resp->retryable, err) != 0)
        return -1;
    if (get_text(f[ER_CODE], "response.error.code", 64, true, &code, &code_len, P, err) != 0)
        return -1;
    if (f[ER_MESSAGE]->type == MSGPACK_OBJECT_STR && f[ER_MESSAGE]->via.str.size == 0) {
        resp->message = dup_bytes("", 0); /* an empty message is odd, not malformed */
        if (resp->message == NULL) {
            free(code);
            return tq_error_set(err, TQ_E_INTERNAL, "response.error.message: out of memory");
        }
    } else if (get_text(f[ER_MESSAGE], "response.error.message", 0, false, &resp->message,
                        NULL, P, err) != 0) {
        free(code);
        return -1;
    }
    /* an unknown (newer) code is still an error; keep the daemon's message */
    if (!tq_code_parse(code, code_len, &resp->code) || resp->code == TQ_OK)
        resp->code = TQ_E_PROTOCOL;
    free(code);
    return 0;
}

static int response_timing(const msgpack_object *t, tq_response *resp, tq_error *err)
{
    const tq_code P = TQ_E_PROTOCOL;
    const msgpack_object *f[TM__N];
    uint64_t batch;

    if (t->type != MSGPACK_OBJECT_MAP)
        return tq_error_set(err, P, "response.timing: must be a map, got %s",
                            type_name(t->type));
    if (map_fields(&t->via.map, "response.timing", timing_keys, TM__N, f, P, err) != 0)
        return -1;
    for (int i = 0; i < TM__N; i++)
        if (f[i] == NULL)
            return tq_error_set(err, P, "response.timing.%s: missing", timing_keys[i]);
    if (get_uint(f[TM_QUEUE], "response.timing.queue_us", &resp->timing.queue_us, P, err) ||
        get_uint(f[TM_EXEC], "response.timing.exec_us", &resp->timing.exec_us, P, err) ||
        get_uint(f[TM_BATCH], "response.timing.batch", &batch, P, err))
        return -1;
    if (batch > UINT32_MAX)
        return tq_error_set(err, P, "response.timing.batch: %" PRIu64 " is out of range", batch);
    resp->timing.batch = (uint32_t)batch;
    resp->has_timing = true;
    return 0;
}

static int response_fields(const msgpack_object *root, tq_response *resp, tq_error *err)
{
    const tq_code P = TQ_E_PROTOCOL;
    const msgpack_object *f[RS__N];
    uint64_t v;

    if (root->type != MSGPACK_OBJECT_MAP)
        return tq_error_set(err, P, "response: must be a msgpack map, got %s",
                            type_name(root->type));
    if (map_fields(&root->via.map, "response", response_keys, RS__N, f, P, err) != 0)
        return -1;
    if (f[RS_V] == NULL)
        return tq_error_set(err, P, "response.v: missing");
    if (get_uint(f[RS_V], "response.v", &v, P, err) != 0)
        return -1;
    if (v != TQ_PROTO_VERSION)
        return tq_error_set(err, P, "response.v: version %" PRIu64 " is not supported", v);
    if (f[RS_OK] == NULL)
        return tq_error_set(err, P, "response.ok: missing");
    if (get_bool(f[RS_OK], "response.ok", &resp->ok, err) != 0)
        return -1;
    if (present(f[RS_REPLAYED]) != NULL &&
        get_bool(f[RS_REPLAYED], "response.replayed", &resp->replayed, err) != 0)
        return -1;
    if (present(f[RS_TIMING]) != NULL && response_timing(f[RS_TIMING], resp, err) != 0)
        return -1;

    if (resp->ok) {
        if (present(f[RS_ERROR]) != NULL)
            return tq_error_set(err, P, "response.error: present although ok is true");
        if (f[RS_RESULT] == NULL)
            return tq_error_set(err, P, "response.result: missing although ok is true");
        resp->result = convert(f[RS_RESULT], "response.result", P, err);
        if (resp->result == NULL) {
            if (err != NULL)
                err->code = P;  /* out of memory included: the reply is unusable */
            return -1;
        }
        resp->code = TQ_OK;
        return 0;
    }
    if (present(f[RS_RESULT]) != NULL)
        return tq_error_set(err, P, "response.result: present although ok is false");
    return response_error(present(f[RS_ERROR]), resp, err);
}

int tq_response_decode(const void *buf, size_t len, tq_response *resp, tq_error *err)
{
    msgpack_unpacked up;
    memset(resp, 0, sizeof *resp);
    if (unpack_strict(buf, len, "response", TQ_E_PROTOCOL, &up, err) != 0)
        return -1;
    int rc = response_fields(&up.data, resp, err);
    msgpack_unpacked_destroy(&up);
    if (rc != 0) {
        if (err != NULL)
            err->code = TQ_E_PROTOCOL;
        tq_response_free(resp);
    }
    return rc;
}

void tq_response_free(tq_response *resp)
{
    if (resp == NULL)
        return;
    json_decref(resp->result);
    free(resp->message);
    memset(resp, 0, sizeof *resp);
}
