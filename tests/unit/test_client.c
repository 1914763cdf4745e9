/*
 * test_client.c - unit test of libtenantq without a daemon.
 *
 * Two in-process responder threads play tenantqd: each binds a cooked NN_REP
 * socket on its own inproc:// endpoint, decodes requests with the real codec
 * and answers by op:
 *   echo     ok, result {"server","tenant","op","args","key","deadline_ms"[,"auth"]}
 *   fail     error QUEUE_FULL (retryable) with a message naming the tenant
 *   replay   ok with "replayed": true
 *   hang     no answer at all (the client must time out)
 *   slow     answer after 300 ms (later than the test's client timeout)
 *   garbage  bytes that are not a msgpack map (client must say PROTOCOL)
 *   null     ok with a nil result
 * Undecodable requests get the BAD_REQUEST reply the codec reports.  Every
 * request is counted per op so the test can see how often it arrived.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "check.h"
#include "client_int.h"
#include "tenantq.h"
#include "tq_proto.h"


enum { OP_ECHO, OP_FAIL, OP_REPLAY, OP_HANG, OP_SLOW, OP_GARBAGE, OP_NULL, OP_HUGE, OP_OTHER, OP__N };

struct responder {
    const char *name;  /* "A" or "B", reported in echo results */
    const char *url;
    int sock;
    pthread_t thread;
    atomic_bool stop;
    atomic_int count[OP__N];
    atomic_int bad_requests;
};

static int op_index(const char *op)
{
    static const char *const names[] = {"echo", "fail", "replay", "hang", "slow", "garbage",
                                        "null", "huge"};
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strcmp(op, names[i]) == 0)
            return i;
    return OP_OTHER;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void answer(struct responder *r, const void *buf, size_t len)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    tq_request req;
    tq_error err;
    bool reply = true;
    if (tq_request_decode(buf, len, &req, &err) < 0) {
        atomic_fetch_add(&r->bad_requests, 1);
        if (tq_response_encode_error(&sb, err.code, err.message, false) < 0)
            abort();
    } else {
        int op = op_index(req.op);
        atomic_fetch_add(&r->count[op], 1);
        int rc = 0;
        switch (op) {
        case OP_FAIL: {
            char msg[256];
            snprintf(msg, sizeof msg, "lane of tenant %s is full", req.tenant);
            rc = tq_response_encode_error(&sb, TQ_E_QUEUE_FULL, msg, false);
            break;
        }
        case OP_HANG:
            reply = false;
            break;
        case OP_GARBAGE:
            msgpack_sbuffer_write(&sb, "\xc1not msgpack", 12);
            break;
        case OP_NULL:
            rc = tq_response_encode_ok(&sb, NULL, false, NULL);
            break;
        case OP_HUGE: { /* a reply over the client's receive limit */
            char *big = malloc(TQ_RCVMAXSIZE + 1);
            if (!big)
                abort();
            memset(big, 'x', TQ_RCVMAXSIZE);
            big[TQ_RCVMAXSIZE] = '\0';
            json_t *res = json_pack("{s:s}", "draft", big);
            free(big);
            rc = res ? tq_response_encode_ok(&sb, res, false, NULL) : -1;
            json_decref(res);
            break;
        }
        default: {
            if (op == OP_SLOW)
                sleep_ms(300); /* answers like echo, only late */
            json_t *res = json_pack("{s:s, s:s, s:s, s:O, s:s?, s:I, s:s*}", "server", r->name,
                                    "tenant", req.tenant, "op", req.op, "args", req.args,
                                    "key", req.key, "deadline_ms",
                                    (json_int_t)(req.has_deadline ? req.deadline_ms : 0),
                                    "auth", req.auth);
            if (res == NULL)
                abort();
            rc = tq_response_encode_ok(&sb, res, op == OP_REPLAY, NULL);
            json_decref(res);
            break;
        }
        }
        if (rc < 0)
            abort();
        tq_request_free(&req);
    }
    /* A cooked REP drops an unanswered request when it receives the next. */
    if (reply && nn_send(r->sock, sb.data, sb.size, 0) < 0)
        fprintf(stderr, "responder %s: send: %s\n", r->name, nn_strerror(nn_errno()));
    msgpack_sbuffer_destroy(&sb);
}

static void *responder_main(void *arg)
{
    struct responder *r = arg;
    while (!atomic_load(&r->stop)) {
        void *buf = NULL;
        int n = nn_recv(r->sock, &buf, NN_MSG, 0);
        if (n < 0)
            continue; /* RCVTIMEO: look at the stop flag again */
        answer(r, buf, (size_t)n);
        nn_freemsg(buf);
    }
    return NULL;
}

static void responder_start(struct responder *r, const char *name, const char *url)
{
    memset(r, 0, sizeof *r);
    r->name = name;
    r->url = url;
    r->sock = nn_socket(AF_SP, NN_REP);
    int tmo = 50;
    if (r->sock < 0 || nn_setsockopt(r->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &tmo, sizeof tmo) < 0 ||
        nn_bind(r->sock, url) < 0) {
        fprintf(stderr, "responder %s: %s\n", url, nn_strerror(nn_errno()));
        exit(99);
    }
    if (pthread_create(&r->thread, NULL, responder_main, r) != 0)
        exit(99);
}

static void responder_stop(struct responder *r)
{
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    nn_close(r->sock);
}

#define EP_A "inproc://tenantq-test-a"
#define EP_B "inproc://tenantq-test-b"

static struct responder ra, rb;

/* Call op "echo" for tenant and return which server answered ('A'/'B'),
 * or 0 on failure. */
static char server_of(tq_client *c, const char *tenant)
{
    char *res = NULL;
    tq_status st;
    if (tq_call(c, tenant, "echo", NULL, NULL, &res, &st) < 0) {
        fprintf(stderr, "echo for %s failed: %s: %s\n", tenant, tq_code_name(st.code),
                st.message);
        return 0;
    }
    json_t *j = json_loads(res, 0, NULL);
    free(res);
    const char *s = json_string_value(json_object_get(j, "server"));
    char out = s ? s[0] : 0;
    json_decref(j);
    return out;
}

