/*
 * metrics.h - the HTTP endpoint that shows the counters (stats.h) and the
 * shards' gauges: Prometheus text at /metrics, liveness at /healthz.
 */
#ifndef TQ_METRICS_H
#define TQ_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "stats.h"

struct daemon;
struct metrics;

/* Split a [metrics] listen value HOST:PORT ("[::1]:9464" too) into host
 * and port.  0, or -1 with a message naming the key (also --check-config). */
int metrics_parse_listen(const char *listen, char *host, size_t hostlen, uint16_t *port,
                         char *err, size_t errlen);

/*
 * Serve /metrics and /healthz on listen ("HOST:PORT") from base (the main
 * thread's).  Returns NULL with err naming [metrics] listen on failure.
 */
struct metrics *metrics_start(struct daemon *d, struct event_base *base, const char *listen,
                              char *err, size_t errlen);
void metrics_stop(struct metrics *m);

#endif
