/*
 * fuzz_storage.c - libFuzzer target for the [storage] name parser and the
 * tenant canonical-form check (daemon/storage.h).  The first byte picks the
 * case; the rest is the text.  A parsed name must be 1..max parts of 1..63
 * bytes each, and quoting each part and parsing the quoted form again must
 * give the same part back; a refusal must be one line of text.  A tenant the
 * uuid check accepts is 36 bytes of lower-case hex and dashes; one an
 * integer check accepts parses back to the same decimal text.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "storage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_line(const char *msg)
{
    if (msg[0] == '\0' || strchr(msg, '\n'))
        fuzz_fail("refusal is not one line", msg);
}

static void fuzz_name(const char *text, int max)
{
    char parts[2][STORAGE_IDENT_MAX + 1], err[STORAGE_ERR_MAX];
    int n = storage_parse_name(text, parts, max, err, sizeof err);
    if (n < 0) {
        check_line(err);
        return;
    }
    if (n < 1 || n > max)
        fuzz_fail("part count out of range", text);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(parts[i]);
        if (len == 0 || len > STORAGE_IDENT_MAX)
            fuzz_fail("part length out of range", text);
        char q[STORAGE_QUOTED_MAX], again[1][STORAGE_IDENT_MAX + 1];
        storage_quote(parts[i], q, sizeof q);
        if (storage_parse_name(q, again, 1, err, sizeof err) != 1 ||
            strcmp(again[0], parts[i]) != 0)
            fuzz_fail("quoted part does not parse back", q);
    }
}

static void fuzz_tenant(const char *t, size_t len, enum storage_key type)
{
    struct storage st = {.tenant_type = type, .tenant_max_chars = type == STORAGE_KEY_TEXT ? 8 : 0};
    char err[STORAGE_ERR_MAX];
    if (storage_check_tenant(&st, t, len, err, sizeof err) < 0) {
        check_line(err);
        return;
    }
    if (type == STORAGE_KEY_UUID) {
        if (len != 36)
            fuzz_fail("uuid of another length accepted", t);
        for (size_t i = 0; i < len; i++)
            if (!strchr("0123456789abcdef-", t[i]))
                fuzz_fail("uuid with another character accepted", t);
    } else if (type != STORAGE_KEY_TEXT) {
        char back[32];
        long long v = strtoll(t, NULL, 10);
        snprintf(back, sizeof back, "%lld", v);
        if (strlen(back) != len || memcmp(back, t, len) != 0)
            fuzz_fail("integer not in canonical form accepted", t);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 512)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    unsigned mode = data[0] % 6;
    if (mode < 2) {
        if (strlen(text) == size - 1) /* (the config never holds a NUL) */
            fuzz_name(text, (int)mode + 1);
    } else {
        static const enum storage_key types[4] = {STORAGE_KEY_TEXT, STORAGE_KEY_UUID,
                                                  STORAGE_KEY_INT2, STORAGE_KEY_INT8};
        fuzz_tenant(text, size - 1, types[mode - 2]);
    }
    free(text);
    return 0;
}
