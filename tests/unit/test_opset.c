/*
 * test_opset.c - loading an [ops] dir (daemon/opset.h): the shipped examples,
 * which entries are ignored and which fail the load (bad names, built-in and
 * reserved names, parse errors with file and line, non-regular files, a FIFO
 * that must not hang the load), lookup, order, and references taken and
 * dropped on several threads at once (a double free or a leak shows under
 * ASan).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "opset.h"

static char base[64];
static int seq;

/* A fresh empty directory under base. */
static char *new_dir(void)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/d%d", base, ++seq);
    if (mkdir(path, 0700) != 0)
        perror(path);
    return path;
}

static void put(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

/* A directory with one good op plus name holding text must fail with want. */
static void bad_(int line, const char *name, const char *text, const char *want)
{
    char *dir = new_dir();
    put(dir, "ok.sql", "SELECT 1");
    put(dir, name, text);
    char err[OPSET_ERR_MAX];
    opset *set = opset_load(dir, err, sizeof err);
    CHECK(set == NULL, "line %d: %s loaded", line, name);
    CHECK(set != NULL || strstr(err, want) != NULL, "line %d: message [%s], want [%s]", line, err,
          want);
    CHECK(set != NULL || strstr(err, dir) != NULL, "line %d: message [%s] names no path", line,
          err);
    opset_unref(set);
}
#define BAD(name, text, want) bad_(__LINE__, name, text, want)

static void test_examples(void)
{
    char err[OPSET_ERR_MAX];
    opset *set = opset_load(TQ_EXAMPLES_DIR, err, sizeof err);
    CHECK(set != NULL, "examples: %s", err);
    if (set == NULL)
        return;
    CHECK(opset_count(set) == 3, "%zu ops", opset_count(set));
    static const char *const want[] = {"booking.cancel", "booking.create", "booking.list"};
    for (size_t i = 0; i < 3; i++) {
        const opfile_def *d = opset_at(set, i);
        CHECK(d && strcmp(d->name, want[i]) == 0, "op %zu is %s", i, d ? d->name : "-");
        CHECK(d && opset_find(set, want[i], strlen(want[i])) == d, "find %s", want[i]);
    }
    CHECK(opset_at(set, 3) == NULL, "past the end");
    const opfile_def *c = opset_find(set, "booking.create", 14);
    CHECK(c && c->reject_if_empty && strcmp(c->reject_if_empty, "that slot is already booked") == 0,
          "booking.create's option");
    /* lookups by length, not by NUL */
    CHECK(opset_find(set, "booking.createX", 14) == c, "prefix of a longer buffer");
    CHECK(opset_find(set, "booking.creat", 13) == NULL, "a prefix of a name");
    CHECK(opset_find(set, "booking", 7) == NULL, "booking");
    CHECK(opset_find(set, "booking.list.x", 14) == NULL, "longer name");
    CHECK(opset_find(set, "", 0) == NULL && opset_find(NULL, "x", 1) == NULL, "empty, NULL");
    opset_unref(set);
}

static void test_ignored(void)
{
    char *dir = new_dir();
    char path[512];
    put(dir, "a.sql", "SELECT 1");
    put(dir, "a-b.sql", "SELECT 2");
    put(dir, "a.b.sql", "SELECT 3");
    put(dir, "README", "not sql");
    put(dir, "b.sql~", "CREATE junk");
    put(dir, "b.sql.bak", "CREATE junk");
    put(dir, "b.sql.dpkg-old", "CREATE junk");
    put(dir, ".hidden.sql", "CREATE junk");
    put(dir, "B.SQL", "CREATE junk");
    snprintf(path, sizeof path, "%s/.#a.sql", dir); /* emacs lock: a dangling symlink */
    CHECK(symlink("nobody@host.1234", path) == 0, "symlink: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/sub", dir);
    CHECK(mkdir(path, 0700) == 0, "mkdir");
    put(path, "c.sql", "SELECT 4"); /* not read: no recursion */
    snprintf(path, sizeof path, "%s/linked.sql", dir);
    CHECK(symlink("a.sql", path) == 0, "symlink: %s", strerror(errno));
    char err[OPSET_ERR_MAX];
    opset *set = opset_load(dir, err, sizeof err);
    CHECK(set != NULL, "refused: %s", err);
    if (set == NULL)
        return;
    /* sorted by op name: "a" < "a-b" < "a.b" < "linked" */
    static const char *const want[] = {"a", "a-b", "a.b", "linked"};
    CHECK(opset_count(set) == 4, "%zu ops", opset_count(set));
    for (size_t i = 0; i < 4 && i < opset_count(set); i++)
        CHECK(strcmp(opset_at(set, i)->name, want[i]) == 0, "op %zu: %s", i,
              opset_at(set, i)->name);
    const opfile_def *l = opset_find(set, "linked", 6);
    CHECK(l && strcmp(l->sql, "SELECT 1") == 0, "a symlink to a file is read");
    opset_unref(set);

    /* an empty directory is an empty set; a trailing '/' is fine */
    dir = new_dir();
    snprintf(path, sizeof path, "%s/", dir);
    set = opset_load(path, err, sizeof err);
    CHECK(set && opset_count(set) == 0, "empty dir: %s", set ? "" : err);
    opset_unref(set);
    set = opset_empty();
    CHECK(set && opset_count(set) == 0 && opset_find(set, "a", 1) == NULL, "opset_empty");
    opset_unref(set);
}

static void test_refused(void)
{
    /* names */
    BAD("Booking.sql", "SELECT 1", "'Booking' is not a valid op name");
    BAD("a..b.sql", "SELECT 1", "'a..b' is not a valid op name");
    BAD("-a.sql", "SELECT 1", "not a valid op name");
    BAD("a-.sql", "SELECT 1", "not a valid op name");
    BAD("a.-b.sql", "SELECT 1", "not a valid op name");
    BAD("a_b.sql", "SELECT 1", "not a valid op name");
    BAD("a b.sql", "SELECT 1", "not a valid op name");
    BAD("caf\xc3\xa9.sql", "SELECT 1", "not a valid op name");
    char name[100];
    memset(name, 'a', 65);
    strcpy(name + 65, ".sql");
    BAD(name, "SELECT 1", "not a valid op name");
    /* built-in ops and the reserved namespaces */
    BAD("ping.sql", "SELECT 1", "'ping' is reserved for a built-in op");
    BAD("section.upsert.sql", "SELECT 1", "'section.upsert' is reserved");
    BAD("draft.get.sql", "SELECT 1", "'draft.get' is reserved");
    BAD("draft.check.sql", "SELECT 1", "'draft.check' is reserved");
    BAD("draft.repair.sql", "SELECT 1", "'draft.repair' is reserved");
    BAD("draft.history.sql", "SELECT 1", "'draft.history' is reserved");
    /* a parse error names the path and the line */
    BAD("booking.create.sql", "-- reject_if_empty: x\nSELECT 1,\n'open", "/booking.create.sql:3: "
                                                                         "unterminated string");
    BAD("x.sql", "CREATE TABLE t ()", "/x.sql:1: the statement must start with");
    /* not a regular file */
    char *dir = new_dir();
    char path[512], err[OPSET_ERR_MAX];
    snprintf(path, sizeof path, "%s/d.sql", dir);
    CHECK(mkdir(path, 0700) == 0, "mkdir");
    opset *set = opset_load(dir, err, sizeof err);
    CHECK(set == NULL && strstr(err, "/d.sql: not a regular file"), "directory: %s", err);
    opset_unref(set);
    dir = new_dir();
    snprintf(path, sizeof path, "%s/f.sql", dir);
    CHECK(mkfifo(path, 0600) == 0, "mkfifo");
    set = opset_load(dir, err, sizeof err); /* must return at once, not wait for a writer */
    CHECK(set == NULL && strstr(err, "/f.sql: not a regular file"), "fifo: %s", err);
    opset_unref(set);
    dir = new_dir();
    snprintf(path, sizeof path, "%s/gone.sql", dir);
    CHECK(symlink("nowhere", path) == 0, "symlink");
    set = opset_load(dir, err, sizeof err);
    CHECK(set == NULL && strstr(err, "/gone.sql: cannot read"), "dangling link: %s", err);
    opset_unref(set);
    /* a file over the size limit */
    dir = new_dir();
    char *big = malloc(OPFILE_MAX_BYTES + 2);
    memset(big, ' ', OPFILE_MAX_BYTES + 1);
    memcpy(big, "SELECT 1", 8);
    big[OPFILE_MAX_BYTES + 1] = '\0';
    put(dir, "big.sql", big);
    free(big);
    set = opset_load(dir, err, sizeof err);
    CHECK(set == NULL && strstr(err, "/big.sql:1: the file is larger than 65536 bytes"),
          "big: %s", err);
    opset_unref(set);
    /* the directory itself */
    set = opset_load("/nonexistent/tenantq-ops", err, sizeof err);
    CHECK(set == NULL && strstr(err, "[ops] dir /nonexistent/tenantq-ops: No such file"),
          "missing dir: %s", err);
    set = opset_load("", err, sizeof err);
    CHECK(set == NULL && strstr(err, "empty path"), "empty path: %s", err);
    set = opset_load("/nonexistent", NULL, 0);
    CHECK(set == NULL, "no error buffer");
}

static void test_names(void)
{
    static const char *const good[] = {"a", "0", "booking.create", "a-b-c.d-e.f", "x1.y2"};
    static const char *const bad[] = {"", "A", "a.", ".a", "a--b", "a.-b", "a-.b", "a_b", "a/b"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(opset_valid_name(good[i], strlen(good[i])), "%s refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!opset_valid_name(bad[i], strlen(bad[i])), "[%s] accepted", bad[i]);
    char n[OPSET_NAME_MAX + 1];
    memset(n, 'z', sizeof n);
    CHECK(opset_valid_name(n, OPSET_NAME_MAX) && !opset_valid_name(n, OPSET_NAME_MAX + 1),
          "length limit");
    CHECK(opset_reserved_name("ping", 4) && opset_reserved_name("draft.x", 7) &&
              !opset_reserved_name("pings", 5) && !opset_reserved_name("drafts.x", 8) &&
              !opset_reserved_name("draft", 5) && !opset_reserved_name("booking.create", 14),
          "reserved names");
}

struct worker {
    opset *set; /* the worker's own reference, dropped when it is done */
    int found;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 20000; i++) {
        opset *s = opset_ref(w->set);
        w->found += opset_find(s, "booking.list", 12) != NULL;
        opset_unref(s);
    }
    opset_unref(w->set);
    return NULL;
}

/* References on several threads: the loader drops its own while the workers
 * run, and whichever worker ends last frees the set (ASan: no leak, no use
 * after free, no double free). */
static void test_threads(void)
{
    char err[OPSET_ERR_MAX];
    opset *set = opset_load(TQ_EXAMPLES_DIR, err, sizeof err);
    CHECK(set != NULL, "%s", err);
    if (set == NULL)
        return;
    pthread_t t[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.set = opset_ref(set)};
        CHECK(pthread_create(&t[i], NULL, hammer, &w[i]) == 0, "pthread_create");
    }
    opset_unref(set);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].found == 20000, "thread %d found %d", i, w[i].found);
    }
}

int main(void)
{
    snprintf(base, sizeof base, "/tmp/test_opset.XXXXXX");
    if (mkdtemp(base) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    test_examples();
    test_ignored();
    test_refused();
    test_names();
    test_threads();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", base);
    printf("test_opset: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
