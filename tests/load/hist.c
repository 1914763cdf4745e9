/*
 * hist.c - fixed-size log-bucket latency histogram (see hist.h).
 */
#include "hist.h"

/* Bucket of v: values below HIST_LINEAR map to themselves; above, the top
 * bit's position picks the power of two and the next 5 bits the sub-bucket. */
static unsigned bucket_of(uint64_t v)
{
    if (v < HIST_LINEAR)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= 6 */
    unsigned m = (unsigned)(v >> (e - 5)) - HIST_SUB; /* 0..31 */
    return HIST_LINEAR + (e - 6) * HIST_SUB + m;
}

/* The highest value that maps to bucket b. */
static uint64_t bucket_high(unsigned b)
{
    if (b < HIST_LINEAR)
        return b;
    unsigned e = (b - HIST_LINEAR) / HIST_SUB + 6;
    uint64_t m = (b - HIST_LINEAR) % HIST_SUB + HIST_SUB;
    if (e == 63 && m == 2 * HIST_SUB - 1)
        return UINT64_MAX;
    return ((m + 1) << (e - 5)) - 1;
}

void hist_init(hist *h)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        atomic_init(&h->count[i], 0);
    atomic_init(&h->total, 0);
    atomic_init(&h->max, 0);
}

/* Single writer: load+store instead of a locked read-modify-write. */
static void bump(_Atomic uint64_t *a, uint64_t by)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

void hist_record(hist *h, uint64_t v)
{
    bump(&h->count[bucket_of(v)], 1);
    bump(&h->total, 1);
    if (v > atomic_load_explicit(&h->max, memory_order_relaxed))
        atomic_store_explicit(&h->max, v, memory_order_relaxed);
}

void hist_merge_into(hist *dst, const hist *src)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        bump(&dst->count[i], atomic_load_explicit(&src->count[i], memory_order_relaxed));
    bump(&dst->total, atomic_load_explicit(&src->total, memory_order_relaxed));
    uint64_t m = atomic_load_explicit(&src->max, memory_order_relaxed);
    if (m > atomic_load_explicit(&dst->max, memory_order_relaxed))
        atomic_store_explicit(&dst->max, m, memory_order_relaxed);
}

uint64_t hist_total(const hist *h)
{
    return atomic_load_explicit(&h->total, memory_order_relaxed);
}

uint64_t hist_max(const hist *h)
{
    return atomic_load_explicit(&h->max, memory_order_relaxed);
}

uint64_t hist_quantile(const hist *h, double q)
{
    /* sum the buckets rather than trusting total: a concurrent reader may see
     * them slightly out of step */
    uint64_t n = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        n += atomic_load_explicit(&h->count[i], memory_order_relaxed);
    if (n == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    uint64_t rank = (uint64_t)(q * (double)n + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    uint64_t seen = 0, max = hist_max(h);
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += atomic_load_explicit(&h->count[i], memory_order_relaxed);
        if (seen >= rank) {
            uint64_t v = bucket_high(i);
            return v < max ? v : max;
        }
    }
    return max;
}