static void test_usage(void)
{
    tq_status st;
    memset(&st, 0, sizeof st);

    CHECK(tq_connect(NULL, &st) == NULL && st.code == TQ_E_USAGE, "NULL endpoint");
    CHECK(tq_connect("", &st) == NULL && st.code == TQ_E_USAGE, "empty endpoint");
    CHECK(tq_connect("localhost:5555", &st) == NULL && st.code == TQ_E_USAGE,
          "no scheme: %s", st.message);
    CHECK(strstr(st.message, "localhost:5555") != NULL, "message names it: %s", st.message);
    CHECK(tq_connect(EP_A ",," EP_B, &st) == NULL && st.code == TQ_E_USAGE,
          "empty list element");
    CHECK(!st.retryable, "usage errors are not retryable");

    tq_client *c = tq_connect(EP_A, &st);
    CHECK(c != NULL && st.code == TQ_OK, "connect: %s", st.message);
    if (c == NULL)
        return;
    char *res = (char *)"untouched";
    CHECK(tq_call(c, NULL, "echo", NULL, NULL, &res, &st) == -1 && st.code == TQ_E_USAGE,
          "NULL tenant");
    CHECK(res == NULL, "result reset on failure");
    CHECK(strstr(st.message, "tenant") != NULL, "message: %s", st.message);
    CHECK(tq_call(c, "t", NULL, NULL, NULL, &res, &st) == -1 && st.code == TQ_E_USAGE,
          "NULL op");
    CHECK(tq_call(c, "t", "echo", "[1,2]", NULL, &res, &st) == -1 && st.code == TQ_E_USAGE,
          "array args");
    CHECK(strstr(st.message, "object") != NULL && strstr(st.message, "array") != NULL,
          "message: %s", st.message);
    CHECK(tq_call(c, "t", "echo", "\"x\"", NULL, &res, &st) == -1 && st.code == TQ_E_USAGE,
          "string args");
    CHECK(tq_call(c, "t", "echo", "{\"a\":1,\"a\":2}", NULL, &res, &st) == -1 &&
              st.code == TQ_E_USAGE,
          "duplicate keys");
    CHECK(strstr(st.message, "duplicate object key at byte 7") != NULL, "message: %s",
          st.message);
    CHECK(tq_call(c, "t", "echo", "{\"a\":[1,{\"b\":2,\"b\":3}]}", NULL, &res, &st) == -1 &&
              st.code == TQ_E_USAGE && strstr(st.message, "duplicate") != NULL,
          "nested duplicate keys: %s", st.message);
    CHECK(tq_call(c, "t", "echo", "{\"n\":18446744073709551616}", NULL, &res, &st) == -1 &&
              st.code == TQ_E_USAGE && strstr(st.message, "64-bit") != NULL,
          "integer beyond 64 bits: %s", st.message);
    CHECK(tq_call(c, "t", "echo", "{\"a\":1,}", NULL, &res, &st) == -1 &&
              st.code == TQ_E_USAGE && strstr(st.message, "args: invalid JSON: ") != NULL &&
              strstr(st.message, "at byte 7") != NULL,
          "message names the offset: %s", st.message);
    CHECK(tq_call(c, "t", "echo", "{\"a\":", NULL, &res, &st) == -1 && st.code == TQ_E_USAGE,
          "truncated JSON");
    CHECK(tq_call(c, "t", "echo", "{} {}", NULL, &res, &st) == -1 && st.code == TQ_E_USAGE,
          "trailing JSON");
    /* None of these may have reached the server. */
    int sent = 0;
    for (int i = 0; i < OP__N; i++)
        sent += atomic_load(&ra.count[i]);
    CHECK(sent == 0 && atomic_load(&ra.bad_requests) == 0, "usage errors sent %d", sent);
    void *reply = NULL;
    size_t len = 0;
    CHECK(tq_call_raw(c, "x", 1, NULL, &len, 100, &st) == -1 && st.code == TQ_E_USAGE,
          "raw NULL reply");
    CHECK(tq_call_raw(c, NULL, 3, &reply, &len, 100, &st) == -1 && st.code == TQ_E_USAGE,
          "raw NULL request with length");
    tq_close(c);
    tq_close(NULL);
}

