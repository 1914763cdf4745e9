/*
 * log.c - stderr logger: syslog priority prefixes for the journal, a UTC
 * timestamp and a level word elsewhere.  Must not allocate: it is used on
 * error paths, including out-of-memory ones.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

atomic_int log_level = LOG_INFO;

/* Written once by log_init before other threads start, then only read. */
static int to_journal;

void log_init(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    to_journal = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
                 fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
                 (unsigned long long)st.st_ino == ino;
}

static int prefix(char *buf, size_t len, int prio)
{
    if (to_journal)
        return snprintf(buf, len, "<%d>", prio);
    static const char *const words[] = {"emerg", "alert", "crit",   "err",
                                        "warning", "notice", "info", "debug"};
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    return snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s: ", tm.tm_year + 1900,
                    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                    ts.tv_nsec / 1000000, words[prio & 7]);
}

void log_write(int prio, const char *fmt, ...)
{
    char buf[2048];
    int n = prefix(buf, sizeof buf, prio);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof buf - 2)
        len = sizeof buf - 2; /* truncated: keep the line a line */
    buf[len++] = '\n';
    /* one write per event; a short write to stderr is not worth a retry loop */
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

int log_parse_level(const char *name)
{
    static const struct { const char *name; int prio; } levels[] = {
        {"err", LOG_ERR},   {"error", LOG_ERR},   {"warning", LOG_WARNING},
        {"notice", LOG_NOTICE}, {"info", LOG_INFO}, {"debug", LOG_DEBUG},
    };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcasecmp(name, levels[i].name) == 0)
            return levels[i].prio;
    return -1;
}
