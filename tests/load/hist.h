/*
 * hist.h - a fixed-size log-bucket latency histogram for tenantq-load.
 *
 * HDR-like: values below 64 get a bucket each, larger values fall into one of
 * 32 linear sub-buckets per power of two, so any reported percentile is
 * within about 3 % of the true value while the histogram stays a fixed
 * 15 KiB however many requests are recorded (no per-request arrays).
 *
 * Threads: one writer per histogram (hist_record), any number of concurrent
 * readers (hist_merge_into for the progress line): counts are relaxed
 * atomics, so a reader sees a slightly stale but never torn picture.
 */
#ifndef TQ_LOAD_HIST_H
#define TQ_LOAD_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#define HIST_LINEAR 64      /* values 0..63 exact */
#define HIST_SUB 32         /* sub-buckets per power of two above that */
#define HIST_BUCKETS (HIST_LINEAR + (64 - 6) * HIST_SUB)

typedef struct hist {
    _Atomic uint64_t count[HIST_BUCKETS];
    _Atomic uint64_t total;
    _Atomic uint64_t max;
} hist;

/* Zero h (it may also simply be zero-initialised storage). */
void hist_init(hist *h);

/* Record one value (microseconds).  Only h's single owning thread may call. */
void hist_record(hist *h, uint64_t v);

/* Add src's counts into dst.  dst must not be written concurrently; src may be. */
void hist_merge_into(hist *dst, const hist *src);

/* Number of recorded values. */
uint64_t hist_total(const hist *h);

/* The value at quantile q (0..1): the highest value of the bucket holding
 * the q-th recorded value, capped at the recorded maximum.  0 if empty. */
uint64_t hist_quantile(const hist *h, double q);

/* The largest recorded value (exact). */
uint64_t hist_max(const hist *h);

#endif
