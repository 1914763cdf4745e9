/*
 * check.h - the unit tests' one assertion: CHECK(cond, fmt, ...) counts the
 * check, and when cond is false prints file:line, the condition and the
 * formatted detail, and counts a failure; the test goes on.  Each test
 * program includes this once and exits non-zero if `failures` is not 0.
 */
#ifndef TQ_TEST_CHECK_H
#define TQ_TEST_CHECK_H

#include <stdio.h>

static int failures;
static int checks;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

#endif
