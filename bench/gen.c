#include "bench/gen.h"

#include <math.h>
#include <string.h>

#include "common/util.h"

#define REDRAWS 8 /* tries at a popular voter before scanning for a free one */

const char *vote_kind_name(vote_kind_t k) {
    switch (k) {
    case VOTE_NEW: return "new";
    case VOTE_REPEAT: return "repeat";
    case VOTE_CHANGE: return "change";
    default: return "?";
    }
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rng_seed(rng_t *r, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_next(rng_t *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint32_t gen_rank(gen_dist_t dist, double s, uint32_t n, double u) {
    if (n <= 1)
        return 0;
    double x;
    if (dist == DIST_UNIFORM) {
        x = u * (double)n;
    } else if (fabs(s - 1.0) < 1e-9) {
        x = pow((double)n + 1.0, u) - 1.0;
    } else {
        double a = 1.0 - s;
        x = pow((pow((double)n + 1.0, a) - 1.0) * u + 1.0, 1.0 / a) - 1.0;
    }
    if (!(x >= 0)) /* NaN too */
        x = 0;
    uint32_t r = x >= (double)n ? n - 1 : (uint32_t)x;
    return r;
}

void gen_init(gen_t *g, const poll_conf_t *const *polls, int npolls, uint32_t nvoters,
              gen_dist_t dist, double zipf_s, double repeat, double change, uint64_t seed) {
    tally_assert(npolls > 0 && nvoters > 0);
    tally_assert(repeat >= 0 && change >= 0 && repeat + change <= 1.0 + 1e-9);
    memset(g, 0, sizeof *g);
    g->npolls = npolls;
    g->nvoters = nvoters;
    g->dist = dist;
    g->zipf_s = zipf_s;
    g->repeat = repeat;
    g->change = change;
    rng_seed(&g->rng, seed);
    g->polls = xcalloc((size_t)npolls, sizeof *g->polls);
    for (int i = 0; i < npolls; i++) {
        g->polls[i].poll = polls[i];
        g->polls[i].last = xcalloc(nvoters, sizeof *g->polls[i].last);
        if (polls[i]->mode != MODE_UNLIMITED)
            g->polls[i].busy = xcalloc(nvoters, 1);
    }
}

void gen_free(gen_t *g) {
    for (int i = 0; i < g->npolls; i++) {
        free(g->polls[i].last);
        free(g->polls[i].busy);
    }
    free(g->polls);
    memset(g, 0, sizeof *g);
}

static inline int is_busy(const gen_poll_t *p, uint32_t v) { return p->busy && p->busy[v]; }

/* A voter that voted and has nothing in flight, by popularity; UINT32_MAX if
 * there is none. */
static uint32_t pick_voted(gen_t *g, gen_poll_t *p) {
    for (int i = 0; i < REDRAWS; i++) {
        uint32_t v = gen_rank(g->dist, g->zipf_s, p->nvoted, rng_unit(&g->rng));
        if (!is_busy(p, v))
            return v;
    }
    /* At most one voter per request in flight is busy, so a scan from a
     * random place finds a free one within (requests in flight + 1) steps. */
    uint32_t start = (uint32_t)(rng_next(&g->rng) % p->nvoted);
    for (uint32_t k = 0; k < p->nvoted; k++) {
        uint32_t v = start + k < p->nvoted ? start + k : start + k - p->nvoted;
        if (!is_busy(p, v))
            return v;
    }
    return UINT32_MAX;
}

int gen_next(gen_t *g, gen_vote_t *out) {
    int pi = (int)(rng_next(&g->rng) % (uint64_t)g->npolls);
    gen_poll_t *p = &g->polls[pi];
    int nopt = p->poll->noptions;
    double u = rng_unit(&g->rng);
    vote_kind_t kind = u < g->repeat               ? VOTE_REPEAT
                       : u < g->repeat + g->change ? VOTE_CHANGE
                                                   : VOTE_NEW;
    if (kind == VOTE_NEW && p->nvoted == g->nvoters) {
        /* Everyone has voted: re-vote in the configured proportion. */
        double rc = g->repeat + g->change;
        kind = rc > 0 ? (rng_unit(&g->rng) * rc < g->repeat ? VOTE_REPEAT : VOTE_CHANGE)
                      : (rng_next(&g->rng) & 1 ? VOTE_REPEAT : VOTE_CHANGE);
    }
    uint32_t voter = UINT32_MAX;
    if (kind != VOTE_NEW && p->nvoted > 0)
        voter = pick_voted(g, p);
    if (voter == UINT32_MAX) {
        if (p->nvoted == g->nvoters)
            return -1; /* all busy */
        kind = VOTE_NEW;
    }
    int option;
    if (kind == VOTE_NEW) {
        voter = p->nvoted++;
        option = (int)(rng_next(&g->rng) % (uint64_t)nopt);
    } else if (kind == VOTE_CHANGE && nopt > 1) {
        option = (p->last[voter] + 1 + (int)(rng_next(&g->rng) % (uint64_t)(nopt - 1))) % nopt;
    } else {
        kind = VOTE_REPEAT; /* a change needs a second option */
        option = p->last[voter];
    }
    p->last[voter] = (uint16_t)option;
    if (p->busy)
        p->busy[voter] = 1;
    g->kinds[kind]++;
    out->poll = pi;
    out->voter = voter;
    out->option = option;
    out->kind = kind;
    return 0;
}

void gen_done(gen_t *g, const gen_vote_t *v) {
    gen_poll_t *p = &g->polls[v->poll];
    if (p->busy) {
        tally_assert(p->busy[v->voter]);
        p->busy[v->voter] = 0;
    }
}
