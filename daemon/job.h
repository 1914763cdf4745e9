/*
 * job.h - one admitted request, and answering requests.
 *
 * A job is owned by exactly one thread at a time: the front creates it,
 * hands it to a shard over inproc (ownership moves only if the send
 * succeeded), and the shard finishes it (reply + free).  The functions here
 * touch only the job they are given and the atomics of struct daemon, so
 * any thread may call them on a job it owns.
 */
#ifndef TQ_JOB_H
#define TQ_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <msgpack.h>

#include "daemon.h"
#include "tq_proto.h"
#include "tq_sp.h"

struct op_family;
struct opfile_def;
struct opset;

/* One admitted request. */
struct job {
    struct job *next;              /* lane FIFO link, owned by the lane */
    tq_request req;
    const struct op_family *fam;   /* the family of req.op (family.h) */
    int op;                        /* the op within its family */
    int sql_stat;                  /* an SQL op's stats slot + 1; 0 = not SQL */
    /* SQL operations: the op's definition, and a reference to the set it
     * belongs to, held until the job is freed (a reload never frees a
     * definition in use) */
    const struct opfile_def *def;
    struct opset *set;
    uint64_t hash;                 /* siphash of the tenant */
    uint64_t recv_us;              /* monotonic arrival time */
    uint64_t deadline_us;          /* monotonic: must start executing before */
    size_t hdr_len;
    uint8_t hdr[TQ_SP_HDR_MAX];    /* SP routing header of the request */
};

/* Monotonic clock in microseconds. */
uint64_t now_us(void);

/*
 * Send body as the reply to the request whose SP header is hdr.  Any thread.
 * A raw REP send never reports a lost peer (nanomsg drops such a reply silently), so this returns
 * nothing: "sent" is not "delivered".
 */
void daemon_send_reply(struct daemon *d, const uint8_t *hdr, size_t hdr_len, const void *body,
                       size_t len);

/* Reply to a request that was never admitted as a job (no pending slot
 * held).  sb is the calling thread's scratch buffer. */
void reply_error_raw(struct daemon *d, msgpack_sbuffer *sb, const uint8_t *hdr, size_t hdr_len,
                     tq_code code, const char *message);

/* Count one answered request of job in the metrics (by op, or by SQL op name). */
void job_count(const struct job *job, tq_code code);

/*
 * Finish an admitted job: encode and send the reply, release its pending
 * slot, free it.  Takes ownership of job (and of nothing else: result is
 * borrowed).  replayed marks an answer from the idempotency record.
 * timing may be NULL.  Called by the thread owning the job.
 */
void job_finish_ok(struct daemon *d, msgpack_sbuffer *sb, struct job *job, const json_t *result,
                   bool replayed, const tq_timing *timing);
void job_finish_error(struct daemon *d, msgpack_sbuffer *sb, struct job *job, tq_code code,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Free a job without replying (shutdown paths that cannot reply). */
void job_free(struct job *job);

#endif
