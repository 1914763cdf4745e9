/*
 * track.h - what the clients were told was committed, and the check of the
 * database against it after the run.
 *
 * Every upsert writes a unique marker "rev":"c<client>-<seq>" into its
 * section.  For each (tenant, section id) the tracker keeps the acknowledged
 * change with the highest per-tenant version (from the reply in daemon mode,
 * from the state sf_apply produced in direct/unsafe mode): either "holds rev
 * R" or "removed".  Per tenant it also counts acknowledged changes, and
 * marks the tenant uncertain if any request ended with an unknown outcome
 * (timeout, OUTCOME_UNKNOWN, connection lost during COMMIT).
 *
 * The check then reads every load tenant's draft and version:
 *  - duplicate_ids: (tenant, id) pairs present more than once in a draft;
 *  - lost_acknowledged: tracked (tenant, id) whose last acknowledged change
 *    is not visible (rev R on none of its sections, or a removed id present);
 *  - version_deficit: acknowledged changes that left no step in the tenant's
 *    version counter (final version < seed version + acknowledged changes);
 *    two commits that claimed the same version prove an overwrite even where
 *    the per-id view cannot tell which edit should have won.
 * Uncertain tenants are only checked for duplicates.  See README.md.
 *
 * Threads: track_* recording functions may be called from any thread
 * concurrently (per-tenant mutex); track_check only after all writers stopped.
 */
#ifndef TQ_LOAD_TRACK_H
#define TQ_LOAD_TRACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "workload.h"

typedef struct track track;

typedef struct track_result {
    uint64_t tenants_checked;     /* rows read that belong to this run */
    uint64_t tenants_uncertain;   /* skipped for lost/deficit (unknown outcomes) */
    uint64_t duplicate_ids;       /* (tenant, id) pairs present more than once */
    uint64_t tenants_with_duplicates;
    uint64_t lost_acknowledged;   /* (tenant, id) whose last acked change is missing */
    uint64_t version_deficit;     /* acked changes missing from the version counter */
    bool passed;
} track_result;

/* A tracker for tenants 0..ntenants-1, each starting at base_version.
 * NULL on OOM.  Caller owns: track_free. */
track *track_new(size_t ntenants, int64_t base_version);
void track_free(track *t);

/* The marker of a client's seq-th write, and its text form "c<client>-<seq>"
 * (buf at least 32 bytes).  seq < 2^40, client < 2^23. */
uint64_t track_rev(unsigned client, uint64_t seq);
void track_rev_text(char *buf, size_t len, unsigned client, uint64_t seq);

/* Acknowledged: section id of tenant now holds rev, as of version. */
void track_write(track *t, size_t tenant, const char *id, uint64_t rev, int64_t version);
/* Acknowledged: section id of tenant was removed, as of version. */
void track_remove(track *t, size_t tenant, const char *id, int64_t version);
/* A change to tenant may or may not have been committed. */
void track_uncertain(track *t, size_t tenant);

/*
 * Read the drafts of tenants 0..n-1 from table on conn and check them (see
 * above).  Returns 0 with *res filled, or -1 with a message on stderr.
 */
int track_check(track *t, PGconn *conn, enum wl_table table, track_result *res);

#endif
