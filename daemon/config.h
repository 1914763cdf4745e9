/*
 * config.h - tenantqd settings: one table of keys (config.c), read from the
 * INI file and overridden by flags.  Loaded once on the main thread before
 * any other thread starts; read-only afterwards, so any thread may read it.
 */
#ifndef TQ_CONFIG_H
#define TQ_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

/* The build sets it from prefix and sysconfdir (meson.build). */
#ifndef TQ_DEFAULT_CONFIG
#define TQ_DEFAULT_CONFIG "/etc/tenantq/tenantqd.conf"
#endif
#define TQ_MAX_BATCH_TENANTS 32 /* upper limit of max_batch_tenants */

typedef struct tq_config {
    /* [daemon] */
    char *listen;               /* comma-separated nanomsg endpoints */
    int shards;
    int connections_per_shard;
    int max_batch;
    int max_batch_tenants;
    int draft_cache_mb;
    int max_queue_per_tenant;
    int max_pending;
    int max_message_bytes;
    int max_clients;            /* SP connections held at once; 0 = as the fd limit allows */
    int default_deadline_ms;
    int shutdown_grace_ms;
    int idempotency_ttl_s;
    char *log_level;
    char *auth_token_file;      /* shared secret every request must carry; "" = none */
    /* [database] */
    char *conninfo;
    char *lock_key_sql;
    int lock_timeout_ms;
    int statement_timeout_ms;
    char *schema;               /* tenantq's own tables; "" = the search_path's first */
    /* [storage]: where the storefront state lives (storage.h) */
    char *storage_table;
    char *storage_tenant_column;
    char *storage_draft_column;
    char *storage_published_column;  /* "" = none */
    char *storage_version_column;
    char *storage_updated_at_column; /* "" = none */
    int storage_create_missing;      /* bool */
    /* [storefront] */
    int max_draft_bytes;
    /* [ops] */
    char *ops_dir;              /* SQL operations: every NAME.sql here; "" = none */
    /* [metrics] */
    char *metrics_listen;       /* "" disables */
} tq_config;

typedef enum tq_action {
    TQ_ACTION_RUN,
    TQ_ACTION_CHECK_CONFIG,
    TQ_ACTION_INIT_DB,
    TQ_ACTION_SCAN, /* report damaged drafts (scan.h) */
    TQ_ACTION_HELP,
    TQ_ACTION_VERSION,
} tq_action;

/*
 * Fill cfg from defaults, then the config file (-c FILE, default
 * TQ_DEFAULT_CONFIG, which may be absent), then the flags in argv.  Returns 0
 * and the requested action, or -1 after writing an error that names the key
 * (or flag, or file:line) to errbuf.  cfg owns its strings: config_free.
 */
int config_load(tq_config *cfg, int argc, char **argv, tq_action *action,
                char *errbuf, size_t errlen) __attribute__((warn_unused_result));

void config_free(tq_config *cfg);

/* Print the usage text (all flags) to stdout. */
void config_usage(const char *prog);

#endif
