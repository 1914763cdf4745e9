/*
 * scan.h - `tenantqd --scan`: find the stored drafts that break the
 * storefront's rules (the damage of races before tenantq), read-only.
 */
#ifndef TQ_SCAN_H
#define TQ_SCAN_H

#include <stdio.h>

#include "config.h"

/* Rows read per statement: each page is its own short read-only statement
 * (keyset pagination by tenant), so the scan holds no snapshot for long and
 * never blocks a writer; rows stream one at a time (single-row mode). */
#define SCAN_PAGE_ROWS 500

/*
 * Read every tenant row of the storefront table and write to out one JSON
 * line per tenant whose draft has problems ({"tenant","problems":[...]},
 * "omitted" added when the list was capped; see sf_check_draft), then one
 * summary line {"scanned","tenants_with_problems","problems"}.  Messages go
 * to stderr.  Returns the exit status: 0 no problem found, 1 some found,
 * 2 the database could not be reached or a statement failed.
 */
int scan_run(const tq_config *cfg, FILE *out);

#endif
