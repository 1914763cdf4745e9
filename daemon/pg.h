/*
 * pg.h - one PostgreSQL connection driven asynchronously by a shard's event
 * loop: non-blocking connect with a timer deadline, reconnect with capped
 * exponential backoff and jitter, and pipelines of parameterised statements
 * ending in one Sync (libpq pipeline mode: one round trip per pipeline).
 *
 * Owned by one shard thread; every function must be called on that thread.
 * Nothing here blocks: no PQexec, no PQconnectdb, no PQgetResult while busy.
 */
#ifndef TQ_PG_H
#define TQ_PG_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "config.h"
#include "resolve.h"

/* Statements in one pipeline: the largest is a statement batch of
 * PG_MAX_REQUESTS requests, five statements each and a few around them
 * (txn.c); a one-round-trip transaction of TQ_MAX_BATCH_TENANTS storefront
 * batches is smaller (asserted in shard_int.h). */
#define PG_MAX_REQUESTS 64
#define PG_MAX_STMTS (16 + 5 * PG_MAX_REQUESTS)
#define PG_MAX_PARAMS 6

enum pgc_state {
    PGC_DOWN,       /* waiting for the reconnect timer */
    PGC_CONNECTING, /* resolving host names (conn NULL), then PQconnectPoll in progress */
    PGC_PREPARING,  /* connected, preparing the owner's statements */
    PGC_IDLE,       /* connected, no pipeline running */
    PGC_BUSY,       /* a pipeline is running */
};

struct pg_stmt {
    const char *name; /* a statement prepared on connect (see pg_init), or NULL */
    const char *sql;  /* used when name is NULL */
    int nparams;
    const char *params[PG_MAX_PARAMS]; /* text values, NULL = SQL NULL */
    const char *const *paramv; /* if set, the nparams values instead of params (borrowed) */
    bool prepare;     /* prepare name as sql (nparams) instead of running it (pg_prepared) */
    bool sync;        /* a Sync follows it: a statement failing before it skips only the
                       * statements up to it; those after it run (in the same transaction,
                       * which is then aborted: the next one must be ROLLBACK [TO]) */
    int dyn;          /* with prepare: the connection's registry entry it fills */
};

/* Statements a connection prepares on first use (pg_prepared), at most. */
#define PG_DYN_MAX 128

struct pg_dyn {
    uint64_t hash;    /* of sql */
    char *sql;        /* owned */
    int nparams;
    bool ready;       /* prepared (or its Prepare is out) on this session */
    char name[24];
};

struct pgconn;

/*
 * Called once per pipeline, on the shard thread, when its Sync arrived or
 * the connection was lost (lost = true; the connection is then already DOWN
 * and reconnecting, and results may be partial).  results[i] is the first
 * result of statement i, or NULL if none arrived; they are freed by pg after
 * the callback returns.  On a normal finish the connection is IDLE when the
 * callback runs, so the callback may start the next pipeline.
 */
typedef void (*pg_pipeline_cb)(struct pgconn *c, void *arg, PGresult *const *results, int n,
                               bool lost);

/* Called when the connection became usable (IDLE after connecting) or went
 * DOWN; the owner re-checks its work. */
typedef void (*pg_state_cb)(struct pgconn *c, void *owner);

struct pgconn {
    struct event_base *base;
    const tq_config *cfg;
    int shard_id, idx;
    PGconn *conn;
    struct event *ev_io;    /* connecting: one-shot read/write; connected: persistent read */
    struct event *ev_write; /* connected: persistent write, added only while PQflush says 1 */
    struct event *ev_timer; /* reconnect backoff */
    struct event *ev_limit; /* a running pipeline's time limit (pg_send) */
    enum pgc_state state;
    unsigned backoff_ms;
    uint64_t rng;
    uint64_t reconnects;
    bool was_up;            /* for log messages: lost vs never connected */
    /* the running pipeline */
    int nstmts, cur;
    int syncs;              /* Syncs of the running pipeline not yet seen */
    bool cur_has;
    PGresult *results[PG_MAX_STMTS];
    pg_pipeline_cb cb;
    void *cb_arg;
    /* owner */
    pg_state_cb on_state;
    void *owner;
    const struct pg_stmt *prepare; /* prepared (name, sql, nparams) after each connect */
    int nprepare;
    /* statements prepared on first use, for this session only */
    struct pg_dyn dyn[PG_DYN_MAX];
    int ndyn;
    unsigned dyn_serial;
    short dyn_at[PG_MAX_STMTS];    /* the running pipeline: registry entry its Prepare fills, -1 */
    /* the connection string taken apart once (pg_init); opts NULL: libpq
     * gets the string as it is */
    PQconninfoOption *opts;
    struct hostlist hosts;
    int nnames;             /* entries of hosts that are names to look up */
    int connect_timeout_ms; /* per host: connect_timeout, else 10 s */
    /* looking the names up (CONNECTING, conn NULL): per entry of hosts */
    bool resolving;
    int pending;            /* lookups not answered yet */
    struct resolve_req *reqs;
    char **addrs;           /* the answers, NULL where none (yet) */
    signed char *rstate;    /* PGR_* */
    char resolve_err[320];
    struct event *ev_resolved; /* activated by the resolver */
    struct event *ev_deadline; /* the lookups' deadline */
    /* the host libpq is trying, since when */
    struct host_mark trying;
    uint64_t host_since_ms;
};

/* Prepare c (no connection yet).  After every (re)connect the nprepare
 * statements of prepare (borrowed, must outlive c) are prepared under their
 * names before the connection counts as usable; a failure there (say, the
 * schema is missing) drops the connection and retries with backoff.
 * Returns 0 or -1 (out of memory). */
