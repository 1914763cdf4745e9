/*
 * draft_cache.h - a shard's bounded cache of parsed tenant states.
 *
 * Parsing a stored draft (and PostgreSQL's reading it out of TOAST and
 * printing it) is the largest cost of a small batch.  A shard keeps the
 * states it last committed or read, parsed, and its SELECT sends the cached
 * row version: PostgreSQL returns the row's JSON only when the row is no
 * longer that version.  A row version is (version, xmin): version alone
 * would miss a direct writer that changed the draft without incrementing
 * it, while xmin changes with every write of the row by anyone.
 *
 * An entry is TAKEN out (ownership of its JSON moves to the batch) when a
 * batch starts and PUT back when the batch committed or changed nothing, so
 * a batch that fails or is rolled back simply leaves no entry, and no entry
 * is ever shared or edited in place while cached.
 *
 * Memory: bounded by the budget (an estimate of the parsed JSON's heap use);
 * least recently put entries go first.  One per shard thread; no locks.
 */
#ifndef TQ_DRAFT_CACHE_H
#define TQ_DRAFT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storefront.h"

struct dcache_entry;

struct dcache {
    struct dcache_entry **buckets;
    size_t mask;
    struct dcache_entry *newest, *oldest; /* recency list, by put */
    size_t bytes, budget, count;
    unsigned long hits, misses;
};

/* An empty cache of at most budget bytes (0 disables it: put drops).
 * Returns 0 or -1 (out of memory). */
int dcache_init(struct dcache *c, size_t budget) __attribute__((warn_unused_result));
void dcache_destroy(struct dcache *c);

/* Drop every entry (the cache stays usable); returns how many there were. */
size_t dcache_clear(struct dcache *c);

/* The heap a parsed state of json_len bytes of JSON text is reckoned at. */
size_t dcache_cost(size_t json_len);

/*
 * Take tenant's entry out of the cache: on true, *st holds its state (owned
 * by the caller now; st must be empty before), *xmin the row's xmin and
 * *cost what it was reckoned at.  false if there is none.
 */
bool dcache_take(struct dcache *c, const char *tenant, size_t len, uint64_t hash, sf_state *st,
                 uint32_t *xmin, size_t *cost);

/*
 * Put st in as tenant's state at row version (st->version, xmin); the cache
 * takes st's references and leaves st empty.  Drops older entries to stay
 * within the budget; a state bigger than the whole budget (or out of
 * memory) is simply released.
 */
void dcache_put(struct dcache *c, const char *tenant, size_t len, uint64_t hash, sf_state *st,
                uint32_t xmin, size_t cost);

#endif
