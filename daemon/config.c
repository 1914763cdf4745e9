/*
 * config.c - the table of settings and the INI/flag parser.
 *
 * Every configuration key (docs/configuration.md) appears exactly once in
 * `settings`, with its section, its flag name, its type, its range and its
 * default.  Flags win over the file.  Values are validated here, so the rest
 * of the daemon never sees an out-of-range setting.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

/* SET_NAME: an SQL name, a string read verbatim from the file (its double
 * quotes are SQL's, not the INI file's: "landingPageConfigDraft"). */
enum setting_type { SET_INT, SET_STR, SET_BOOL, SET_NAME };

struct setting {
    const char *section;
    const char *key;
    const char *flag; /* without the leading "--" */
    enum setting_type type;
    size_t offset;
    long min, max;    /* SET_INT range */
    const char *def;
    const char *help;
};

#define INT_SETTING(sec, key, flag, field, lo, hi, def, help)                  \
    {sec, key, flag, SET_INT, offsetof(tq_config, field), lo, hi, def, help}
#define STR_SETTING(sec, key, flag, field, def, help)                          \
    {sec, key, flag, SET_STR, offsetof(tq_config, field), 0, 0, def, help}
#define NAME_SETTING(sec, key, flag, field, def, help)                         \
    {sec, key, flag, SET_NAME, offsetof(tq_config, field), 0, 0, def, help}
#define BOOL_SETTING(sec, key, flag, field, def, help)                         \
    {sec, key, flag, SET_BOOL, offsetof(tq_config, field), 0, 1, def, help}

