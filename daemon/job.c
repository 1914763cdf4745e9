/*
 * job.c - replying to requests and the life end of a job.  Shared by the
 * front and the shards; touches only the job it is given and the atomics of
 * struct daemon.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nanomsg/nn.h>

#include "job.h"
#include "log.h"
#include "opset.h"
#include "stats.h"

uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void daemon_send_reply(struct daemon *d, const uint8_t *hdr, size_t hdr_len, const void *body,
                       size_t len)
{
    _Alignas(max_align_t) unsigned char ctrl[TQ_SP_CTRL_SPACE];
    struct nn_iovec iov = {.iov_base = (void *)(uintptr_t)body, .iov_len = len};
    struct nn_msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = ctrl,
        .msg_controllen = tq_sp_reply_ctrl(ctrl, hdr, hdr_len),
    };
    if (nn_sendmsg(d->rep_sock, &msg, NN_DONTWAIT) < 0 && nn_errno() != ETERM)
        log_debug("reply not sent: %s", nn_strerror(nn_errno()));
}

void reply_error_raw(struct daemon *d, msgpack_sbuffer *sb, const uint8_t *hdr, size_t hdr_len,
                     tq_code code, const char *message)
{
    msgpack_sbuffer_clear(sb);
    if (tq_response_encode_error(sb, code, message, false) < 0) {
        log_err("cannot encode an error reply (out of memory?)");
        return;
    }
    daemon_send_reply(d, hdr, hdr_len, sb->data, sb->size);
}

void job_free(struct job *job)
{
    if (!job)
        return;
    tq_request_free(&job->req);
    if (job->set)
        opset_unref(job->set);
    free(job);
}

void job_count(const struct job *job, tq_code code)
{
    if (job->sql_stat > 0)
        stats_sql_request(job->sql_stat - 1, code);
    else
        stats_request(job->op, code);
}

static void job_release(struct daemon *d, struct job *job)
{
    atomic_fetch_sub_explicit(&d->pending, 1, memory_order_relaxed);
    job_free(job);
}

void job_finish_ok(struct daemon *d, msgpack_sbuffer *sb, struct job *job, const json_t *result,
                   bool replayed, const tq_timing *timing)
{
    tq_code code = TQ_OK;
    msgpack_sbuffer_clear(sb);
    if (tq_response_encode_ok(sb, result, replayed, timing) < 0) {
        log_err("tenant \"%s\": cannot encode the result of %s", job->req.tenant, job->req.op);
        code = TQ_E_INTERNAL;
        msgpack_sbuffer_clear(sb);
        if (tq_response_encode_error(sb, code, "result could not be encoded", false) < 0) {
            job_release(d, job);
            return;
        }
    }
    daemon_send_reply(d, job->hdr, job->hdr_len, sb->data, sb->size);
    job_count(job, code);
    job_release(d, job);
}

void job_finish_error(struct daemon *d, msgpack_sbuffer *sb, struct job *job, tq_code code,
                      const char *fmt, ...)
{
    char msg[TQ_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_error_raw(d, sb, job->hdr, job->hdr_len, code, msg);
    job_count(job, code);
    job_release(d, job);
}
