/* The verify arithmetic (bench/expect.c) for the three poll modes, and the
 * reading of published results (bench/verify.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/expect.h"
#include "bench/verify.h"
#include "common/util.h"
#include "publisher/publisher.h"

enum { A, B, C };

static void totals(const expect_poll_t *x, const uint64_t *base, uint64_t *out) {
    cr_assert_eq(expect_poll_totals(x, base, out), 0);
}

Test(expect, one_per_voter_first_accepted_vote_counts) {
    expect_poll_t x;
    expect_poll_init(&x, MODE_ONE_PER_VOTER, 3, 4);
    expect_poll_accept(&x, 0, A);
    expect_poll_accept(&x, 0, B); /* change: ignored */
    expect_poll_accept(&x, 0, A); /* repeat: ignored */
    expect_poll_accept(&x, 1, C);
    expect_poll_accept(&x, 2, B);
    expect_poll_accept(&x, 1, A);
    uint64_t t[3];
    totals(&x, NULL, t);
    cr_assert_eq(t[A], 1);
    cr_assert_eq(t[B], 1);
    cr_assert_eq(t[C], 1);
    cr_assert_eq(x.accepted, 6);
    expect_poll_free(&x);
}

Test(expect, changeable_last_accepted_vote_counts) {
    expect_poll_t x;
    expect_poll_init(&x, MODE_CHANGEABLE, 3, 4);
    expect_poll_accept(&x, 0, A);
    expect_poll_accept(&x, 0, B); /* moves 0's vote A -> B */
    expect_poll_accept(&x, 0, B); /* repeat: nothing */
    expect_poll_accept(&x, 1, C);
    expect_poll_accept(&x, 1, A); /* C -> A */
    expect_poll_accept(&x, 2, C);
    expect_poll_accept(&x, 0, C); /* B -> C */
    uint64_t t[3];
    totals(&x, NULL, t);
    cr_assert_eq(t[A], 1, "voter 1");
    cr_assert_eq(t[B], 0);
    cr_assert_eq(t[C], 2, "voters 0 and 2");
    cr_assert_eq(t[A] + t[B] + t[C], 3, "one vote per distinct voter");
    expect_poll_free(&x);
}

Test(expect, unlimited_every_accepted_vote_counts) {
    expect_poll_t x;
    expect_poll_init(&x, MODE_UNLIMITED, 3, 2);
    cr_assert_null(x.counted, "no per-voter state in unlimited mode");
    expect_poll_accept(&x, 0, A);
    expect_poll_accept(&x, 0, A);
    expect_poll_accept(&x, 1, B);
    expect_poll_accept(&x, 0, C);
    uint64_t t[3];
    totals(&x, NULL, t);
    cr_assert_eq(t[A], 2);
    cr_assert_eq(t[B], 1);
    cr_assert_eq(t[C], 1);
    expect_poll_free(&x);
}

Test(expect, the_run_adds_to_the_baseline) {
    /* The poll held votes before the run; bench voters are new to it. */
    expect_poll_t x;
    expect_poll_init(&x, MODE_CHANGEABLE, 3, 2);
    expect_poll_accept(&x, 0, A);
    expect_poll_accept(&x, 0, B);
    expect_poll_accept(&x, 1, B);
    uint64_t base[3] = {10, 20, 30}, t[3];
    totals(&x, base, t);
    cr_assert_eq(t[A], 10);
    cr_assert_eq(t[B], 22);
    cr_assert_eq(t[C], 30);
    expect_poll_free(&x);
}

Test(expect, negative_total_means_a_bad_baseline) {
    expect_poll_t x;
    expect_poll_init(&x, MODE_CHANGEABLE, 2, 1);
    x.delta[0] = -1; /* only reachable if a baseline was wrong */
    uint64_t t[2];
    cr_assert_eq(expect_poll_totals(&x, NULL, t), -1);
    expect_poll_free(&x);
}

