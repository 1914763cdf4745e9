/*
 * echo.h - the in-process raw REP echo server of tenantq-load --mode echo.
 *
 * It answers every request with a fixed valid v1 reply
 * {"v":1,"ok":true,"result":{"pong":true}} over the same transport as
 * tenantqd (nanomsg raw REP on ipc://, SP header carried back by hand as the
 * daemon does), without decoding, routing or storage: what libtenantq plus
 * nanomsg can do at most on this machine.
 */
#ifndef TQ_LOAD_ECHO_H
#define TQ_LOAD_ECHO_H

typedef struct echo_server echo_server;

/*
 * Create a private directory under $TMPDIR (or /tmp), bind a raw REP socket
 * at ipc://DIR/echo.sock and start the serving thread.  Returns the server
 * (caller owns: echo_stop) or NULL with a message on stderr.
 */
echo_server *echo_start(void);

/* The endpoint clients connect to; valid until echo_stop. */
const char *echo_endpoint(const echo_server *e);

/* Stop the thread, close the socket, remove the directory, free e. */
void echo_stop(echo_server *e);

#endif
