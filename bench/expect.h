/* The verify arithmetic: what the published totals must be after a run,
 * from the votes that got 202, applying each poll's mode the way the engine
 * does:
 *   one-per-voter  a voter's first accepted vote counts, later ones don't;
 *   changeable     a voter's last accepted vote counts (a change moves one
 *                  vote from the old option to the new one);
 *   unlimited      every accepted vote counts.
 * Votes must be fed per voter in the order the server received them. The
 * load generator guarantees that by never having two votes of one (poll,
 * voter) in flight: their order of completion is then their order of
 * arrival.
 *
 * Voters are dense indices 0..nvoters-1 of voters new to the poll (bench
 * voter ids carry a per-run prefix), so the run's effect is a delta that
 * adds to whatever the poll held before. */
#ifndef BENCH_EXPECT_H
#define BENCH_EXPECT_H

#include <stdint.h>

#include "common/config.h"

#define EXPECT_NONE UINT16_MAX

typedef struct {
    poll_mode_t mode;
    int noptions;
    int64_t *delta;    /* [noptions]: the run's effect on each option */
    uint16_t *counted; /* [nvoters]: the option the voter's vote counts for */
    uint32_t nvoters;
    uint64_t accepted; /* 202s seen */
} expect_poll_t;

void expect_poll_init(expect_poll_t *x, poll_mode_t mode, int noptions, uint32_t nvoters);
void expect_poll_free(expect_poll_t *x);
/* Voter's vote for option got 202. */
void expect_poll_accept(expect_poll_t *x, uint32_t voter, int option);
/* out[k] = baseline[k] + delta[k] (baseline NULL: zeros). Returns -1 when an
 * option would go negative: the baseline was not what the server held. */
int expect_poll_totals(const expect_poll_t *x, const uint64_t *baseline, uint64_t *out);
/* Sums another shard's delta into x (the engine bench keeps one per thread). */
void expect_poll_add_delta(expect_poll_t *x, const expect_poll_t *other);

#endif
