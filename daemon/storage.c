/*
 * storage.c - the storage mapping's pure parts (contract: storage.h).
 *
 * Statements write only the mapped columns.  A write is an UPDATE of the
 * row the batch read (or an INSERT of a new row when create_missing), inside
 * a CTE whose outer SELECT divides by the number of rows written: a row
 * that vanished (or appeared) behind the lock's back fails the transaction
 * with division by zero before COMMIT, and the engine runs the batch again
 * from a fresh read, instead of acknowledging an edit that wrote nothing.
 */
#include "storage.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static bool ident_start(unsigned char c) { return isalpha(c) || c == '_' || c >= 0x80; }
static bool ident_char(unsigned char c) { return ident_start(c) || isdigit(c) || c == '$'; }

int storage_parse_name(const char *text, char parts[][STORAGE_IDENT_MAX + 1], int max_parts,
                       char *err, size_t errlen)
{
    const char *p = text;
    int n = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p)
        return fail(err, errlen, "empty name");
    for (;;) {
        if (n == max_parts)
            return fail(err, errlen, "at most %d dot-separated part%s",
                        max_parts, max_parts == 1 ? "" : "s");
        char *out = parts[n];
        size_t len = 0;
        if (*p == '"') {
            for (p++;; p++) {
                if (!*p)
                    return fail(err, errlen, "unterminated quoted identifier");
                if (*p == '"') {
                    if (p[1] != '"')
                        break;
                    p++;
                }
                if (len == STORAGE_IDENT_MAX)
                    return fail(err, errlen, "an identifier is at most %d bytes",
                                STORAGE_IDENT_MAX);
                out[len++] = *p;
            }
            p++;
            if (len == 0)
                return fail(err, errlen, "empty quoted identifier");
        } else {
            if (!ident_start((unsigned char)*p))
                return fail(err, errlen,
                            "unexpected '%c' (write other names in double quotes)",
                            isprint((unsigned char)*p) ? *p : '?');
            for (; ident_char((unsigned char)*p); p++) {
                if (len == STORAGE_IDENT_MAX)
                    return fail(err, errlen, "an identifier is at most %d bytes",
                                STORAGE_IDENT_MAX);
                /* PostgreSQL folds unquoted names to lower case (ASCII) */
                out[len++] = (char)((*p >= 'A' && *p <= 'Z') ? *p - 'A' + 'a' : *p);
            }
        }
        out[len] = '\0';
        n++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            return n;
        if (*p != '.')
            return fail(err, errlen, "unexpected '%c' after an identifier",
                        isprint((unsigned char)*p) ? *p : '?');
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
    }
}

void storage_quote(const char *name, char *out, size_t size)
{
    size_t at = 0;
    if (size < 3) {
        if (size)
            out[0] = '\0';
        return;
    }
    out[at++] = '"';
    for (const char *p = name; *p && at + 3 < size; p++) {
        if (*p == '"')
            out[at++] = '"';
        out[at++] = *p;
    }
    out[at++] = '"';
    out[at] = '\0';
}

bool storage_is_default(const tq_config *cfg)
{
    return strcmp(cfg->storage_table, "tenantq_storefront") == 0 &&
           strcmp(cfg->storage_tenant_column, "tenant") == 0 &&
           strcmp(cfg->storage_draft_column, "draft") == 0 &&
           strcmp(cfg->storage_published_column, "published") == 0 &&
           strcmp(cfg->storage_version_column, "version") == 0 &&
           strcmp(cfg->storage_updated_at_column, "updated_at") == 0 &&
           cfg->storage_create_missing;
}

int storage_own_schema(const tq_config *cfg, char *out, size_t size, char *err, size_t errlen)
{
    out[0] = '\0';
    if (!cfg->schema[0])
        return 0;
    char part[1][STORAGE_IDENT_MAX + 1];
    char why[STORAGE_ERR_MAX - 64];
    if (storage_parse_name(cfg->schema, part, 1, why, sizeof why) < 0)
        return fail(err, errlen, "[database] schema: %s", why);
    if (strchr(part[0], '\'') || strchr(part[0], '\\'))
        return fail(err, errlen, "[database] schema: \"%s\": no quote or backslash, please",
                    part[0]);
    storage_quote(part[0], out, size);
    return 0;
}