static void test_call(void)
{
    tq_status st;
    tq_client *c = tq_connect(EP_A, &st);
    CHECK(c != NULL, "connect: %s", st.message);
    if (c == NULL)
        return;
    tq_set_timeout(c, 2000);

    char *res = NULL;
    const char *args = "{\"page\":\"home\",\"section\":{\"type\":\"hero\",\"n\":[1,2.5,null,"
                       "true]},\"z\":\"\xc3\xa9\",\"a\":-7}";
    tq_call_opts opts = {.key = "k-1", .deadline_ms = 1234, .timeout_ms = 0};
    int rc = tq_call(c, "shop-1", "echo", args, &opts, &res, &st);
    CHECK(rc == 0 && st.code == TQ_OK, "echo: %s: %s", tq_code_name(st.code), st.message);
    if (rc == 0) {
        json_t *got = json_loads(res, 0, NULL);
        json_t *want_args = json_loads(args, 0, NULL);
        CHECK(got != NULL, "result is JSON: %s", res);
        CHECK(strchr(res, '\n') == NULL && strstr(res, ": ") == NULL, "compact: %s", res);
        CHECK(json_equal(json_object_get(got, "args"), want_args), "args round trip: %s", res);
        CHECK(strcmp(json_string_value(json_object_get(got, "tenant")), "shop-1") == 0,
              "tenant: %s", res);
        CHECK(strcmp(json_string_value(json_object_get(got, "op")), "echo") == 0, "op: %s",
              res);
        CHECK(json_string_value(json_object_get(got, "key")) != NULL &&
                  strcmp(json_string_value(json_object_get(got, "key")), "k-1") == 0,
              "key: %s", res);
        CHECK(json_integer_value(json_object_get(got, "deadline_ms")) == 1234,
              "deadline: %s", res);
        /* Key order of the result is preserved ("server" was packed first). */
        CHECK(strncmp(res, "{\"server\":", 10) == 0, "key order: %s", res);
        /* Order of args keys survives the trip too: "page" before "z" before "a". */
        const char *p = strstr(res, "\"page\""), *z = strstr(res, "\"z\""),
                   *a = strstr(res, "\"a\":-7");
        CHECK(p && z && a && p < z && z < a, "args key order: %s", res);
        json_decref(got);
        json_decref(want_args);
        free(res);
    }
    CHECK(!tq_last_replayed(c), "not replayed");

    /* NULL args, no opts, no result pointer. */
    rc = tq_call(c, "shop-1", "echo", NULL, NULL, NULL, &st);
    CHECK(rc == 0, "echo without result pointer: %s", st.message);
    res = NULL;
    rc = tq_call(c, "shop-1", "echo", NULL, NULL, &res, NULL);
    CHECK(rc == 0 && res != NULL && strstr(res, "\"args\":{}") != NULL,
          "NULL args arrive as {}: %s", res ? res : "(null)");
    /* an op that may change state gets a generated key; a fresh one per call */
    CHECK(res && strstr(res, "\"key\":\"auto-") != NULL && strstr(res, "\"deadline_ms\":0") != NULL,
          "generated key, no deadline: %s", res ? res : "(null)");
    char *first = res;
    res = NULL;
    rc = tq_call(c, "shop-1", "echo", NULL, NULL, &res, NULL);
    CHECK(rc == 0 && res && first && strcmp(res, first) != 0, "a new key per call: %s vs %s",
          res ? res : "(null)", first ? first : "(null)");
    /* auto-<12 hex: ms clock><20 hex: random>: well formed, the clock part
     * is now and does not go back, the random part differs */
    char k1[64] = "", k2[64] = "";
    const char *p1 = first ? strstr(first, "\"key\":\"") : NULL,
               *p2 = res ? strstr(res, "\"key\":\"") : NULL;
    if (p1 && p2) {
        sscanf(p1 + 7, "%63[^\"]", k1);
        sscanf(p2 + 7, "%63[^\"]", k2);
    }
    CHECK(strlen(k1) == 37 && strlen(k2) == 37 && strspn(k1 + 5, "0123456789abcdef") == 32 &&
              strspn(k2 + 5, "0123456789abcdef") == 32,
          "key format: %s %s", k1, k2);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    unsigned long long ms1 = 0, ms2 = 0,
                       now_ms = (unsigned long long)wall.tv_sec * 1000u +
                                (unsigned long long)wall.tv_nsec / 1000000u;
    if (strlen(k1) == 37 && strlen(k2) == 37) {
        sscanf(k1 + 5, "%12llx", &ms1);
        sscanf(k2 + 5, "%12llx", &ms2);
    }
    CHECK(ms1 <= ms2 && ms2 <= now_ms && now_ms - ms1 < 60000, "key clock: %llu %llu now %llu",
          ms1, ms2, now_ms);
    CHECK(strcmp(k1 + 17, k2 + 17) != 0, "key random part repeats: %s %s", k1, k2);
    free(first);
    free(res);

    res = NULL;
    rc = tq_call(c, "shop-1", "null", "{}", NULL, &res, &st);
    CHECK(rc == 0 && res != NULL && strcmp(res, "null") == 0, "nil result: %s",
          res ? res : "(null)");
    free(res);

    /* Daemon error: code, message and retryable come from the reply. */
    res = NULL;
    rc = tq_call(c, "shop-7", "fail", NULL, NULL, &res, &st);
    CHECK(rc == -1 && st.code == TQ_E_QUEUE_FULL, "fail: %s", tq_code_name(st.code));
    CHECK(st.retryable, "QUEUE_FULL retryable");
    CHECK(strcmp(st.message, "lane of tenant shop-7 is full") == 0, "message: %s",
          st.message);
    CHECK(res == NULL, "no result on error");

    rc = tq_call(c, "shop-1", "replay", NULL, NULL, NULL, &st);
    CHECK(rc == 0 && tq_last_replayed(c), "replayed recorded");
    rc = tq_call(c, "shop-1", "echo", NULL, NULL, NULL, &st);
    CHECK(rc == 0 && !tq_last_replayed(c), "replayed cleared by next success");

    /* Garbage reply: PROTOCOL naming the endpoint; the client stays usable. */
    rc = tq_call(c, "shop-1", "garbage", NULL, NULL, &res, &st);
    CHECK(rc == -1 && st.code == TQ_E_PROTOCOL, "garbage: %s", tq_code_name(st.code));
    CHECK(strstr(st.message, EP_A) != NULL, "message names endpoint: %s", st.message);
    CHECK(server_of(c, "shop-1") == 'A', "usable after PROTOCOL");

    /* No answer: TIMEOUT after about the timeout, naming endpoint and timeout. */
    int hang_before = atomic_load(&ra.count[OP_HANG]);
    tq_call_opts quick = {.key = NULL, .deadline_ms = 0, .timeout_ms = 150};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = tq_call(c, "shop-1", "hang", NULL, &quick, &res, &st);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CHECK(rc == -1 && st.code == TQ_E_TIMEOUT, "hang: %s", tq_code_name(st.code));
    CHECK(st.retryable, "TIMEOUT retryable");
    CHECK(ms >= 140 && ms < 1500, "timed out after %ld ms", ms);
    CHECK(strstr(st.message, EP_A) && strstr(st.message, "150 ms"), "message: %s",
          st.message);
    /* The abandoned request must not be resent once the socket is gone. */
    sleep_ms(400);
    CHECK(atomic_load(&ra.count[OP_HANG]) - hang_before == 1, "hang delivered %d times",
          atomic_load(&ra.count[OP_HANG]) - hang_before);
    /* And the client works again (socket reopened). */
    CHECK(server_of(c, "shop-1") == 'A', "usable after TIMEOUT");

    /* A late reply must not be taken as the next call's answer. */
    rc = tq_call(c, "shop-1", "slow", "{\"n\":1}", &quick, &res, &st);
    CHECK(rc == -1 && st.code == TQ_E_TIMEOUT, "slow: %s", tq_code_name(st.code));
    res = NULL;
    rc = tq_call(c, "shop-1", "echo", "{\"n\":2}", NULL, &res, &st);
    CHECK(rc == 0 && res && strstr(res, "\"op\":\"echo\"") && strstr(res, "\"n\":2"),
          "answer after late reply: %s", res ? res : st.message);
    free(res);

    /* The per-handle default timeout applies when opts don't set one. */
    tq_set_timeout(c, 100);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = tq_call(c, "shop-1", "hang", NULL, NULL, NULL, &st);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CHECK(rc == -1 && st.code == TQ_E_TIMEOUT && ms < 1000, "default timeout: %ld ms", ms);
    CHECK(strstr(st.message, "100 ms") != NULL, "message: %s", st.message);
    tq_close(c);
}