static const struct setting settings[] = {
    STR_SETTING("daemon", "listen", "listen", listen, "ipc:///run/tenantq/tenantqd.sock",
                "comma-separated nanomsg endpoints (ipc://PATH, tcp://HOST:PORT)"),
    INT_SETTING("daemon", "shards", "shards", shards, 1, 256, "4", "worker threads"),
    INT_SETTING("daemon", "connections_per_shard", "connections-per-shard",
                connections_per_shard, 1, 64, "2", "PostgreSQL connections per shard"),
    INT_SETTING("daemon", "max_batch", "max-batch", max_batch, 1, 10000, "64",
                "requests run in one transaction (one tenant's, or several tenants' together)"),
    INT_SETTING("daemon", "max_batch_tenants", "max-batch-tenants", max_batch_tenants, 1,
                TQ_MAX_BATCH_TENANTS, "16",
                "tenants whose batches may share one transaction when lanes outnumber idle "
                "connections (1: a transaction per tenant)"),
    INT_SETTING("daemon", "draft_cache_mb", "draft-cache-mb", draft_cache_mb, 0, 65536, "4",
                "memory for parsed drafts of recently served tenants, all shards together "
                "(0: off)"),
    INT_SETTING("daemon", "max_queue_per_tenant", "max-queue-per-tenant",
                max_queue_per_tenant, 1, 10000000, "1024", "queued requests per tenant"),
    INT_SETTING("daemon", "max_pending", "max-pending", max_pending, 1, 100000000, "100000",
                "requests admitted and not yet answered, daemon-wide"),
    INT_SETTING("daemon", "max_message_bytes", "max-message-bytes", max_message_bytes, 256,
                256 * 1024 * 1024, "1048576", "largest request accepted by the transport"),
    INT_SETTING("daemon", "max_clients", "max-clients", max_clients, 0, 1000000, "0",
                "client connections held at once, all endpoints together; at it the listeners "
                "stop accepting until fewer than 90 % are open (0: 10000, or what the "
                "descriptor limit leaves if less; a value it cannot fit is refused)"),
    INT_SETTING("daemon", "default_deadline_ms", "default-deadline-ms", default_deadline_ms, 1,
                86400000, "10000", "deadline of requests that carry none"),
    INT_SETTING("daemon", "shutdown_grace_ms", "shutdown-grace-ms", shutdown_grace_ms, 0,
                3600000, "10000", "time to finish queued work on SIGTERM"),
    INT_SETTING("daemon", "idempotency_ttl_s", "idempotency-ttl-s", idempotency_ttl_s, 1,
                365 * 86400, "86400", "how long idempotency records are kept"),
    STR_SETTING("daemon", "log_level", "log-level", log_level, "info",
                "err, warning, notice, info or debug"),
    STR_SETTING("daemon", "auth_token_file", "auth-token-file", auth_token_file, "",
                "file holding the token every request must carry as auth (no access for "
                "others; empty: no authentication); SIGHUP re-reads it"),
    STR_SETTING("database", "conninfo", "database", conninfo, "",
                "libpq conninfo or URI; empty = libpq environment"),
    STR_SETTING("database", "lock_key_sql", "lock-key-sql", lock_key_sql,
                "hashtextextended('tenantq:' || $1, 0)",
                "SQL expression over the tenant ($1) giving the bigint advisory-lock key"),
    INT_SETTING("database", "lock_timeout_ms", "lock-timeout-ms", lock_timeout_ms, 1, 3600000,
                "5000", "longest wait for a tenant's advisory lock"),
    INT_SETTING("database", "statement_timeout_ms", "statement-timeout-ms", statement_timeout_ms,
                1, 3600000, "10000", "server-side statement timeout"),
    NAME_SETTING("database", "schema", "schema", schema, "",
                "schema of tenantq's own tables (idempotency records, the default storage "
                "table), created by --init-db; empty = the first schema of search_path"),
    NAME_SETTING("storage", "table", "storage-table", storage_table, "tenantq_storefront",
                "the table (or view) holding each tenant's storefront state, as SQL writes "
                "it: public.\"Tenant\""),
    NAME_SETTING("storage", "tenant_column", "storage-tenant-column", storage_tenant_column,
                "tenant", "the tenant id: text, varchar, uuid, smallint, integer or bigint; unique"),
    NAME_SETTING("storage", "draft_column", "storage-draft-column", storage_draft_column, "draft",
                "the draft: json, jsonb or text; NULL reads as {\"pages\":{}}"),
    NAME_SETTING("storage", "published_column", "storage-published-column",
                storage_published_column, "published",
                "the published copy: json, jsonb or text; empty = none (no draft.publish, "
                "draft.discard)"),
    NAME_SETTING("storage", "version_column", "storage-version-column", storage_version_column,
                "version", "bigint or integer; every committed change increments it"),
    NAME_SETTING("storage", "updated_at_column", "storage-updated-at-column",
                storage_updated_at_column, "updated_at",
                "timestamp or timestamptz set to now() (UTC) on every write; empty = none"),
    BOOL_SETTING("storage", "create_missing", "storage-create-missing", storage_create_missing,
                 "true",
                 "true: the first change of a tenant without a row creates it; false: every op "
                 "on such a tenant is NOT_FOUND"),
    INT_SETTING("storefront", "max_draft_bytes", "max-draft-bytes", max_draft_bytes, 1024,
                256 * 1024 * 1024, "1048576", "largest draft (compact JSON) an edit may leave"),
    STR_SETTING("ops", "dir", "ops-dir", ops_dir, "",
                "directory of SQL operations: every NAME.sql file defines the op NAME "
                "(empty: none); SIGHUP reloads it"),
    STR_SETTING("metrics", "listen", "metrics-listen", metrics_listen, "127.0.0.1:9464",
                "HOST:PORT of the HTTP /metrics and /healthz endpoint; empty disables"),
};
#define N_SETTINGS (sizeof settings / sizeof settings[0])

static int set_value(tq_config *cfg, const struct setting *s, const char *value,
                     const char *where, char *errbuf, size_t errlen)
{
    char *field = (char *)cfg + s->offset;
    if (s->type == SET_STR || s->type == SET_NAME) {
        char *copy = strdup(value);
        if (!copy) {
            snprintf(errbuf, errlen, "%s: out of memory", where);
            return -1;
        }
        free(*(char **)(void *)field);
        *(char **)(void *)field = copy;
        return 0;
    }
    if (s->type == SET_BOOL) {
        static const char *const yes[] = {"true", "yes", "on", "1"},
                                 *const no[] = {"false", "no", "off", "0"};
        for (int i = 0; i < 4; i++)
            if (strcmp(value, yes[i]) == 0 || strcmp(value, no[i]) == 0) {
                *(int *)(void *)field = strcmp(value, yes[i]) == 0;
                return 0;
            }
        snprintf(errbuf, errlen, "%s: [%s] %s must be true or false, got \"%.64s\"", where,
                 s->section, s->key, value);
        return -1;
    }
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0') {
        snprintf(errbuf, errlen, "%s: [%s] %s must be an integer, got \"%.64s\"", where,
                 s->section, s->key, value);
        return -1;
    }
    if (v < s->min || v > s->max) {
        snprintf(errbuf, errlen, "%s: [%s] %s must be between %ld and %ld, got %ld", where,
                 s->section, s->key, s->min, s->max, v);
        return -1;
    }
    *(int *)(void *)field = (int)v;
    return 0;
}

