#include "bench/expect.h"

#include <string.h>

#include "common/util.h"

void expect_poll_init(expect_poll_t *x, poll_mode_t mode, int noptions, uint32_t nvoters) {
    tally_assert(noptions > 0 && noptions < EXPECT_NONE);
    memset(x, 0, sizeof *x);
    x->mode = mode;
    x->noptions = noptions;
    x->delta = xcalloc((size_t)noptions, sizeof *x->delta);
    x->nvoters = nvoters;
    if (mode != MODE_UNLIMITED && nvoters > 0) {
        x->counted = xmalloc((size_t)nvoters * sizeof *x->counted);
        memset(x->counted, 0xff, (size_t)nvoters * sizeof *x->counted); /* EXPECT_NONE */
    }
}

void expect_poll_free(expect_poll_t *x) {
    free(x->delta);
    free(x->counted);
    memset(x, 0, sizeof *x);
}

void expect_poll_accept(expect_poll_t *x, uint32_t voter, int option) {
    tally_assert(option >= 0 && option < x->noptions);
    x->accepted++;
    if (x->mode == MODE_UNLIMITED) {
        x->delta[option]++;
        return;
    }
    tally_assert(voter < x->nvoters);
    uint16_t prev = x->counted[voter];
    if (prev == EXPECT_NONE) {
        x->counted[voter] = (uint16_t)option;
        x->delta[option]++;
    } else if (x->mode == MODE_CHANGEABLE && prev != option) {
        x->counted[voter] = (uint16_t)option;
        x->delta[prev]--;
        x->delta[option]++;
    }
    /* one-per-voter repeat or change, changeable repeat: no effect */
}

int expect_poll_totals(const expect_poll_t *x, const uint64_t *baseline, uint64_t *out) {
    int rc = 0;
    for (int k = 0; k < x->noptions; k++) {
        int64_t v = (int64_t)(baseline ? baseline[k] : 0) + x->delta[k];
        if (v < 0) {
            rc = -1;
            v = 0;
        }
        out[k] = (uint64_t)v;
    }
    return rc;
}

void expect_poll_add_delta(expect_poll_t *x, const expect_poll_t *other) {
    tally_assert(x->noptions == other->noptions);
    for (int k = 0; k < x->noptions; k++)
        x->delta[k] += other->delta[k];
    x->accepted += other->accepted;
}