static void test_raw(void)
{
    tq_status st;
    tq_client *c = tq_connect(EP_A, &st);
    if (c == NULL) {
        CHECK(false, "connect: %s", st.message);
        return;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    json_t *args = json_pack("{s:i}", "x", 5);
    CHECK(tq_request_encode(&sb, "raw-t", "echo", args, NULL, 0) == 0, "encode");
    json_decref(args);
    void *reply = NULL;
    size_t len = 0;
    int rc = tq_call_raw(c, sb.data, sb.size, &reply, &len, 1000, &st);
    CHECK(rc == 0 && reply != NULL && len > 0, "raw echo: %s", st.message);
    tq_response resp;
    tq_error err;
    if (rc == 0 && tq_response_decode(reply, len, &resp, &err) == 0) {
        CHECK(resp.ok, "raw ok");
        CHECK(json_integer_value(json_object_get(json_object_get(resp.result, "args"), "x")) ==
                  5,
              "raw args");
        tq_response_free(&resp);
    } else {
        CHECK(false, "raw reply decodes");
    }
    free(reply);
    msgpack_sbuffer_destroy(&sb);

    /* Bytes the server cannot decode come back as its BAD_REQUEST reply. */
    int bad_before = atomic_load(&ra.bad_requests);
    reply = NULL;
    rc = tq_call_raw(c, "\x93\x01\x02", 3, &reply, &len, 1000, &st);
    CHECK(rc == 0, "raw bad request answered: %s", st.message);
    if (rc == 0 && tq_response_decode(reply, len, &resp, &err) == 0) {
        CHECK(!resp.ok && resp.code == TQ_E_BAD_REQUEST, "BAD_REQUEST: %s",
              tq_code_name(resp.code));
        tq_response_free(&resp);
    } else {
        CHECK(false, "bad request reply decodes");
    }
    free(reply);
    CHECK(atomic_load(&ra.bad_requests) == bad_before + 1, "server saw the bad request");

    /* Raw timeout. */
    msgpack_sbuffer_init(&sb);
    CHECK(tq_request_encode(&sb, "raw-t", "hang", NULL, NULL, 0) == 0, "encode hang");
    reply = (void *)&sb;
    rc = tq_call_raw(c, sb.data, sb.size, &reply, &len, 100, &st);
    CHECK(rc == -1 && st.code == TQ_E_TIMEOUT && reply == NULL, "raw timeout: %s",
          tq_code_name(st.code));
    msgpack_sbuffer_destroy(&sb);
    tq_close(c);
}

static void test_rendezvous(void)
{
    tq_status st;
    tq_client *ab = tq_connect(EP_A "," EP_B, &st);
    tq_client *ab2 = tq_connect(" " EP_A " , " EP_B " ", &st);
    tq_client *ba = tq_connect(EP_B "," EP_A, &st);
    if (ab == NULL || ab2 == NULL || ba == NULL) {
        CHECK(false, "connect lists: %s", st.message);
        tq_close(ab);
        tq_close(ab2);
        tq_close(ba);
        return;
    }
    int on_a = 0, on_b = 0;
    for (int i = 0; i < 64; i++) {
        char tenant[32];
        snprintf(tenant, sizeof tenant, "tenant-%d", i);
        char s1 = server_of(ab, tenant);
        char s2 = server_of(ab, tenant);
        char s3 = server_of(ab2, tenant);
        char s4 = server_of(ba, tenant);
        CHECK(s1 == 'A' || s1 == 'B', "%s answered by %c", tenant, s1 ? s1 : '?');
        CHECK(s1 == s2, "%s stable across calls: %c %c", tenant, s1, s2);
        CHECK(s1 == s3, "%s stable across handles: %c %c", tenant, s1, s3);
        CHECK(s1 == s4, "%s independent of list order: %c %c", tenant, s1, s4);
        on_a += s1 == 'A';
        on_b += s1 == 'B';
    }
    /* With a fair hash each side gets 32 +- 4 (1 sigma); 12 is > 5 sigma out. */
    CHECK(on_a >= 12 && on_b >= 12, "spread over both endpoints: A=%d B=%d", on_a, on_b);

    /* A timeout on one endpoint does not disturb the other. */
    const char *ta = NULL, *tb = NULL;
    static char names[64][32];
    for (int i = 0; i < 64 && (!ta || !tb); i++) {
        snprintf(names[i], sizeof names[i], "tenant-%d", i);
        char s = server_of(ab, names[i]);
        if (s == 'A' && !ta)
            ta = names[i];
        if (s == 'B' && !tb)
            tb = names[i];
    }
    if (ta && tb) {
        tq_call_opts quick = {.key = NULL, .deadline_ms = 0, .timeout_ms = 100};
        CHECK(tq_call(ab, ta, "hang", NULL, &quick, NULL, &st) == -1 &&
                  st.code == TQ_E_TIMEOUT && strstr(st.message, EP_A),
              "hang on A: %s", st.message);
        CHECK(server_of(ab, tb) == 'B' && server_of(ab, ta) == 'A', "both fine after");
    }
    tq_close(ab);
    tq_close(ab2);
    tq_close(ba);
}

static void test_unreachable(void)
{
    tq_status st;
    /* Nobody listens: the call times out (nanomsg connects lazily). */
    char url[128];
    snprintf(url, sizeof url, "ipc:///tmp/tenantq-test-none-%ld.sock", (long)getpid());
    tq_client *c = tq_connect(url, &st);
    CHECK(c != NULL, "connect to absent daemon succeeds lazily: %s", st.message);
    if (c != NULL) {
        tq_call_opts quick = {.key = NULL, .deadline_ms = 0, .timeout_ms = 100};
        int rc = tq_call(c, "t", "ping", NULL, &quick, NULL, &st);
        CHECK(rc == -1 && st.code == TQ_E_TIMEOUT, "absent: %s", tq_code_name(st.code));
        tq_close(c);
    }
    /* A tcp address without a valid port is a usage error at once (nanomsg
     * would refuse it only at the first call, as a transport error). */
    const char *bad[] = {"tcp://127.0.0.1", "tcp://127.0.0.1:", "tcp://127.0.0.1:0",
                         "tcp://127.0.0.1:99999", "tcp://:80", "ws://h:x/p"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = tq_connect(bad[i], &st);
        CHECK(c == NULL && st.code == TQ_E_USAGE && strstr(st.message, bad[i]),
              "%s refused: %s", bad[i], st.message);
        tq_close(c);
    }
    c = tq_connect("ws://127.0.0.1:80/path", &st);
    CHECK(c != NULL, "ws with a path accepted: %s", st.message);
    tq_close(c);
}

/* A daemon that takes the request and dies without answering, then comes
 * back on the same address (a restart): the call re-sends when its
 * connection breaks and is answered by the new one, long before its
 * timeout and with no retries configured. */
struct dropper {
    const char *url;
    pthread_t thread;
    atomic_int got;
    char key[64]; /* the idempotency key of the request it took */
};

static void *dropper_main(void *arg)
{
    struct dropper *d = arg;
    int s = nn_socket(AF_SP, NN_REP);
    int tmo = 3000;
    if (s < 0 || nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &tmo, sizeof tmo) < 0 ||
        nn_bind(s, d->url) < 0)
        exit(99);
    void *buf = NULL;
    int n = nn_recv(s, &buf, NN_MSG, 0);
    if (n >= 0) {
        tq_request req;
        tq_error err;
        if (tq_request_decode(buf, (size_t)n, &req, &err) == 0) {
            snprintf(d->key, sizeof d->key, "%s", req.key ? req.key : "");
            tq_request_free(&req);
        }
        atomic_fetch_add(&d->got, 1);
        nn_freemsg(buf);
    }
    nn_close(s); /* the request dies with the connection */
    return NULL;
}

static struct responder rc_after;

