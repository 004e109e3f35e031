/* The vote generator of the load test: which poll, voter and option each
 * request carries.
 *
 * A vote is one of three kinds, drawn with the configured ratios:
 *   new     the poll's next voter that never voted (voters are numbered
 *           0..nvoters-1 in the order they first vote);
 *   repeat  a voter that voted votes again for the option it last sent;
 *   change  a voter that voted votes for another option.
 * Who re-votes follows the popularity distribution over the voters that
 * voted: uniform, or zipf (voter 0 the most active). Once every voter has
 * voted, new votes become repeats or changes.
 *
 * Invariant that makes verification possible: a (poll, voter) never has two
 * votes in flight at once (polls in unlimited mode excepted: order does not
 * matter there). gen_next() skips busy voters; gen_done() frees one.
 * @locality one thread */
#ifndef BENCH_GEN_H
#define BENCH_GEN_H

#include <stdint.h>

#include "common/config.h"

typedef enum { DIST_UNIFORM = 0, DIST_ZIPF = 1 } gen_dist_t;
typedef enum { VOTE_NEW = 0, VOTE_REPEAT = 1, VOTE_CHANGE = 2, VOTE_KINDS = 3 } vote_kind_t;
const char *vote_kind_name(vote_kind_t k);

typedef struct {
    uint64_t s[4];
} rng_t;
void rng_seed(rng_t *r, uint64_t seed);
uint64_t rng_next(rng_t *r);              /* xoshiro256** */
static inline double rng_unit(rng_t *r) { /* [0, 1) */
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* Rank in [0, n) for a uniform u in [0, 1): uniform, or zipf with exponent
 * s > 0 by inverting the continuous power law x^-s on [1, n+1) (a close,
 * table-free stand-in for the discrete zipf that works for any n). */
uint32_t gen_rank(gen_dist_t dist, double s, uint32_t n, double u);

typedef struct {
    const poll_conf_t *poll;
    uint32_t nvoted; /* voters 0..nvoted-1 have voted */
    uint16_t *last;  /* [nvoters]: option last sent */
    uint8_t *busy;   /* [nvoters]: a vote in flight (not for unlimited) */
} gen_poll_t;

typedef struct {
    gen_poll_t *polls;
    int npolls;
    uint32_t nvoters;
    gen_dist_t dist;
    double zipf_s;
    double repeat, change;
    rng_t rng;
    uint64_t kinds[VOTE_KINDS]; /* votes handed out, by kind */
} gen_t;

typedef struct {
    int poll; /* index into the gen's polls */
    uint32_t voter;
    int option;
    vote_kind_t kind;
} gen_vote_t;

/* The poll pointers must outlive the generator. repeat + change <= 1. */
void gen_init(gen_t *g, const poll_conf_t *const *polls, int npolls, uint32_t nvoters,
              gen_dist_t dist, double zipf_s, double repeat, double change, uint64_t seed);
void gen_free(gen_t *g);
/* The next vote, marked in flight. -1 when every voter it could pick is busy
 * (only possible when nearly all voters have a vote in flight): try again
 * after a gen_done(). */
int gen_next(gen_t *g, gen_vote_t *v);
/* v's request finished (whatever the answer). */
void gen_done(gen_t *g, const gen_vote_t *v);

#endif
