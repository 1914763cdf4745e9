/*
 * test_resolve.c - the host lists of a connection string (daemon/resolve.c):
 * taken apart, filled with looked-up addresses, rotated past the host that
 * timed out, put together again as libpq's host/hostaddr/port lists.
 * (The lookup threads are exercised by tests/integration/test_resolver.py.)
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "resolve.h"

static const char *str(const char *s) { return s ? s : "(null)"; }

/* Build hl with addrs and after; compare the three lists (NULL = absent). */
static void expect(const struct hostlist *hl, char *const *addrs, const struct host_mark *after,
                   int n, const char *host, const char *addr, const char *port)
{
    char *h, *a, *p;
    int got = hostlist_build(hl, addrs, after, &h, &a, &p);
    CHECK(got == n, "entries: got %d, want %d", got, n);
    CHECK((!h && !host) || (h && host && strcmp(h, host) == 0), "host %s, want %s", str(h),
          str(host));
    CHECK((!a && !addr) || (a && addr && strcmp(a, addr) == 0), "hostaddr %s, want %s", str(a),
          str(addr));
    CHECK((!p && !port) || (p && port && strcmp(p, port) == 0), "port %s, want %s", str(p),
          str(port));
    free(h);
    free(a);
    free(p);
}

int main(void)
{
    CHECK(resolve_is_name("db.example"), "a name");
    CHECK(resolve_is_name("localhost"), "localhost is a name");
    CHECK(!resolve_is_name("/run/postgresql"), "a socket directory");
    CHECK(!resolve_is_name("@abstract"), "an abstract socket");
    CHECK(!resolve_is_name("10.0.0.5"), "IPv4");
    CHECK(!resolve_is_name("::1"), "IPv6");
    CHECK(!resolve_is_name(""), "empty");

    struct hostlist hl;
    /* one name, two addresses: the name twice, each with its address */
    CHECK(hostlist_parse(&hl, "db.example", NULL, "5433") == 0, "parse");
    char *one[] = {"10.0.0.1,10.0.0.2"};
    expect(&hl, one, NULL, 2, "db.example,db.example", "10.0.0.1,10.0.0.2", "5433");
    /* the first address timed out: start with the second */
    struct host_mark m = {.host = "db.example", .addr = "10.0.0.1", .port = "5433"};
    expect(&hl, one, &m, 2, "db.example,db.example", "10.0.0.2,10.0.0.1", "5433");
    /* the name did not resolve: nothing to try */
    char *none[] = {NULL};
    expect(&hl, none, NULL, 0, NULL, NULL, NULL);
    hostlist_free(&hl);

    /* a name, a socket directory, an address; a port each */
    CHECK(hostlist_parse(&hl, "a.example,/tmp/pg,10.0.0.9", NULL, "1,2,3") == 0, "parse");
    CHECK(hl.n == 3 && hl.nport == 3, "n %d nport %d", hl.n, hl.nport);
    char *three[] = {"192.0.2.1", NULL, NULL};
    expect(&hl, three, NULL, 3, "a.example,/tmp/pg,10.0.0.9", "192.0.2.1,,10.0.0.9", "1,2,3");
    /* the name failed: the others in order */
    char *fail3[] = {NULL, NULL, NULL};
    expect(&hl, fail3, NULL, 2, "/tmp/pg,10.0.0.9", ",10.0.0.9", "2,3");
    /* the socket timed out (libpq reports the default port): start after it */
    struct host_mark s = {.host = "/tmp/pg", .addr = "", .port = "2"};
    expect(&hl, three, &s, 3, "10.0.0.9,a.example,/tmp/pg", "10.0.0.9,192.0.2.1,", "3,1,2");
    /* a mark that matches nothing: from the top */
    struct host_mark x = {.host = "gone.example", .addr = "1.2.3.4", .port = "1"};
    expect(&hl, three, &x, 3, "a.example,/tmp/pg,10.0.0.9", "192.0.2.1,,10.0.0.9", "1,2,3");
    hostlist_free(&hl);

    /* sockets only, no port: no hostaddr list; a port not given matches
     * the one libpq reports */
    CHECK(hostlist_parse(&hl, "/a,/b", NULL, NULL) == 0, "parse");
    expect(&hl, NULL, NULL, 2, "/a,/b", NULL, NULL);
    struct host_mark d = {.host = "/a", .addr = "", .port = "5432"};
    expect(&hl, NULL, &d, 2, "/b,/a", NULL, NULL);
    hostlist_free(&hl);

    /* a hostaddr given for the name: not looked up, kept */
    CHECK(hostlist_parse(&hl, "x.example,y.example", "10.1.1.1,", NULL) == 0, "parse");
    char *y[] = {NULL, "10.2.2.2"};
    expect(&hl, y, NULL, 2, "x.example,y.example", "10.1.1.1,10.2.2.2", NULL);
    hostlist_free(&hl);

    /* hostaddr alone: libpq names the host by its address */
    CHECK(hostlist_parse(&hl, NULL, "10.0.0.1,10.0.0.2", "7") == 0, "parse");
    struct host_mark h1 = {.host = "10.0.0.1", .addr = "10.0.0.1", .port = "7"};
    expect(&hl, NULL, &h1, 2, NULL, "10.0.0.2,10.0.0.1", "7");
    hostlist_free(&hl);

    /* lists of different lengths are libpq's to refuse */
    CHECK(hostlist_parse(&hl, "a,b", "1.1.1.1", NULL) < 0, "host/hostaddr mismatch");
    CHECK(hostlist_parse(&hl, "a,b,c", NULL, "1,2") < 0, "host/port mismatch");
    CHECK(hostlist_parse(&hl, NULL, NULL, "5432") < 0, "no host at all");
    CHECK(hostlist_parse(&hl, "", "", NULL) < 0, "empty host");

    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