static void *restart_main(void *arg)
{
    struct dropper *d = arg;
    pthread_join(d->thread, NULL);
    sleep_ms(50);
    responder_start(&rc_after, "C", d->url);
    return NULL;
}

/* Start the dropper on url and, once it has gone, responder "C" there. */
static void restart_begin(struct dropper *d, pthread_t *restarter, char *url, size_t len,
                          const char *tag)
{
    snprintf(url, len, "ipc:///tmp/tenantq-test-restart-%s-%ld.sock", tag, (long)getpid());
    *d = (struct dropper){.url = url};
    if (pthread_create(&d->thread, NULL, dropper_main, d) != 0)
        exit(99);
    sleep_ms(50);
    if (pthread_create(restarter, NULL, restart_main, d) != 0)
        exit(99);
}

static void restart_end(pthread_t restarter)
{
    pthread_join(restarter, NULL);
    responder_stop(&rc_after);
}

/* ---- asynchronous calls ---------------------------------------------- */

struct outcome {
    int calls;            /* callbacks run for this call: must end at 1 */
    tq_code code;
    bool replayed;
    char server;          /* echo: which responder answered */
    char tenant[32];      /* echo: the tenant the responder saw */
    char result[256];     /* start of the result text */
    char message[512];    /* the status message */
    int64_t t_done;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_done(void *arg, const tq_status *st, const char *result, bool replayed)
{
    struct outcome *o = arg;
    o->calls++;
    o->code = st->code;
    o->replayed = replayed;
    o->t_done = mono_ms();
    snprintf(o->message, sizeof o->message, "%s", st->message);
    CHECK((st->code == TQ_OK) == (result != NULL), "result iff ok (%s)", tq_code_name(st->code));
    if (result == NULL)
        return;
    snprintf(o->result, sizeof o->result, "%s", result);
    json_t *j = json_loads(result, JSON_DECODE_ANY, NULL);
    const char *srv = json_string_value(json_object_get(j, "server"));
    const char *t = json_string_value(json_object_get(j, "tenant"));
    o->server = srv ? srv[0] : 0;
    snprintf(o->tenant, sizeof o->tenant, "%s", t ? t : "");
    json_decref(j);
}

/* Run c's event loop (poll on tq_fd, tq_next_timeout_ms) until no call is
 * in flight or limit_ms passed.  Returns the callbacks run. */
static int loop(tq_client *c, int limit_ms)
{
    tq_status st;
    struct pollfd pfd = {.fd = tq_fd(c, &st), .events = POLLIN};
    int64_t end = mono_ms() + limit_ms;
    int done = 0;
    while (tq_inflight(c) > 0 && mono_ms() < end) {
        int t = tq_next_timeout_ms(c);
        int left = (int)(end - mono_ms());
        (void)poll(&pfd, 1, t < 0 || t > left ? left : t);
        done += tq_dispatch(c);
    }
    return done;
}

/* A daemon restart during a call (see dropper_main): synchronous or
 * asynchronous, the call is re-sent when its connection breaks and answered
 * by the restarted responder, long before its timeout, with no retries. */
static void test_restart(bool async)
{
    char url[128];
    struct dropper d;
    pthread_t restarter;
    restart_begin(&d, &restarter, url, sizeof url, async ? "async" : "sync");
    tq_status st;
    tq_client *c = tq_connect(url, &st);
    CHECK(c != NULL, "connect: %s", st.message);
    if (c != NULL) {
        tq_call_opts opts = {.timeout_ms = 5000};
        struct outcome o = {0};
        char *res = NULL;
        int64_t t0 = mono_ms();
        if (async) {
            CHECK(tq_call_async(c, "t", "echo", "{\"n\":2}", &opts, on_done, &o, &st) == 0,
                  "async call: %s", st.message);
            loop(c, 6000);
        } else {
            o.calls = 1;
            o.code = tq_call(c, "t", "echo", "{\"n\":1}", &opts, &res, &st) == 0 ? TQ_OK
                                                                                 : st.code;
            o.t_done = mono_ms();
            o.server = res != NULL && strstr(res, "\"server\":\"C\"") != NULL ? 'C' : 0;
        }
        CHECK(o.calls == 1 && o.code == TQ_OK && o.server == 'C',
              "%s call across a restart: %d callbacks, %s, server %c", async ? "async" : "sync",
              o.calls, tq_code_name(o.code), o.server ? o.server : '-');
        CHECK(async || (res != NULL && strstr(res, "\"key\":\"") != NULL),
              "the re-sent request carries the call's key: %s", res ? res : "-");
        CHECK(o.t_done - t0 < 2500, "re-sent on the broken connection after %lld ms, not at "
              "the timeout", (long long)(o.t_done - t0));
        CHECK(atomic_load(&d.got) == 1, "the first responder took the request (%d)",
              atomic_load(&d.got));
        free(res);
        tq_close(c);
    }
    restart_end(restarter);
}

/* ---- failover ---------------------------------------------------------- */

struct fo {
    char server;   /* 'A', 'B', 'C' who answered; 0 if the call failed */
    tq_code code;
    char key[64];  /* the key the responder saw */
    int64_t took;  /* ms */
};

/* One call of op for tenant, synchronous or asynchronous (no retries). */
static struct fo fo_call(tq_client *c, bool async, const char *tenant, const char *op,
                         int timeout_ms)
{
    tq_call_opts opts = {.timeout_ms = timeout_ms};
    tq_status st;
    struct outcome o = {0};
    char *res = NULL;
    int64_t t0 = mono_ms();
    if (async) {
        if (tq_call_async(c, tenant, op, "{}", &opts, on_done, &o, &st) == 0)
            loop(c, timeout_ms + 2000);
        else
            o.code = st.code;
        CHECK(o.calls == 1, "async %s: %d callbacks", op, o.calls);
        res = o.code == TQ_OK ? strdup(o.result) : NULL;
    } else {
        o.code = tq_call(c, tenant, op, "{}", &opts, &res, &st) == 0 ? TQ_OK : st.code;
    }
    struct fo f = {.code = o.code, .took = mono_ms() - t0};
    json_t *j = res != NULL ? json_loads(res, 0, NULL) : NULL;
    const char *srv = json_string_value(json_object_get(j, "server"));
    const char *key = json_string_value(json_object_get(j, "key"));
    f.server = o.code == TQ_OK && srv ? srv[0] : 0;
    snprintf(f.key, sizeof f.key, "%s", key ? key : "");
    json_decref(j);
    free(res);
    return f;
}

static int open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 4096; fd++)
        n += fcntl(fd, F_GETFD) != -1;
    return n;
}

