/*
 * test_draft_cache.c - unit tests of the shard's draft cache (draft_cache.h):
 * take hands the state over and leaves no entry, put respects the budget by
 * dropping the least recently put entries, the row version (version, xmin)
 * comes back as stored, and a randomized run against a simple model keeps
 * the bookkeeping (bytes, count) exact.  Run under ASan, it also shows that
 * ownership moves without leaks or double frees.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "draft_cache.h"

static uint64_t hash_of(const char *s)
{
    uint64_t h = 1469598103934665603u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

/* A state whose draft records n, at version v. */
static sf_state state(int n, int64_t v)
{
    sf_state st = {.draft = json_pack("{s:i}", "n", n), .version = v, .size_ub = 7};
    return st;
}

static void put(struct dcache *c, const char *t, int n, int64_t v, uint32_t xmin, size_t cost)
{
    sf_state st = state(n, v);
    dcache_put(c, t, strlen(t), hash_of(t), &st, xmin, cost);
    CHECK(st.draft == NULL && st.published == NULL, "put must take the state's references");
}

/* Take t: returns its n, or -1 if absent. */
static int take(struct dcache *c, const char *t, int64_t *v, uint32_t *xmin)
{
    sf_state st = {0};
    size_t cost = 0;
    if (!dcache_take(c, t, strlen(t), hash_of(t), &st, xmin, &cost))
        return -1;
    int n = (int)json_integer_value(json_object_get(st.draft, "n"));
    *v = st.version;
    sf_state_clear(&st);
    return n;
}

static void test_basics(void)
{
    struct dcache c;
    CHECK(dcache_init(&c, 1000) == 0, "init");
    int64_t v;
    uint32_t x;
    CHECK(take(&c, "a", &v, &x) == -1, "empty cache");
    put(&c, "a", 1, 5, 77, 100);
    CHECK(c.bytes == 100 && c.count == 1, "bytes %zu count %zu", c.bytes, c.count);
    CHECK(take(&c, "a", &v, &x) == 1 && v == 5 && x == 77, "v %lld x %u", (long long)v, x);
    CHECK(take(&c, "a", &v, &x) == -1, "taking removes the entry");
    CHECK(c.bytes == 0 && c.count == 0, "bytes %zu count %zu", c.bytes, c.count);

    /* budget: 1000 bytes, entries of 300: the fourth put drops the oldest */
    put(&c, "a", 1, 1, 1, 300);
    put(&c, "b", 2, 1, 1, 300);
    put(&c, "c", 3, 1, 1, 300);
    put(&c, "d", 4, 1, 1, 300);
    CHECK(c.count == 3 && c.bytes == 900, "count %zu bytes %zu", c.count, c.bytes);
    CHECK(take(&c, "a", &v, &x) == -1, "the least recently put went first");
    CHECK(take(&c, "b", &v, &x) == 2, "b stays");
    put(&c, "b", 22, 2, 2, 300); /* b is the newest now: c goes next */
    put(&c, "e", 5, 1, 1, 300);
    CHECK(take(&c, "c", &v, &x) == -1, "c was the oldest");
    CHECK(take(&c, "b", &v, &x) == 22 && v == 2, "b replaced by its newer state");

    /* bigger than the whole budget, version 0 (no row), or no draft: not kept */
    put(&c, "huge", 9, 1, 1, 1001);
    CHECK(take(&c, "huge", &v, &x) == -1, "over budget");
    put(&c, "norow", 9, 0, 1, 10);
    CHECK(take(&c, "norow", &v, &x) == -1, "version 0");
    dcache_destroy(&c);

    /* a disabled cache keeps nothing */
    CHECK(dcache_init(&c, 0) == 0, "init 0");
    put(&c, "a", 1, 1, 1, 1);
    CHECK(take(&c, "a", &v, &x) == -1 && c.count == 0, "disabled");
    dcache_destroy(&c);
    CHECK(dcache_cost(1000) > 1000, "cost grows with the text");
}

/* Random puts and takes of 50 tenants against a model of what must be there
 * when nothing was dropped (budget large enough), then a small budget where
 * only the bookkeeping is checked. */
static void test_random(void)
{
    for (int small = 0; small <= 1; small++) {
        struct dcache c;
        CHECK(dcache_init(&c, small ? 2000 : 1u << 30) == 0, "init");
        int model[50];
        memset(model, -1, sizeof model);
        unsigned seed = 12345;
        for (int i = 0; i < 20000; i++) {
            seed = seed * 1103515245u + 12345u;
            int k = (int)(seed >> 16) % 50;
            char t[16];
            snprintf(t, sizeof t, "tenant-%d", k);
            int64_t v;
            uint32_t x;
            if ((seed >> 8) & 1) {
                size_t cost = 50 + (seed >> 20) % 200;
                put(&c, t, i, i + 1, (uint32_t)i, cost);
                model[k] = i;
            } else {
                int got = take(&c, t, &v, &x);
                if (!small)
                    CHECK(got == model[k], "tenant %d: got %d want %d", k, got, model[k]);
                else
                    CHECK(got == -1 || got == model[k], "tenant %d: got %d", k, got);
                if (got >= 0)
                    CHECK(v == got + 1 && x == (uint32_t)got, "row version");
                model[k] = -1;
            }
            CHECK(c.bytes <= c.budget && c.count <= 50, "bytes %zu count %zu", c.bytes, c.count);
        }
        dcache_destroy(&c);
    }
}

int main(void)
{
    test_basics();
    test_random();
    printf("test_draft_cache: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
