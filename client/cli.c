/*
 * cli.c - the tenantq command-line tool: one call to tenantqd per run.
 *
 * Uses only the public libtenantq API (tenantq.h) plus jansson to check the
 * ping result.  Exit status: 0 success, 1 the daemon answered with an error,
 * 2 usage error (bad options, bad ARGS-JSON), 3 no valid answer (TIMEOUT,
 * TRANSPORT, PROTOCOL).  Results go to stdout as compact one-line JSON;
 * errors go to stderr as "CODE: message".
 */
#include <inttypes.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tenantq.h"

#define DEFAULT_ENDPOINT "ipc:///run/tenantq/tenantqd.sock"

enum { EXIT_DAEMON_ERROR = 1, EXIT_USAGE = 2, EXIT_NO_ANSWER = 3 };

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: tenantq [OPTIONS] call TENANT OP [ARGS-JSON]\n"
            "       tenantq [OPTIONS] ping [TENANT]\n"
            "       tenantqd -c FILE --scan | tenantq [OPTIONS] repair [--dry-run]\n"
            "\n"
            "Send one request to tenantqd and print the JSON result on one line.\n"
            "\n"
            "Options:\n"
            "  -e, --endpoint ENDPOINT   daemon endpoint(s), comma-separated\n"
            "                            (default: $TENANTQ_ENDPOINT, else\n"
            "                            " DEFAULT_ENDPOINT ")\n"
            "  -t, --timeout MS          client timeout in milliseconds (default 15000)\n"
            "  -k, --key KEY             idempotency key (repeat it to retry safely)\n"
            "  -d, --deadline MS         how long the daemon may hold the request\n"
            "                            (default: the daemon's default_deadline_ms)\n"
            "  -r, --retries N           tries for retryable errors, same key each time\n"
            "                            (default 1: no retry)\n"
            "  -a, --auth-token-file FILE\n"
            "                            send the token in FILE (trailing whitespace\n"
            "                            removed) as auth, for a daemon with an\n"
            "                            auth_token_file (default: $TENANTQ_AUTH_TOKEN,\n"
            "                            else none)\n"
            "  -h, --help                show this help\n"
            "\n"
            "ARGS-JSON is a JSON object (default {}).  ping uses tenant \"_ping\" unless\n"
            "one is given and prints \"pong\".  repair reads the scan's lines on stdin,\n"
            "calls draft.repair for each tenant and prints one line per tenant and a\n"
            "summary (exit 1 if any call failed).\n"
            "\n"
            "Exit status: 0 ok, 1 the daemon returned an error, 2 usage error,\n"
            "3 timeout, transport or protocol error (outcome unknown).\n"
            "Example: tenantq call shop-42 section.remove '{\"id\":\"home-hero-main\"}'\n");
}

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tenantq: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    usage(stderr);
    return EXIT_USAGE;
}

/* Parse a decimal in [min, max]; returns false on anything else. */
static bool parse_ulong(const char *s, unsigned long min, unsigned long max,
                        unsigned long *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* The token of --auth-token-file FILE: the file's content without its
 * trailing whitespace, malloc'd; NULL with a message on stderr. */
static char *read_token_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "tenantq: --auth-token-file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    enum { MAX = 8192 }; /* beyond any valid token (tq_set_auth checks the length) */
    char *buf = malloc(MAX + 1);
    size_t n = buf ? fread(buf, 1, MAX + 1, f) : 0;
    bool failed = buf == NULL || ferror(f);
    fclose(f);
    if (failed || n > MAX) {
        fprintf(stderr, "tenantq: --auth-token-file %s: %s\n", path,
                failed ? "cannot read it" : "too large for a token");
        free(buf);
        return NULL;
    }
    while (n > 0 && strchr(" \t\r\n\v\f", buf[n - 1]) != NULL)
        n--;
    buf[n] = '\0';
    return buf;
}

static int exit_for(const tq_status *st)
{
    fprintf(stderr, "%s: %s\n", tq_code_name(st->code), st->message);
    switch (st->code) {
    case TQ_E_USAGE:
        return EXIT_USAGE;
    case TQ_E_TIMEOUT:
    case TQ_E_TRANSPORT:
    case TQ_E_PROTOCOL:
        return EXIT_NO_ANSWER;
    default:
        return EXIT_DAEMON_ERROR;
    }
}

