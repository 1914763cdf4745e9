/*
 * log.h - one-line log events on stderr.  When stderr is the journal (the
 * JOURNAL_STREAM device:inode that systemd sets matches stderr), lines carry
 * syslog priority prefixes ("<4>shard 2: ..."), which journald turns into
 * priorities; anywhere else (a terminal, a file, a container's log) they carry
 * a UTC timestamp and a level word instead
 * ("2026-12-03T05:37:07.123Z warning: shard 2: ...").
 *
 * Any thread may log; each event is written with a single write(2) so lines
 * of different threads never interleave.  The level check happens before any
 * formatting, so disabled debug logging costs one comparison.
 */
#ifndef TQ_LOG_H
#define TQ_LOG_H

#include <stdatomic.h>
#include <syslog.h>

/* Current threshold (a LOG_* priority from <syslog.h>); events with a
 * numerically larger priority are dropped.  Default LOG_INFO. */
extern atomic_int log_level;

/* Choose the line format from JOURNAL_STREAM and stderr (see above).  Call
 * once at start, before any other thread exists; without it lines carry the
 * timestamp and level word. */
void log_init(void);

/* Write one event.  Use the macros below, which check the level first. */
void log_write(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parse "err|warning|notice|info|debug"; returns -1 if unknown. */
int log_parse_level(const char *name);

#define log_at(prio, ...)                                                      \
    do {                                                                       \
        if ((prio) <= atomic_load_explicit(&log_level, memory_order_relaxed))  \
            log_write((prio), __VA_ARGS__);                                    \
    } while (0)
#define log_err(...) log_at(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_at(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)

#endif
