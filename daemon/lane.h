/*
 * lane.h - per-tenant FIFO lanes of one shard, the table that finds them and
 * the round-robin list of lanes that are ready to run.
 *
 * A lane exists only while its tenant has queued or running work, so memory
 * follows the number of active tenants, not of tenants ever seen.  Owned by
 * one shard thread; not thread-safe.
 */
#ifndef TQ_LANE_H
#define TQ_LANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct job;

struct lane {
    struct lane *hnext;        /* hash bucket chain */
    struct lane *rnext;        /* ready list link */
    struct job *head, *tail;   /* queued jobs, arrival order */
    uint32_t depth;            /* number of queued jobs */
    bool ready;                /* linked into the ready list */
    bool busy;                 /* a batch of this lane is executing */
    bool recheck_keys;         /* next batch looks its keys up first (lane_mark_rerun) */
    bool solo;                 /* next batch runs alone and waits for its lock (lane_mark_rerun) */
    uint8_t isolate;           /* batches still to run with each request isolated (lane_isolate) */
    uint64_t hash;
    size_t tenant_len;
    char tenant[];             /* NUL-terminated */
};

struct lane_table {
    struct lane **buckets;
    size_t mask;               /* buckets - 1, a power of two minus one */
    size_t count;
};

struct ready_list {
    struct lane *head, *tail;
    size_t count;              /* lanes linked */
};

/* 0 or -1 (out of memory). */
int lane_table_init(struct lane_table *t) __attribute__((warn_unused_result));
/* Frees the bucket array; lanes must have been removed first. */
void lane_table_destroy(struct lane_table *t);

/* Find the lane of tenant; with create, make an empty one if absent.
 * Returns NULL if absent (or out of memory when creating). */
struct lane *lane_get(struct lane_table *t, const char *tenant, size_t len, uint64_t hash,
                      bool create);
/* Unlink lane from the table and free it.  It must be empty, not ready and
 * not busy. */
void lane_remove(struct lane_table *t, struct lane *lane);

/* Append job (takes ownership) / pop the oldest (caller owns it, NULL if empty). */
void lane_push(struct lane *lane, struct job *job);
struct job *lane_pop(struct lane *lane);
/* Put job back at the head (takes ownership): a batch that must run again
 * returns its jobs last to first, so the lane keeps arrival order. */
void lane_push_front(struct lane *lane, struct job *job);

/* The lane's next batch reruns requests put back: solo, alone and waiting
 * for its lock (a shared transaction could not take it, or failed); lookup,
 * with its idempotency keys looked up first.  Flags only add up. */
void lane_mark_rerun(struct lane *lane, bool solo, bool lookup);

/* A request of the lane failed: its next LANE_ISOLATE_BATCHES batches run in
 * the family's isolating form (each request able to fail alone), which costs
 * more when nothing fails.  lane_take_isolation says whether the batch
 * about to run must, and counts it. */
#define LANE_ISOLATE_BATCHES 16
void lane_isolate(struct lane *lane);
bool lane_take_isolation(struct lane *lane);

/*
 * Unlink every queued job of lane whose deadline is at or before now (all:
 * every job) and return them as a list through job->next, in arrival
 * order; the caller owns them.  *min_deadline is lowered to the earliest
 * deadline of the jobs left.  *n is set to the number unlinked.
 */
struct job *lane_expire(struct lane *lane, uint64_t now, bool all, uint64_t *min_deadline,
                        size_t *n);

/* Append lane to the tail of the ready list (no-op if already there). */
void ready_push(struct ready_list *r, struct lane *lane);
/* Unlink the head of the ready list; NULL if empty. */
struct lane *ready_pop(struct ready_list *r);
/* Unlink lane, which follows prev in the ready list (prev NULL: lane is
 * the head). */
void ready_unlink(struct ready_list *r, struct lane *prev, struct lane *lane);

#endif