int storage_default(struct storage *st, const tq_config *cfg, char *err, size_t errlen)
{
    char schema[STORAGE_QUOTED_MAX];
    if (storage_own_schema(cfg, schema, sizeof schema, err, errlen) < 0)
        return -1;
    memset(st, 0, sizeof *st);
    snprintf(st->table, sizeof st->table, "%s%s\"tenantq_storefront\"", schema,
             schema[0] ? "." : "");
    snprintf(st->table_name, sizeof st->table_name, "%s%stenantq_storefront", cfg->schema,
             cfg->schema[0] ? "." : "");
    strcpy(st->tenant, "\"tenant\"");
    strcpy(st->draft, "\"draft\"");
    strcpy(st->published, "\"published\"");
    strcpy(st->version, "\"version\"");
    strcpy(st->updated_at, "\"updated_at\"");
    st->draft_type = st->published_type = STORAGE_DOC_JSONB;
    st->tenant_type = STORAGE_KEY_TEXT;
    st->updated_at_tz = true;
    st->create_missing = true;
    return 0;
}

static const char *doc_cast(enum storage_doc t)
{
    return t == STORAGE_DOC_JSONB ? "jsonb" : t == STORAGE_DOC_JSON ? "json" : "text";
}

static char *printf_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *printf_alloc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

int storage_build(struct storage *st)
{
    const char *T = st->table, *tc = st->tenant, *dc = st->draft, *vc = st->version;
    bool pub = st->published[0] != '\0';
    char now[64] = "", upd[STORAGE_QUOTED_MAX + 80] = "", ins_col[STORAGE_QUOTED_MAX + 4] = "",
         ins_val[64] = "", pub_read[4 * STORAGE_QUOTED_MAX + 128], pub_set[STORAGE_QUOTED_MAX + 24],
         pub_col[STORAGE_QUOTED_MAX + 4] = "", pub_val[64] = "";
    if (st->updated_at[0]) {
        /* a timestamp without time zone holds UTC, as ORMs store it */
        snprintf(now, sizeof now, "%s", st->updated_at_tz ? "now()" : "(now() AT TIME ZONE 'UTC')");
        snprintf(upd, sizeof upd, ", %s = %s", st->updated_at, now);
        snprintf(ins_col, sizeof ins_col, ", %s", st->updated_at);
        snprintf(ins_val, sizeof ins_val, ", %s", now);
    }
    /* the version may be NULL in a foreign table: it reads as 0 */
    char ver[STORAGE_QUOTED_MAX + 16];
    snprintf(ver, sizeof ver, "COALESCE(%s, 0)", vc);
    const char *xmin = st->no_xmin ? "0" : "xmin";
    char current[STORAGE_QUOTED_MAX + 96];
    if (st->no_xmin)
        snprintf(current, sizeof current, "false");
    else
        snprintf(current, sizeof current, "(%s = $2::bigint AND xmin = $3::xid)", ver);
    if (pub) {
        snprintf(pub_read, sizeof pub_read, "CASE WHEN %s THEN NULL ELSE %s::text END", current,
                 st->published);
        snprintf(pub_set, sizeof pub_set, ", %s = $4::%s", st->published,
                 doc_cast(st->published_type));
        snprintf(pub_col, sizeof pub_col, ", %s", st->published);
        if (st->published_notnull)
            snprintf(pub_val, sizeof pub_val, ", COALESCE($4::%s, '{\"pages\":{}}')",
                     doc_cast(st->published_type));
        else
            snprintf(pub_val, sizeof pub_val, ", $4::%s", doc_cast(st->published_type));
    } else {
        snprintf(pub_read, sizeof pub_read, "NULL::text");
    }
    st->select = printf_alloc(
        "SELECT CASE WHEN %s THEN NULL ELSE %s::text END, %s, %s, %s, %s FROM %s WHERE %s = $1%s",
        current, dc, pub_read, ver, xmin, current, T, tc,
        /* a view ignores the cache parameters: still typed */
        st->no_xmin ? " AND $2::bigint IS NOT NULL AND $3::xid IS NOT NULL" : "");
    if (st->no_xmin)
        st->guard = printf_alloc("SELECT 1 / 0 AS tenantq_no_draft_cache_on_a_view"
                                 " WHERE $1::text IS NOT NULL AND $2::bigint IS NOT NULL"
                                 " AND $3::xid IS NOT NULL");
    else
        st->guard = printf_alloc("SELECT 1 / count(*) AS tenantq_cached_draft_is_current"
                                 " FROM %s WHERE %s = $1 AND %s = $2::bigint AND xmin = $3::xid",
                                 T, tc, ver);
    static const char tail[] = " RETURNING %s AS x) SELECT (SELECT x FROM w),"
                               " 1 / (SELECT count(*) FROM w) AS tenantq_row_is_present";
    char ret[sizeof tail + 8];
    snprintf(ret, sizeof ret, tail, xmin);
    st->update = printf_alloc("WITH w AS (UPDATE %s SET %s = $2::%s, %s = $3::bigint%s"
                              " WHERE %s = $1%s",
                              T, dc, doc_cast(st->draft_type), vc, upd, tc, ret);
    st->update_pub = pub ? printf_alloc("WITH w AS (UPDATE %s SET %s = $2::%s, %s = $3::bigint%s%s"
                                        " WHERE %s = $1%s",
                                        T, dc, doc_cast(st->draft_type), vc, pub_set, upd, tc,
                                        ret)
                         : printf_alloc("%s", "SELECT 1 / 0 AS tenantq_no_published_column"
                                              " WHERE $1::text IS NULL AND $2::text IS NULL"
                                              " AND $3::text IS NULL AND $4::text IS NULL");
    st->insert = printf_alloc("WITH w AS (INSERT INTO %s (%s, %s, %s%s%s) VALUES ($1, $2::%s,"
                              " $3::bigint%s%s) ON CONFLICT (%s) DO NOTHING%s",
                              T, tc, dc, vc, pub_col, ins_col, doc_cast(st->draft_type), pub_val,
                              ins_val, tc, ret);
    st->insert_nparams = pub ? 4 : 3;
    st->scan_first = printf_alloc("SELECT %s::text, %s::text FROM %s ORDER BY %s LIMIT $1::int",
                                  tc, dc, T, tc);
    st->scan_next = printf_alloc("SELECT %s::text, %s::text FROM %s WHERE %s > $1 ORDER BY %s"
                                 " LIMIT $2::int",
                                 tc, dc, T, tc, tc);
    if (!st->select || !st->guard || !st->update || !st->update_pub || !st->insert ||
        !st->scan_first || !st->scan_next) {
        storage_free(st);
        return -1;
    }
    return 0;
}

