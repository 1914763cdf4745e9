/*
 * workload.h - the shape of tenantq-load's data: tenant names, the seeded
 * draft every tenant starts from, and the sections the clients write.
 *
 * Every tenant starts with WL_PAGES pages ("page0".."page3") of
 * WL_SECTIONS sections each, ids "pageP-sN", every section about 300 bytes of
 * JSON with "rev":"seed".  The clients keep that size stable (see
 * README.md): an upsert replaces a section by index, a remove takes one of
 * the seeded ids out and the same client appends it again, and colliding
 * upserts append ids from a shared pool of WL_POOL ids ("shared-K") that
 * only removes take out again.
 *
 * Pure helpers except wl_seed, which writes the rows with libpq.  Any thread.
 */
#ifndef TQ_LOAD_WORKLOAD_H
#define TQ_LOAD_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#define WL_PAGES 4
#define WL_SECTIONS 5
#define WL_POOL 4
#define WL_SEED_VERSION 1
#define WL_NAME_MAX 32

/* "load-t000123" into buf (at least WL_NAME_MAX bytes). */
void wl_tenant_name(char *buf, size_t idx);
/* Parse a tenant name back; returns 0 and *idx, or -1 if not one of ours. */
int wl_tenant_index(const char *name, size_t *idx);

/* "page2" into buf (at least WL_NAME_MAX bytes). */
void wl_page_name(char *buf, unsigned page);
/* The seeded id of section n of page p ("page2-s4"). */
void wl_seeded_id(char *buf, unsigned page, unsigned n);
/* Shared pool id k ("shared-3"). */
void wl_pool_id(char *buf, unsigned k);

/* A new section object (new reference, NULL on OOM): type "text", the
 * filler fields, the given rev string and, if id is not NULL, that id. */
json_t *wl_section(const char *id, const char *rev);

/*
 * The table the tenants' state lives in, as the daemon under test is
 * configured ([storage]):
 *   WL_TABLE_DEFAULT  tenantq's own tenantq_storefront (--init-db creates it);
 *   WL_TABLE_PRISMA   the Prisma-shaped "Tenant" of tests/integration/
 *                     test_storage.py (PRISMA_TABLE): "id" text primary key,
 *                     "name" and "updatedAt" NOT NULL without defaults,
 *                     "landingPageConfigDraft" / "landingPageConfig" jsonb,
 *                     "version" integer.  The caller creates the table; the
 *                     daemon runs with create_missing = false, so every
 *                     tenant's row must exist before the clock starts.
 */
enum wl_table { WL_TABLE_DEFAULT, WL_TABLE_PRISMA };

/*
 * Write the seeded draft to tenants 0..ntenants-1 of table (insert or
 * overwrite; published NULL, version WL_SEED_VERSION; on the Prisma table
 * also "name" and "updatedAt", as the application would have created the
 * row) in one statement on conn.  Returns 0, or -1 with a message on stderr.
 */
int wl_seed(PGconn *conn, size_t ntenants, enum wl_table table);

/* The check's query on table: tenant, draft::text, version of every load
 * tenant's row (static text). */
const char *wl_check_sql(enum wl_table table);

#endif
