/*
 * auth.c - reading [daemon] auth_token_file and the constant-time check of
 * a request's "auth" (auth.h).
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "siphash.h"
#include "tq_proto.h"

struct auth_token {
    uint8_t key[16];  /* random, per token: what the client sends is hashed under it */
    uint64_t digest;  /* siphash24(key, bytes, len) */
    size_t len;
    char bytes[];     /* len bytes (no NUL) */
};

#define AUTH_KEY "[daemon] auth_token_file"
/* Read at most this much: a token is at most TQ_MAX_AUTH_BYTES, plus room
 * for trailing whitespace; a larger file is refused as too long. */
#define AUTH_READ_MAX (TQ_MAX_AUTH_BYTES + 1024)

static bool trailing_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

struct auth_token *auth_load(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, AUTH_KEY ": cannot open %.300s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, AUTH_KEY ": cannot stat %.300s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, AUTH_KEY ": %.300s is not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_mode & 007) {
        snprintf(err, errlen,
                 AUTH_KEY ": %.300s is accessible by other users (mode %04o); a secret must not "
                 "be: chmod o= it (e.g. 0640, owned by root and the service's group)",
                 path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return NULL;
    }
    char *buf = malloc(AUTH_READ_MAX + 1);
    if (!buf) {
        snprintf(err, errlen, AUTH_KEY ": out of memory");
        close(fd);
        return NULL;
    }
    size_t n = 0;
    int rd_errno = 0;
    while (n <= AUTH_READ_MAX) {
        ssize_t r = read(fd, buf + n, AUTH_READ_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rd_errno = errno;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    struct auth_token *t = NULL;
    bool too_long = n > AUTH_READ_MAX; /* (and then not read to its end) */
    while (n > 0 && trailing_space(buf[n - 1]))
        n--;
    if (rd_errno)
        snprintf(err, errlen, AUTH_KEY ": cannot read %.300s: %s", path, strerror(rd_errno));
    else if (too_long || n > TQ_MAX_AUTH_BYTES)
        snprintf(err, errlen, AUTH_KEY ": the token in %.300s is longer than %d bytes", path,
                 TQ_MAX_AUTH_BYTES);
    else if (n == 0)
        snprintf(err, errlen, AUTH_KEY ": %.300s holds no token (empty, or only whitespace)",
                 path);
    else if (!tq_auth_valid(buf, n))
        snprintf(err, errlen,
                 AUTH_KEY ": the token in %.300s is not valid UTF-8 or holds a control "
                 "character (clients could not send it)",
                 path);
    else if (!(t = malloc(sizeof *t + n)))
        snprintf(err, errlen, AUTH_KEY ": out of memory");
    else if (getrandom(t->key, sizeof t->key, 0) != (ssize_t)sizeof t->key) {
        snprintf(err, errlen, AUTH_KEY ": getrandom: %s", strerror(errno));
        free(t);
        t = NULL;
    } else {
        t->len = n;
        memcpy(t->bytes, buf, n);
        t->digest = siphash24(t->key, t->bytes, n);
    }
    explicit_bzero(buf, AUTH_READ_MAX + 1);
    free(buf);
    return t;
}

void auth_free(struct auth_token *t)
{
    if (!t)
        return;
    explicit_bzero(t, sizeof *t + t->len);
    free(t);
}

bool auth_matches(const struct auth_token *t, const void *given, size_t len)
{
    if (!t || !given)
        return false;
    /* Not secret from here on: the two hashes differ for any other input
     * (but for a 2^-64 chance under a key the client cannot know), so
     * whether they do tells the client only whether it sent the token. */
    if ((siphash24(t->key, given, len) ^ t->digest) != 0 || len != t->len)
        return false;
    const unsigned char *g = given;
    unsigned char diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (unsigned char)(g[i] ^ (unsigned char)t->bytes[i]);
    return diff == 0;
}
