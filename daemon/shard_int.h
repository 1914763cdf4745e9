/*
 * shard_int.h - the objects of one shard, shared by its rooms only:
 * shard.c (thread, inbox, scheduling, lifecycle), txn.c (the transaction
 * engine) and expiry.c (the idempotency-record cleanup).  Everything here
 * belongs to the shard's own thread; the front reads only the atomics, and
 * only through shard.h.
 */
#ifndef TQ_SHARD_INT_H
#define TQ_SHARD_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>
#include <msgpack.h>

#include "draft_cache.h"
#include "family.h"
#include "idem.h"
#include "job.h"
#include "lane.h"
#include "stats.h"
#include "opfile.h"
#include "pg.h"
#include "shard.h"
#include "sql.h"

#define GROUP_MAX TQ_MAX_BATCH_TENANTS /* batches (tenants) per transaction */
/* The pipelines at their largest: BEGIN, timeouts, COMMIT, and per batch
 * lock, the family's read or guard, key records and the family's write.
 * pg_pipeline refuses a longer one outright, which would fail a whole
 * transaction. */
#define TXN_MAX_STMTS (3 + (2 + 2 * FAM_MAX_STMTS) * GROUP_MAX)
_Static_assert(TXN_MAX_STMTS <= PG_MAX_STMTS, "a transaction's pipeline must fit in pg.c");

/* How a batch takes part in its transaction's last pipeline. */
enum batch_role {
    BATCH_OUT,     /* not (any more): answered or put back before it was sent */
    BATCH_WRITES,  /* its state (and key records) are written before COMMIT */
    BATCH_CONFIRMS /* one round trip, nothing to write: answered after COMMIT */
};

/* One tenant's share of a transaction: up to max_batch of its lane's queued
 * requests of one family, in arrival order (slices of the txn's arrays). */
struct batch {
    struct txn *t;
    struct lane *lane;
    const struct op_family *fam;
    void *fs;                  /* fam's state for this batch (fstate[fam->id]) */
    void *fstate[FAM__COUNT];  /* each family's per-slot state, created once */
    struct job **jobs;         /* NULL once answered or put back */
    json_t **results;
    tq_error *errs;
    bool *replayed;            /* answered from an idempotency record */
    int n;
    enum batch_role role;
    bool mutating;             /* some job changes state: lock, read, write */
    bool has_keys;             /* some mutating job carries a key */
    bool keyed_reads;          /* some read carries a key: checked, never bound */
    bool lookup;               /* this batch read the stored records of its keys */
    bool oom;                  /* recording keys ran out of memory: fail the batch */
    bool precomputed;          /* the family held the state: applied before reading */
    bool begun;                /* fam->begin ran: fam->end is due */
    /* indexes of its statements' results, -1 none: the first pipeline's
     * (lock, the family's read or guard, the key lookup), and the writes
     * (key records, the family's write) of the last one */
    int r_lock, r_read, r_lookup, r_idem, r_write;
    json_t *records;           /* key -> {"f": fingerprint, "r": result}, stored + this batch */
    int *rpos;                 /* statement batches: each request's result in the pipeline
                                * that ran it, -1 none (a slice of the txn's array) */
    int *dup;                  /* statement batches: the earlier request of this batch
                                * with the same key, -1 none */
    char lock_sql[OPFILE_LOCK_KEY_MAX + 96]; /* a statement batch's lock over its op's key */
    struct pg_text_array keys; /* the batch's keys, for the lookup */
    struct pg_text_array new_keys, new_fps, new_resps; /* records to insert with the edit */
};

/* The transaction running on one connection: one batch, or several
 * tenants' batches sharing BEGIN..COMMIT (txn.c). */