/* Two endpoints; tenant ta's first choice is A, tb's is B. */
static void fo_tenants(tq_client *c, bool async, char *ta, char *tb)
{
    ta[0] = tb[0] = '\0';
    for (int i = 0; i < 64 && (!ta[0] || !tb[0]); i++) {
        char t[32];
        snprintf(t, sizeof t, "tenant-%d", i);
        char s = fo_call(c, async, t, "echo", 2000).server;
        if (s == 'A' && !ta[0])
            snprintf(ta, 32, "%s", t);
        if (s == 'B' && !tb[0])
            snprintf(tb, 32, "%s", t);
    }
}

/*
 * While A is down its tenants' calls go to B, within the failover wait
 * (250 ms, or half a shorter timeout) plus scheduling, long before their
 * timeout; once A is back they return to A; B's tenants never move.  A
 * request A took before dying goes on to B with the same key.  A connected
 * but hung A is a timeout, not a failover.  With every endpoint down a call
 * waits out its timeout.  Moving calls back and forth does not pile up
 * sockets.
 */
static void test_failover(bool async)
{
    const char *mode = async ? "async" : "sync";
    char url_a[128], url_b[128], list[300], ta[32], tb[32];
    snprintf(url_a, sizeof url_a, "ipc:///tmp/tenantq-test-fo-a-%s-%ld.sock", mode, (long)getpid());
    snprintf(url_b, sizeof url_b, "ipc:///tmp/tenantq-test-fo-b-%s-%ld.sock", mode, (long)getpid());
    snprintf(list, sizeof list, "%s,%s", url_a, url_b);
    static struct responder fa, fb;
    bool a_up = true;
    responder_start(&fa, "A", url_a);
    responder_start(&fb, "B", url_b);
    tq_status st;
    tq_client *c = tq_connect(list, &st);
    CHECK(c != NULL, "connect: %s", st.message);
    if (c == NULL)
        goto out;
    fo_tenants(c, async, ta, tb);
    CHECK(ta[0] && tb[0], "%s: tenants on A and on B: \"%s\" \"%s\"", mode, ta, tb);
    if (!ta[0] || !tb[0])
        goto out;

    /* hung but connected: a timeout, and the tenant stays on A */
    struct fo f = fo_call(c, async, ta, "hang", 600);
    CHECK(f.code == TQ_E_TIMEOUT && f.took >= 590, "%s: hang on A: %s after %lld ms", mode,
          tq_code_name(f.code), (long long)f.took);
    CHECK(fo_call(c, async, ta, "echo", 2000).server == 'A', "%s: still on A after a hang",
          mode);

    responder_stop(&fa); /* A is down */
    a_up = false;
    f = fo_call(c, async, ta, "echo", 5000);
    CHECK(f.server == 'B' && strncmp(f.key, "auto-", 5) == 0,
          "%s: A's tenant answered by %c while A is down", mode, f.server ? f.server : '-');
    CHECK(f.took < 2000, "%s: moved to B after %lld ms, not at the 5 s timeout", mode,
          (long long)f.took);
    f = fo_call(c, async, ta, "echo", 5000);
    CHECK(f.server == 'B' && f.took < 200, "%s: the next call goes to B at once: %c after "
          "%lld ms", mode, f.server ? f.server : '-', (long long)f.took);
    CHECK(fo_call(c, async, tb, "echo", 2000).server == 'B', "%s: B's tenant stays on B", mode);

    /* a short timeout fails over too (after half of it), on a fresh client */
    tq_client *c2 = tq_connect(list, &st);
    f = fo_call(c2, async, ta, "echo", 200);
    CHECK(f.server == 'B' && f.took < 200, "%s: 200 ms call moved to B: %c (%s) after %lld ms",
          mode, f.server ? f.server : '-', tq_code_name(f.code), (long long)f.took);
    tq_close(c2);

    /* back and forth: A's tenant follows A; sockets do not pile up */
    int fds = open_fds();
    for (int cycle = 0; cycle < 4; cycle++) {
        responder_start(&fa, "A", url_a); /* A is back */
        a_up = true;
        int64_t t0 = mono_ms();
        char s;
        while ((s = fo_call(c, async, ta, "echo", 2000).server) != 'A' && mono_ms() - t0 < 3000)
            sleep_ms(20);
        CHECK(s == 'A', "%s: A's tenant back on A once A is up (cycle %d, %lld ms)", mode, cycle,
              (long long)(mono_ms() - t0));
        responder_stop(&fa);
        a_up = false;
        s = fo_call(c, async, ta, "echo", 2000).server;
        CHECK(s == 'B', "%s: and on B once A is down again (cycle %d): %c", mode, cycle,
              s ? s : '-');
    }
    CHECK(open_fds() <= fds + 4, "%s: open fds %d before the cycles, %d after", mode, fds,
          open_fds());

    /* A takes the request and dies without answering, and stays away */
    responder_start(&fa, "A", url_a);
    a_up = true;
    int64_t t0 = mono_ms();
    while (fo_call(c, async, ta, "echo", 2000).server != 'A' && mono_ms() - t0 < 3000)
        sleep_ms(20);
    responder_stop(&fa);
    a_up = false;
    struct dropper d = {.url = url_a};
    if (pthread_create(&d.thread, NULL, dropper_main, &d) != 0)
        exit(99);
    sleep_ms(300); /* the client's sockets reconnect every 100 ms */
    f = fo_call(c, async, ta, "echo", 5000);
    pthread_join(d.thread, NULL);
    CHECK(atomic_load(&d.got) == 1, "%s: the dying A took the request (%d)", mode,
          atomic_load(&d.got));
    CHECK(f.server == 'B' && f.took < 2500, "%s: its request went on to B (%c) after %lld ms",
          mode, f.server ? f.server : '-', (long long)f.took);
    CHECK(d.key[0] && strcmp(f.key, d.key) == 0, "%s: with the same key: \"%s\" \"%s\"", mode,
          d.key, f.key);

    /* every endpoint down: the call waits out its timeout */
    responder_stop(&fb);
    f = fo_call(c, async, tb, "echo", 600);
    CHECK(f.code == TQ_E_TIMEOUT && f.took >= 590 && f.took < 2000,
          "%s: all down: %s after %lld ms", mode, tq_code_name(f.code), (long long)f.took);
    tq_close(c);
    return;
out:
    tq_close(c);
    if (a_up)
        responder_stop(&fa);
    responder_stop(&fb);
}

/* A callback that starts the next call of a chain from inside tq_dispatch. */
struct chain {
    tq_client *c;
    int left, ok;
};

static void on_chain(void *arg, const tq_status *st, const char *result, bool replayed)
{
    struct chain *ch = arg;
    ch->ok += st->code == TQ_OK;
    if (--ch->left > 0) {
        tq_status s2;
        CHECK(tq_call_async(ch->c, "chain", "echo", NULL, NULL, on_chain, ch, &s2) == 0,
              "chained call: %s", s2.message);
    }
}

