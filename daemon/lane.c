/*
 * lane.c - lanes, their hash table (chained, doubling at load 1) and the
 * ready list.  No locks: everything here belongs to one shard thread.
 */
#include "lane.h"

#include <stdlib.h>
#include <string.h>

#include "job.h"

int lane_table_init(struct lane_table *t)
{
    t->mask = 255;
    t->count = 0;
    t->buckets = calloc(t->mask + 1, sizeof *t->buckets);
    return t->buckets ? 0 : -1;
}

void lane_table_destroy(struct lane_table *t)
{
    free(t->buckets);
    t->buckets = NULL;
}

/* The low bits of the hash pick the shard; use the high ones for buckets. */
static size_t bucket_of(const struct lane_table *t, uint64_t hash)
{
    return (size_t)(hash >> 32 ^ hash >> 13) & t->mask;
}

static void grow(struct lane_table *t)
{
    size_t nmask = t->mask * 2 + 1;
    struct lane **nb = calloc(nmask + 1, sizeof *nb);
    if (!nb)
        return; /* keep the longer chains; still correct */
    struct lane_table nt = {.buckets = nb, .mask = nmask, .count = t->count};
    for (size_t i = 0; i <= t->mask; i++) {
        struct lane *l = t->buckets[i];
        while (l) {
            struct lane *next = l->hnext;
            size_t b = bucket_of(&nt, l->hash);
            l->hnext = nb[b];
            nb[b] = l;
            l = next;
        }
    }
    free(t->buckets);
    *t = nt;
}

struct lane *lane_get(struct lane_table *t, const char *tenant, size_t len, uint64_t hash,
                      bool create)
{
    size_t b = bucket_of(t, hash);
    for (struct lane *l = t->buckets[b]; l; l = l->hnext)
        if (l->hash == hash && l->tenant_len == len && memcmp(l->tenant, tenant, len) == 0)
            return l;
    if (!create)
        return NULL;
    struct lane *l = calloc(1, sizeof *l + len + 1);
    if (!l)
        return NULL;
    l->hash = hash;
    l->tenant_len = len;
    memcpy(l->tenant, tenant, len);
    if (t->count + 1 > t->mask + 1) {
        grow(t);
        b = bucket_of(t, hash);
    }
    l->hnext = t->buckets[b];
    t->buckets[b] = l;
    t->count++;
    return l;
}

void lane_remove(struct lane_table *t, struct lane *lane)
{
    struct lane **pp = &t->buckets[bucket_of(t, lane->hash)];
    while (*pp && *pp != lane)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = lane->hnext;
        t->count--;
    }
    free(lane);
}

void lane_push(struct lane *lane, struct job *job)
{
    job->next = NULL;
    if (lane->tail)
        lane->tail->next = job;
    else
        lane->head = job;
    lane->tail = job;
    lane->depth++;
}

void lane_push_front(struct lane *lane, struct job *job)
{
    job->next = lane->head;
    lane->head = job;
    if (!lane->tail)
        lane->tail = job;
    lane->depth++;
}

struct job *lane_pop(struct lane *lane)
{
    struct job *j = lane->head;
    if (!j)
        return NULL;
    lane->head = j->next;
    if (!lane->head)
        lane->tail = NULL;
    j->next = NULL;
    lane->depth--;
    return j;
}

void ready_push(struct ready_list *r, struct lane *lane)
{
    if (lane->ready)
        return;
    lane->ready = true;
    lane->rnext = NULL;
    if (r->tail)
        r->tail->rnext = lane;
    else
        r->head = lane;
    r->tail = lane;
    r->count++;
}

struct lane *ready_pop(struct ready_list *r)
{
    struct lane *l = r->head;
    if (!l)
        return NULL;
    r->head = l->rnext;
    if (!r->head)
        r->tail = NULL;
    l->rnext = NULL;
    l->ready = false;
    r->count--;
    return l;
}

void ready_unlink(struct ready_list *r, struct lane *prev, struct lane *lane)
{
    if (prev)
        prev->rnext = lane->rnext;
    else
        r->head = lane->rnext;
    if (r->tail == lane)
        r->tail = prev;
    lane->rnext = NULL;
    lane->ready = false;
    r->count--;
}

void lane_mark_rerun(struct lane *lane, bool solo, bool lookup)
{
    lane->solo |= solo;
    lane->recheck_keys |= lookup;
}

void lane_isolate(struct lane *lane) { lane->isolate = LANE_ISOLATE_BATCHES; }

bool lane_take_isolation(struct lane *lane)
{
    if (lane->isolate == 0)
        return false;
    lane->isolate--;
    return true;
}

struct job *lane_expire(struct lane *lane, uint64_t now, bool all, uint64_t *min_deadline,
                        size_t *n)
{
    struct job *out = NULL, **out_tail = &out;
    struct job **pp = &lane->head, *prev = NULL;
    *n = 0;
    while (*pp) {
        struct job *j = *pp;
        if (all || now >= j->deadline_us) {
            *pp = j->next;
            if (lane->tail == j)
                lane->tail = prev;
            lane->depth--;
            j->next = NULL;
            *out_tail = j;
            out_tail = &j->next;
            (*n)++;
        } else {
            if (j->deadline_us < *min_deadline)
                *min_deadline = j->deadline_us;
            prev = j;
            pp = &j->next;
        }
    }
    return out;
}
