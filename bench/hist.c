#include "bench/hist.h"

#include <math.h>
#include <string.h>

#include "common/util.h"

/* Index layout, S = sub_bits, H = 2^(S-1):
 *   v < 2^S:  idx = v                              (unit-width buckets)
 *   else:     e = floor(log2 v), shift = e - S + 1,
 *             idx = shift * H + (v >> shift)       (v >> shift is in [H, 2H))
 * Consecutive octaves follow each other without gaps: octave e = S starts at
 * idx 2^S = 2H, and each further octave adds H buckets. */

static inline int ilog2(uint64_t v) { return 63 - __builtin_clzll(v); }

size_t hist_index(const hist_t *h, uint64_t v) {
    if (v > h->highest)
        v = h->highest;
    if (v < ((uint64_t)1 << h->sub_bits))
        return (size_t)v;
    int shift = ilog2(v) - h->sub_bits + 1;
    return ((size_t)shift << (h->sub_bits - 1)) + (size_t)(v >> shift);
}

uint64_t hist_bucket_low(const hist_t *h, size_t idx) {
    if (idx < ((size_t)1 << h->sub_bits))
        return idx;
    size_t half = (size_t)1 << (h->sub_bits - 1);
    int shift = (int)(idx / half) - 1;
    uint64_t m = (uint64_t)(idx - (size_t)shift * half);
    return m << shift;
}

uint64_t hist_bucket_high(const hist_t *h, size_t idx) {
    if (idx < ((size_t)1 << h->sub_bits))
        return idx;
    size_t half = (size_t)1 << (h->sub_bits - 1);
    int shift = (int)(idx / half) - 1;
    uint64_t m = (uint64_t)(idx - (size_t)shift * half);
    return ((m + 1) << shift) - 1;
}

void hist_init(hist_t *h, int sub_bits, uint64_t highest) {
    tally_assert(sub_bits >= 2 && sub_bits <= 20);
    if (highest < ((uint64_t)1 << sub_bits))
        highest = (uint64_t)1 << sub_bits;
    if (highest > (UINT64_MAX >> 1))
        highest = UINT64_MAX >> 1; /* keeps (m + 1) << shift in range */
    memset(h, 0, sizeof *h);
    h->sub_bits = sub_bits;
    h->highest = highest;
    h->nbuckets = hist_index(h, highest) + 1;
    h->counts = xcalloc(h->nbuckets, sizeof *h->counts);
    h->min = UINT64_MAX;
}

void hist_free(hist_t *h) {
    free(h->counts);
    h->counts = NULL;
}

void hist_reset(hist_t *h) {
    memset(h->counts, 0, h->nbuckets * sizeof *h->counts);
    h->total = 0;
    h->min = UINT64_MAX;
    h->max = 0;
    h->sum = 0;
}

void hist_record_n(hist_t *h, uint64_t v, uint64_t n) {
    if (n == 0)
        return;
    h->counts[hist_index(h, v)] += n;
    h->total += n;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->sum += (long double)v * (long double)n;
}

void hist_merge(hist_t *dst, const hist_t *src) {
    tally_assert(dst->sub_bits == src->sub_bits && dst->nbuckets == src->nbuckets);
    if (src->total == 0)
        return;
    for (size_t i = 0; i < src->nbuckets; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t hist_percentile(const hist_t *h, double p) {
    if (h->total == 0)
        return 0;
    if (p >= 100.0)
        return h->max;
    if (p < 0)
        p = 0;
    /* The rank of the sample we want, 1-based: ceil so that p99 of 100
     * samples is the 99th, never the 100th. */
    uint64_t rank = (uint64_t)ceill((long double)p / 100.0L * (long double)h->total);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < h->nbuckets; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(h, i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double hist_mean(const hist_t *h) {
    return h->total ? (double)(h->sum / (long double)h->total) : 0.0;
}
