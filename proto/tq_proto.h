/*
 * tq_proto.h - the shared msgpack codec of wire protocol v1 (see PROTOCOL.md).
 *
 * Pure: no I/O, no global state, no threads.  Every function may be called
 * from any thread on its own objects.  JSON-shaped values are jansson trees:
 * a request's args and a response's result are converted between msgpack and
 * jansson here, so the rest of tenantq never touches msgpack objects.
 *
 * The decoders are strict and safe against hostile input: exactly one msgpack
 * map, no trailing bytes, truncated input rejected, container sizes larger
 * than the remaining bytes rejected before any allocation, nesting depth
 * limited to TQ_MAX_DEPTH, strings never assumed NUL-terminated, invalid
 * UTF-8 rejected where text is required.
 */
#ifndef TQ_PROTO_H
#define TQ_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <msgpack.h>

#include "tq_codes.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQ_PROTO_VERSION 1
#define TQ_MAX_DEPTH 32          /* msgpack nesting, envelope map = depth 1 */
#define TQ_MAX_TENANT_BYTES 128
#define TQ_MAX_KEY_BYTES 128
#define TQ_MAX_OP_BYTES 64
#define TQ_MAX_AUTH_BYTES 4096   /* a shared-secret token (auth_token_file) */
#define TQ_ERRMSG_MAX 512

/* An error with a human message naming the offending field/id/page/limit. */
typedef struct tq_error {
    tq_code code;
    char message[TQ_ERRMSG_MAX];
} tq_error;

/* Fill err (if not NULL) with code and a printf-formatted message. Returns -1
 * so callers can `return tq_error_set(...)`. */
/* Strict UTF-8 (RFC 3629): shortest form only, no surrogates, <= U+10FFFF. */
bool tq_utf8_valid(const void *s, size_t n);

int tq_error_set(tq_error *err, tq_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A decoded request.  Owns every pointer: release with tq_request_free. */
typedef struct tq_request {
    uint32_t v;
    char *tenant;           /* NUL-terminated copy, 1..128 bytes, UTF-8, no control chars */
    size_t tenant_len;
    char *op;               /* NUL-terminated copy (validated as text, not as a known op) */
    size_t op_len;
    json_t *args;           /* always a JSON object (empty if absent) */
    char *key;              /* idempotency key or NULL */
    size_t key_len;
    bool has_deadline;
    uint64_t deadline_ms;
    /* The envelope's "auth": the decoder keeps whatever str it holds (any
     * bytes, any length, unchecked: only a daemon with an auth_token_file
     * looks at it, and then anything but the token is refused), NUL-terminated
     * copy of auth_len bytes (which may hold a NUL).  NULL when absent or nil;
     * auth_not_str when present with another type. */
    char *auth;
    size_t auth_len;
    bool auth_not_str;
} tq_request;

/* Whether s (n bytes) can be a token: 1..TQ_MAX_AUTH_BYTES bytes of valid
 * UTF-8 without control characters (what every reference client can send:
 * an environment variable, a JavaScript string). */
bool tq_auth_valid(const char *s, size_t n);

/*
 * Decode one request body.  Returns 0 and fills *req (caller owns, free with
 * tq_request_free) or -1 with err set: BAD_REQUEST for anything wrong with
 * the bytes or the envelope, UNSUPPORTED_VERSION for v != 1,
 * INVALID_ARGUMENT for args that cannot be represented as JSON (binary, ext,
 * NaN/Inf, non-string map keys, duplicate keys, invalid UTF-8, integers
 * beyond int64); the message names the field (e.g. "args.section.headline").
 * On failure *req is zeroed and owns nothing.
 */
int tq_request_decode(const void *buf, size_t len, tq_request *req, tq_error *err)
    __attribute__((warn_unused_result));
void tq_request_free(tq_request *req);

/*
 * Encode a request into sb (appended; caller clears first if wanted).
 * args may be NULL (encoded as absent), key may be NULL, deadline_ms 0 = absent.
 * Returns 0, or -1 if args holds something msgpack cannot carry / out of memory.
 */
int tq_request_encode(msgpack_sbuffer *sb, const char *tenant, const char *op,
                      const json_t *args, const char *key, uint64_t deadline_ms)
    __attribute__((warn_unused_result));

/* The same with an "auth" str of auth_len bytes (auth NULL = absent). */
int tq_request_encode_auth(msgpack_sbuffer *sb, const char *tenant, const char *op,
                           const json_t *args, const char *key, uint64_t deadline_ms,
                           const char *auth, size_t auth_len) __attribute__((warn_unused_result));

/* Optional timing block of a response. */
typedef struct tq_timing {
    uint64_t queue_us;
    uint64_t exec_us;
    uint32_t batch;
} tq_timing;

/* Encode {"v":1,"ok":true,"result":result[,"replayed":true][,"timing":{..}]}.
 * result NULL encodes nil.  timing NULL = omitted.  Returns 0 or -1. */
int tq_response_encode_ok(msgpack_sbuffer *sb, const json_t *result, bool replayed,
                          const tq_timing *timing) __attribute__((warn_unused_result));

/* Encode {"v":1,"ok":false,"error":{"code","message","retryable"}[,"replayed":true]}.
 * retryable is tq_code_retryable(code).  Returns 0 or -1. */
int tq_response_encode_error(msgpack_sbuffer *sb, tq_code code, const char *message,
                             bool replayed) __attribute__((warn_unused_result));

/* A decoded response.  Owns its pointers: release with tq_response_free. */
typedef struct tq_response {
    bool ok;
    json_t *result;         /* ok: the result (JSON null if nil); else NULL */
    tq_code code;           /* !ok: the error code (TQ_E_PROTOCOL if the name is unknown) */
    char *message;          /* !ok: NUL-terminated copy; else NULL */
    bool retryable;
    bool replayed;
    bool has_timing;
    tq_timing timing;
} tq_response;

/* Decode a response body with the same strictness as requests.  Returns 0,
 * or -1 with err->code = TQ_E_PROTOCOL and a message. */
int tq_response_decode(const void *buf, size_t len, tq_response *resp, tq_error *err)
    __attribute__((warn_unused_result));
void tq_response_free(tq_response *resp);

/* Pack a JSON value as msgpack (objects as maps with str keys, integers as
 * int, reals as float64, ...).  Returns 0 or -1. */
int tq_pack_json(msgpack_packer *pk, const json_t *value) __attribute__((warn_unused_result));

/*
 * Strictly parse a buffer that must hold exactly one msgpack value and
 * convert it to JSON.  path names the value in messages ("args").  Returns
 * 0 and a new reference in *out, or -1 with err (code given by errcode for
 * unrepresentable values, BAD_REQUEST-class for malformed bytes as
 * documented in PROTOCOL.md).  Exposed for the fuzz target and tests.
 */
int tq_msgpack_to_json(const void *buf, size_t len, const char *path, json_t **out,
                       tq_error *err) __attribute__((warn_unused_result));

#ifdef __cplusplus
}
#endif
#endif
