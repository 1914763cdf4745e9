/*
 * opset.h - the SQL operations of an [ops] dir, loaded as one immutable,
 * reference-counted set.
 *
 * Every NAME.sql file of the directory defines the op NAME (opfile.h).
 * NAME follows the op name rule: ^[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)*$,
 * at most OPSET_NAME_MAX bytes, and may not be a built-in op's name (ping,
 * section.*, draft.*: every built-in op lives in one of those, so the whole
 * section. and draft. namespaces are reserved, and a later built-in can never
 * change what an operator's op name means).  Entries whose names start with
 * '.' (editor swap and lock files, hidden files) and entries whose names do
 * not end in ".sql" (README, *.sql~, *.sql.bak, *.sql.dpkg-old, subdirectories)
 * are ignored.  A ".sql" entry with a bad name, one that is not a regular
 * file (after following a symlink), or one that does not parse fails the
 * whole load.
 *
 * Threads and ownership: a set never changes after opset_load returns it.
 * opset_ref and opset_unref are atomic, so references may be taken and
 * dropped on any thread; every other function only reads, so any number of
 * threads may use a set at once as long as each holds a reference (or is
 * covered by one that is held for it).  The intended use: the main thread
 * loads a set at start and on SIGHUP; each shard gets its own reference
 * through its inbox and swaps it in on its own thread, dropping its old one;
 * each admitted request that names an SQL op holds a reference to the set
 * its definition came from until its reply is sent, so a reload never frees
 * a definition in use.  A pointer to a set shared between threads without a
 * reference of its own (read, then ref) is not safe: another thread may drop
 * the last reference in between.
 */
#ifndef TQ_OPSET_H
#define TQ_OPSET_H

#include <stdbool.h>
#include <stddef.h>

#include "opfile.h"

#define OPSET_NAME_MAX 64  /* bytes of an op name */
#define OPSET_MAX_OPS 1024 /* ops in one directory (the metrics keep one series per op) */
#define OPSET_ERR_MAX (OPFILE_ERR_MAX + 4096) /* enough for a message naming any path */

typedef struct opset opset;

/*
 * Load every op of dir (a directory path).  Returns a new set with one
 * reference (the caller's), or NULL with a one-line message in err naming the
 * file and, for a parse error, the line: "/etc/tenantq/ops/booking.create.sql:3:
 * ...".  Nothing is kept from a failed load.  Reads the directory with
 * blocking calls: call it where blocking is acceptable (the main thread at
 * start or on SIGHUP, never a shard).
 */
opset *opset_load(const char *dir, char *err, size_t errlen) __attribute__((warn_unused_result));

/* A set with no ops (an empty [ops] dir setting); one reference, or NULL out
 * of memory. */
opset *opset_empty(void) __attribute__((warn_unused_result));

/* Take another reference; returns set.  Any thread. */
opset *opset_ref(opset *set);
/* Drop a reference; the last one frees the set and its definitions.  NULL is
 * fine.  Any thread. */
void opset_unref(opset *set);

/* The op named name (len bytes, not necessarily NUL-terminated), or NULL.
 * The definition lives as long as the set. */
const opfile_def *opset_find(const opset *set, const char *name, size_t len);

/* The number of ops, and the i-th in byte order of the names (i < count):
 * for the metrics, which keep one series per configured name. */
size_t opset_count(const opset *set);
const opfile_def *opset_at(const opset *set, size_t i);

/* Whether name (len bytes) follows the op name rule above (the rule only:
 * not whether it is reserved). */
bool opset_valid_name(const char *name, size_t len);

/* Whether name (len bytes) belongs to a built-in op or a reserved
 * namespace (section.*, draft.*). */
bool opset_reserved_name(const char *name, size_t len);

#endif
