/*
 * test_config.c - the settings table without a daemon: defaults, the INI
 * file, flags winning over it, and refusals that name the key.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"

static int load(tq_config *cfg, tq_action *act, char *err, size_t errlen, int argc, ...)
{
    char *argv[16] = {"tenantqd"};
    va_list ap;
    va_start(ap, argc);
    for (int i = 1; i < argc; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    return config_load(cfg, argc, argv, act, err, errlen);
}

static char *write_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/tq-test-config-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror("mkstemp");
        exit(2);
    }
    close(fd);
    return strdup(path);
}

int main(void)
{
    tq_config cfg;
    tq_action act;
    char err[512];
    char *empty = write_file("");

    CHECK(load(&cfg, &act, err, sizeof err, 3, "-c", empty) == 0, "defaults: %s", err);
    CHECK(act == TQ_ACTION_RUN, "action");
    CHECK(cfg.shards == 4 && cfg.connections_per_shard == 2 && cfg.max_batch == 64,
          "daemon defaults");
    CHECK(cfg.lock_timeout_ms == 5000 && cfg.statement_timeout_ms == 10000, "database defaults");
    CHECK(strcmp(cfg.lock_key_sql, "hashtextextended('tenantq:' || $1, 0)") == 0, "lock key %s",
          cfg.lock_key_sql);
    CHECK(strcmp(cfg.listen, "ipc:///run/tenantq/tenantqd.sock") == 0, "listen %s", cfg.listen);
    config_free(&cfg);

    char *file = write_file("[daemon]\nshards = 7\nmax_batch = 9\n[database]\n"
                            "lock_timeout_ms = 1234\n");
    CHECK(load(&cfg, &act, err, sizeof err, 5, "-c", file, "--shards", "3") == 0, "file: %s",
          err);
    CHECK(cfg.shards == 3, "the flag wins over the file: %d", cfg.shards);
    CHECK(cfg.max_batch == 9 && cfg.lock_timeout_ms == 1234, "the file's values");
    config_free(&cfg);
    unlink(file);
    free(file);

    CHECK(load(&cfg, &act, err, sizeof err, 5, "-c", empty, "--shards", "0") < 0,
          "out of range");
    CHECK(strstr(err, "shards") != NULL, "names the key: %s", err);
    config_free(&cfg);

    file = write_file("[daemon]\nno_such_key = 1\n");
    CHECK(load(&cfg, &act, err, sizeof err, 3, "-c", file) < 0, "unknown key");
    CHECK(strstr(err, "no_such_key") != NULL, "names it: %s", err);
    config_free(&cfg);
    unlink(file);
    free(file);

    file = write_file("[daemon]\nmax_batch = lots\n");
    CHECK(load(&cfg, &act, err, sizeof err, 3, "-c", file) < 0, "not a number");
    CHECK(strstr(err, "max_batch") != NULL, "names it: %s", err);
    config_free(&cfg);
    unlink(file);
    free(file);

    /* SQL names keep their double quotes (they are SQL's); a comment starts
     * outside them; booleans */
    file = write_file("[storage]\ntable = public.\"Tenant\"   ; Prisma's\n"
                      "draft_column = \"landing #Page; Draft\" # quoted\n"
                      "published_column =\ncreate_missing = false\n"
                      "[database]\nschema = \"Tq\"\nlock_key_sql = \"hashtext($1)\"\n");
    CHECK(load(&cfg, &act, err, sizeof err, 3, "-c", file) == 0, "names: %s", err);
    CHECK(strcmp(cfg.storage_table, "public.\"Tenant\"") == 0, "table %s", cfg.storage_table);
    CHECK(strcmp(cfg.storage_draft_column, "\"landing #Page; Draft\"") == 0, "draft %s",
          cfg.storage_draft_column);
    CHECK(cfg.storage_published_column[0] == '\0' && cfg.storage_create_missing == 0,
          "empty name, false");
    CHECK(strcmp(cfg.schema, "\"Tq\"") == 0, "schema %s", cfg.schema);
    CHECK(strcmp(cfg.lock_key_sql, "hashtext($1)") == 0, "other strings still unquote: %s",
          cfg.lock_key_sql);
    config_free(&cfg);
    unlink(file);
    free(file);
    file = write_file("[storage]\ncreate_missing = maybe\n");
    CHECK(load(&cfg, &act, err, sizeof err, 3, "-c", file) < 0 &&
              strstr(err, "create_missing must be true or false") != NULL,
          "bad bool: %s", err);
    config_free(&cfg);
    unlink(file);
    free(file);

    CHECK(load(&cfg, &act, err, sizeof err, 4, "-c", empty, "--check-config") == 0 &&
              act == TQ_ACTION_CHECK_CONFIG,
          "--check-config");
    config_free(&cfg);
    unlink(empty);
    free(empty);
    printf("config: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
