/*
 * opset.c - loading an [ops] dir into an immutable set (contract: opset.h).
 *
 * The only file of the SQL operations that does I/O (reading the directory
 * at start and on reload); the set it builds is a sorted array searched by
 * name, never changed after the load.
 */
#include "opset.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storefront.h"

struct opset {
    atomic_uint refs;
    size_t n;
    opfile_def **ops; /* sorted by name (strcmp) */
};

/* Built-in ops that may not be in storefront.h's table yet. */
static const char *const extra_builtins[] = {"draft.check", "draft.repair"};
static const char *const reserved_prefixes[] = {"section.", "draft."};

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool opset_valid_name(const char *name, size_t len)
{
    if (name == NULL || len == 0 || len > OPSET_NAME_MAX)
        return false;
    /* words of [a-z0-9]+ joined by single '-' or '.' */
    bool after_sep = true;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (is_lower_alnum(c)) {
            after_sep = false;
        } else if ((c == '-' || c == '.') && !after_sep) {
            after_sep = true;
        } else {
            return false;
        }
    }
    return !after_sep;
}

bool opset_reserved_name(const char *name, size_t len)
{
    if (sf_op_lookup(name, len, NULL))
        return true;
    for (size_t k = 0; k < sizeof extra_builtins / sizeof extra_builtins[0]; k++)
        if (strlen(extra_builtins[k]) == len && memcmp(extra_builtins[k], name, len) == 0)
            return true;
    for (size_t k = 0; k < sizeof reserved_prefixes / sizeof reserved_prefixes[0]; k++) {
        size_t pl = strlen(reserved_prefixes[k]);
        if (len >= pl && memcmp(reserved_prefixes[k], name, pl) == 0)
            return true;
    }
    return false;
}

opset *opset_empty(void)
{
    opset *set = calloc(1, sizeof *set);
    if (set != NULL)
        atomic_init(&set->refs, 1);
    return set;
}

opset *opset_ref(opset *set)
{
    atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
    return set;
}

void opset_unref(opset *set)
{
    if (set == NULL)
        return;
    /* release: this thread's reads of the set happen before the free */
    if (atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < set->n; i++)
        opfile_free(set->ops[i]);
    free(set->ops);
    free(set);
}

static int cmp_def(const void *a, const void *b)
{
    const opfile_def *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

const opfile_def *opset_find(const opset *set, const char *name, size_t len)
{
    if (set == NULL || name == NULL || len > OPSET_NAME_MAX)
        return NULL;
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = set->ops[mid]->name;
        size_t ml = strlen(m);
        int c = memcmp(m, name, ml < len ? ml : len);
        if (c == 0)
            c = ml < len ? -1 : ml > len;
        if (c == 0)
            return set->ops[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t opset_count(const opset *set)
{
    return set ? set->n : 0;
}

const opfile_def *opset_at(const opset *set, size_t i)
{
    return set && i < set->n ? set->ops[i] : NULL;
}

static bool ends_with_sql(const char *name, size_t len)
{
    return len >= 4 && memcmp(name + len - 4, ".sql", 4) == 0;
}

/* Read one op file into a definition; NULL with err set. */
static opfile_def *load_file(const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    opfile_def *def = NULL;
    /* O_NONBLOCK: a FIFO named x.sql must not hang the reload */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size > OPFILE_MAX_BYTES) {
        snprintf(err, errlen, "%s:1: the file is larger than %d bytes", path, OPFILE_MAX_BYTES);
        goto out;
    }
    /* one byte more than the limit: a file that grew since fstat is caught */
    text = malloc(OPFILE_MAX_BYTES + 1);
    if (text == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    size_t len = 0;
    while (len < OPFILE_MAX_BYTES + 1) {
        ssize_t r = read(fd, text + len, OPFILE_MAX_BYTES + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    def = opfile_parse(path, text, len, err, errlen);
out:
    if (fd >= 0)
        close(fd);
    free(text);
    return def;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names of dir's NAME.sql entries, sorted; *n of them.  -1 with err. */
static int list_dir(const char *dir, char ***names, size_t *n, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        snprintf(err, errlen, "[ops] dir %s: %s", dir, strerror(errno));
        return -1;
    }
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (e == NULL) {
            if (errno != 0) {
                snprintf(err, errlen, "[ops] dir %s: %s", dir, strerror(errno));
                rc = -1;
            }
            break;
        }
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || !ends_with_sql(e->d_name, len))
            continue;
        if (cnt == OPSET_MAX_OPS) {
            snprintf(err, errlen, "[ops] dir %s: more than %d .sql files", dir, OPSET_MAX_OPS);
            rc = -1;
            break;
        }
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            char **nv = realloc(v, cap * sizeof *v);
            if (nv == NULL) {
                rc = -1;
                break;
            }
            v = nv;
        }
        if ((v[cnt] = strdup(e->d_name)) == NULL) {
            rc = -1;
            break;
        }
        cnt++;
    }
    closedir(d);
    if (rc == 0 && cnt > 1)
        qsort(v, cnt, sizeof *v, cmp_str);
    if (rc < 0 && err[0] == '\0')
        snprintf(err, errlen, "[ops] dir %s: out of memory", dir);
    *names = v;
    *n = cnt;
    return rc;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

opset *opset_load(const char *dir, char *err, size_t errlen)
{
    char dummy[1];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (dir == NULL || dir[0] == '\0') {
        snprintf(err, errlen, "[ops] dir: empty path");
        return NULL;
    }
    char **names = NULL;
    size_t n = 0;
    opset *set = NULL;
    if (list_dir(dir, &names, &n, err, errlen) < 0)
        goto fail;
    set = opset_empty();
    if (set == NULL || (n > 0 && (set->ops = calloc(n, sizeof *set->ops)) == NULL)) {
        snprintf(err, errlen, "[ops] dir %s: out of memory", dir);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]) - 4;
        const char *sep = dir[strlen(dir) - 1] == '/' ? "" : "/";
        if (!opset_valid_name(names[i], len)) {
            snprintf(err, errlen,
                     "%s%s%s: '%.*s' is not a valid op name (words of a-z and 0-9 joined by "
                     "'-' or '.', at most %d bytes)",
                     dir, sep, names[i], (int)len, names[i], OPSET_NAME_MAX);
            goto fail;
        }
        if (opset_reserved_name(names[i], len)) {
            snprintf(err, errlen,
                     "%s%s%s: '%.*s' is reserved for a built-in op (ping, section.*, draft.*)",
                     dir, sep, names[i], (int)len, names[i]);
            goto fail;
        }
        size_t plen = strlen(dir) + 1 + strlen(names[i]) + 1;
        char *path = malloc(plen);
        if (path == NULL) {
            snprintf(err, errlen, "[ops] dir %s: out of memory", dir);
            goto fail;
        }
        snprintf(path, plen, "%s%s%s", dir, sep, names[i]);
        opfile_def *def = load_file(path, err, errlen);
        free(path);
        if (def == NULL)
            goto fail;
        def->name = strndup(names[i], len);
        set->ops[set->n++] = def;
        if (def->name == NULL) {
            snprintf(err, errlen, "[ops] dir %s: out of memory", dir);
            goto fail;
        }
    }
    /* the names are sorted already, but "a.sql" < "a-b.sql" by file name
     * while "a" < "a-b" by op name: sort the ops on their own names */
    if (set->n > 1)
        qsort(set->ops, set->n, sizeof *set->ops, cmp_def);
    free_names(names, n);
    return set;
fail:
    free_names(names, n);
    opset_unref(set);
    return NULL;
}