/* One line of the scan on stdin -> a draft.repair call through the daemon
 * (so the repair is serialised with live edits).  Prints one JSON line per
 * tenant; returns 0 ok, 1 the daemon refused, 3 no answer, -1 not a tenant
 * line (skipped: the scan's summary). */
struct repair_totals {
    long long tenants, failed, renamed, unrepaired;
};

static int repair_one(tq_client *c, const char *line, const char *args,
                      const tq_call_opts *opts, struct repair_totals *totals)
{
    json_t *in = json_loads(line, 0, NULL);
    const char *tenant = json_string_value(json_object_get(in, "tenant"));
    if (tenant == NULL) {
        if (in == NULL)
            fprintf(stderr, "tenantq: repair: skipped a line that is not JSON\n");
        json_decref(in);
        return -1;
    }
    tq_status st;
    char *result = NULL;
    int rc = 0;
    json_t *out;
    if (tq_call(c, tenant, "draft.repair", args, opts, &result, &st) < 0) {
        char err[600];
        snprintf(err, sizeof err, "%s: %s", tq_code_name(st.code), st.message);
        out = json_pack("{s:s, s:b, s:s}", "tenant", tenant, "ok", 0, "error", err);
        rc = st.code == TQ_E_TIMEOUT || st.code == TQ_E_TRANSPORT || st.code == TQ_E_PROTOCOL
                 ? EXIT_NO_ANSWER
                 : EXIT_DAEMON_ERROR;
    } else {
        json_t *r = json_loads(result, 0, NULL);
        json_int_t renamed = (json_int_t)json_array_size(json_object_get(r, "renamed")) +
                             json_integer_value(json_object_get(r, "renamed_omitted"));
        json_int_t left = (json_int_t)json_array_size(json_object_get(r, "unrepaired")) +
                          json_integer_value(json_object_get(r, "unrepaired_omitted"));
        out = json_pack("{s:s, s:b, s:I, s:I, s:O?, s:O?}", "tenant", tenant, "ok", 1, "renamed",
                        renamed, "unrepaired", left, "version", json_object_get(r, "version"),
                        "unrepaired_problems", json_object_get(r, "unrepaired"));
        totals->renamed += renamed;
        totals->unrepaired += left;
        json_decref(r);
    }
    char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
    if (text)
        puts(text);
    free(text);
    free(result);
    json_decref(out);
    json_decref(in);
    return rc;
}

/* A client for endpoint that sends auth (NULL: none); NULL after the
 * error went to stderr, with *status the exit status. */
static tq_client *connect_with(const char *endpoint, const char *auth, int *status)
{
    tq_status st;
    tq_client *c = tq_connect(endpoint, &st);
    if (c != NULL && auth != NULL && tq_set_auth(c, auth, &st) < 0) {
        tq_close(c);
        c = NULL;
    }
    if (c == NULL)
        *status = exit_for(&st);
    return c;
}

/* tenantq repair [--dry-run]: every tenant line of the scan on stdin. */
static int run_repair(const char *endpoint, const char *auth, const tq_call_opts *opts,
                      bool dry)
{
    int status = 0;
    tq_client *c = connect_with(endpoint, auth, &status);
    if (c == NULL)
        return status;
    struct repair_totals totals = {0};
    const char *args = dry ? "{\"dry_run\":true}" : "{}";
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) > 0) {
        int rc = repair_one(c, line, args, opts, &totals);
        if (rc < 0)
            continue;
        totals.tenants++;
        if (rc > 0) {
            totals.failed++;
            if (rc > status)
                status = rc;
        }
    }
    free(line);
    tq_close(c);
    printf("{\"tenants\":%lld,\"failed\":%lld,\"renamed\":%lld,\"unrepaired\":%lld,"
           "\"dry_run\":%s}\n",
           totals.tenants, totals.failed, totals.renamed, totals.unrepaired,
           dry ? "true" : "false");
    if (fflush(stdout) != 0 && status == 0)
        status = EXIT_NO_ANSWER;
    return status;
}

