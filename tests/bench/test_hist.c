/* The log-linear histogram of bench/hist.c. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "bench/hist.h"

static hist_t h;
static void setup(void) { hist_init(&h, 11, 3600ull * 1000000000ull); }
static void teardown(void) { hist_free(&h); }
TestSuite(hist, .init = setup, .fini = teardown);

Test(hist, empty) {
    cr_assert_eq(hist_count(&h), 0);
    cr_assert_eq(hist_percentile(&h, 50), 0);
    cr_assert_eq(hist_percentile(&h, 100), 0);
    cr_assert_float_eq(hist_mean(&h), 0.0, 1e-12);
}

Test(hist, small_values_are_exact) {
    /* Below 2^sub_bits every value has a bucket of its own. */
    for (uint64_t v = 0; v < 2048; v++) {
        size_t i = hist_index(&h, v);
        cr_assert_eq(i, v);
        cr_assert_eq(hist_bucket_low(&h, i), v);
        cr_assert_eq(hist_bucket_high(&h, i), v);
    }
}

Test(hist, buckets_tile_the_range_without_gaps) {
    /* Each bucket starts one past the previous one's end, and every value
     * maps into the bucket whose bounds contain it. */
    size_t last = hist_index(&h, h.highest);
    for (size_t i = 1; i <= last; i++)
        cr_assert_eq(hist_bucket_low(&h, i), hist_bucket_high(&h, i - 1) + 1, "bucket %zu", i);
    uint64_t vals[] = {2047, 2048, 2049, 4095, 4096, 123456789, 1000000000ull, h.highest};
    for (size_t k = 0; k < sizeof vals / sizeof vals[0]; k++) {
        size_t i = hist_index(&h, vals[k]);
        cr_assert(hist_bucket_low(&h, i) <= vals[k] && vals[k] <= hist_bucket_high(&h, i));
    }
}

Test(hist, relative_error_within_three_digits) {
    /* sub_bits 11: a bucket is at most 1/1024 of its values wide. */
    for (uint64_t v = 2048; v < (1ull << 40); v = v * 3 / 2 + 7) {
        size_t i = hist_index(&h, v);
        uint64_t lo = hist_bucket_low(&h, i), hi = hist_bucket_high(&h, i);
        cr_assert((double)(hi - lo) / (double)lo <= 1.0 / 1024 + 1e-12, "v=%llu",
                  (unsigned long long)v);
    }
}

Test(hist, percentiles_of_1_to_10000) {
    for (uint64_t v = 1; v <= 10000; v++)
        hist_record(&h, v * 1000); /* 1 us .. 10 ms in ns */
    cr_assert_eq(hist_count(&h), 10000);
    cr_assert_eq(h.min, 1000);
    cr_assert_eq(h.max, 10000000);
    struct {
        double p;
        uint64_t want;
    } cases[] = {{50, 5000000}, {90, 9000000}, {99, 9900000}, {99.9, 9990000}, {100, 10000000}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint64_t got = hist_percentile(&h, cases[k].p);
        double err = ((double)got - (double)cases[k].want) / (double)cases[k].want;
        cr_assert(err >= 0 && err <= 1.0 / 1024, "p%g: got %llu want ~%llu", cases[k].p,
                  (unsigned long long)got, (unsigned long long)cases[k].want);
    }
    cr_assert_float_eq(hist_mean(&h), 5000500.0, 1e-3);
}

Test(hist, percentile_rank_rounds_up) {
    /* 100 samples: p99 is the 99th smallest, not the 100th. */
    for (uint64_t v = 1; v <= 100; v++)
        hist_record(&h, v);
    cr_assert_eq(hist_percentile(&h, 99), 99);
    cr_assert_eq(hist_percentile(&h, 99.5), 100);
    cr_assert_eq(hist_percentile(&h, 1), 1);
    cr_assert_eq(hist_percentile(&h, 0), 1);
}

Test(hist, percentile_is_capped_at_max) {
    hist_record(&h, 1000001); /* its bucket reaches past it */
    cr_assert_eq(hist_percentile(&h, 50), 1000001);
    cr_assert_eq(hist_percentile(&h, 99.9), 1000001);
}

Test(hist, values_above_highest_are_clamped_but_max_is_exact) {
    hist_t s;
    hist_init(&s, 4, 1000);
    hist_record(&s, 5000);
    cr_assert_eq(hist_count(&s), 1);
    cr_assert_eq(s.max, 5000);
    cr_assert_eq(hist_percentile(&s, 100), 5000);
    cr_assert_leq(hist_index(&s, 5000), s.nbuckets - 1);
    hist_free(&s);
}

Test(hist, record_n_and_merge) {
    hist_t o;
    hist_init(&o, 11, 3600ull * 1000000000ull);
    hist_record_n(&h, 10, 3);
    hist_record_n(&o, 20, 1);
    hist_record(&o, 5);
    hist_merge(&h, &o);
    cr_assert_eq(hist_count(&h), 5);
    cr_assert_eq(h.min, 5);
    cr_assert_eq(h.max, 20);
    cr_assert_eq(hist_percentile(&h, 20), 5);
    cr_assert_eq(hist_percentile(&h, 80), 10);
    cr_assert_eq(hist_percentile(&h, 100), 20);
    cr_assert_float_eq(hist_mean(&h), (30.0 + 20 + 5) / 5, 1e-9);
    hist_reset(&h);
    cr_assert_eq(hist_count(&h), 0);
    cr_assert_eq(hist_percentile(&h, 99), 0);
    hist_free(&o);
}