static void test_async(void)
{
    tq_status st;
    tq_client *c = tq_connect(EP_A "," EP_B, &st);
    CHECK(c != NULL, "connect: %s", st.message);
    if (c == NULL)
        return;
    int fd = tq_fd(c, &st);
    CHECK(fd >= 0 && tq_fd(c, &st) == fd, "one fd for the client's life");
    CHECK(tq_next_timeout_ms(c) == -1 && tq_inflight(c) == 0, "nothing in flight");
    CHECK(tq_dispatch(c) == 0, "dispatch with nothing to do");

    /* Usage errors start nothing and call nothing back. */
    static struct outcome o[64];
    CHECK(tq_call_async(c, "t", "echo", NULL, NULL, NULL, &o[0], &st) == -1 &&
              st.code == TQ_E_USAGE, "NULL callback");
    CHECK(tq_call_async(c, NULL, "echo", NULL, NULL, on_done, &o[0], &st) == -1 &&
              st.code == TQ_E_USAGE, "NULL tenant");
    CHECK(tq_call_async(c, "t", "echo", "[1]", NULL, on_done, &o[0], &st) == -1 &&
              st.code == TQ_E_USAGE, "array args");
    CHECK(tq_inflight(c) == 0 && o[0].calls == 0, "no call started");
    CHECK(tq_set_max_inflight(c, 0) == -1 && tq_set_max_inflight(c, TQ_MAX_INFLIGHT + 1) == -1,
          "max in flight out of range");

    /* 64 calls at once over both endpoints: each answered once, by the
     * endpoint the synchronous calls use for that tenant. */
    memset(o, 0, sizeof o);
    int echo_a = atomic_load(&ra.count[OP_ECHO]), echo_b = atomic_load(&rb.count[OP_ECHO]);
    for (int i = 0; i < 64; i++) {
        char tenant[32];
        snprintf(tenant, sizeof tenant, "tenant-%d", i);
        CHECK(tq_call_async(c, tenant, "echo", "{\"i\":1}", NULL, on_done, &o[i], &st) == 0,
              "start %d: %s", i, st.message);
    }
    CHECK(tq_inflight(c) == 64, "64 in flight: %d", tq_inflight(c));
    CHECK(tq_call_async(c, "t", "echo", NULL, NULL, on_done, &o[0], &st) == -1 &&
              st.code == TQ_E_QUEUE_FULL, "65th: %s", tq_code_name(st.code));
    CHECK(tq_set_max_inflight(c, 8) == -1, "limit not changed while calls are in flight");
    CHECK(loop(c, 5000) == 64, "64 callbacks");
    int on_a = 0;
    for (int i = 0; i < 64; i++) {
        char tenant[32];
        snprintf(tenant, sizeof tenant, "tenant-%d", i);
        CHECK(o[i].calls == 1 && o[i].code == TQ_OK, "call %d: %d callbacks, %s", i, o[i].calls,
              tq_code_name(o[i].code));
        CHECK(strcmp(o[i].tenant, tenant) == 0, "call %d answered for %s", i, o[i].tenant);
        CHECK(o[i].server == server_of(c, tenant), "call %d: same endpoint as tq_call", i);
        on_a += o[i].server == 'A';
    }
    CHECK(on_a > 0 && on_a < 64, "both endpoints used: %d on A", on_a);
    CHECK(atomic_load(&ra.count[OP_ECHO]) - echo_a + atomic_load(&rb.count[OP_ECHO]) - echo_b ==
              128, "each request arrived once (64 async + 64 sync)");

    /* Errors, replays and a hang while other calls go on. */
    memset(o, 0, sizeof o);
    tq_call_opts quick = {.timeout_ms = 150};
    tq_call_opts retry3 = {.attempts = 3};
    int fails = atomic_load(&ra.count[OP_FAIL]) + atomic_load(&rb.count[OP_FAIL]);
    int64_t t0 = mono_ms();
    CHECK(tq_call_async(c, "h", "hang", NULL, &quick, on_done, &o[0], &st) == 0, "hang");
    CHECK(tq_call_async(c, "g", "garbage", NULL, NULL, on_done, &o[1], &st) == 0, "garbage");
    CHECK(tq_call_async(c, "r", "replay", NULL, NULL, on_done, &o[2], &st) == 0, "replay");
    CHECK(tq_call_async(c, "f", "fail", NULL, &retry3, on_done, &o[3], &st) == 0, "fail");
    CHECK(tq_call_async(c, "n", "null", NULL, NULL, on_done, &o[4], &st) == 0, "null");
    CHECK(tq_call_async(c, "e", "echo", NULL, NULL, on_done, &o[5], &st) == 0, "echo");
    int t = tq_next_timeout_ms(c);
    CHECK(t >= 0 && t <= 150, "next timeout within the shortest call's: %d", t);
    loop(c, 5000);
    CHECK(o[0].calls == 1 && o[0].code == TQ_E_TIMEOUT, "hang: %s", tq_code_name(o[0].code));
    CHECK(o[0].t_done - t0 >= 140 && o[0].t_done - t0 < 1000, "timed out after %lld ms",
          (long long)(o[0].t_done - t0));
    CHECK(o[1].calls == 1 && o[1].code == TQ_E_PROTOCOL, "garbage: %s", tq_code_name(o[1].code));
    CHECK(o[2].calls == 1 && o[2].code == TQ_OK && o[2].replayed, "replayed");
    CHECK(o[3].calls == 1 && o[3].code == TQ_E_QUEUE_FULL, "fail: %s", tq_code_name(o[3].code));
    CHECK(atomic_load(&ra.count[OP_FAIL]) + atomic_load(&rb.count[OP_FAIL]) - fails == 3,
          "fail sent 3 times");
    CHECK(o[3].t_done - t0 >= 25 + 50, "retries paused: %lld ms", (long long)(o[3].t_done - t0));
    CHECK(o[4].calls == 1 && o[4].code == TQ_OK && strcmp(o[4].result, "null") == 0,
          "null result: %s", o[4].result);
    CHECK(o[5].calls == 1 && o[5].code == TQ_OK && o[5].t_done - t0 < 140,
          "echo not held up by the hang: %lld ms", (long long)(o[5].t_done - t0));

    /* Callbacks may start calls; the limit may change when idle. */
    CHECK(tq_set_max_inflight(c, 1) == 0, "limit 1");
    struct chain ch = {.c = c, .left = 20};
    CHECK(tq_call_async(c, "chain", "echo", NULL, NULL, on_chain, &ch, &st) == 0, "chain");
    loop(c, 5000);
    CHECK(ch.left == 0 && ch.ok == 20, "chain of 20: %d left, %d ok", ch.left, ch.ok);
    CHECK(tq_set_max_inflight(c, 64) == 0, "limit back to 64");

    /* tq_close drops calls in flight without calling back. */
    memset(o, 0, sizeof o);
    CHECK(tq_call_async(c, "h2", "hang", NULL, NULL, on_done, &o[0], &st) == 0, "hang 2");
    tq_close(c);
    CHECK(o[0].calls == 0, "no callback after close");

    /* Nobody listening: the call stays unsent and times out. */
    char url[128];
    snprintf(url, sizeof url, "ipc:///tmp/tenantq-test-none-%ld.sock", (long)getpid());
    c = tq_connect(url, &st);
    if (c != NULL) {
        memset(o, 0, sizeof o);
        t0 = mono_ms();
        CHECK(tq_call_async(c, "t", "ping", NULL, &quick, on_done, &o[0], &st) == 0, "start");
        loop(c, 5000);
        CHECK(o[0].calls == 1 && o[0].code == TQ_E_TIMEOUT, "absent: %s",
              tq_code_name(o[0].code));
        CHECK(o[0].t_done - t0 >= 140, "after the timeout: %lld ms",
              (long long)(o[0].t_done - t0));
        tq_close(c);
    }
}

