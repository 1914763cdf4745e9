/*
 * resolve.c - getaddrinfo off the event loops (see resolve.h).
 *
 * One lock guards every name's entry and every waiter's state.  A lookup
 * thread, when done, fills each waiter and activates its event while
 * holding the lock; resolve_cancel takes the lock to unlink a waiter, so
 * after it returns no thread touches the waiter or its event again.  The
 * lock order is always this lock, then (inside event_active) a base's lock:
 * an owner never calls in here from inside libevent with a base lock held
 * (callbacks run without it).  Entries live as long as the process (one
 * per distinct name of the connection string): a lookup thread that never
 * returns keeps pointing at a valid entry.
 */
#include "resolve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum { RR_IDLE, RR_WAITING, RR_DONE };

struct resolve_entry {
    struct resolve_entry *next;
    char *name;
    bool running;              /* a lookup thread is out for it */
    uint64_t expires_ms;       /* of addrs (monotonic clock) */
    char *addrs;               /* the last answer, or NULL */
    struct resolve_req *waiters;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond; /* CLOCK_MONOTONIC, see init_cond */
static pthread_once_t cond_once = PTHREAD_ONCE_INIT;
static struct resolve_entry *entries;

static void init_cond(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&done_cond, &a);
    pthread_condattr_destroy(&a);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool resolve_is_name(const char *host)
{
    if (!host || !host[0] || host[0] == '/' || host[0] == '@')
        return false;
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1;
}

/* "a,b,c" of the distinct IPv4/IPv6 addresses of res (at most
 * RESOLVE_MAX_ADDRS), or NULL (none, or out of memory: *rc says). */
static char *format_addrs(const struct addrinfo *res, int *rc)
{
    char list[RESOLVE_MAX_ADDRS * (NI_MAXHOST + 1)] = "";
    size_t len = 0;
    int n = 0;
    for (const struct addrinfo *ai = res; ai && n < RESOLVE_MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        char h[NI_MAXHOST];
        if (getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof h, NULL, 0, NI_NUMERICHOST) != 0)
            continue;
        /* a name listed twice (hosts file and DNS, say) is tried once */
        bool dup = false;
        for (const char *p = list; *p && !dup;) {
            size_t l = strcspn(p, ",");
            dup = l == strlen(h) && memcmp(p, h, l) == 0;
            p += l + (p[l] == ',');
        }
        if (dup)
            continue;
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", n ? "," : "", h);
        n++;
    }
    if (n == 0) {
        *rc = EAI_NODATA;
        return NULL;
    }
    char *s = strdup(list);
    if (!s)
        *rc = EAI_MEMORY;
    return s;
}

/* Hand the entry's outcome to every waiter (lock held). */
static void finish_waiters(struct resolve_entry *e, int rc, int sys_errno, const char *addrs)
{
    struct resolve_req *r = e->waiters;
    e->waiters = NULL;
    while (r) {
        struct resolve_req *next = r->next;
        r->next = NULL;
        r->rc = rc;
        r->sys_errno = sys_errno;
        if (rc == 0) {
            r->addrs = strdup(addrs);
            if (!r->addrs)
                r->rc = EAI_MEMORY;
        }
        r->state = RR_DONE;
        if (r->ev)
            event_active(r->ev, EV_READ, 1);
        r = next;
    }
    pthread_cond_broadcast(&done_cond);
}

static void *lookup_main(void *arg)
{
    struct resolve_entry *e = arg;
    /* what libpq asks (fe-connect.c): any family, stream sockets */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(e->name, NULL, &hints, &res); /* e->name never changes */
    int sys_errno = rc == EAI_SYSTEM ? errno : 0;
    char *addrs = rc == 0 ? format_addrs(res, &rc) : NULL;
    if (res)
        freeaddrinfo(res);
    pthread_mutex_lock(&lock);
    e->running = false;
    if (addrs) {
        free(e->addrs);
        e->addrs = addrs;
        e->expires_ms = mono_ms() + RESOLVE_TTL_S * 1000u;
    }
    finish_waiters(e, rc, sys_errno, addrs);
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* A detached lookup thread for e, with every signal blocked (lock held). */
static int spawn_lookup(struct resolve_entry *e)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 1024 * 1024); /* NSS modules may want a lot */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, &attr, lookup_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        return -1;
    e->running = true;
    return 0;
}

