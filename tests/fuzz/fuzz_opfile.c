/*
 * fuzz_opfile.c - libFuzzer target for the op-file parser (daemon/opfile.h):
 * on any input it must not crash, leak or read past the given length, and
 * either refuse with one line of valid text "f.sql:LINE: ..." whose LINE is
 * within the input, or return a definition that keeps the contract: the SQL
 * is non-empty, NUL-terminated at sql_len, starts with one of the allowed
 * words and holds each placeholder $1..$n; the names are valid and
 * distinct; tenant_index points at "tenant" or is -1 with no such name; the
 * options are within their limits.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_common.h"
#include "opfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_line(const char *msg)
{
    if (msg[0] == '\0' || strchr(msg, '\n') || !tq_utf8_valid(msg, strlen(msg)))
        fuzz_fail("message is not one line of valid text", msg);
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            fuzz_fail("control character in a message", msg);
}

/* Whether "$k" (not followed by a digit) occurs in sql. */
static int has_placeholder(const char *sql, size_t k)
{
    char ph[8];
    size_t n = (size_t)snprintf(ph, sizeof ph, "$%zu", k);
    for (const char *p = sql; (p = strstr(p, ph)) != NULL; p++)
        if (p[n] < '0' || p[n] > '9')
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy: a read past the end shows under ASan */
    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);
    char err[OPFILE_ERR_MAX];
    opfile_def *def = opfile_parse("f.sql", text, size, err, sizeof err);
    if (def == NULL) {
        check_line(err);
        if (strncmp(err, "f.sql:", 6) != 0)
            fuzz_fail("message does not name the file", err);
        long line = strtol(err + 6, NULL, 10);
        long lines = 1;
        for (size_t i = 0; i < size; i++)
            lines += text[i] == '\n';
        if (line < 1 || line > lines)
            fuzz_fail("line number outside the input", err);
        free(text);
        return 0;
    }
    if (def->sql_len == 0 || strlen(def->sql) != def->sql_len)
        fuzz_fail("sql empty or sql_len wrong", def->sql);
    static const char *const verbs[] = {"select", "insert", "update", "delete", "with"};
    int verb = 0;
    for (size_t k = 0; k < 5; k++)
        verb |= strncasecmp(def->sql, verbs[k], strlen(verbs[k])) == 0;
    if (!verb)
        fuzz_fail("sql does not start with an allowed word", def->sql);
    if (def->nparams > OPFILE_MAX_PARAMS)
        fuzz_fail("too many parameters", def->sql);
    int tenant = -1;
    for (size_t k = 0; k < def->nparams; k++) {
        if (!opfile_valid_param(def->params[k], strlen(def->params[k])))
            fuzz_fail("invalid parameter name", def->params[k]);
        for (size_t j = 0; j < k; j++)
            if (strcmp(def->params[j], def->params[k]) == 0)
                fuzz_fail("parameter listed twice", def->params[k]);
        if (strcmp(def->params[k], OPFILE_TENANT) == 0)
            tenant = (int)k;
        if (!has_placeholder(def->sql, k + 1))
            fuzz_fail("a parameter's placeholder is missing", def->sql);
    }
    if (def->tenant_index != tenant)
        fuzz_fail("tenant_index wrong", def->sql);
    if (def->reject_if_empty) {
        check_line(def->reject_if_empty);
        if (strlen(def->reject_if_empty) > OPFILE_MESSAGE_MAX)
            fuzz_fail("reject_if_empty too long", def->reject_if_empty);
    }
    if (def->lock_key_sql && (!strstr(def->lock_key_sql, "$1") ||
                              strlen(def->lock_key_sql) > OPFILE_LOCK_KEY_MAX ||
                              strchr(def->lock_key_sql, '\n')))
        fuzz_fail("lock_key outside its contract", def->lock_key_sql);
    opfile_free(def);
    free(text);
    return 0;
}
