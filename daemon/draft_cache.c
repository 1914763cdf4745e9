/*
 * draft_cache.c - see draft_cache.h.  Chained hash table with a bucket count
 * fixed from the budget, plus a doubly linked recency list.
 */
#include "draft_cache.h"

#include <stdlib.h>
#include <string.h>

struct dcache_entry {
    struct dcache_entry *hnext;
    struct dcache_entry *newer, *older;
    uint64_t hash;
    uint32_t xmin;
    size_t cost;
    sf_state st;
    size_t tenant_len;
    char tenant[];
};

/* parsed jansson objects take about 6x their compact text (measured on the
 * load harness's drafts); 8x plus the entry covers malloc's overhead */
size_t dcache_cost(size_t json_len) { return 8 * json_len + 256; }

int dcache_init(struct dcache *c, size_t budget)
{
    memset(c, 0, sizeof *c);
    c->budget = budget;
    size_t n = 64;
    while (n < budget / 4096 && n < ((size_t)1 << 24))
        n *= 2;
    c->mask = n - 1;
    c->buckets = calloc(n, sizeof *c->buckets);
    return c->buckets ? 0 : -1;
}

static struct dcache_entry **slot_of(struct dcache *c, const char *tenant, size_t len,
                                     uint64_t hash)
{
    struct dcache_entry **pp = &c->buckets[(size_t)(hash >> 32 ^ hash >> 7) & c->mask];
    while (*pp && !((*pp)->hash == hash && (*pp)->tenant_len == len &&
                    memcmp((*pp)->tenant, tenant, len) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

/* Unlink e (found at *pp) from the table and the recency list. */
static void unlink_entry(struct dcache *c, struct dcache_entry **pp, struct dcache_entry *e)
{
    *pp = e->hnext;
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    c->bytes -= e->cost;
    c->count--;
}

static void drop_oldest(struct dcache *c)
{
    struct dcache_entry *e = c->oldest;
    unlink_entry(c, slot_of(c, e->tenant, e->tenant_len, e->hash), e);
    sf_state_clear(&e->st);
    free(e);
}

size_t dcache_clear(struct dcache *c)
{
    size_t n = c->count;
    while (c->oldest)
        drop_oldest(c);
    return n;
}

void dcache_destroy(struct dcache *c)
{
    while (c->oldest)
        drop_oldest(c);
    free(c->buckets);
    c->buckets = NULL;
}

bool dcache_take(struct dcache *c, const char *tenant, size_t len, uint64_t hash, sf_state *st,
                 uint32_t *xmin, size_t *cost)
{
    if (!c->buckets)
        return false;
    struct dcache_entry **pp = slot_of(c, tenant, len, hash);
    struct dcache_entry *e = *pp;
    if (!e)
        return false;
    unlink_entry(c, pp, e);
    *st = e->st;
    *xmin = e->xmin;
    *cost = e->cost;
    free(e);
    return true;
}

void dcache_put(struct dcache *c, const char *tenant, size_t len, uint64_t hash, sf_state *st,
                uint32_t xmin, size_t cost)
{
    struct dcache_entry *e = NULL;
    if (c->buckets && cost <= c->budget && st->draft && st->version > 0)
        e = malloc(sizeof *e + len + 1);
    if (!e) {
        sf_state_clear(st);
        return;
    }
    struct dcache_entry **pp = slot_of(c, tenant, len, hash);
    if (*pp) { /* not expected (entries are taken while a batch runs); the new one wins */
        struct dcache_entry *old = *pp;
        unlink_entry(c, pp, old);
        sf_state_clear(&old->st);
        free(old);
    }
    while (c->oldest && c->bytes + cost > c->budget)
        drop_oldest(c);
    e->hash = hash;
    e->xmin = xmin;
    e->cost = cost;
    e->st = *st;
    memset(st, 0, sizeof *st);
    e->tenant_len = len;
    memcpy(e->tenant, tenant, len);
    e->tenant[len] = '\0';
    pp = slot_of(c, tenant, len, hash);
    e->hnext = *pp;
    *pp = e;
    e->older = c->newest;
    e->newer = NULL;
    if (c->newest)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
    c->bytes += cost;
    c->count++;
}
