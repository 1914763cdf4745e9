/*
 * resolve.h - host names resolved off the event loops, and the host lists
 * of a libpq connection string taken apart and put together again.
 *
 * libpq resolves a host name with a blocking getaddrinfo inside its
 * "non-blocking" PQconnectStart/PQconnectPoll, so a resolver that does not
 * answer would freeze the calling shard's loop for the resolver's whole
 * timeout.  Instead pg.c asks here: each name is looked up by getaddrinfo
 * on a thread of its own, one lookup per name at a time for the whole
 * daemon (every connection that wants the name waits for the same lookup;
 * a hung lookup holds one thread, never more), and the answer is handed to
 * each waiting loop by event_active() on that loop's event (libevent
 * locking is on: evthread_use_pthreads in main.c).  pg.c then connects with
 * host= the name (TLS SNI and certificate checks, GSSAPI, .pgpass and error
 * messages keep it) and hostaddr= the addresses.
 *
 * Answers are kept RESOLVE_TTL_S seconds: getaddrinfo reports no TTL, so
 * that is a fixed, short time, after which the next connect asks again.
 * Failures are not kept (the next attempt asks again, after its backoff).
 */
#ifndef TQ_RESOLVE_H
#define TQ_RESOLVE_H

#include <stdbool.h>

#include <event2/event.h>

#define RESOLVE_TTL_S 30
/* Addresses used of one name, at most (in getaddrinfo's order). */
#define RESOLVE_MAX_ADDRS 8

struct resolve_entry;

/* One wait for a name: owned by its waiter, filled by the resolver. */
struct resolve_req {
    struct event *ev;            /* activated when the answer is in (borrowed) */
    struct resolve_entry *entry; /* the name; NULL when idle */
    struct resolve_req *next;    /* in the entry's waiters */
    int state;                   /* RR_* (under the resolver's lock) */
    int rc;                      /* 0, or getaddrinfo's EAI_* */
    int sys_errno;               /* with EAI_SYSTEM */
    char *addrs;                 /* comma-separated numeric addresses (owned) */
};

/*
 * Start resolving name for r (idle).  Returns 1 when the answer is already
 * there (the cache, or a failure to start: resolve_take tells), 0 when it
 * will be: ev becomes active on its base, from another thread, once it is.
 * ev NULL: nothing is activated, resolve_wait waits instead.
 */
int resolve_start(struct resolve_req *r, const char *name, struct event *ev);

/* Wait up to timeout_ms for r's answer (a caller without an event loop).
 * Returns whether it is in. */
bool resolve_wait(struct resolve_req *r, int timeout_ms);

/*
 * The answer: 1 with the addresses in *addrs (the caller frees them), -1
 * with the reason in err, 0 while still waiting.  r is idle again after
 * 1 or -1.
 */
int resolve_take(struct resolve_req *r, char **addrs, char *err, size_t errlen);

/* Stop waiting (the lookup itself goes on; its answer is cached).  r is
 * idle afterwards and ev will not be activated for it any more. */
void resolve_cancel(struct resolve_req *r);

/* Whether host (one item of a host list) is a name to look up: not empty,
 * not a unix-socket directory ('/...' or '@abstract'), not an IP address. */
bool resolve_is_name(const char *host);

/* --- a connection string's host lists ----------------------------------- */

/* host, hostaddr and port of a conninfo, item by item: n entries.
 * nport is 0 (no port given), 1 (one port for all) or n. */
struct hostlist {
    int n, nport;
    char **host;   /* n items, "" where not given */
    char **addr;   /* n items, "" where not given */
    char **port;   /* nport items */
};

/* Split the lists (NULL = not given).  Returns 0, or -1 when their lengths
 * do not match (libpq's own check then reports it) or out of memory. */
int hostlist_parse(struct hostlist *hl, const char *host, const char *hostaddr,
                   const char *port);
void hostlist_free(struct hostlist *hl);

/* Where the next attempt starts: after the entry (host, address, port) that
 * timed out last.  Empty strings: from the top. */
struct host_mark {
    char host[256];
    char addr[64];
    char port[32];
};

/*
 * The lists of one attempt: entry i of hl with addrs[i] (comma-separated
 * addresses of a name, NULL if the name did not resolve; ignored for
 * entries that are not names) becomes one entry per address; entries whose
 * name did not resolve are left out.  The list is rotated to start after
 * the entry matching after (if any).  Writes malloc'd host, hostaddr and
 * port lists (hostaddr and port NULL when not needed) and returns how many
 * entries they have (0: none usable), or -1 out of memory.
 */
int hostlist_build(const struct hostlist *hl, char *const *addrs, const struct host_mark *after,
                   char **host_out, char **addr_out, char **port_out);

#endif
