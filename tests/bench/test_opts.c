/* Numeric option parsing shared by every tally-bench subcommand. */
#include <criterion/criterion.h>

#include "bench/bench.h"

Test(opts, counts_take_suffixes) {
    uint64_t u = 0;
    cr_assert_eq(bench_parse_count("10M", &u), 0);
    cr_assert_eq(u, 10000000u);
    cr_assert_eq(bench_parse_count("1.5k", &u), 0);
    cr_assert_eq(u, 1500u);
    cr_assert_neq(bench_parse_count("-1", &u), 0);
    cr_assert_neq(bench_parse_count("3x", &u), 0);
}

Test(opts, ranged_ints_refuse_out_of_range_and_leave_the_target) {
    int v = 7;
    cr_assert_eq(bench_parse_int("256", 1, 256, &v), 0);
    cr_assert_eq(v, 256);
    v = 7;
    cr_assert_neq(bench_parse_int("257", 1, 256, &v), 0);
    cr_assert_neq(bench_parse_int("0", 1, 256, &v), 0);
    cr_assert_neq(bench_parse_int("5G", 1, 256, &v), 0);
    cr_assert_neq(bench_parse_int("", 1, 256, &v), 0);
    cr_assert_eq(v, 7);
}
