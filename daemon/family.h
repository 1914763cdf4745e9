/*
 * family.h - the operation-family interface: what an op does, apart from
 * how a transaction runs it.
 *
 * The transaction engine (txn.c) runs a batch, one tenant's queued requests
 * in arrival order, inside a transaction that holds the tenant's advisory
 * lock; it writes the idempotency records, commits, and answers.  It knows
 * nothing of what an op does: that belongs to the op's family, which only
 * contributes statements to the pipelines the engine builds and reads the
 * results the engine hands back.  Every request of a batch is of one family.
 *
 * A family works on a tenant's *state*: the engine asks it to read the
 * state (after the lock), apply each request to it in memory, in order, and
 * write it back (before COMMIT).  A family may hold a tenant's state from an
 * earlier batch (a cache); it then applies the batch before reading and adds
 * a guard that fails the transaction, before anything is written, unless
 * the stored state still is the one it holds: one round trip.
 *
 * Contract for every callback:
 *   - runs on the shard thread that owns the batch; never blocks, never
 *     sends a pipeline, never answers a request: results and errors go back
 *     through the out-parameters and the engine answers;
 *   - statements added to a pipeline point at strings the family owns
 *     until the batch ends (end()); parameters are text, never spliced SQL;
 *   - fs, the family's per-batch state, is created once per batch slot
 *     (state_new) and belongs to that slot; begin() starts a batch in it and
 *     end() finishes it, whatever happened in between;
 *   - an error of one request (validation) fails that request alone and
 *     leaves the state as it was before it; a failure of the state itself
 *     (unreadable stored document) is returned by load() and fails the batch.
 */
#ifndef TQ_FAMILY_H
#define TQ_FAMILY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "config.h"
#include "pg.h"
#include "sql.h"
#include "tq_proto.h"

struct dcache;
struct job;

/* What a family sees of the batch it serves (borrowed for the call). */
struct fam_ctx {
    const tq_config *cfg;
    const struct sql_table *sql; /* the connection's prepared statements */
    const struct storage *storage; /* where the storefront state lives */
    struct dcache *cache;        /* the shard's draft cache */
    int shard_id;
    const char *tenant;          /* NUL-terminated */
    size_t tenant_len;
    uint64_t hash;               /* the tenant's keyed hash */
};

/* Statements a family adds to one pipeline at most (read, guard, write). */
#define FAM_MAX_STMTS 1

enum fam_id { FAM_STOREFRONT, FAM_SQL, FAM__COUNT };

/*
 * How the engine runs a family's batches:
 *   FAM_STATE       as above: read, apply in memory, write (the storefront);
 *   FAM_STATEMENTS  each request is one statement the database runs, in
 *                   arrival order, inside the batch's transaction (SQL
 *                   operations).  Only the hooks marked STATEMENTS below are
 *                   used: bind() makes a request's statement, outcome() reads
 *                   its result.  A request that fails (or must be undone)
 *                   ends the transaction: it is answered, and its companions
 *                   run again without it in a new one, so a failed request
 *                   changes nothing and the others are unaffected.
 */
enum fam_kind { FAM_STATE, FAM_STATEMENTS };

struct op_family {
    enum fam_id id;
    enum fam_kind kind;
    const char *name;
    /* Whether op changes state (lock, key record, write, commit), and
     * whether it needs the database at all (it may pass through the lane
     * without a connection, answered by apply with no state). */
    bool (*mutates)(int op);
    bool (*needs_db)(int op);
    /* Answer a request that needs no database, from no state at all: 0
     * with *result a new reference, or -1 with err set. */
    int (*pass)(const struct job *j, json_t **result, tq_error *err);

    /* Per-batch-slot state: created once, NULL out of memory. */
    void *(*state_new)(void);
    void (*state_free)(void *fs);

    /* A batch starts for ctx->tenant; mutating: it will change state.
     * Returns whether fs holds the tenant's current state already (from a
     * cache), so that the batch may apply before reading (guard()). */
    bool (*begin)(void *fs, const struct fam_ctx *ctx, bool mutating);
    /* Add the statements that read the state (after the lock); returns how
     * many (at most FAM_MAX_STMTS). */
    int (*read)(void *fs, const struct fam_ctx *ctx, struct pg_stmt *out);
    /* One round trip: add the statements that fail (division by zero) unless
     * the stored state is the one begin() found; returns how many. */
    int (*guard)(void *fs, const struct fam_ctx *ctx, struct pg_stmt *out);
    /* The results of read()'s statements.  0, or -1 with why filled in
     * (the stored state is unusable: the batch fails INTERNAL). */
    int (*load)(void *fs, const struct fam_ctx *ctx, PGresult *const *res, char *why,
                size_t whylen);
    /* Apply one request to the state in memory.  0 with *result a new
     * reference sharing nothing with the state, or -1 with err set and the
     * state as it was. */
    int (*apply)(void *fs, const struct fam_ctx *ctx, const struct job *j, json_t **result,
                 tq_error *err);
    /* Whether the requests applied since begin()/load() changed the state. */
    bool (*changed)(const void *fs);
    /* Add the statements that write the new state; returns how many, or -1
     * with err set (nothing added; the batch fails with err). */
    int (*write)(void *fs, const struct fam_ctx *ctx, struct pg_stmt *out, tq_error *err);
    /* The batch is over.  kept: its outcome stands (committed, or nothing
     * needed writing), and wres holds the results of write()'s statements
     * (NULL when nothing was written): the family may keep the state for the
     * tenant's next batch.  Not kept: the transaction failed or the batch
     * runs again; the state is dropped.  fs is ready for a new begin(). */
    void (*end)(void *fs, const struct fam_ctx *ctx, bool kept, PGresult *const *wres);

    /* STATEMENTS: the advisory-lock key expression (over $1 = tenant) of j's
     * op, or NULL for [database] lock_key_sql.  A batch holds requests of
     * one lock key only. */
    const char *(*lock_key)(const struct job *j);
    /* STATEMENTS: j's statement, as the i-th of its batch, into *out; the
     * texts it points at are owned by fs until end().  0, or -1 with err. */
    int (*bind)(void *fs, const struct fam_ctx *ctx, const struct job *j, int i,
                struct pg_stmt *out, tq_error *err);
    /* STATEMENTS: the outcome of j's statement (res: its result, NULL if
     * none arrived).  0 with *result a new reference, or -1 with err.  On
     * either, *undo says whether the request must not commit: it failed,
     * or it was refused after its statement ran and may have changed rows. */
    int (*outcome)(const struct fam_ctx *ctx, const struct job *j, const PGresult *res,
                   json_t **result, tq_error *err, bool *undo);
    /* STATEMENTS: whether j's outcome can never need undoing once its
     * statement succeeded, so its batch may send COMMIT in the same
     * pipeline (one round trip). */
    bool (*commits_blind)(const struct job *j);
};

/* The storefront ops (storefront_family.c) and SQL operations
 * (sql_family.c). */
extern const struct op_family storefront_family;
extern const struct op_family sql_family;

#endif