int resolve_start(struct resolve_req *r, const char *name, struct event *ev)
{
    pthread_once(&cond_once, init_cond);
    pthread_mutex_lock(&lock);
    *r = (struct resolve_req){.ev = ev, .state = RR_DONE};
    struct resolve_entry *e = entries;
    while (e && strcmp(e->name, name) != 0)
        e = e->next;
    if (!e) {
        e = calloc(1, sizeof *e);
        if (e && !(e->name = strdup(name))) {
            free(e);
            e = NULL;
        }
        if (!e) {
            r->rc = EAI_MEMORY;
            pthread_mutex_unlock(&lock);
            return 1;
        }
        e->next = entries;
        entries = e;
    }
    if (e->addrs && mono_ms() < e->expires_ms) {
        r->addrs = strdup(e->addrs);
        r->rc = r->addrs ? 0 : EAI_MEMORY;
        pthread_mutex_unlock(&lock);
        return 1;
    }
    if (!e->running && spawn_lookup(e) < 0) {
        r->rc = EAI_SYSTEM;
        r->sys_errno = EAGAIN;
        pthread_mutex_unlock(&lock);
        return 1;
    }
    r->entry = e;
    r->state = RR_WAITING;
    r->next = e->waiters;
    e->waiters = r;
    pthread_mutex_unlock(&lock);
    return 0;
}

bool resolve_wait(struct resolve_req *r, int timeout_ms)
{
    pthread_once(&cond_once, init_cond);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&lock);
    while (r->state == RR_WAITING)
        if (pthread_cond_timedwait(&done_cond, &lock, &until) == ETIMEDOUT)
            break;
    bool done = r->state != RR_WAITING;
    pthread_mutex_unlock(&lock);
    return done;
}

int resolve_take(struct resolve_req *r, char **addrs, char *err, size_t errlen)
{
    pthread_mutex_lock(&lock);
    int state = r->state;
    int rc = r->rc, sys_errno = r->sys_errno;
    char *a = r->addrs;
    if (state == RR_DONE) {
        r->addrs = NULL;
        r->state = RR_IDLE;
        r->entry = NULL;
    }
    pthread_mutex_unlock(&lock);
    if (state != RR_DONE)
        return 0;
    if (rc == 0) {
        *addrs = a;
        return 1;
    }
    free(a);
    *addrs = NULL;
    if (rc == EAI_SYSTEM)
        snprintf(err, errlen, "%s", strerror(sys_errno));
    else
        snprintf(err, errlen, "%s", gai_strerror(rc));
    return -1;
}

void resolve_cancel(struct resolve_req *r)
{
    pthread_mutex_lock(&lock);
    if (r->state == RR_WAITING && r->entry) {
        struct resolve_req **p = &r->entry->waiters;
        while (*p && *p != r)
            p = &(*p)->next;
        if (*p)
            *p = r->next;
    }
    free(r->addrs);
    *r = (struct resolve_req){.state = RR_IDLE};
    pthread_mutex_unlock(&lock);
}

/* --- host lists ---------------------------------------------------------- */

/* Split s at commas into *out (n items); NULL s: 0 items. */
static int split(const char *s, char ***out)
{
    *out = NULL;
    if (!s)
        return 0;
    int n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    char **v = calloc((size_t)n, sizeof *v);
    if (!v)
        return -1;
    const char *p = s;
    for (int i = 0; i < n; i++) {
        size_t l = strcspn(p, ",");
        v[i] = strndup(p, l);
        if (!v[i]) {
            for (int j = 0; j < i; j++)
                free(v[j]);
            free(v);
            return -1;
        }
        p += l + (p[l] == ',');
    }
    *out = v;
    return n;
}