Test(expect, shards_sum_their_deltas) {
    expect_poll_t a, b, sum;
    expect_poll_init(&a, MODE_CHANGEABLE, 2, 2);
    expect_poll_init(&b, MODE_CHANGEABLE, 2, 2);
    expect_poll_init(&sum, MODE_CHANGEABLE, 2, 0);
    expect_poll_accept(&a, 0, 0);
    expect_poll_accept(&a, 0, 1);
    expect_poll_accept(&b, 0, 0); /* another shard's voter 0: a different voter */
    expect_poll_add_delta(&sum, &a);
    expect_poll_add_delta(&sum, &b);
    uint64_t t[2];
    totals(&sum, NULL, t);
    cr_assert_eq(t[0], 1);
    cr_assert_eq(t[1], 1);
    cr_assert_eq(sum.accepted, 3);
    expect_poll_free(&a);
    expect_poll_free(&b);
    expect_poll_free(&sum);
}

/* ---- published JSON ---- */

static poll_conf_t *make_poll(const char *id, const char *csv) {
    tally_config_t *c = config_new_defaults();
    char err[256], sect[64];
    snprintf(sect, sizeof sect, "poll.%s", id);
    cr_assert_eq(config_set(c, sect, "options", csv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(config_validate(c, err, sizeof err), 0);
    return &c->polls[0]; /* leaked with its config: a test */
}

Test(verify, parses_what_the_publisher_renders) {
    poll_conf_t *p = make_poll("demo", "red,green,blue");
    uint64_t counts[3] = {7, 0, 9007199254740992ull /* 2^53: still exact */}, got[3];
    buf_t b = {0};
    pub_render_json(p, counts, 1700000000000ull, 0, &b);
    char err[256];
    cr_assert_eq(verify_parse_poll(b.data, b.len, p, got, err, sizeof err), 0, "%s", err);
    cr_assert_arr_eq(got, counts, sizeof counts);
    buf_free(&b);
}

Test(verify, refuses_another_poll_or_missing_options) {
    poll_conf_t *p = make_poll("demo", "red,green");
    uint64_t got[2];
    char err[256];
    const char *other = "{\"poll\":\"x\",\"options\":[]}";
    cr_assert_eq(verify_parse_poll(other, strlen(other), p, got, err, sizeof err), -1);
    const char *missing = "{\"poll\":\"demo\",\"options\":[{\"id\":\"red\",\"votes\":1}]}";
    cr_assert_eq(verify_parse_poll(missing, strlen(missing), p, got, err, sizeof err), -1);
    cr_assert(strstr(err, "green"), "%s", err);
    cr_assert_eq(verify_parse_poll("{", 1, p, got, err, sizeof err), -1);
}

Test(verify, waits_for_the_expected_totals_and_prints_a_diff) {
    poll_conf_t *p = make_poll("demo", "red,green");
    char dir[] = "/tmp/bench-verify.XXXXXX", sub[64], path[128];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(sub, sizeof sub, "%s/polls", dir);
    cr_assert_eq(mkdir_p(sub), 0);
    snprintf(path, sizeof path, "%s/demo.json", sub);
    uint64_t counts[2] = {3, 4};
    buf_t b = {0};
    pub_render_json(p, counts, 0, 0, &b);
    cr_assert_eq(write_file_atomic(path, b.data, b.len, 0), 0);
    buf_free(&b);

    uint64_t want_ok[2] = {3, 4}, want_bad[2] = {3, 5}, waited;
    verify_item_t it = {p, want_ok};
    cr_assert_eq(verify_wait(dir, &it, 1, 1000, stderr, &waited), 0);
    char *diff = NULL;
    size_t dlen = 0;
    FILE *mem = open_memstream(&diff, &dlen);
    it.expected = want_bad;
    cr_assert_eq(verify_wait(dir, &it, 1, 50, mem, &waited), -1);
    fclose(mem);
    cr_assert(strstr(diff, "green") && strstr(diff, "-1"), "%s", diff);
    cr_assert_geq(waited, 50);
    free(diff);
    unlink(path);
    rmdir(sub);
    rmdir(dir);
}
