/*
 * echo.c - in-process raw REP echo server for tenantq-load --mode echo.
 *
 * One thread, one AF_SP_RAW NN_REP socket: receive a request with its SP
 * routing header (nn_recvmsg with a control message), send back a canned v1
 * reply carrying the same header in a plain control buffer (never an NN_MSG
 * control chunk: a failed send would have freed it already).
 * The request body is not decoded: this measures the transport alone.
 */
#include "echo.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "tq_proto.h"
#include "tq_sp.h"

/* How often the blocked receive wakes to look at the stop flag. */
#define ECHO_POLL_MS 100
/* an ipc path must fit sun_path (108 bytes) anyway */
#define ECHO_DIR_MAX 200

struct echo_server {
    int sock;
    pthread_t thread;
    atomic_bool stop;
    char dir[ECHO_DIR_MAX];
    char path[ECHO_DIR_MAX + 16];
    char endpoint[ECHO_DIR_MAX + 32];
    msgpack_sbuffer reply; /* the canned reply, encoded once */
};

/* Reply to the peer identified by hdr; a failure only loses this reply
 * (the client times out and counts it), so it is not reported. */
static void send_reply(echo_server *e, const unsigned char *hdr, size_t hdr_len)
{
    alignas(max_align_t) unsigned char ctrl[TQ_SP_CTRL_SPACE];
    struct nn_iovec iov = {.iov_base = e->reply.data, .iov_len = e->reply.size};
    struct nn_msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl,
                           .msg_controllen = tq_sp_reply_ctrl(ctrl, hdr, hdr_len)};
    (void)nn_sendmsg(e->sock, &mh, 0);
}

static void *serve(void *arg)
{
    echo_server *e = arg;
    while (!atomic_load(&e->stop)) {
        void *body = NULL, *control = NULL;
        struct nn_iovec iov = {.iov_base = &body, .iov_len = NN_MSG};
        struct nn_msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                               .msg_controllen = NN_MSG};
        if (nn_recvmsg(e->sock, &mh, 0) < 0) {
            int err = nn_errno();
            if (err == ETIMEDOUT || err == EAGAIN || err == EINTR)
                continue;
            fprintf(stderr, "tenantq-load: echo server: receive: %s\n", nn_strerror(err));
            break;
        }
        const unsigned char *hdr = NULL;
        size_t hdr_len = tq_sp_header(&mh, &hdr);
        if (hdr_len > 0)
            send_reply(e, hdr, hdr_len);
        nn_freemsg(body);
        if (control != NULL)
            nn_freemsg(control);
    }
    return NULL;
}

echo_server *echo_start(void)
{
    echo_server *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->sock = -1;
    atomic_init(&e->stop, false);
    msgpack_sbuffer_init(&e->reply);

    json_t *result = json_pack("{s:b}", "pong", 1);
    int rc = result != NULL ? tq_response_encode_ok(&e->reply, result, false, NULL) : -1;
    json_decref(result);
    if (rc != 0) {
        fprintf(stderr, "tenantq-load: echo server: cannot encode the reply\n");
        goto fail;
    }

    const char *tmp = getenv("TMPDIR");
    int n = snprintf(e->dir, sizeof e->dir, "%s/tenantq-load-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof e->dir || mkdtemp(e->dir) == NULL) {
        fprintf(stderr, "tenantq-load: echo server: mkdtemp %s: %s\n", e->dir, strerror(errno));
        e->dir[0] = '\0';
        goto fail;
    }
    snprintf(e->path, sizeof e->path, "%s/echo.sock", e->dir);
    snprintf(e->endpoint, sizeof e->endpoint, "ipc://%s", e->path);

    e->sock = nn_socket(AF_SP_RAW, NN_REP);
    int timeout = ECHO_POLL_MS;
    if (e->sock < 0 ||
        nn_setsockopt(e->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout, sizeof timeout) < 0 ||
        nn_bind(e->sock, e->endpoint) < 0) {
        fprintf(stderr, "tenantq-load: echo server: %s: %s\n", e->endpoint,
                nn_strerror(nn_errno()));
        goto fail;
    }
    if (pthread_create(&e->thread, NULL, serve, e) != 0) {
        fprintf(stderr, "tenantq-load: echo server: cannot start its thread\n");
        goto fail;
    }
    return e;

fail:
    if (e->sock >= 0)
        nn_close(e->sock);
    if (e->dir[0] != '\0') {
        unlink(e->path);
        rmdir(e->dir);
    }
    msgpack_sbuffer_destroy(&e->reply);
    free(e);
    return NULL;
}

const char *echo_endpoint(const echo_server *e)
{
    return e->endpoint;
}

void echo_stop(echo_server *e)
{
    if (e == NULL)
        return;
    atomic_store(&e->stop, true);
    pthread_join(e->thread, NULL);
    nn_close(e->sock);
    unlink(e->path);
    rmdir(e->dir);
    msgpack_sbuffer_destroy(&e->reply);
    free(e);
}