static void free_list(char **v, int n)
{
    for (int i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

void hostlist_free(struct hostlist *hl)
{
    free_list(hl->host, hl->n);
    free_list(hl->addr, hl->n);
    free_list(hl->port, hl->nport);
    *hl = (struct hostlist){0};
}

/* n "" strings. */
static char **empties(int n)
{
    char **v = calloc((size_t)n, sizeof *v);
    for (int i = 0; v && i < n; i++)
        if (!(v[i] = strdup(""))) {
            free_list(v, i);
            return NULL;
        }
    return v;
}

int hostlist_parse(struct hostlist *hl, const char *host, const char *hostaddr, const char *port)
{
    *hl = (struct hostlist){0};
    /* libpq: an empty host or hostaddr is as if not given */
    if (host && !host[0])
        host = NULL;
    if (hostaddr && !hostaddr[0])
        hostaddr = NULL;
    if (port && !port[0])
        port = NULL;
    char **h = NULL, **a = NULL, **p = NULL;
    int nh = split(host, &h), na = split(hostaddr, &a), np = split(port, &p);
    int n = nh > 0 ? nh : na;
    if (nh < 0 || na < 0 || np < 0 || n <= 0 || (nh > 0 && na > 0 && nh != na) ||
        (np > 1 && np != n))
        goto fail;
    if (nh == 0 && !(h = empties(n)))
        goto fail;
    nh = n;
    if (na == 0 && !(a = empties(n)))
        goto fail;
    na = n;
    *hl = (struct hostlist){.n = n, .nport = np, .host = h, .addr = a, .port = p};
    return 0;
fail:
    free_list(h, nh);
    free_list(a, na);
    free_list(p, np);
    return -1;
}

struct entry_ref {
    const char *host, *addr, *port;
};

/* Append s to a growing comma list. */
static int append(char **list, size_t *len, const char *s, bool first)
{
    size_t l = strlen(s);
    char *n = realloc(*list, *len + l + 2);
    if (!n)
        return -1;
    if (!first)
        n[(*len)++] = ',';
    memcpy(n + *len, s, l + 1);
    *len += l;
    *list = n;
    return 0;
}

int hostlist_build(const struct hostlist *hl, char *const *addrs, const struct host_mark *after,
                   char **host_out, char **addr_out, char **port_out)
{
    *host_out = *addr_out = *port_out = NULL;
    size_t cap = 0;
    for (int i = 0; i < hl->n; i++) {
        bool name = !hl->addr[i][0] && resolve_is_name(hl->host[i]);
        if (!name)
            cap++;
        else if (addrs && addrs[i])
            for (const char *p = addrs[i]; *p; p++)
                cap += p == addrs[i] || *p == ',';
    }
    if (cap == 0)
        return 0;
    struct entry_ref *e = calloc(cap, sizeof *e);
    char **pieces = calloc(cap, sizeof *pieces); /* split addresses, owned */
    int n = 0, npieces = 0, rc = -1;
    if (!e || !pieces)
        goto out;
    bool any_addr = false;
    for (int i = 0; i < hl->n; i++) {
        const char *port = hl->nport == 0 ? "" : hl->port[hl->nport == 1 ? 0 : i];
        const char *h = hl->host[i];
        if (hl->addr[i][0] || !resolve_is_name(h)) {
            /* an IP address given as host is its own hostaddr: libpq
             * never looks it up then */
            const char *a = hl->addr[i][0] ? hl->addr[i] : (h[0] && h[0] != '/' && h[0] != '@')
                                                               ? h : "";
            any_addr = any_addr || a[0];
            e[n++] = (struct entry_ref){h, a, port};
            continue;
        }
        if (!addrs || !addrs[i])
            continue;
        for (const char *p = addrs[i]; *p;) {
            size_t l = strcspn(p, ",");
            if (l > 0) {
                if (!(pieces[npieces] = strndup(p, l)))
                    goto out;
                e[n++] = (struct entry_ref){h, pieces[npieces++], port};
                any_addr = true;
            }
            p += l + (p[l] == ',');
        }
    }
    if (n == 0) {
        rc = 0;
        goto out;
    }
    /* where to start: after the entry that timed out last; matched by
     * host, address and port, else by host and port */
    int start = 0;
    if (after && (after->host[0] || after->addr[0])) {
        /* libpq reports a host given by address alone as that address, and
         * a port not given as the default one */
        int hit = -1;
        for (int pass = 0; pass < 2 && hit < 0; pass++)
            for (int i = 0; i < n && hit < 0; i++)
                if ((strcmp(e[i].host, after->host) == 0 ||
                     (!e[i].host[0] && strcmp(e[i].addr, after->host) == 0)) &&
                    (!e[i].port[0] || strcmp(e[i].port, after->port) == 0) &&
                    (pass == 1 || strcmp(e[i].addr, after->addr) == 0))
                    hit = i;
        if (hit >= 0)
            start = (hit + 1) % n;
    }
    bool any_host = false; /* hostaddr alone: no host list, as written */
    for (int k = 0; k < n; k++)
        any_host = any_host || e[k].host[0];
    size_t hl_len = 0, al_len = 0, pl_len = 0;
    for (int k = 0; k < n; k++) {
        const struct entry_ref *r = &e[(start + k) % n];
        if ((any_host && append(host_out, &hl_len, r->host, k == 0) < 0) ||
            (any_addr && append(addr_out, &al_len, r->addr, k == 0) < 0) ||
            (hl->nport > 1 && append(port_out, &pl_len, r->port, k == 0) < 0))
            goto out;
    }
    if (hl->nport == 1 && !(*port_out = strdup(hl->port[0])))
        goto out;
    rc = n;
out:
    if (rc < 0) {
        free(*host_out);
        free(*addr_out);
        free(*port_out);
        *host_out = *addr_out = *port_out = NULL;
    }
    for (int i = 0; i < npieces; i++)
        free(pieces[i]);
    free(pieces);
    free(e);
    return rc;
}