/* tq_set_auth: the token goes out as "auth" on every request, synchronous
 * and asynchronous, until it is cleared; a bad token changes nothing. */
static void test_auth(void)
{
    tq_status st;
    tq_client *c = tq_connect(EP_A, &st);
    CHECK(c != NULL, "connect: %s", st.message);
    if (c == NULL)
        return;
    CHECK(tq_set_auth(NULL, "x", &st) == -1 && st.code == TQ_E_USAGE, "auth: NULL handle");
    char *res = NULL;
    CHECK(tq_call(c, "t", "echo", NULL, NULL, &res, &st) == 0 && res &&
              strstr(res, "\"auth\"") == NULL,
          "no auth by default: %s", res ? res : st.message);
    free(res);

    CHECK(tq_set_auth(c, "s3cret token", &st) == 0 && st.code == TQ_OK, "set: %s", st.message);
    static char big[TQ_MAX_AUTH_BYTES + 2];
    memset(big, 'a', sizeof big - 1);
    const char *bad[] = {"", "tab\there", "caf\xc3", big};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(tq_set_auth(c, bad[i], &st) == -1 && st.code == TQ_E_USAGE && !st.retryable &&
                  strstr(st.message, "auth token") != NULL,
              "bad token %zu refused: %s", i, st.message);
        CHECK(strstr(st.message, bad[i][0] ? bad[i] : "\x01") == NULL,
              "the message does not echo the token");
    }
    res = NULL;
    CHECK(tq_call(c, "t", "echo", NULL, NULL, &res, &st) == 0 && res &&
              strstr(res, "\"auth\":\"s3cret token\"") != NULL,
          "sync call carries the token (a bad one changed nothing): %s",
          res ? res : st.message);
    free(res);

    struct outcome o;
    memset(&o, 0, sizeof o);
    CHECK(tq_call_async(c, "t", "echo", NULL, NULL, on_done, &o, &st) == 0, "async: %s",
          st.message);
    CHECK(loop(c, 5000) == 1 && o.code == TQ_OK &&
              strstr(o.result, "\"auth\":\"s3cret token\"") != NULL,
          "async call carries the token: %s", o.result);

    big[TQ_MAX_AUTH_BYTES] = '\0';
    CHECK(tq_set_auth(c, big, &st) == 0, "a 4096-byte token: %s", st.message);
    CHECK(tq_set_auth(c, NULL, &st) == 0, "clear: %s", st.message);
    res = NULL;
    CHECK(tq_call(c, "t", "echo", NULL, NULL, &res, &st) == 0 && res &&
              strstr(res, "\"auth\"") == NULL,
          "cleared: no auth sent: %s", res ? res : st.message);
    free(res);
    CHECK(tq_set_auth(c, "again", &st) == 0, "set again");
    tq_close(c); /* frees the token (ASan: no leak) */
}

/* A reply over the receive limit drops the connection: the call says that
 * the reply may be over the limit, not "could not send" (as it once did,
 * nanomsg bringing no connection back within the call's time). */
static void test_reply_over_receive_limit(bool async)
{
    /* over ipc: inproc has no frames and no receive limit */
    static struct responder rh;
    char url[128];
    snprintf(url, sizeof url, "ipc:///tmp/tq-test-huge-%d.sock", (int)getpid());
    responder_start(&rh, "H", url);
    tq_status st;
    tq_client *c = tq_connect(url, &st);
    CHECK(c != NULL, "connect: %s", st.message);
    if (c == NULL) {
        responder_stop(&rh);
        return;
    }
    tq_set_timeout(c, 2000);
    int before = atomic_load(&rh.count[OP_HUGE]);
    int64_t t0 = mono_ms();
    if (async) {
        struct outcome o = {0};
        CHECK(tq_call_async(c, "t", "huge", NULL, NULL, on_done, &o, &st) == 0, "async: %s",
              st.message);
        loop(c, 10000);
        CHECK(o.calls == 1, "callbacks: %d", o.calls);
        st.code = o.code;
        snprintf(st.message, sizeof st.message, "%s", o.message);
    } else {
        char *res = NULL;
        CHECK(tq_call(c, "t", "huge", NULL, NULL, &res, &st) == -1, "a reply over the limit "
              "was received");
        free(res);
    }
    int64_t took = mono_ms() - t0;
    CHECK((st.code == TQ_E_TRANSPORT || st.code == TQ_E_TIMEOUT) &&
              strstr(st.message, "receive limit of 8388608 bytes") != NULL &&
              strstr(st.message, "could not send") == NULL,
          "%s: %s: %s", async ? "async" : "sync", tq_code_name(st.code), st.message);
    CHECK(took < 4000, "took %lld ms of the 2000 ms timeout", (long long)took);
    int seen = atomic_load(&rh.count[OP_HUGE]) - before;
    CHECK(seen >= 1 && seen <= TQ_BROKEN_REPLIES, "the responder saw the request %d times",
          seen);
    tq_close(c);
    responder_stop(&rh);
}

int main(void)
{
    responder_start(&ra, "A", EP_A);
    responder_start(&rb, "B", EP_B);

    test_usage();
    test_call();
    test_raw();
    test_rendezvous();
    test_unreachable();
    test_async();
    test_auth();
    test_restart(false);
    test_restart(true);
    test_failover(false);
    test_failover(true);
    test_reply_over_receive_limit(false);
    test_reply_over_receive_limit(true);

    responder_stop(&ra);
    responder_stop(&rb);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
