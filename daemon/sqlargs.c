/*
 * sqlargs.c - args to text parameters (contract: sqlargs.h).
 *
 * The admission check runs on every SQL request before it is queued, so it
 * allocates nothing and walks the definition's few names once per argument.
 */
#include "sqlargs.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jdump.h"

/* Whether def takes an argument called key. */
static bool takes(const opfile_def *def, const char *key)
{
    for (size_t k = 0; k < def->nparams; k++)
        if ((int)k != def->tenant_index && strcmp(def->params[k], key) == 0)
            return true;
    return false;
}

/* ", this op takes a, b" or " (this op takes no arguments)" into buf. */
static void describe(const opfile_def *def, char *buf, size_t size)
{
    size_t len = (size_t)snprintf(buf, size, " (this op takes ");
    bool any = false;
    for (size_t k = 0; k < def->nparams && len < size; k++) {
        if ((int)k == def->tenant_index)
            continue;
        len += (size_t)snprintf(buf + len, size - len, "%s%s", any ? ", " : "", def->params[k]);
        any = true;
    }
    if (len < size)
        snprintf(buf + len, size - len, "%s)", any ? "" : "no arguments");
}

int sqlargs_check(const opfile_def *def, const json_t *args, tq_error *err)
{
    char takes_what[TQ_ERRMSG_MAX / 2];
    if (!json_is_object(args)) {
        describe(def, takes_what, sizeof takes_what);
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args: must be a map%s", takes_what);
    }
    if (json_object_get(args, OPFILE_TENANT) != NULL)
        return tq_error_set(err, TQ_E_INVALID_ARGUMENT,
                            "args.tenant: not an argument: the tenant is the request's tenant "
                            "field");
    size_t have = 0;
    for (size_t k = 0; k < def->nparams; k++) {
        if ((int)k == def->tenant_index)
            continue;
        if (json_object_get(args, def->params[k]) == NULL) {
            describe(def, takes_what, sizeof takes_what);
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.%s: missing%s", def->params[k],
                                takes_what);
        }
        have++;
    }
    if (json_object_size(args) == have)
        return 0;
    const char *key;
    json_t *v;
    /* jansson iterates only non-const objects; nothing is changed */
    json_object_foreach((json_t *)(uintptr_t)args, key, v) {
        if (!takes(def, key)) {
            char shown[OPFILE_SHOW_SIZE];
            opfile_show(key, strlen(key), shown, sizeof shown);
            describe(def, takes_what, sizeof takes_what);
            return tq_error_set(err, TQ_E_INVALID_ARGUMENT, "args.%s: unknown argument%s",
                                shown, takes_what);
        }
    }
    /* unreachable: size differs, so some key is unknown */
    return tq_error_set(err, TQ_E_INTERNAL, "args: inconsistent object size");
}

char *sqlargs_real_text(double d, char *buf)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, d);
        if (prec == 17 || strtod(buf, NULL) == d)
            break;
    }
    return buf;
}

/* The text of one argument value into out slot k; -1 out of memory. */
static int bind_value(json_t *v, sqlargs *out, int k)
{
    char buf[32];
    const char *text = NULL;
    switch (json_typeof(v)) {
    case JSON_STRING:
        out->values[k] = json_string_value(v);
        return 0;
    case JSON_NULL:
        out->values[k] = NULL;
        return 0;
    case JSON_TRUE:
        out->values[k] = "true";
        return 0;
    case JSON_FALSE:
        out->values[k] = "false";
        return 0;
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        text = buf;
        break;
    case JSON_REAL:
        text = sqlargs_real_text(json_real_value(v), buf);
        break;
    case JSON_OBJECT:
    case JSON_ARRAY:
        out->owned[k] = jdump(v, 0, NULL);
        out->values[k] = out->owned[k];
        return out->owned[k] ? 0 : -1;
    }
    if (text == NULL || (out->owned[k] = strdup(text)) == NULL)
        return -1;
    out->values[k] = out->owned[k];
    return 0;
}

int sqlargs_bind(const opfile_def *def, const json_t *args, const char *tenant, sqlargs *out,
                 tq_error *err)
{
    memset(out, 0, sizeof *out);
    if (sqlargs_check(def, args, err) < 0)
        return -1;
    for (size_t k = 0; k < def->nparams; k++) {
        if ((int)k == def->tenant_index) {
            out->values[k] = tenant;
            continue;
        }
        if (bind_value(json_object_get(args, def->params[k]), out, (int)k) < 0) {
            sqlargs_clear(out);
            return tq_error_set(err, TQ_E_INTERNAL, "args.%s: out of memory", def->params[k]);
        }
    }
    out->n = (int)def->nparams;
    return 0;
}

void sqlargs_clear(sqlargs *out)
{
    for (int k = 0; k < OPFILE_MAX_PARAMS; k++)
        free(out->owned[k]);
    memset(out, 0, sizeof *out);
}
