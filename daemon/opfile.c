/*
 * opfile.c - the op-file parser (contract: opfile.h).
 *
 * One left-to-right scan with PostgreSQL's lexical rules, just far enough to
 * tell code from the spans that are not code (literals, quoted identifiers,
 * comments, dollar-quoted bodies): only in code is ':name' a parameter and
 * ';' the end of the statement.  Everything else is copied byte for byte.
 * This file must not grow into an SQL parser: whether the statement is valid
 * SQL is the server's business when the daemon prepares it.
 */
#include "opfile.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tq_proto.h"

#define SHOW_MAX OPFILE_SHOW_MAX

struct scan {
    const char *s;
    size_t n;
    size_t i;
    int line;
    const char *where;
    char *err;
    size_t errlen;
};

/* The output of the statement scan. */
struct out {
    char *p;
    size_t len, cap;
    size_t tok_end;       /* len right after the last token (not a comment) */
};

static int fail_at(struct scan *sc, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(struct scan *sc, int line, const char *fmt, ...)
{
    if (sc->errlen == 0)
        return -1;
    int k = snprintf(sc->err, sc->errlen, "%s:%d: ", sc->where, line);
    if (k >= 0 && (size_t)k < sc->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sc->err + k, sc->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static bool is_ascii_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* PostgreSQL's ident_start and ident_cont (scan.l): non-ASCII bytes are
 * letters, '$' continues an identifier. */
static bool is_ident_start(unsigned char c)
{
    return is_ascii_alpha(c) || c == '_' || c >= 0x80;
}

static bool is_ident_cont(unsigned char c)
{
    return is_ident_start(c) || is_digit(c) || c == '$';
}

/* dolq_cont: like ident_cont without '$'. */
static bool is_tag_cont(unsigned char c)
{
    return is_ident_start(c) || is_digit(c);
}

static bool is_param_start(unsigned char c)
{
    return is_ascii_alpha(c) || c == '_';
}

static bool is_param_cont(unsigned char c)
{
    return is_param_start(c) || is_digit(c);
}

bool opfile_valid_param(const char *s, size_t n)
{
    if (s == NULL || n == 0 || n > OPFILE_NAME_MAX || !is_param_start((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_param_cont((unsigned char)s[i]))
            return false;
    return true;
}

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool at(const struct scan *sc, size_t i, char c)
{
    return i < sc->n && sc->s[i] == c;
}

/* Advance over bytes [sc->i, to), counting lines. */
static void advance_to(struct scan *sc, size_t to)
{
    for (; sc->i < to; sc->i++)
        if (sc->s[sc->i] == '\n')
            sc->line++;
}

void opfile_show(const char *s, size_t n, char *buf, size_t size)
{
    bool cut = n > SHOW_MAX;
    if (cut) {
        n = SHOW_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    size_t k = 0;
    for (size_t j = 0; j < n && k + 4 < size; j++) {
        unsigned char c = (unsigned char)s[j];
        buf[k++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (cut && k + 4 < size) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = '\0';
}

/*
 * If a span that is not code starts at sc->i (a comment, a string literal, a
 * quoted identifier, a dollar-quoted body), move past it and return 1; return
 * 0 if code starts there, -1 (err set) if the span is unterminated.  E'...'
 * strings are recognised by the caller, which knows where words start.
 */
static int skip_span(struct scan *sc, bool escapes)
{
    const char *s = sc->s;
    size_t n = sc->n, i = sc->i;
    int line = sc->line;
    char c = s[i];

    if (c == '-' && at(sc, i + 1, '-')) {
        const char *nl = memchr(s + i, '\n', n - i);
        advance_to(sc, nl ? (size_t)(nl - s) : n);
        return 1;
    }
    if (c == '/' && at(sc, i + 1, '*')) {
        size_t depth = 1;
        for (i += 2; i < n; i++) {
            if (s[i] == '/' && at(sc, i + 1, '*')) {
                depth++;
                i++;
            } else if (s[i] == '*' && at(sc, i + 1, '/')) {
                i++;
                if (--depth == 0) {
                    advance_to(sc, i + 1);
                    return 1;
                }
            }
        }
        return fail_at(sc, line, "unterminated /* comment (opened here)");
    }
    if (c == '\'' || c == '"') {
        for (i++; i < n; i++) {
            if (escapes && s[i] == '\\') {
                i++;
            } else if (s[i] == c) {
                if (!at(sc, i + 1, c)) {
                    advance_to(sc, i + 1);
                    return 1;
                }
                i++;
            }
        }
        return fail_at(sc, line, c == '"' ? "unterminated quoted identifier (opened here)"
                                          : "unterminated string literal (opened here)");
    }
    if (c == '$') {
        /* $$ or $tag$ opens a dollar-quoted body; anything else is code */
        size_t j = i + 1;
        if (j < n && is_ident_start((unsigned char)s[j]))
            while (j < n && is_tag_cont((unsigned char)s[j]))
                j++;
        if (!at(sc, j, '$'))
            return 0;
        size_t taglen = j + 1 - i;
        for (size_t k = j + 1; k + taglen <= n; k++) {
            if (s[k] == '$' && memcmp(s + k, s + i, taglen) == 0) {
                advance_to(sc, k + taglen);
                return 1;
            }
        }
        char tag[OPFILE_SHOW_SIZE];
        opfile_show(s + i, taglen, tag, sizeof tag);
        return fail_at(sc, line, "unterminated dollar-quoted string %s (opened here)", tag);
    }
    return 0;
}

/* Skip whitespace and comments; -1 on an unterminated comment. */
static int skip_blank(struct scan *sc)
{
    while (sc->i < sc->n) {
        unsigned char c = (unsigned char)sc->s[sc->i];
        if (is_space(c)) {
            advance_to(sc, sc->i + 1);
        } else if ((c == '-' && at(sc, sc->i + 1, '-')) || (c == '/' && at(sc, sc->i + 1, '*'))) {
            if (skip_span(sc, false) < 0)
                return -1;
        } else {
            break;
        }
    }
    return 0;
}

static void out_put(struct out *o, const char *s, size_t n)
{
    /* cap is sized for the worst case up front (see scan_statement) */
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* Find or add a parameter name; its index, or -1 (err set). */
static int param_index(struct scan *sc, opfile_def *def, const char *name, size_t len)
{
    for (size_t k = 0; k < def->nparams; k++)
        if (strlen(def->params[k]) == len && memcmp(def->params[k], name, len) == 0)
            return (int)k;
    if (def->nparams == OPFILE_MAX_PARAMS)
        return fail_at(sc, sc->line, "more than %d distinct parameters", OPFILE_MAX_PARAMS);
    char *copy = strndup(name, len);
    if (copy == NULL)
        return fail_at(sc, sc->line, "out of memory");
    def->params[def->nparams] = copy;
    if (len == strlen(OPFILE_TENANT) && memcmp(name, OPFILE_TENANT, len) == 0)
        def->tenant_index = (int)def->nparams;
    return (int)def->nparams++;
}

/*
 * Scan code from sc->i to the end of the statement (a ';' in code, or the end
 * of the text).  With def (the statement): each :name becomes $k in o, and
 * after a ';' only whitespace and comments may follow.  Without def (a
 * lock_key expression, o NULL): :name, $n other than $1, ';' and comments are
 * refused, and *uses_1 tells whether $1 appeared.  Returns 0 or -1 (err set).
 */
static int scan_code(struct scan *sc, opfile_def *def, struct out *o, bool *uses_1)
{
    const char *s = sc->s;
    while (sc->i < sc->n) {
        size_t start = sc->i;
        unsigned char c = (unsigned char)s[start];

        if (is_space(c)) {
            advance_to(sc, start + 1);
            if (o)
                out_put(o, s + start, 1);
            continue;
        }
        int span;
        if (is_ident_start(c)) {
            size_t j = start + 1;
            while (j < sc->n && is_ident_cont((unsigned char)s[j]))
                j++;
            if (j == start + 1 && (c == 'e' || c == 'E') && at(sc, j, '\'')) {
                sc->i = j;
                span = skip_span(sc, true);  /* E'...': backslash escapes */
            } else {
                sc->i = j;
                span = 1;
            }
        } else {
            span = skip_span(sc, false);
        }
        if (span < 0)
            return -1;
        if (span > 0) {
            bool comment = c == '-' || c == '/';
            if (comment && !o)
                return fail_at(sc, sc->line, "lock_key: no comments in the expression");
            if (o) {
                out_put(o, s + start, sc->i - start);
                if (!comment)
                    o->tok_end = o->len;
            }
            continue;
        }

        /* one byte of code, or a parameter */
        if (c == ';') {
            if (!o)
                return fail_at(sc, sc->line, "lock_key: no ';' in the expression");
            sc->i++;
            if (skip_blank(sc) < 0)
                return -1;
            if (sc->i < sc->n)
                return fail_at(sc, sc->line,
                               "only one statement per file: text after the ';' that ends it");
            return 0;
        }
        if (c == ':' && at(sc, start + 1, ':')) {
            advance_to(sc, start + 2);
            if (o) {
                out_put(o, "::", 2);
                o->tok_end = o->len;
            }
            continue;
        }
        if (c == ':' && start + 1 < sc->n && (unsigned char)s[start + 1] >= 0x80)
            return fail_at(sc, sc->line,
                           "':' followed by a non-ASCII character: parameter names are ASCII "
                           "letters, digits and '_' (write ': x' for a ':' that is not one)");
        if (c == ':' && start + 1 < sc->n && is_param_start((unsigned char)s[start + 1])) {
            size_t j = start + 1;
            while (j < sc->n && is_param_cont((unsigned char)s[j]))
                j++;
            size_t len = j - start - 1;
            char shown[OPFILE_SHOW_SIZE];
            opfile_show(s + start + 1, len, shown, sizeof shown);
            if (!o)
                return fail_at(sc, sc->line,
                               "lock_key: no :%s parameter here, the tenant id is $1", shown);
            if (len > OPFILE_NAME_MAX)
                return fail_at(sc, sc->line, "parameter :%s is longer than %d bytes", shown,
                               OPFILE_NAME_MAX);
            if (j < sc->n && ((unsigned char)s[j] >= 0x80 || s[j] == '$'))
                return fail_at(sc, sc->line,
                               "parameter :%s runs into '%c': parameter names are ASCII "
                               "letters, digits and '_'",
                               shown, s[j] == '$' ? '$' : '?');
            int k = param_index(sc, def, s + start + 1, len);
            if (k < 0)
                return -1;
            char ph[8];
            int phn = snprintf(ph, sizeof ph, "$%d", k + 1);
            /* "x:a" must not become the identifier "x$1" */
            if (o->len > 0 && is_ident_cont((unsigned char)o->p[o->len - 1]))
                out_put(o, " ", 1);
            out_put(o, ph, (size_t)phn);
            o->tok_end = o->len;
            sc->i = j;
            continue;
        }
        if (c == '$' && start + 1 < sc->n && is_digit((unsigned char)s[start + 1])) {
            size_t j = start + 1;
            while (j < sc->n && is_digit((unsigned char)s[j]))
                j++;
            if (!o && j == start + 2 && s[start + 1] == '1') {
                *uses_1 = true;
                sc->i = j;
                continue;
            }
            char shown[OPFILE_SHOW_SIZE];
            opfile_show(s + start, j - start, shown, sizeof shown);
            return fail_at(sc, sc->line,
                           o ? "positional parameter %s: name the parameters instead (:name)"
                             : "lock_key: %s: the expression may use only $1 (the tenant id)",
                           shown);
        }
        sc->i++;
        if (o) {
            out_put(o, s + start, 1);
            o->tok_end = o->len;
        }
    }
    return 0;
}

static const char *const verbs[] = {"select", "insert", "update", "delete", "with"};

/* The statement starting at sc->i: check its first word, then scan it. */
static int scan_statement(struct scan *sc, opfile_def *def)
{
    const char *w = sc->s + sc->i;
    size_t wl = 0;
    while (sc->i + wl < sc->n && is_ident_cont((unsigned char)w[wl]))
        wl++;
    bool ok = false;
    for (size_t k = 0; k < sizeof verbs / sizeof verbs[0]; k++)
        if (wl == strlen(verbs[k]) && strncasecmp(w, verbs[k], wl) == 0)
            ok = true;
    if (!ok) {
        char shown[OPFILE_SHOW_SIZE];
        opfile_show(w, wl ? wl : 1, shown, sizeof shown);
        return fail_at(sc, sc->line,
                       "the statement must start with SELECT, INSERT, UPDATE, DELETE or WITH, "
                       "not '%s'",
                       shown);
    }
    /* each ":x" (2 bytes) becomes at most " $64" (4 bytes) */
    struct out o = {.cap = 2 * (sc->n - sc->i) + 1};
    o.p = malloc(o.cap);
    if (o.p == NULL)
        return fail_at(sc, sc->line, "out of memory");
    if (scan_code(sc, def, &o, NULL) < 0) {
        free(o.p);
        return -1;
    }
    o.p[o.tok_end] = '\0';
    def->sql = o.p;
    def->sql_len = o.tok_end;
    return 0;
}

/* The known options: where each one's value goes. */
static char **option_slot(opfile_def *def, const char *key, size_t len)
{
    if (len == strlen("reject_if_empty") && memcmp(key, "reject_if_empty", len) == 0)
        return &def->reject_if_empty;
    if (len == strlen("lock_key") && memcmp(key, "lock_key", len) == 0)
        return &def->lock_key_sql;
    return NULL;
}

static int check_lock_key(struct scan *outer, const char *v, size_t n)
{
    struct scan sc = {.s = v, .n = n, .line = outer->line, .where = outer->where,
                      .err = outer->err, .errlen = outer->errlen};
    bool uses_1 = false;
    if (n > OPFILE_LOCK_KEY_MAX)
        return fail_at(&sc, sc.line, "lock_key: longer than %d bytes", OPFILE_LOCK_KEY_MAX);
    if (scan_code(&sc, NULL, NULL, &uses_1) < 0)
        return -1;
    if (!uses_1)
        return fail_at(&sc, sc.line, "lock_key: the expression must use $1 (the tenant id)");
    return 0;
}

/*
 * A leading "--" comment at sc->i (the line runs to eol): an option if it
 * reads "-- word:" with a lower-case word, else nothing.
 */
static int parse_option_line(struct scan *sc, opfile_def *def, size_t eol)
{
    const char *s = sc->s;
    size_t i = sc->i + 2;
    while (i < eol && (s[i] == ' ' || s[i] == '\t'))
        i++;
    size_t k0 = i;
    while (i < eol && (is_ascii_alpha((unsigned char)s[i]) || is_digit((unsigned char)s[i]) ||
                       s[i] == '_'))
        i++;
    size_t klen = i - k0;
    /* "::" and "://" (a URL in a comment) make no option */
    if (klen == 0 || !is_ascii_alpha((unsigned char)s[k0]) || i == eol || s[i] != ':' ||
        at(sc, i + 1, ':') || at(sc, i + 1, '/'))
        return 0;
    bool lower = true;
    for (size_t j = k0; j < k0 + klen; j++)
        if (s[j] >= 'A' && s[j] <= 'Z')
            lower = false;
    char key[OPFILE_SHOW_SIZE];
    opfile_show(s + k0, klen, key, sizeof key);
    char **slot = option_slot(def, s + k0, klen);
    if (!lower) {
        /* prose ("-- Note: ..."), unless it is a known option in the wrong case */
        char folded[sizeof "reject_if_empty"];
        if (klen >= sizeof folded)
            return 0;
        for (size_t j = 0; j < klen; j++)
            folded[j] = (char)((s[k0 + j] >= 'A' && s[k0 + j] <= 'Z') ? s[k0 + j] + 32 : s[k0 + j]);
        if (option_slot(def, folded, klen) == NULL)
            return 0;
        return fail_at(sc, sc->line, "option %s: options are written in lower case", key);
    }
    if (slot == NULL)
        return fail_at(sc, sc->line,
                       "unknown option '%s' (known: reject_if_empty, lock_key; a leading "
                       "'-- word:' comment is read as an option)",
                       key);
    if (*slot != NULL)
        return fail_at(sc, sc->line, "option %s given twice", key);
    size_t v = i + 1, ve = eol;
    while (v < ve && (s[v] == ' ' || s[v] == '\t'))
        v++;
    while (ve > v && is_space((unsigned char)s[ve - 1]))
        ve--;
    if (ve == v)
        return fail_at(sc, sc->line, "option %s needs a value", key);
    if (slot == &def->reject_if_empty) {
        if (ve - v > OPFILE_MESSAGE_MAX)
            return fail_at(sc, sc->line, "reject_if_empty: the message is longer than %d bytes",
                           OPFILE_MESSAGE_MAX);
        for (size_t j = v; j < ve; j++)
            if ((unsigned char)s[j] < 0x20 || s[j] == 0x7f)
                return fail_at(sc, sc->line,
                               "reject_if_empty: the message contains a control character");
    } else if (check_lock_key(sc, s + v, ve - v) < 0) {
        return -1;
    }
    *slot = strndup(s + v, ve - v);
    if (*slot == NULL)
        return fail_at(sc, sc->line, "out of memory");
    return 0;
}

/* The options and comments before the statement; stops at its first word. */
static int scan_leading(struct scan *sc, opfile_def *def)
{
    while (sc->i < sc->n) {
        unsigned char c = (unsigned char)sc->s[sc->i];
        if (is_space(c)) {
            advance_to(sc, sc->i + 1);
        } else if (c == '-' && at(sc, sc->i + 1, '-')) {
            const char *nl = memchr(sc->s + sc->i, '\n', sc->n - sc->i);
            size_t eol = nl ? (size_t)(nl - sc->s) : sc->n;
            if (parse_option_line(sc, def, eol) < 0)
                return -1;
            sc->i = eol;
        } else if (c == '/' && at(sc, sc->i + 1, '*')) {
            if (skip_span(sc, false) < 0)
                return -1;
        } else {
            return 0;
        }
    }
    return fail_at(sc, sc->line, "no SQL statement in the file");
}

/* NUL bytes and invalid UTF-8, reported on their line. */
static int check_text(struct scan *sc)
{
    const char *s = sc->s, *end = s + sc->n;
    int line = 1;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
        if (memchr(s, '\0', len))
            return fail_at(sc, line, "NUL byte in the file");
        if (!tq_utf8_valid(s, len))
            return fail_at(sc, line, "not valid UTF-8");
        s += len + (nl != NULL);
        line++;
    }
    return 0;
}

opfile_def *opfile_parse(const char *where, const char *text, size_t len, char *err,
                         size_t errlen)
{
    struct scan sc = {.s = text, .n = len, .line = 1, .where = where ? where : "(op file)",
                      .err = err, .errlen = errlen};
    if (errlen > 0)
        err[0] = '\0';
    if (len > OPFILE_MAX_BYTES) {
        fail_at(&sc, 1, "the file is larger than %d bytes", OPFILE_MAX_BYTES);
        return NULL;
    }
    if (text == NULL)
        sc.s = "";
    if (check_text(&sc) < 0)
        return NULL;
    opfile_def *def = calloc(1, sizeof *def);
    if (def == NULL) {
        fail_at(&sc, 1, "out of memory");
        return NULL;
    }
    def->tenant_index = -1;
    if (scan_leading(&sc, def) < 0 || scan_statement(&sc, def) < 0) {
        opfile_free(def);
        return NULL;
    }
    return def;
}

void opfile_free(opfile_def *def)
{
    if (def == NULL)
        return;
    for (size_t k = 0; k < def->nparams; k++)
        free(def->params[k]);
    free(def->name);
    free(def->sql);
    free(def->reject_if_empty);
    free(def->lock_key_sql);
    free(def);
}