void storage_free(struct storage *st)
{
    char **all[] = {&st->select, &st->guard, &st->update, &st->update_pub,
                    &st->insert, &st->scan_first, &st->scan_next};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        free(*all[i]);
        *all[i] = NULL;
    }
}

/* Decimal integer in canonical form within [lo, hi]. */
static bool canonical_int(const char *s, size_t len, long long lo, long long hi)
{
    size_t i = 0;
    bool neg = len > 0 && s[0] == '-';
    if (neg)
        i = 1;
    if (i == len || (s[i] == '0' && (len - i > 1 || neg)))
        return false; /* empty, leading zero, or "-0" */
    unsigned long long v = 0, lim = neg ? (unsigned long long)(-(lo + 1)) + 1u
                                        : (unsigned long long)hi;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (lim - d) / 10)
            return false;
        v = v * 10 + d;
    }
    return true;
}

static bool canonical_uuid(const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

int storage_check_tenant(const struct storage *st, const char *tenant, size_t len, char *err,
                         size_t errlen)
{
    switch (st->tenant_type) {
    case STORAGE_KEY_TEXT:
        if (st->tenant_max_chars > 0) {
            size_t chars = 0;
            for (size_t i = 0; i < len; i++)
                chars += ((unsigned char)tenant[i] & 0xc0) != 0x80;
            if (chars > (size_t)st->tenant_max_chars)
                return fail(err, errlen,
                            "tenant: %zu characters; the tenant column %s holds at most %d",
                            chars, st->tenant, st->tenant_max_chars);
        }
        return 0;
    case STORAGE_KEY_UUID:
        if (!canonical_uuid(tenant, len))
            return fail(err, errlen,
                        "tenant: not a uuid in canonical form (lower-case "
                        "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), as the tenant column %s needs",
                        st->tenant);
        return 0;
    case STORAGE_KEY_INT2:
    case STORAGE_KEY_INT4:
    case STORAGE_KEY_INT8: {
        static const long long range[3][2] = {
            {-32768, 32767}, {-2147483647LL - 1, 2147483647LL}, {LLONG_MIN, LLONG_MAX}};
        int k = st->tenant_type - STORAGE_KEY_INT2;
        if (!canonical_int(tenant, len, range[k][0], range[k][1]))
            return fail(err, errlen,
                        "tenant: not a decimal integer in canonical form (no sign but '-', no "
                        "leading zeros) between %lld and %lld, as the tenant column %s needs",
                        range[k][0], range[k][1], st->tenant);
        return 0;
    }
    }
    return 0;
}
