/*
 * auth.h - the shared secret of [daemon] auth_token_file: reading the file
 * (at start, for --check-config and on SIGHUP) and checking a request's
 * "auth" against it in constant time.  Main thread only (the front and the
 * SIGHUP handler); a token is never logged.
 */
#ifndef TQ_AUTH_H
#define TQ_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct auth_token;

/*
 * Read the token from path: the file's content without its trailing
 * whitespace (spaces, tabs, CR, LF).  Refused, with a message that names
 * [daemon] auth_token_file and the path (never the content): a file that
 * cannot be opened or read, is not a regular file, has any permission bit
 * for others (mode & 007), or whose token is empty, longer than
 * TQ_MAX_AUTH_BYTES, not UTF-8 or holds a control character
 * (tq_auth_valid).  Returns the token (auth_free), or NULL with err.
 */
struct auth_token *auth_load(const char *path, char *err, size_t errlen);

/* Wipe and free t.  NULL is a no-op. */
void auth_free(struct auth_token *t);

/*
 * Whether the len bytes at given are the token.  The time it takes depends
 * on len, never on the token: given is hashed with SipHash under a random
 * key drawn when the token was read and compared with the token's hash
 * (computed then); only on a match are the bytes compared, in constant
 * time over the equal lengths.  given may be NULL (then false).
 */
bool auth_matches(const struct auth_token *t, const void *given, size_t len);

#endif
