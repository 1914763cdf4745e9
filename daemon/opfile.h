/*
 * opfile.h - the parser of one SQL operation file (docs/sql-operations.md).
 *
 * Pure: no I/O, no globals, no threads; any thread on its own objects.  The
 * text is the operator's configuration, not client input, but it is still
 * parsed defensively: every limit below is checked, every error names the
 * line, and nothing is ever spliced into the SQL except the placeholders.
 *
 * An op file is one SQL statement with named parameters:
 *
 *     -- reject_if_empty: that slot is already booked
 *     INSERT INTO booking (tenant_id, slot, customer)
 *     SELECT :tenant, :slot::timestamptz, :customer
 *     WHERE NOT EXISTS (SELECT 1 FROM booking
 *                       WHERE tenant_id = :tenant AND slot = :slot::timestamptz)
 *     RETURNING id, slot
 *
 * The lexical rules are PostgreSQL's (with standard_conforming_strings on, the
 * default since 9.1): a parameter is ':' followed by a name
 * ([A-Za-z_][A-Za-z0-9_]*, case-sensitive) anywhere outside string literals
 * ('...' with '' inside; E'...' also with backslash escapes), quoted
 * identifiers ("..." with "" inside), comments (-- to the end of the line,
 * and block comments, which nest) and dollar-quoted bodies ($$...$$,
 * $tag$...$tag$).  "::" is a cast, never a parameter; a ':' followed by
 * anything else (a space, a digit, '=') stays as it is, except a non-ASCII
 * character, which is refused (a name cannot hold one).  So is a name that
 * runs straight into a non-ASCII character or '$'.  Positional parameters
 * ($1) are refused, since the parser numbers the placeholders itself.  In an
 * array slice a[1:n] the :n is a parameter; write a[1 : n] for a column.
 *
 * Options are "-- KEY: VALUE" comment lines before the statement's first
 * word.  Such a line whose KEY is a lower-case word ([a-z][a-z0-9_]*) directly
 * followed by ':' (but not by "::" or "://") is an option and KEY must be one of the known ones, so that
 * a misspelt option fails the load instead of silently doing nothing.  Other
 * leading comments (and every comment inside the statement) are ignored.
 *   reject_if_empty: MESSAGE   an execution that returns or affects no row is
 *                              REJECTED with MESSAGE (1..OPFILE_MESSAGE_MAX
 *                              bytes of text, no control characters)
 *   lock_key: SQL-EXPR         the advisory-lock key of this op, an SQL
 *                              expression over $1 = the tenant id, for an op
 *                              whose service took its lock under another key
 *                              than [database] lock_key_sql; it must use $1
 *                              (and no other $n or :name), and may not hold
 *                              ';' or a comment; the daemon casts it to bigint
 */
#ifndef TQ_OPFILE_H
#define TQ_OPFILE_H

#include <stdbool.h>
#include <stddef.h>

#define OPFILE_MAX_BYTES 65536   /* the whole file */
#define OPFILE_MAX_PARAMS 64     /* distinct names, :tenant included */
#define OPFILE_NAME_MAX 63       /* bytes of a parameter name (PostgreSQL's identifier limit) */
#define OPFILE_MESSAGE_MAX 256   /* bytes of a reject_if_empty message */
#define OPFILE_LOCK_KEY_MAX 1024 /* bytes of a lock_key expression */
#define OPFILE_ERR_MAX 512       /* room for any error message of this module */

/* The name :tenant binds: the request's tenant, not an argument. */
#define OPFILE_TENANT "tenant"

/*
 * A parsed op file.  Owns every pointer; immutable once returned (opset
 * shares it between threads), freed with opfile_free.
 */
typedef struct opfile_def {
    /* The op's name: NULL from opfile_parse, set by opset_load. */
    char *name;
    /* The statement with each :name replaced by $k, NUL-terminated, from its
     * first word to its last token: leading comments, the final ';' and
     * anything after it are dropped, so the text can be prepared as is or
     * embedded in a larger statement.  A space is put before $k where the
     * text before it would otherwise run into it (x:a becomes "x $1"). */
    char *sql;
    size_t sql_len;
    /* params[k] is the name bound to $(k+1), in order of first appearance;
     * each name once (a repeated :name binds the same $k). */
    size_t nparams;
    char *params[OPFILE_MAX_PARAMS];
    /* The index of OPFILE_TENANT in params, or -1 if the statement does not
     * use :tenant.  Every other entry of params is a required argument. */
    int tenant_index;
    /* Options; NULL when not set (lock_key_sql NULL = the configured one). */
    char *reject_if_empty;
    char *lock_key_sql;
} opfile_def;

/*
 * Parse len bytes of text (not necessarily NUL-terminated).  where names the
 * file in messages.  Returns a new definition (free with opfile_free), or
 * NULL with a one-line message in err (errlen bytes; OPFILE_ERR_MAX is always
 * enough) of the form "WHERE:LINE: what is wrong", e.g.
 * "booking.create.sql:3: unterminated string literal (opened here)".
 * Errors: file larger than OPFILE_MAX_BYTES, a NUL byte or invalid UTF-8, an
 * unterminated literal, quoted identifier, comment or dollar quote, no
 * statement, a statement that does not start with SELECT, INSERT, UPDATE,
 * DELETE or WITH, a second statement after ';', a positional $n, a
 * parameter name that is too long or runs into non-ASCII text, more than
 * OPFILE_MAX_PARAMS names, an unknown, repeated, empty or invalid option.
 * Out of memory is reported as such.
 */
opfile_def *opfile_parse(const char *where, const char *text, size_t len, char *err,
                         size_t errlen) __attribute__((warn_unused_result));

/* Free def and everything it owns; NULL is fine. */
void opfile_free(opfile_def *def);

/* A word of untrusted text for a message, into buf (size >= OPFILE_SHOW_SIZE
 * bytes): at most OPFILE_SHOW_MAX bytes of s (n bytes), cut on a UTF-8
 * character boundary and followed by "..." when cut, control characters
 * shown as '?', so that the message stays one line of valid text. */
#define OPFILE_SHOW_MAX 32
#define OPFILE_SHOW_SIZE (OPFILE_SHOW_MAX + 8)
void opfile_show(const char *s, size_t n, char *buf, size_t size);

/* Whether s (n bytes) is a valid parameter name: [A-Za-z_][A-Za-z0-9_]*,
 * 1..OPFILE_NAME_MAX bytes. */
bool opfile_valid_param(const char *s, size_t n);

#endif
