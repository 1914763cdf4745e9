/*
 * test_lane.c - the shard's lanes without a shard: the table (find, create,
 * grow, remove), a lane's FIFO (push, pop, push back in order), deadline
 * expiry, and the ready list (round-robin order, unlinking from the middle).
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "job.h"
#include "lane.h"

static struct job *mkjob(uint64_t deadline)
{
    struct job *j = calloc(1, sizeof *j);
    j->deadline_us = deadline;
    return j;
}

static void test_table(void)
{
    struct lane_table t;
    CHECK(lane_table_init(&t) == 0, "init");
    char name[32];
    struct lane *first = NULL;
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "tenant-%d", i);
        struct lane *l = lane_get(&t, name, strlen(name), (uint64_t)i * 0x9e3779b97f4a7c15u, true);
        CHECK(l && strcmp(l->tenant, name) == 0, "created %s", name);
        if (i == 0)
            first = l;
    }
    CHECK(t.count == 2000, "count %zu", t.count);
    CHECK(t.mask + 1 >= 2000, "grew to %zu buckets", t.mask + 1);
    CHECK(lane_get(&t, "tenant-0", 8, 0, false) == first, "found again after growing");
    CHECK(lane_get(&t, "tenant-0", 8, 1, false) == NULL, "another hash is another lane");
    CHECK(lane_get(&t, "nobody", 6, 42, false) == NULL, "absent without create");
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "tenant-%d", i);
        struct lane *l = lane_get(&t, name, strlen(name), (uint64_t)i * 0x9e3779b97f4a7c15u, false);
        CHECK(l != NULL, "still there: %s", name);
        if (l)
            lane_remove(&t, l);
    }
    CHECK(t.count == 0, "all removed: %zu", t.count);
    lane_table_destroy(&t);
}

static void test_fifo_and_expiry(void)
{
    struct lane_table t;
    CHECK(lane_table_init(&t) == 0, "init");
    struct lane *l = lane_get(&t, "a", 1, 7, true);
    struct job *j[5];
    for (int i = 0; i < 5; i++) {
        j[i] = mkjob(100 + (uint64_t)i * 10); /* 100, 110, ..., 140 */
        lane_push(l, j[i]);
    }
    CHECK(l->depth == 5, "depth %u", l->depth);
    /* a batch took two and puts them back: arrival order is kept */
    struct job *a = lane_pop(l), *b = lane_pop(l);
    CHECK(a == j[0] && b == j[1], "pop order");
    lane_push_front(l, b);
    lane_push_front(l, a);
    CHECK(l->head == j[0] && l->head->next == j[1] && l->depth == 5, "put back in order");

    /* expire at 120: the first three go, in order; the earliest left is 130 */
    uint64_t min = UINT64_MAX;
    size_t n;
    struct job *gone = lane_expire(l, 120, false, &min, &n);
    CHECK(n == 3 && l->depth == 2, "expired %zu, left %u", n, l->depth);
    CHECK(gone == j[0] && gone->next == j[1] && gone->next->next == j[2] &&
              !gone->next->next->next,
          "expired list in arrival order");
    CHECK(min == 130, "min deadline %llu", (unsigned long long)min);
    CHECK(l->head == j[3] && l->tail == j[4], "head and tail of what is left");
    for (struct job *x = gone, *next; x; x = next) {
        next = x->next;
        free(x);
    }
    /* a job pushed after expiry links behind the old tail */
    struct job *late = mkjob(50);
    lane_push(l, late);
    min = UINT64_MAX;
    gone = lane_expire(l, 60, false, &min, &n);
    CHECK(n == 1 && gone == late && l->tail == j[4], "the tail itself expires");
    free(late);
    gone = lane_expire(l, 0, true, &min, &n);
    CHECK(n == 2 && l->depth == 0 && !l->head && !l->tail, "all, when stopping");
    free(gone->next);
    free(gone);
    lane_mark_rerun(l, true, false);
    lane_mark_rerun(l, false, true);
    CHECK(l->solo && l->recheck_keys, "rerun flags add up");
    lane_remove(&t, l);
    lane_table_destroy(&t);
}

static void test_ready_list(void)
{
    struct lane_table t;
    CHECK(lane_table_init(&t) == 0, "init");
    struct ready_list r = {0};
    struct lane *l[4];
    for (int i = 0; i < 4; i++) {
        char name[2] = {(char)('a' + i), 0};
        l[i] = lane_get(&t, name, 1, (uint64_t)i, true);
        ready_push(&r, l[i]);
    }
    ready_push(&r, l[1]); /* already there: no-op */
    CHECK(r.count == 4, "count %zu", r.count);
    ready_unlink(&r, l[1], l[2]); /* middle */
    CHECK(r.count == 3 && l[1]->rnext == l[3] && !l[2]->ready, "unlinked from the middle");
    ready_unlink(&r, l[1], l[3]); /* tail */
    CHECK(r.tail == l[1], "unlinked the tail");
    ready_push(&r, l[2]);
    CHECK(r.tail == l[2] && l[1]->rnext == l[2], "pushed after the new tail");
    ready_unlink(&r, NULL, l[0]); /* head */
    CHECK(r.head == l[1], "unlinked the head");
    CHECK(ready_pop(&r) == l[1] && ready_pop(&r) == l[2] && ready_pop(&r) == NULL &&
              r.count == 0 && !r.tail,
          "round-robin order, then empty");
    for (int i = 0; i < 4; i++)
        lane_remove(&t, l[i]);
    lane_table_destroy(&t);
}

int main(void)
{
    test_table();
    test_fifo_and_expiry();
    test_ready_list();
    printf("lane: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
