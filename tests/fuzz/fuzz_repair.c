/*
 * fuzz_repair.c - libFuzzer target for draft.check and draft.repair
 * (daemon/storefront.h) over any stored draft: the input is parsed as the
 * daemon parses a stored draft (jparse), and must never crash, leak or
 * stall the checker or the repair.  Invariants:
 *   - draft.check and a dry run change nothing; the check's version is the
 *     state's;
 *   - a repair changes the version by one exactly when it renamed something;
 *   - every listed problem has a known kind and a non-empty message;
 *   - after a repair, a second one renames nothing, and a check finds
 *     exactly the problems the repair reported as unrepaired.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "jparse.h"
#include "storefront.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *apply(sf_state *st, sf_op op, const char *args_text)
{
    json_t *args = args_text ? json_loads(args_text, 0, NULL) : NULL;
    json_t *res = NULL;
    tq_error err;
    int rc = sf_apply(st, op, args, 0, &res, &err);
    json_decref(args);
    if (rc != 0) {
        fuzz_check_message(&err);
        if (err.code != TQ_E_INTERNAL)
            fuzz_fail("check/repair failed with another code than INTERNAL", err.message);
        return NULL; /* out of memory only */
    }
    return res;
}

static void check_list(const json_t *list)
{
    static const char *const kinds[] = {"duplicate_id", "missing_id", "bad_id", "bad_type",
                                        "bad_shape"};
    if (!json_is_array(list) || json_array_size(list) > SF_PROBLEMS_MAX)
        fuzz_fail("problem list missing or over the cap", NULL);
    size_t i;
    const json_t *p;
    json_array_foreach(list, i, p) {
        const char *kind = json_string_value(json_object_get(p, "problem"));
        const char *msg = json_string_value(json_object_get(p, "message"));
        bool known = false;
        for (size_t k = 0; kind && k < sizeof kinds / sizeof kinds[0]; k++)
            known |= strcmp(kind, kinds[k]) == 0;
        if (!known || msg == NULL || msg[0] == '\0')
            fuzz_fail("problem without a known kind or a message", kind);
    }
}

static size_t listed(const json_t *res, const char *list, const char *omitted)
{
    return json_array_size(json_object_get(res, list)) +
           (size_t)json_integer_value(json_object_get(res, omitted));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[128];
    json_t *draft = jparse((const char *)data, size, NULL, why, sizeof why);
    if (draft == NULL)
        return 0;
    sf_state st = {.draft = draft, .version = 7};
    json_t *orig = json_deep_copy(draft);
    json_t *chk = apply(&st, SF_OP_DRAFT_CHECK, NULL);
    json_t *dry = apply(&st, SF_OP_DRAFT_REPAIR, "{\"dry_run\":true}");
    if (orig && (!json_equal(orig, st.draft) || st.version != 7))
        fuzz_fail("check or dry run changed the state", NULL);
    if (chk) {
        check_list(json_object_get(chk, "problems"));
        if (json_integer_value(json_object_get(chk, "version")) != 7)
            fuzz_fail("check version", NULL);
    }
    json_t *rep = apply(&st, SF_OP_DRAFT_REPAIR, NULL);
    if (rep) {
        check_list(json_object_get(rep, "unrepaired"));
        size_t renamed = listed(rep, "renamed", "renamed_omitted");
        if (st.version != 7 + (renamed > 0))
            fuzz_fail("version after repair", NULL);
        if (dry && !json_equal(json_object_get(dry, "renamed"), json_object_get(rep, "renamed")))
            fuzz_fail("dry run and repair disagree", NULL);
        json_t *again = apply(&st, SF_OP_DRAFT_REPAIR, NULL);
        json_t *after = apply(&st, SF_OP_DRAFT_CHECK, NULL);
        if (again && (listed(again, "renamed", "renamed_omitted") != 0 || st.version != 7 + (renamed > 0)))
            fuzz_fail("a second repair renamed something", NULL);
        if (after && listed(after, "problems", "omitted") !=
                         listed(rep, "unrepaired", "unrepaired_omitted"))
            fuzz_fail("problems after repair differ from those reported unrepaired", NULL);
        json_decref(again);
        json_decref(after);
    }
    json_decref(chk);
    json_decref(dry);
    json_decref(rep);
    json_decref(orig);
    sf_state_clear(&st);
    return 0;
}