/* The command (args[0..nargs)) with the options of main. */
static int run(int nargs, char **args, const char *endpoint, const char *auth,
               const tq_call_opts *opts)
{
    if (nargs < 1)
        return usage_error("missing command");

    const char *tenant, *op, *args_json = NULL;
    bool ping = false;
    if (strcmp(args[0], "call") == 0) {
        if (nargs < 3 || nargs > 4)
            return usage_error("call needs TENANT OP [ARGS-JSON]");
        tenant = args[1];
        op = args[2];
        if (nargs == 4)
            args_json = args[3];
    } else if (strcmp(args[0], "ping") == 0) {
        if (nargs > 2)
            return usage_error("ping takes at most one TENANT");
        ping = true;
        tenant = nargs == 2 ? args[1] : "_ping";
        op = "ping";
    } else if (strcmp(args[0], "repair") == 0) {
        bool dry = nargs == 2 && strcmp(args[1], "--dry-run") == 0;
        if (nargs > 2 || (nargs == 2 && !dry))
            return usage_error("repair takes only --dry-run (and the scan's lines on stdin)");
        return run_repair(endpoint, auth, opts, dry);
    } else {
        return usage_error("unknown command \"%s\"", args[0]);
    }

    int status = 0;
    tq_client *c = connect_with(endpoint, auth, &status);
    if (c == NULL)
        return status;

    tq_status st;
    char *result = NULL;
    int rc = tq_call(c, tenant, op, args_json, opts, &result, &st);
    tq_close(c);
    if (rc < 0)
        return exit_for(&st);

    if (ping) {
        json_t *r = json_loads(result, JSON_DECODE_ANY, NULL);
        if (r != NULL && json_is_true(json_object_get(r, "pong"))) {
            puts("pong");
        } else {
            fprintf(stderr, "%s: unexpected ping result %s\n", tq_code_name(TQ_E_PROTOCOL),
                    result);
            status = EXIT_NO_ANSWER;
        }
        json_decref(r);
    } else {
        puts(result);
    }
    free(result);
    if (fflush(stdout) != 0 && status == 0) {
        perror("tenantq: stdout");
        status = EXIT_NO_ANSWER;
    }
    return status;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"timeout", required_argument, NULL, 't'},
        {"key", required_argument, NULL, 'k'},
        {"deadline", required_argument, NULL, 'd'},
        {"retries", required_argument, NULL, 'r'},
        {"auth-token-file", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = getenv("TENANTQ_ENDPOINT");
    if (endpoint == NULL || *endpoint == '\0')
        endpoint = DEFAULT_ENDPOINT;
    tq_call_opts opts = {.key = NULL, .deadline_ms = 0, .timeout_ms = 0};
    const char *auth_file = NULL;

    /* '+': stop at the first non-option, so the command's own arguments
     * (an ARGS-JSON or tenant starting with '-') are never taken as options. */
    int ch;
    unsigned long v;
    while ((ch = getopt_long(argc, argv, "+e:t:k:d:r:a:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoint = optarg;
            break;
        case 't':
            if (!parse_ulong(optarg, 1, INT_MAX, &v))
                return usage_error("invalid timeout \"%s\": expected 1..%d milliseconds",
                                   optarg, INT_MAX);
            opts.timeout_ms = (int)v;
            break;
        case 'k':
            if (*optarg == '\0')
                return usage_error("the idempotency key must not be empty");
            opts.key = optarg;
            break;
        case 'd':
            if (!parse_ulong(optarg, 1, UINT32_MAX, &v))
                return usage_error("invalid deadline \"%s\": expected 1..%" PRIu32 " milliseconds",
                                   optarg, UINT32_MAX);
            opts.deadline_ms = (uint32_t)v;
            break;
        case 'r':
            if (!parse_ulong(optarg, 1, 100, &v))
                return usage_error("invalid retries \"%s\": expected 1..100", optarg);
            opts.attempts = (int)v;
            break;
        case 'a':
            auth_file = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            /* getopt already said what was wrong. */
            fputc('\n', stderr);
            usage(stderr);
            return EXIT_USAGE;
        }
    }

    /* the file wins over the environment; an empty variable is none */
    char *auth_buf = NULL;
    const char *auth = getenv("TENANTQ_AUTH_TOKEN");
    if (auth != NULL && *auth == '\0')
        auth = NULL;
    if (auth_file != NULL) {
        if ((auth = auth_buf = read_token_file(auth_file)) == NULL)
            return EXIT_USAGE;
    }
    int status = run(argc - optind, argv + optind, endpoint, auth, &opts);
    if (auth_buf != NULL) {
        explicit_bzero(auth_buf, strlen(auth_buf));
        free(auth_buf);
    }
    return status;
}
