/*
 * sqlargs.h - a request's args as the text parameters of an SQL op.
 *
 * Pure: no I/O, no globals; any thread on its own objects (the definition is
 * only read).  args is the JSON object the codec decoded from the request
 * (tq_proto.h): strings are valid UTF-8 without U+0000, integers are within
 * int64 (json_integer), reals are finite, and nothing else than JSON values
 * can be in it.  Every parameter is sent as text and typed by the SQL (write
 * :slot::timestamptz); the values are never spliced into the statement.
 *
 * Value mapping (docs/sql-operations.md):
 *   string          the string as is
 *   integer         its decimal text, exact over the whole int64 range
 *   real            the shortest text that reads back as the same double
 *                   (0.1 -> "0.1", 1e300 -> "1e+300", 5e-324 -> "5e-324")
 *   true / false    "true" / "false"
 *   nil (null)      SQL NULL
 *   map / array     its compact JSON text (cast it in SQL: :items::jsonb)
 */
#ifndef TQ_SQLARGS_H
#define TQ_SQLARGS_H

#include <jansson.h>

#include "opfile.h"
#include "tq_proto.h"

/*
 * Admission check: args must be an object holding exactly def's arguments
 * (every parameter but :tenant), each present, no other key; "tenant" is
 * never an argument (the tenant is the request's own field).  Returns 0, or
 * -1 with err->code = INVALID_ARGUMENT and a message naming the argument:
 * "args.slot: missing (this op takes slot, customer)", "args.colour:
 * unknown argument (this op takes slot, customer)", "args.tenant: not an
 * argument: the tenant is the request's tenant field".  Allocates nothing.
 */
int sqlargs_check(const opfile_def *def, const json_t *args, tq_error *err)
    __attribute__((warn_unused_result));

/*
 * The bound parameters of one execution: values[k] is the text of $(k+1),
 * NULL for SQL NULL, ready for PQsendQueryPrepared(..., n, values, NULL,
 * NULL, 0) (text format, NUL-terminated).  Owns the texts it had to make;
 * strings are borrowed from args and the tenant from the caller, so args and
 * tenant must outlive it.  Release with sqlargs_clear.
 */
typedef struct sqlargs {
    int n;
    const char *values[OPFILE_MAX_PARAMS];
    char *owned[OPFILE_MAX_PARAMS]; /* what sqlargs_clear frees (NULL = borrowed) */
} sqlargs;

/*
 * Check args as sqlargs_check does, then fill *out with def's parameters:
 * tenant (NUL-terminated) for :tenant, the mapping above for the others.
 * Returns 0, or -1 with err (INVALID_ARGUMENT as above, INTERNAL out of
 * memory) and *out owning nothing.
 */
int sqlargs_bind(const opfile_def *def, const json_t *args, const char *tenant, sqlargs *out,
                 tq_error *err) __attribute__((warn_unused_result));

/* Free what out owns and zero it; safe on a zeroed or cleared sqlargs. */
void sqlargs_clear(sqlargs *out);

/* The shortest "%.*g" text (1 to 17 significant digits) that strtod reads back as d, in
 * buf (at least 32 bytes).  d must be finite.  Returns buf. */
char *sqlargs_real_text(double d, char *buf);

#endif
