/*
 * jparse_diff.h - the equivalence check of jparse (daemon/jparse.h) against
 * jansson, shared by the unit test and the fuzz target: on any input, both
 * accept it with equal values, or both refuse it.  Two differences are
 * allowed: an integer beyond int64, which jparse reads as a real (big_ints
 * set) where jansson refuses the text, and a NUL byte, at which jansson
 * stops reading ("1<NUL>junk" is 1 to it) while jparse refuses the text.
 * Whatever both accept, jdump must also write exactly as json_dumps does,
 * and jparse_with(JPARSE_REJECT_DUPLICATES) must refuse it exactly when
 * jansson's JSON_REJECT_DUPLICATES does.
 */
#ifndef TQ_JPARSE_DIFF_H
#define TQ_JPARSE_DIFF_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jdump.h"
#include "jparse.h"

/* NULL if jparse and jansson agree on the size bytes at data, else what
 * differed. */
static const char *jparse_diff(const char *data, size_t size)
{
    char err[160];
    bool big = false;
    json_t *ours = jparse(data, size, &big, err, sizeof err);
    json_t *theirs = json_loadb(data, size, JSON_DECODE_ANY, NULL);
    const char *why = NULL;
    if (memchr(data, 0, size) != NULL) {
        if (ours)
            why = "jparse accepted text with a NUL byte";
    } else if (theirs && !ours)
        why = "jparse refused text that jansson accepts";
    else if (theirs && !json_equal(ours, theirs))
        why = "jparse and jansson read different values";
    else if (theirs && big)
        why = "big_ints set for text within int64";
    else if (theirs) {
        /* and jdump writes what json_dumps writes */
        char *a = jdump(ours, 0, NULL);
        char *b = json_dumps(theirs, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!a || !b || strcmp(a, b) != 0)
            why = "jdump and json_dumps write different text";
        free(a);
        free(b);
    }
    else if (!theirs && ours && !big)
        why = "jparse accepted text that jansson refuses";
    else if (!theirs && ours) {
        json_t *reals = json_loadb(data, size, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
        if (!reals)
            why = "jparse accepted a big integer in text jansson refuses even as reals";
        json_decref(reals);
    }
    else if (!ours && (err[0] == '\0' || strstr(err, " at byte ") == NULL))
        why = "refusal without a message naming the offset";
    if (!why && theirs && ours) {
        /* refusing repeated keys: exactly where JSON_REJECT_DUPLICATES does */
        json_t *os = jparse_with(data, size, JPARSE_REJECT_DUPLICATES, NULL, err, sizeof err);
        json_t *ts = json_loadb(data, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
        if (ts && !os)
            why = "jparse_with(REJECT_DUPLICATES) refused text jansson accepts";
        else if (os && !ts)
            why = "jparse_with(REJECT_DUPLICATES) accepted a repeated key";
        else if (os && !json_equal(os, ts))
            why = "jparse_with(REJECT_DUPLICATES) read a different value";
        else if (!os && strstr(err, "duplicate object key at byte ") == NULL)
            why = "repeated key refused without naming it";
        json_decref(os);
        json_decref(ts);
    }
    json_decref(ours);
    json_decref(theirs);
    return why;
}

#endif