int pg_init(struct pgconn *c, struct event_base *base, const tq_config *cfg, int shard_id,
            int idx, pg_state_cb on_state, void *owner, const struct pg_stmt *prepare,
            int nprepare) __attribute__((warn_unused_result));

/* Start connecting now (from DOWN): look up the host names (off the loop,
 * resolve.h), then connect with host = the names and hostaddr = their
 * addresses, starting after the host that timed out last. */
void pg_start(struct pgconn *c);

/*
 * Send n statements and a Sync as one pipeline.  c must be IDLE; it becomes
 * BUSY until cb runs.  Returns 0, or -1 if sending failed at once (then the
 * connection has been dropped and cb is NOT called).  A pipeline still
 * unanswered after pg_pipeline_limit_ms (an unresponsive server, a cut
 * network path: nothing the server's own timeouts can end) has its
 * connection dropped, and cb gets lost = true.
 */
int pg_pipeline(struct pgconn *c, const struct pg_stmt *stmts, int n, pg_pipeline_cb cb,
                void *arg) __attribute__((warn_unused_result));

/* Whether conninfo parses as a libpq connection string (or URI).  0, or -1
 * with a message naming [database] conninfo. */
int pg_check_conninfo(const char *conninfo, char *err, size_t errlen);

/* The longest a pipeline may wait for the server: lock_timeout_ms +
 * statement_timeout_ms + 5 s, what the server's own timeouts allow a
 * transaction (the same as its idle_in_transaction_session_timeout). */
int pg_pipeline_limit_ms(const tq_config *cfg);

/*
 * Run st (an unnamed statement: sql, nparams, parameters) as a statement
 * prepared on c's session: writes to out either one statement executing it
 * by name, or two, a Prepare first when this session has not prepared that
 * text yet.  A Prepare that fails (its pipeline aborted before it, say) is
 * forgotten, so the next use prepares again; a session ends with its
 * statements.  Past PG_DYN_MAX texts, st runs unprepared.  Returns how many
 * statements were written (1 or 2).  out stays valid while c's registry
 * does: until the pipeline it is sent in has finished.
 */
int pg_prepared(struct pgconn *c, const struct pg_stmt *st, struct pg_stmt *out);

/* Whether c has a pipeline out (a transaction, a cleanup, a ROLLBACK). */
bool pg_busy(const struct pgconn *c);

/* Close the connection now, without reconnecting (shutdown).  A running
 * pipeline's callback gets lost = true; the server rolls back whatever
 * transaction was open. */
void pg_abort(struct pgconn *c, const char *why);

/* Close the connection and free every event; c may be re-initialised. */
void pg_destroy(struct pgconn *c);

/* "55P03" etc. of an error result, or NULL (connection-level failure). */
const char *pg_sqlstate(const PGresult *r);

/* Whether r is the server's own error of severity FATAL or PANIC: the
 * server ended the session at that statement (an administrator's
 * pg_terminate_backend, a shutdown), so nothing after it in the pipeline
 * ran and its open transaction was rolled back. */
bool pg_session_ended(const PGresult *r);

/* What a failed statement's error means to tenantqd, from its SQLSTATE. */
enum pg_err {
    PG_ERR_NONE,          /* not an error (or no result at all: PG_ERR_CONNECTION) */
    PG_ERR_CONNECTION,    /* no SQLSTATE: libpq's own error, the connection is gone */
    PG_ERR_LOCK,          /* 55P03 lock_not_available: lock_timeout ran out */
    PG_ERR_UNIQUE,        /* 23505 unique_violation */
    PG_ERR_CONSTRAINT,    /* any other integrity violation (class 23) */
    PG_ERR_RAISED,        /* P0001 raise_exception */
    PG_ERR_GUARD,         /* 22012 division by zero: our guards' way to fail */
    PG_ERR_SERIALIZATION, /* 40001 serialization_failure */
    PG_ERR_TRANSIENT,     /* the server could not run it now: statement timeout
                           * (57014), deadlock (40P01), other class 40, class 08,
                           * shutdown (57P0x), too many connections (53300) */
    PG_ERR_OTHER,         /* anything else: a bug, or a problem of the schema */
};
/* Classify r (NULL: PG_ERR_CONNECTION).  PIPELINE_ABORTED and OK results
 * are PG_ERR_NONE. */
enum pg_err pg_classify(const PGresult *r);

/*
 * One-shot administrative connection (--init-db, --scan), driven with
 * poll(2) before any event loop exists, nonblocking, each wait at most
 * timeout_ms.  app is the fallback application_name.  Returns the
 * connection (the caller PQfinish-es it), or NULL with a message in err.
 */
PGconn *pg_admin_connect(const char *conninfo, const char *app, int timeout_ms, char *err,
                         size_t errlen);

/*
 * Run one statement with text parameters on an admin connection in
 * single-row mode (one row in memory at a time), calling row(arg, r) for
 * each row; a row callback returning -1 stops the calls (out of memory).
 * Returns 0 once the statement finished, or -1 with a message in err; after
 * a timeout or a lost connection the connection is unusable.
 */
int pg_admin_rows(PGconn *conn, const char *sql, int nparams, const char *const *params,
                  int timeout_ms, int (*row)(void *arg, const PGresult *r), void *arg,
                  char *err, size_t errlen);

/* Run sql (may hold several statements) on an admin connection.  0, or -1
 * with the first error in err. */
int pg_admin_script(PGconn *conn, const char *sql, int timeout_ms, char *err, size_t errlen);

#endif
