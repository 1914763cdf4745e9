/*
 * tq_sp.h - the SP routing header of nanomsg raw REP and REQ sockets, shared
 * by the daemon's front, the load harness's echo server and libtenantq.
 *
 * A raw REP socket hands each request's routing header to the application
 * in a PROTO_SP/SP_HDR control message whose data is [size_t len][header];
 * the reply must carry the same header back (nanomsg routes the reply by it).  These helpers
 * only parse and build those buffers: no I/O.  Replies are built in a plain
 * caller-owned buffer, never an NN_MSG chunk, because a failed nn_sendmsg
 * frees a chunk itself and invites a double free.
 */
#ifndef TQ_SP_H
#define TQ_SP_H

#include <stddef.h>
#include <string.h>

#include <nanomsg/nn.h>

/* Largest header we carry: a direct REQ peer sends 8 bytes; room for hops. */
#define TQ_SP_HDR_MAX 64
/* Size of a control buffer that holds any header up to TQ_SP_HDR_MAX. */
#define TQ_SP_CTRL_SPACE NN_CMSG_SPACE(sizeof(size_t) + TQ_SP_HDR_MAX)

/* The routing header of a received message (mh as filled by nn_recvmsg).
 * Returns its length and points *hdr into mh's control data, or 0 if it is
 * absent or longer than TQ_SP_HDR_MAX. */
static inline size_t tq_sp_header(struct nn_msghdr *mh, const unsigned char **hdr)
{
    for (struct nn_cmsghdr *c = NN_CMSG_FIRSTHDR(mh); c != NULL; c = NN_CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != PROTO_SP || c->cmsg_type != SP_HDR)
            continue;
        const unsigned char *data = NN_CMSG_DATA(c);
        size_t len;
        memcpy(&len, data, sizeof len);
        if (len == 0 || len > TQ_SP_HDR_MAX)
            return 0;
        *hdr = data + sizeof len;
        return len;
    }
    return 0;
}

/* Fill ctrl (TQ_SP_CTRL_SPACE bytes, max_align_t-aligned) with the control
 * message carrying hdr (hdr_len <= TQ_SP_HDR_MAX); returns the length to
 * put in msg_controllen. */
static inline size_t tq_sp_reply_ctrl(unsigned char *ctrl, const unsigned char *hdr,
                                      size_t hdr_len)
{
    memset(ctrl, 0, TQ_SP_CTRL_SPACE);
    struct nn_cmsghdr *c = (struct nn_cmsghdr *)(void *)ctrl;
    c->cmsg_len = NN_CMSG_SPACE(sizeof(size_t) + hdr_len);
    c->cmsg_level = PROTO_SP;
    c->cmsg_type = SP_HDR;
    unsigned char *data = NN_CMSG_DATA(c);
    memcpy(data, &hdr_len, sizeof hdr_len);
    memcpy(data + sizeof hdr_len, hdr, hdr_len);
    return NN_CMSG_SPACE(sizeof(size_t) + hdr_len);
}

#endif
