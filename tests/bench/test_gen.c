/* The vote generator (bench/gen.c): the mix of kinds and the rule that a
 * (poll, voter) never has two votes in flight. */
#include <criterion/criterion.h>
#include <string.h>

#include "bench/gen.h"
#include "common/util.h"

static tally_config_t *conf(const char *mode) {
    tally_config_t *c = config_new_defaults();
    char err[256];
    cr_assert_eq(config_set(c, "poll.p", "options", "a,b,c", err, sizeof err), 0);
    cr_assert_eq(config_set(c, "poll.p", "mode", mode, err, sizeof err), 0);
    cr_assert_eq(config_validate(c, err, sizeof err), 0);
    return c;
}

Test(gen, ranks_stay_in_range) {
    for (uint32_t n = 1; n < 5000; n = n * 2 + 1)
        for (double u = 0; u < 1; u += 0.0625) {
            cr_assert_lt(gen_rank(DIST_UNIFORM, 1, n, u), n);
            cr_assert_lt(gen_rank(DIST_ZIPF, 1.0, n, u), n);
            cr_assert_lt(gen_rank(DIST_ZIPF, 0.7, n, u), n);
            cr_assert_lt(gen_rank(DIST_ZIPF, 2.0, n, u), n);
        }
    cr_assert_lt(gen_rank(DIST_ZIPF, 1.0, 10, 0.9999999999), 10);
}

Test(gen, zipf_favours_low_ranks) {
    rng_t r;
    rng_seed(&r, 7);
    uint64_t first = 0, n = 100000;
    for (uint64_t i = 0; i < n; i++)
        first += gen_rank(DIST_ZIPF, 1.0, 1000, rng_unit(&r)) == 0;
    /* P(rank 0) = log(2)/log(1001) ~ 10% */
    cr_assert(first > n / 14 && first < n / 7, "rank 0 drawn %llu times",
              (unsigned long long)first);
}

Test(gen, mix_follows_the_ratios) {
    tally_config_t *c = conf("changeable");
    const poll_conf_t *polls[] = {&c->polls[0]};
    gen_t g;
    gen_init(&g, polls, 1, 1000000, DIST_UNIFORM, 1, 0.2, 0.3, 42);
    gen_vote_t v;
    for (int i = 0; i < 100000; i++) {
        cr_assert_eq(gen_next(&g, &v), 0);
        gen_done(&g, &v);
    }
    cr_assert(g.kinds[VOTE_NEW] > 48000 && g.kinds[VOTE_NEW] < 52000);
    cr_assert(g.kinds[VOTE_REPEAT] > 18500 && g.kinds[VOTE_REPEAT] < 21500);
    cr_assert(g.kinds[VOTE_CHANGE] > 28500 && g.kinds[VOTE_CHANGE] < 31500);
    gen_free(&g);
    config_free(c);
}

Test(gen, repeats_and_changes_follow_the_last_sent_option) {
    tally_config_t *c = conf("changeable");
    const poll_conf_t *polls[] = {&c->polls[0]};
    gen_t g;
    gen_init(&g, polls, 1, 50, DIST_ZIPF, 1, 0.4, 0.4, 3);
    int last[50];
    memset(last, -1, sizeof last);
    gen_vote_t v;
    for (int i = 0; i < 20000; i++) {
        cr_assert_eq(gen_next(&g, &v), 0);
        cr_assert_lt(v.voter, 50);
        if (v.kind == VOTE_NEW)
            cr_assert_eq(last[v.voter], -1, "a new voter never voted");
        else if (v.kind == VOTE_REPEAT)
            cr_assert_eq(v.option, last[v.voter]);
        else
            cr_assert(v.option != last[v.voter] && last[v.voter] >= 0);
        last[v.voter] = v.option;
        gen_done(&g, &v);
    }
    gen_free(&g);
    config_free(c);
}

Test(gen, never_two_votes_of_a_voter_in_flight) {
    tally_config_t *c = conf("one-per-voter");
    const poll_conf_t *polls[] = {&c->polls[0]};
    gen_t g;
    enum { VOTERS = 40, INFLIGHT = 32 };
    gen_init(&g, polls, 1, VOTERS, DIST_ZIPF, 1.2, 0.5, 0.5, 9);
    gen_vote_t fl[INFLIGHT];
    int busy[VOTERS] = {0};
    rng_t r;
    rng_seed(&r, 1);
    int n = 0;
    for (int i = 0; i < 200000; i++) {
        /* Fill up, then complete a random one: like connections answering
         * out of order. */
        while (n < INFLIGHT) {
            gen_vote_t v;
            if (gen_next(&g, &v) != 0)
                break;
            cr_assert_eq(busy[v.voter], 0, "voter %u already in flight", v.voter);
            busy[v.voter] = 1;
            fl[n++] = v;
        }
        int k = (int)(rng_next(&r) % (uint64_t)n);
        busy[fl[k].voter] = 0;
        gen_done(&g, &fl[k]);
        fl[k] = fl[--n];
    }
    gen_free(&g);
    config_free(c);
}

Test(gen, all_voters_busy_blocks_instead_of_doubling_up) {
    tally_config_t *c = conf("changeable");
    const poll_conf_t *polls[] = {&c->polls[0]};
    gen_t g;
    gen_init(&g, polls, 1, 3, DIST_UNIFORM, 1, 0.5, 0.5, 5);
    gen_vote_t v[3], extra;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(gen_next(&g, &v[i]), 0);
    cr_assert_eq(gen_next(&g, &extra), -1);
    gen_done(&g, &v[1]);
    cr_assert_eq(gen_next(&g, &extra), 0);
    cr_assert_eq(extra.voter, v[1].voter);
    gen_free(&g);
    config_free(c);
}
