/*
 * fuzz_sqlargs.c - libFuzzer target for the argument mapping
 * (daemon/sqlargs.h).  The input is an op file, a NUL byte, then the args as
 * JSON text (an op file that does not parse is replaced by a fixed one, args
 * that do not parse or are not an object by {}).  sqlargs_check and
 * sqlargs_bind must agree; a refusal is INVALID_ARGUMENT with a clean
 * one-line message naming args; a binding holds one value per parameter,
 * the caller's tenant for :tenant, and each value maps back to its argument:
 * the same string, NULL for nil, "true"/"false", an integer or double that
 * reads back exactly, JSON text that parses to an equal value.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "jparse.h"
#include "sqlargs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_value(const json_t *v, const char *text)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (text != json_string_value(v))
            fuzz_fail("a string is not passed as is", text);
        return;
    case JSON_NULL:
        if (text != NULL)
            fuzz_fail("nil is not NULL", text);
        return;
    case JSON_TRUE:
    case JSON_FALSE:
        if (!text || strcmp(text, json_is_true(v) ? "true" : "false") != 0)
            fuzz_fail("boolean text", text);
        return;
    case JSON_INTEGER:
        errno = 0;
        if (!text || strtoll(text, NULL, 10) != json_integer_value(v) || errno)
            fuzz_fail("integer text does not read back", text);
        return;
    case JSON_REAL:
        if (!text || strtod(text, NULL) != json_real_value(v))
            fuzz_fail("real text does not read back", text);
        return;
    case JSON_OBJECT:
    case JSON_ARRAY: {
        json_t *back = text ? jparse(text, strlen(text), NULL, NULL, 0) : NULL;
        if (!back || !json_equal(back, v))
            fuzz_fail("JSON text does not parse back", text);
        json_decref(back);
        return;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const char *nul = memchr(text, '\0', size);
    size_t oplen = nul ? (size_t)(nul - text) : size;
    char err[OPFILE_ERR_MAX];
    opfile_def *def = opfile_parse("f.sql", text, oplen, err, sizeof err);
    if (def == NULL) {
        static const char fixed[] = "SELECT :tenant, :a, :b, :a";
        def = opfile_parse("f.sql", fixed, sizeof fixed - 1, err, sizeof err);
        if (def == NULL)
            fuzz_fail("the fixed op file does not parse", err);
    }
    json_t *args = nul ? jparse(nul + 1, size - oplen - 1, NULL, NULL, 0) : NULL;
    if (!json_is_object(args)) {
        json_decref(args);
        args = json_object();
    }
    tq_error e1 = {0}, e2 = {0};
    int c = sqlargs_check(def, args, &e1);
    sqlargs b;
    static const char tenant[] = "acme";
    int r = sqlargs_bind(def, args, tenant, &b, &e2);
    if (c != r)
        fuzz_fail("check and bind disagree", e1.message);
    if (c < 0) {
        fuzz_check_message(&e1);
        if (e1.code != TQ_E_INVALID_ARGUMENT || strncmp(e1.message, "args", 4) != 0 ||
            strcmp(e1.message, e2.message) != 0)
            fuzz_fail("refusal is not INVALID_ARGUMENT naming args", e1.message);
    } else {
        if (b.n != (int)def->nparams)
            fuzz_fail("one value per parameter", def->sql);
        for (int k = 0; k < b.n; k++) {
            if (k == def->tenant_index) {
                if (b.values[k] != tenant)
                    fuzz_fail("the tenant is not the caller's", b.values[k]);
                continue;
            }
            check_value(json_object_get(args, def->params[k]), b.values[k]);
        }
        sqlargs_clear(&b);
    }
    json_decref(args);
    opfile_free(def);
    return 0;
}
