/*
 * log.c - stderr logger with syslog priority prefixes.  Must not allocate:
 * it is used on error paths, including out-of-memory ones.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

atomic_int log_level = LOG_INFO;

void log_write(int prio, const char *fmt, ...)
{
    char buf[2048];
    int n = snprintf(buf, sizeof buf, "<%d>", prio);
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
