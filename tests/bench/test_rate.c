/* Open-loop rate control arithmetic of bench/rate.c. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "bench/rate.h"

#define MS 1000000ull
#define S 1000000000ull

Test(rate, intended_times_are_evenly_spaced) {
    rate_t r;
    rate_init(&r, 1000, 5 * S);
    cr_assert_eq(rate_intended_ns(&r, 0), 5 * S);
    cr_assert_eq(rate_intended_ns(&r, 1), 5 * S + 1 * MS);
    cr_assert_eq(rate_intended_ns(&r, 1000), 6 * S);
    cr_assert_eq(rate_intended_ns(&r, 1500), 6 * S + 500 * MS);
}

Test(rate, fractional_rates) {
    rate_t r;
    rate_init(&r, 0.5, 0); /* one every 2 s */
    cr_assert_eq(rate_intended_ns(&r, 3), 6 * S);
    rate_init(&r, 3, 0); /* 333333333.33 ns apart: floors, never drifts */
    cr_assert_eq(rate_intended_ns(&r, 1), 333333333);
    cr_assert_eq(rate_intended_ns(&r, 2), 666666666);
    cr_assert_eq(rate_intended_ns(&r, 3), 1 * S);
    cr_assert_eq(rate_intended_ns(&r, 3000000), 1000000 * S);
}

Test(rate, no_overflow_for_long_runs) {
    rate_t r;
    rate_init(&r, 1e6, 0);
    /* 10^12 requests at 1M/s: 10^6 s; k * 1e9 would overflow 64 bits. */
    cr_assert_eq(rate_intended_ns(&r, 1000000000000ull), 1000000ull * S);
}

Test(rate, due_counts) {
    rate_t r;
    rate_init(&r, 1000, 10 * S);
    cr_assert_eq(rate_due(&r, 9 * S), 0, "nothing before the start");
    cr_assert_eq(rate_due(&r, 10 * S), 1, "request 0 is due at the start");
    cr_assert_eq(rate_due(&r, 10 * S + MS - 1), 1);
    cr_assert_eq(rate_due(&r, 10 * S + MS), 2);
    cr_assert_eq(rate_due(&r, 11 * S), 1001);
}

Test(rate, due_agrees_with_intended_everywhere) {
    /* For awkward rates, "due" must count exactly the requests whose
     * intended time has come. */
    double rates[] = {3, 7.5, 999.9, 12345.678, 1e6 / 3};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        rate_t r;
        rate_init(&r, rates[i], 123456789);
        for (uint64_t k = 0; k < 5000; k += 7) {
            uint64_t t = rate_intended_ns(&r, k);
            cr_assert_eq(rate_due(&r, t), k + 1, "rate %g k %llu", rates[i], (unsigned long long)k);
            cr_assert_eq(rate_due(&r, t - 1), k, "rate %g k %llu", rates[i], (unsigned long long)k);
        }
    }
}

Test(rate, wait_until_due) {
    rate_t r;
    rate_init(&r, 100, 0); /* every 10 ms */
    cr_assert_eq(rate_wait_ns(&r, 5, 0), 50 * MS);
    cr_assert_eq(rate_wait_ns(&r, 5, 45 * MS), 5 * MS);
    cr_assert_eq(rate_wait_ns(&r, 5, 50 * MS), 0);
    cr_assert_eq(rate_wait_ns(&r, 5, 80 * MS), 0, "overdue: send now");
}

Test(rate, latency_counts_from_the_intended_time) {
    /* A server stall of 1 s at 1000/s: the request due at 0.5 s but sent at
     * 1 s and answered at 1.001 s waited 501 ms, not 1 ms. */
    rate_t r;
    rate_init(&r, 1000, 0);
    uint64_t intended = rate_intended_ns(&r, 500);
    cr_assert_eq(rate_latency_ns(intended, 1 * S + 1 * MS), 501 * MS);
    cr_assert_eq(rate_latency_ns(intended, intended - 1), 0, "a clock going back is 0, not huge");
}