struct txn {
    struct shard *s;
    struct pgconn *pc;
    struct job **jobs;         /* max_batch slots each, shared by the batches */
    json_t **results;
    tq_error *errs;
    bool *replayed;
    int *rpos, *dup;           /* max_batch slots each (statement batches) */
    struct batch b[GROUP_MAX];
    int nb;                    /* batches in this transaction; 0: the slot is free */
    int njobs;
    int nres;                  /* statements of the first pipeline */
    int seg_from;              /* statement batches: where the running pipeline's
                                * requests begin (what comes before is the batches' own:
                                * BEGIN, timeouts, locks, or the key records) */
    char sp_before[PG_MAX_REQUESTS][24];   /* "SAVEPOINT tq_<i>" */
    char sp_undo[PG_MAX_REQUESTS][40];     /* "ROLLBACK TO SAVEPOINT tq_<i>" */
    uint64_t change_deadline_us; /* tightest deadline of a state-changing job, or UINT64_MAX */
    bool committing;           /* COMMIT sent: the transaction must not be aborted */
    bool one_trip;             /* sent whole from precomputed states */
    bool isolated;             /* statement batches: each request in a savepoint */
    uint64_t start_us;
    char tout_lock[24], ttl[16];
};

/* An answer waiting in a shard's outbox. */
struct reply {
    struct job *job;
    json_t *result;            /* owned; NULL: err */
    tq_error err;
    tq_timing tm;
    bool replayed;
};

struct shard {
    struct daemon *d;
    const tq_config *cfg;
    int id;
    pthread_t thread;
    bool thread_started;
    struct event_base *base;
    int pull_sock;             /* shard thread reads */
    int push_sock;             /* front thread writes */
    struct event *ev_pull;
    struct event *ev_tick;
    struct lane_table lanes;
    struct dcache cache;       /* parsed states of recently served tenants */
    struct ready_list ready;
    struct pgconn *conns;
    struct txn *txns;          /* txns[i] runs on conns[i] */
    int nconns;
    int inflight;              /* connections running one of our pipelines */
    size_t queued;             /* jobs waiting in lanes */
    uint64_t min_deadline_us;  /* lower bound of the queued jobs' deadlines */
    /* statement and idle-in-transaction timeouts of every transaction and
     * cleanup pass (fixed by the config) */
    char tout_stmt[16], tout_idle[16];
    struct expiry {            /* expiry.c: shard 0 deletes expired key records */
        uint64_t next_us;
        char ttl[16];
        char lock_ms[16];      /* the pass's lock timeout (lock_timeout_ms) */
        bool behind;           /* the last pass deleted a whole batch */
    } expiry;
    msgpack_sbuffer sb;
    struct reply *outbox;      /* cfg->max_batch answers, nout of them waiting */
    int nout;
    struct sql_table sql;      /* prepared on every connection */
    bool draining, stopping;
    atomic_bool drained;
    atomic_int connected;
    atomic_uint heartbeat;
    atomic_ulong gauges[SHARD_GAUGE__COUNT];
    struct tq_stats stats;
};

/* --- shard.c, for the other rooms ---------------------------------------- */

/* Serve what is ready: pass requests that need no database, start
 * transactions on idle connections, update the gauges.  Call after anything
 * that may have freed a connection or readied a lane. */
void shard_kick(struct shard *s);
/* How many connections are idle (connected, no transaction, no pipeline);
 * *first is the first of them, or -1. */
int shard_idle_conns(const struct shard *s, int *first);
/* Publish the gauges; note drained / leave the loop when due. */
void shard_check_drained(struct shard *s);
/* Answer j with an error and free it. */
void shard_fail_job(struct shard *s, struct job *j, tq_code code, const char *msg);
/* Count one event in gauge g. */
void shard_count(struct shard *s, enum shard_gauge g);

/* --- txn.c ---------------------------------------------------------------- */

/* Prepare the batch slots of t (once).  0 or -1 (out of memory). */
int txn_init(struct txn *t, struct shard *s, struct pgconn *pc) __attribute__((warn_unused_result));
/* Free what txn_init made, and the jobs of batches still in t (shutdown). */
void txn_destroy(struct txn *t);
/* Start a transaction on t (its connection idle) with up to `lanes` ready
 * lanes from the head of the ready list. */
void txn_start(struct txn *t, int lanes);
/* Send the answers the transaction callbacks left in the outbox. */
void txn_outbox_flush(struct shard *s);

/* --- expiry.c ------------------------------------------------------------- */

/* Set up the cleanup's timers and parameters. */
void expiry_init(struct shard *s);
/* Start a cleanup pass if one is due and a connection may be spared. */
void expiry_maybe_run(struct shard *s);

#endif
