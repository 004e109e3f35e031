/* A log-linear histogram of non-negative integers (latencies in ns), in the
 * manner of HdrHistogram: values below 2^sub_bits are counted exactly; above
 * that every power-of-two range is split into 2^(sub_bits-1) equal buckets,
 * so a value is known to within a relative error of 2^-(sub_bits-1).
 *
 * With sub_bits = 11 (the default) that is 0.1%: 3 significant digits.
 * Recording is one clz and an increment; no allocation after hist_new().
 * @locality one thread at a time */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS_DEFAULT 11

typedef struct {
    int sub_bits;
    uint64_t highest; /* values above are clamped here (max stays exact) */
    size_t nbuckets;
    uint64_t *counts; /* [nbuckets] */
    uint64_t total;
    uint64_t min, max; /* exact; min is UINT64_MAX when empty */
    long double sum;   /* for the mean */
} hist_t;

/* sub_bits in [2, 20]; highest >= 2^sub_bits is the largest value told apart
 * from larger ones. */
void hist_init(hist_t *h, int sub_bits, uint64_t highest);
void hist_free(hist_t *h);
void hist_reset(hist_t *h);

void hist_record_n(hist_t *h, uint64_t v, uint64_t n);
static inline void hist_record(hist_t *h, uint64_t v) { hist_record_n(h, v, 1); }
/* dst += src; both must have the same sub_bits and highest. */
void hist_merge(hist_t *dst, const hist_t *src);

/* Bucket arithmetic, exposed for tests. */
size_t hist_index(const hist_t *h, uint64_t v);
uint64_t hist_bucket_low(const hist_t *h, size_t idx);  /* smallest value in the bucket */
uint64_t hist_bucket_high(const hist_t *h, size_t idx); /* largest value in the bucket */

/* The value at percentile p (0..100]: the highest value of the bucket that
 * holds the ceil(p% * count)-th smallest sample, capped at max. 0 when empty. */
uint64_t hist_percentile(const hist_t *h, double p);
double hist_mean(const hist_t *h);
static inline uint64_t hist_count(const hist_t *h) { return h->total; }

#endif