static const struct setting *find_key(const char *section, const char *key)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(settings[i].section, section) == 0 && strcmp(settings[i].key, key) == 0)
            return &settings[i];
    return NULL;
}

static bool known_section(const char *section)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(settings[i].section, section) == 0)
            return true;
    return false;
}

static const struct setting *find_flag(const char *flag, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strlen(settings[i].flag) == len && strncmp(settings[i].flag, flag, len) == 0)
            return &settings[i];
    return NULL;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Value syntax: "double quoted" (no escapes) or bare up to a ';' or '#' that
 * starts a comment (preceded by whitespace). */
static int parse_value(char *raw, bool sql_name, char **out)
{
    char *v = trim(raw);
    if (sql_name) {
        /* verbatim; a comment starts outside SQL's double quotes */
        bool quoted = false;
        for (char *p = v; *p; p++) {
            if (*p == '"')
                quoted = !quoted;
            else if (!quoted && (*p == ';' || *p == '#') &&
                     (p == v || isspace((unsigned char)p[-1]))) {
                *p = '\0';
                break;
            }
        }
        *out = trim(v);
        return 0;
    }
    if (*v == '"') {
        char *close = strchr(v + 1, '"');
        if (!close)
            return -1;
        *close = '\0';
        char *rest = trim(close + 1);
        if (*rest && *rest != ';' && *rest != '#')
            return -1;
        *out = v + 1;
        return 0;
    }
    for (char *p = v; *p; p++) {
        if ((*p == ';' || *p == '#') && (p == v || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            break;
        }
    }
    *out = trim(v);
    return 0;
}

static int load_file(tq_config *cfg, const char *path, bool must_exist, char *errbuf,
                     size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!must_exist && errno == ENOENT)
            return 0;
        snprintf(errbuf, errlen, "cannot read config file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat fst;
    /* (reading a directory "succeeds" with no lines: it would run on defaults) */
    if (fstat(fileno(f), &fst) == 0 && S_ISDIR(fst.st_mode)) {
        snprintf(errbuf, errlen, "config file %s is a directory", path);
        fclose(f);
        return -1;
    }
    char line[4096], section[64] = "";
    int lineno = 0, rc = 0;
    int first_line[N_SETTINGS] = {0}; /* where each key was set, 0 = not yet */
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char where[300];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(errbuf, errlen, "%s: line too long", where);
            rc = -1;
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == ';' || *s == '#')
            continue;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close || (size_t)(close - s - 1) >= sizeof section) {
                snprintf(errbuf, errlen, "%s: bad section header", where);
                rc = -1;
                break;
            }
            *close = '\0';
            snprintf(section, sizeof section, "%s", trim(s + 1));
            if (!known_section(section)) {
                snprintf(errbuf, errlen, "%s: unknown section [%s]", where, section);
                rc = -1;
                break;
            }
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(errbuf, errlen, "%s: expected key = value", where);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *value;
        const struct setting *st = find_key(section, key);
        if (!st) {
            snprintf(errbuf, errlen, "%s: unknown key \"%s\" in section [%s]", where, key,
                     section);
            rc = -1;
            break;
        }
        if (parse_value(eq + 1, st->type == SET_NAME, &value) < 0) {
            snprintf(errbuf, errlen, "%s: [%s] %s: unterminated quoted value", where, section, key);
            rc = -1;
            break;
        }
        size_t idx = (size_t)(st - settings);
        if (first_line[idx] != 0) {
            snprintf(errbuf, errlen, "%s: [%s] %s is set twice (first on line %d)", where,
                     section, key, first_line[idx]);
            rc = -1;
            break;
        }
        first_line[idx] = lineno;
        if (set_value(cfg, st, value, where, errbuf, errlen) < 0) {
            rc = -1;
            break;
        }
    }
    fclose(f);
    return rc;
}

/* The settings a SIGHUP applies (main.c's on_hup); every other one needs a
 * restart. */
static bool reloadable(const struct setting *s)
{
    return (strcmp(s->section, "daemon") == 0 &&
            (strcmp(s->key, "log_level") == 0 || strcmp(s->key, "auth_token_file") == 0)) ||
           (strcmp(s->section, "ops") == 0 && strcmp(s->key, "dir") == 0);
}

