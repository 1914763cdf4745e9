/*
 * sqlresult.h - an SQL op's PGresult as its JSON result.
 *
 * Pure: reads the result, no I/O, no globals; any thread on its own objects.
 * The result has the shape {"rows":[{column: value, ...}, ...], "count": N}.
 * Values follow the column's type (the result's text format, as libpq
 * returns by default):
 *   SQL NULL                       null
 *   int2, int4, int8               integers, exact (int8 over its whole range)
 *   numeric                        an integer when the value is one within
 *                                  int64, else a float (binary64: digits
 *                                  beyond about 17 are lost; select
 *                                  amount::text to keep them all)
 *   float4, float8                 floats
 *   bool                           true / false
 *   json, jsonb                    the JSON value itself, not a string
 *   everything else                its text, as PostgreSQL writes it
 * JSON cannot hold NaN or the infinities: a float or numeric column holding
 * one, and a json value with a number beyond the float range, arrive as
 * their text ("NaN", "Infinity", "-Infinity").  A json integer beyond int64
 * becomes a float.  Two columns of the same name: the later one wins (name
 * the columns of a join apart).
 */
#ifndef TQ_SQLRESULT_H
#define TQ_SQLRESULT_H

#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "tq_proto.h"

/* PostgreSQL's type OIDs (pg_type.dat; stable across versions). */
#define SQLRESULT_BOOLOID 16
#define SQLRESULT_INT8OID 20
#define SQLRESULT_INT2OID 21
#define SQLRESULT_INT4OID 23
#define SQLRESULT_JSONOID 114
#define SQLRESULT_FLOAT4OID 700
#define SQLRESULT_FLOAT8OID 701
#define SQLRESULT_NUMERICOID 1700
#define SQLRESULT_JSONBOID 3802

/*
 * The count of a successful statement: the rows it returned
 * (PGRES_TUPLES_OK, also a SELECT or an INSERT ... RETURNING), else the rows
 * it affected (PQcmdTuples; 0 when the command reports none).  This is what
 * reject_if_empty tests (count == 0).  -1 for any other status.
 */
int64_t sqlresult_count(const PGresult *res);

/*
 * The JSON result of a successful statement (PGRES_TUPLES_OK or
 * PGRES_COMMAND_OK, whose rows are []): a new reference, or NULL with err
 * (INTERNAL: another status, a text value that is not valid UTF-8, out of
 * memory), the message naming the row and column.
 */
json_t *sqlresult_to_json(const PGresult *res, tq_error *err) __attribute__((warn_unused_result));

/* The JSON value of one field's text (len bytes, as PQgetvalue gives it) of
 * a column of type oid, by the mapping above; NULL if the text is not valid
 * UTF-8 or out of memory.  Exposed for the tests and the fuzz target. */
json_t *sqlresult_value(unsigned int oid, const char *text, size_t len);

#endif
