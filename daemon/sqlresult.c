/*
 * sqlresult.c - PGresult to JSON (contract: sqlresult.h).
 *
 * Reads the text format only; it must not talk to the server or look at
 * anything but the result it is given.
 */
#include "sqlresult.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "jparse.h"

/* How deep a json column's value may nest and still travel: the reply's
 * envelope, result, rows and row take 4 of the protocol's TQ_MAX_DEPTH
 * levels.  A deeper value arrives as its text. */
#define VALUE_MAX_DEPTH (TQ_MAX_DEPTH - 4)

/* An integer of the text (exact), or false if it is not one within int64. */
static bool parse_int64(const char *text, size_t len, json_int_t *out)
{
    size_t i = (len > 0 && text[0] == '-') ? 1 : 0;
    if (i == len || len > 20)
        return false;
    for (size_t j = i; j < len; j++)
        if (text[j] < '0' || text[j] > '9')
            return false;
    char buf[24];
    memcpy(buf, text, len);
    buf[len] = '\0';
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno == ERANGE)
        return false;
    *out = (json_int_t)v;
    return true;
}

/* A finite double of the text, or false (NaN, infinities, overflow, junk). */
static bool parse_double(const char *text, size_t len, double *out)
{
    char buf[64];
    char *big = NULL, *s = buf;
    if (len >= sizeof buf) {
        /* numeric prints every digit: a long value is legitimate */
        if ((big = malloc(len + 1)) == NULL)
            return false;
        s = big;
    }
    memcpy(s, text, len);
    s[len] = '\0';
    char *end;
    double d = strtod(s, &end);
    bool ok = len > 0 && *end == '\0' && isfinite(d);
    free(big);
    if (ok)
        *out = d;
    return ok;
}

static int depth_of(const json_t *v)
{
    int d = 0;
    size_t i;
    const char *k;
    json_t *c;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)(uintptr_t)v, k, c) {
            int cd = depth_of(c);
            d = cd > d ? cd : d;
        }
        return d + 1;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, c) {
            int cd = depth_of(c);
            d = cd > d ? cd : d;
        }
        return d + 1;
    }
    return 0;
}

json_t *sqlresult_value(unsigned int oid, const char *text, size_t len)
{
    json_int_t i;
    double d;
    switch (oid) {
    case SQLRESULT_INT2OID:
    case SQLRESULT_INT4OID:
    case SQLRESULT_INT8OID:
        if (parse_int64(text, len, &i))
            return json_integer(i);
        break;
    case SQLRESULT_NUMERICOID:
        if (parse_int64(text, len, &i))
            return json_integer(i);
        if (parse_double(text, len, &d))
            return json_real(d);
        break;
    case SQLRESULT_FLOAT4OID:
    case SQLRESULT_FLOAT8OID:
        if (parse_double(text, len, &d))
            return json_real(d);
        break;
    case SQLRESULT_BOOLOID:
        if (len == 1 && (text[0] == 't' || text[0] == 'f'))
            return json_boolean(text[0] == 't');
        break;
    case SQLRESULT_JSONOID:
    case SQLRESULT_JSONBOID: {
        json_t *v = jparse(text, len, NULL, NULL, 0);
        if (v != NULL && depth_of(v) <= VALUE_MAX_DEPTH)
            return v;
        json_decref(v);
        break;
    }
    default:
        break;
    }
    return json_stringn(text, len);
}

int64_t sqlresult_count(const PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE:
        return PQntuples(res);
    case PGRES_COMMAND_OK: {
        /* PQcmdTuples only reads, but is declared without const */
        const char *t = PQcmdTuples((PGresult *)(uintptr_t)res);
        json_int_t n;
        return t && parse_int64(t, strlen(t), &n) && n >= 0 ? (int64_t)n : 0;
    }
    default:
        return -1;
    }
}

json_t *sqlresult_to_json(const PGresult *res, tq_error *err)
{
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && st != PGRES_SINGLE_TUPLE) {
        tq_error_set(err, TQ_E_INTERNAL, "SQL result: unexpected status %s", PQresStatus(st));
        return NULL;
    }
    json_t *rows = json_array();
    json_t *out = json_object();
    if (rows == NULL || out == NULL)
        goto oom;
    int nrows = PQntuples(res), ncols = PQnfields(res);
    for (int r = 0; r < nrows; r++) {
        json_t *row = json_object();
        if (row == NULL || json_array_append_new(rows, row) < 0)
            goto oom;
        for (int c = 0; c < ncols; c++) {
            const char *name = PQfname(res, c);
            json_t *v;
            if (PQgetisnull(res, r, c)) {
                v = json_null();
            } else {
                v = sqlresult_value(PQftype(res, c), PQgetvalue(res, r, c),
                                    (size_t)PQgetlength(res, r, c));
                if (v == NULL) {
                    tq_error_set(err, TQ_E_INTERNAL,
                                 "SQL result: row %d, column %d: the value is not valid UTF-8 "
                                 "(is the database's encoding UTF8?)",
                                 r + 1, c + 1);
                    goto fail;
                }
            }
            if (json_object_set_new(row, name ? name : "", v) < 0) {
                tq_error_set(err, TQ_E_INTERNAL,
                             "SQL result: column %d: its name is not valid UTF-8", c + 1);
                goto fail;
            }
        }
    }
    if (json_object_set_new(out, "rows", rows) < 0) {
        rows = NULL;
        goto oom;
    }
    rows = NULL;
    if (json_object_set_new(out, "count", json_integer(sqlresult_count(res))) < 0)
        goto oom;
    return out;
oom:
    tq_error_set(err, TQ_E_INTERNAL, "SQL result: out of memory");
fail:
    json_decref(rows);
    json_decref(out);
    return NULL;
}