void config_usage(const char *prog)
{
    printf("usage: %s [-c FILE] [--check-config | --init-db | --scan] [--KEY VALUE ...]\n\n"
           "  -c, --config FILE   INI file (default %s; absent is fine unless given)\n"
           "  --check-config      validate the configuration and exit\n"
           "  --init-db           create or upgrade the database schema and exit\n"
           "  --scan              list tenants whose stored draft breaks the rules; exit 0\n"
           "                      none, 1 some found, 2 database error\n"
           "  -h, --help          this text;  -V, --version  print the version\n\n"
           "settings (flags win over the file):\n",
           prog, TQ_DEFAULT_CONFIG);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *st = &settings[i];
        char range[48] = "";
        if (st->type == SET_INT)
            snprintf(range, sizeof range, "; %ld..%ld", st->min, st->max);
        else if (st->type == SET_BOOL)
            snprintf(range, sizeof range, "; true or false");
        printf("  --%-24s [%s] %s (default \"%s\"%s%s): %s\n", st->flag, st->section, st->key,
               st->def, range, reloadable(st) ? "; SIGHUP" : "", st->help);
    }
}

int config_load(tq_config *cfg, int argc, char **argv, tq_action *action, char *errbuf,
                size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    *action = TQ_ACTION_RUN;
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (set_value(cfg, &settings[i], settings[i].def, "default", errbuf, errlen) < 0)
            return -1;

    /* pass 1: the file and the action; pass 2: settings, which win */
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                snprintf(errbuf, errlen, "%s needs a file name", a);
                return -1;
            }
            path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            path = a + 9;
        } else if (strcmp(a, "--check-config") == 0) {
            *action = TQ_ACTION_CHECK_CONFIG;
        } else if (strcmp(a, "--init-db") == 0) {
            *action = TQ_ACTION_INIT_DB;
        } else if (strcmp(a, "--scan") == 0) {
            *action = TQ_ACTION_SCAN;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            *action = TQ_ACTION_HELP;
            return 0;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            *action = TQ_ACTION_VERSION;
            return 0;
        } else if (strncmp(a, "--", 2) == 0) {
            if (!strchr(a, '=') && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
                i++; /* skip the value; validated in pass 2 */
        } else {
            snprintf(errbuf, errlen, "unexpected argument \"%.64s\" (see --help)", a);
            return -1;
        }
    }
    if (load_file(cfg, path ? path : TQ_DEFAULT_CONFIG, path != NULL, errbuf, errlen) < 0)
        return -1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0 || strcmp(a, "--check-config") == 0 ||
            strcmp(a, "--init-db") == 0 || strcmp(a, "--scan") == 0)
            continue;
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct setting *st = find_flag(name, nlen);
        if (!st) {
            snprintf(errbuf, errlen, "unknown flag --%.*s (see --help)", (int)(nlen > 64 ? 64 : nlen),
                     name);
            return -1;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
            value = argv[++i];
        } else if (i + 1 < argc) {
            snprintf(errbuf, errlen,
                     "flag --%s needs a value, got the flag %.64s (write --%s=VALUE for a value "
                     "that starts with --)",
                     st->flag, argv[i + 1], st->flag);
            return -1;
        } else {
            snprintf(errbuf, errlen, "flag --%s needs a value", st->flag);
            return -1;
        }
        char where[80];
        snprintf(where, sizeof where, "flag --%s", st->flag);
        if (set_value(cfg, st, value, where, errbuf, errlen) < 0)
            return -1;
    }

    /* cross-field checks */
    if (log_parse_level(cfg->log_level) < 0) {
        snprintf(errbuf, errlen, "[daemon] log_level: unknown level \"%.32s\"", cfg->log_level);
        return -1;
    }
    if (cfg->listen[0] == '\0') {
        snprintf(errbuf, errlen, "[daemon] listen: at least one endpoint is required");
        return -1;
    }
    if (!strstr(cfg->lock_key_sql, "$1")) {
        snprintf(errbuf, errlen, "[database] lock_key_sql: must use $1 (the tenant id)");
        return -1;
    }
    if (cfg->max_queue_per_tenant > cfg->max_pending) {
        snprintf(errbuf, errlen,
                 "[daemon] max_queue_per_tenant: %d exceeds max_pending %d",
                 cfg->max_queue_per_tenant, cfg->max_pending);
        return -1;
    }
    return 0;
}

void config_free(tq_config *cfg)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        if (settings[i].type == SET_STR || settings[i].type == SET_NAME) {
            char **p = (char **)(void *)((char *)cfg + settings[i].offset);
            free(*p);
            *p = NULL;
        }
    }
}
