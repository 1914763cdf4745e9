/*
 * initdb.h - `tenantqd --init-db`: create tenantq's own tables, then check
 * the [storage] table against the catalog.
 */
#ifndef TQ_INITDB_H
#define TQ_INITDB_H

#include <stdio.h>

#include "config.h"

/*
 * Create or upgrade tenantq's own tables (idempotent): the idempotency
 * records, in [database] schema (created if missing), and tenantq_storefront
 * when [storage] is the default.  Never alters another table: when the
 * configured storage is unusable it prints the problems to stderr and the
 * SQL that would fix them to out, and changes nothing else.  Returns the
 * exit status: 0 ready, 1 the database failed, 2 the storage is unusable.
 */
int initdb_run(const tq_config *cfg, FILE *out);

#endif
