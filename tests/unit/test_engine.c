/* tsan: engine workers over a real file log run threads. */
/* engine/engine.h: counting in the three modes, skips, cut-off, totals over
 * partitions, generations; and the workers over a real file log. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <xxhash.h>

#include "engine/engine.h"
#include "log/vlog.h"
#include "unit_helpers.h"

#define NPART 4

static tally_config_t *conf;
static engine_t *eng;
static uint64_t positions[NPART];

enum { P_ONE, P_CHG, P_UNL };

static tally_config_t *make_conf(void) {
    tally_config_t *c = config_new_defaults();
    conf_add_poll(c, "one", "one-per-voter", "a, b, c");
    conf_add_poll(c, "chg", "changeable", "x, y, z");
    conf_add_poll(c, "unl", "unlimited", "p, q");
    conf_finish(c);
    return c;
}

static void setup(void) {
    conf = make_conf();
    eng = engine_new(conf, NPART);
    memset(positions, 0, sizeof positions);
}

static void teardown(void) {
    engine_free(eng);
    eng = NULL;
    config_free(conf);
    conf = NULL;
}

/* Applies one vote in its own batch-less call; the position grows by the
 * frame size a file log would give it. */
static int apply_raw(int part, const uint8_t *rec, size_t len, int64_t ts_override) {
    positions[part] += 8 + len;
    return engine_apply(eng, part, rec, len, positions[part], ts_override);
}

static int apply_at(int part, const char *poll, const char *opt, const char *voter, uint64_t ts,
                    int64_t ts_override) {
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = rec_make(rec, poll, opt, voter, ts);
    return apply_raw(part, rec, n, ts_override);
}

/* One vote in a batch of its own, on the voter's partition. */
static int vote(const char *poll, const char *opt, const char *voter) {
    int part = rec_partition(poll, opt, voter, NPART, 0);
    engine_batch_begin(eng, part);
    int rc = apply_at(part, poll, opt, voter, 1000, -1);
    engine_batch_end(eng, part);
    return rc;
}

static void expect_totals(int poll, const uint64_t *want) {
    const poll_def_t *pc = engine_poll(eng, poll);
    uint64_t got[16];
    engine_poll_totals(eng, poll, got);
    for (int i = 0; i < pc->noptions; i++)
        cr_assert_eq(got[i], want[i], "poll %s option %s: %llu, want %llu", pc->id,
                     pc->options[i].id, (unsigned long long)got[i], (unsigned long long)want[i]);
}

#define TOTALS(poll, ...)                                                                          \
    do {                                                                                           \
        const uint64_t want_[] = {__VA_ARGS__};                                                    \
        cr_assert_eq(sizeof want_ / sizeof want_[0], (size_t)engine_poll(eng, poll)->noptions);    \
        expect_totals(poll, want_);                                                                \
    } while (0)

TestSuite(engine, .init = setup, .fini = teardown);

Test(engine, polls_and_lookup) {
    cr_assert_eq(engine_npolls(eng), 3);
    cr_assert_str_eq(engine_poll(eng, P_CHG)->id, "chg");
    cr_assert_eq(engine_poll_index(eng, "unl", 3), P_UNL);
    cr_assert_eq(engine_poll_index(eng, "one", 3), P_ONE);
    cr_assert_eq(engine_poll_index(eng, "on", 2), -1);
    cr_assert_eq(engine_poll_index(eng, "ones", 4), -1);
    cr_assert_eq(engine_poll_index(eng, "onex", 3), P_ONE, "length bounds the id");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(engine_poll_generation(eng, i), 0);
        uint64_t z[3] = {9, 9, 9};
        engine_poll_totals(eng, i, z);
        cr_assert_eq(z[0], 0);
        cr_assert_eq(z[1], 0);
    }
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_position(eng, p), 0);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.applied + s.skipped + s.after_cutoff, 0);
}

Test(engine, one_per_voter_first_vote_counts) {
    cr_assert_eq(vote("one", "a", "alice"), P_ONE);
    TOTALS(P_ONE, 1, 0, 0);
    /* Repeats, to the same or another option, are ignored. */
    cr_assert_eq(vote("one", "b", "alice"), P_ONE);
    cr_assert_eq(vote("one", "a", "alice"), P_ONE);
    TOTALS(P_ONE, 1, 0, 0);
    vote("one", "b", "bob");
    vote("one", "b", "carol");
    vote("one", "c", "carol");
    TOTALS(P_ONE, 1, 2, 0);
    /* The same voter id in another poll is another voter. */
    vote("chg", "z", "alice");
    TOTALS(P_CHG, 0, 0, 1);
    TOTALS(P_ONE, 1, 2, 0);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.applied, 7, "repeats are applied records");
    cr_assert_eq(s.skipped, 0);
}

Test(engine, changeable_latest_vote_counts) {
    vote("chg", "x", "alice");
    TOTALS(P_CHG, 1, 0, 0);
    uint64_t g = engine_poll_generation(eng, P_CHG);
    vote("chg", "y", "alice");
    TOTALS(P_CHG, 0, 1, 0);
    cr_assert_gt(engine_poll_generation(eng, P_CHG), g, "a change bumps the generation");
    g = engine_poll_generation(eng, P_CHG);
    /* The same option again is a no-op, also for the generation. */
    vote("chg", "y", "alice");
    TOTALS(P_CHG, 0, 1, 0);
    cr_assert_eq(engine_poll_generation(eng, P_CHG), g);
    vote("chg", "x", "bob");
    vote("chg", "z", "alice");
    vote("chg", "x", "alice");
    TOTALS(P_CHG, 2, 0, 0);
    vote("chg", "z", "bob");
    TOTALS(P_CHG, 1, 0, 1);
    /* Many changes back and forth end on the last one. */
    for (int i = 0; i < 100; i++)
        vote("chg", i % 3 == 0 ? "x" : i % 3 == 1 ? "y" : "z", "dave");
    TOTALS(P_CHG, 2, 0, 1); /* i = 99 -> x */
}

Test(engine, unlimited_every_vote_counts) {
    vote("unl", "p", "alice");
    vote("unl", "p", "alice");
    vote("unl", "q", "alice");
    TOTALS(P_UNL, 2, 1);
    /* Voter optional. */
    for (int i = 0; i < 10; i++) {
        int part = i % NPART;
        engine_batch_begin(eng, part);
        cr_assert_eq(apply_at(part, "unl", "q", NULL, 5, -1), P_UNL);
        engine_batch_end(eng, part);
    }
    TOTALS(P_UNL, 2, 11);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.applied, 13);
    cr_assert_eq(s.skipped, 0);
}

Test(engine, voterless_vote_in_voter_modes_is_skipped) {
    engine_batch_begin(eng, 0);
    cr_assert_eq(apply_at(0, "one", "a", NULL, 5, -1), -1);
    cr_assert_eq(apply_at(0, "chg", "x", NULL, 5, -1), -1);
    engine_batch_end(eng, 0);
    TOTALS(P_ONE, 0, 0, 0);
    TOTALS(P_CHG, 0, 0, 0);
    cr_assert_eq(engine_poll_generation(eng, P_ONE), 0);
    cr_assert_eq(engine_stats(eng).skipped, 2);
}

Test(engine, voterless_vote_is_not_also_applied) {
    engine_batch_begin(eng, 0);
    apply_at(0, "one", "a", NULL, 5, -1);
    engine_batch_end(eng, 0);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.applied + s.skipped + s.after_cutoff, 1, "one record counted %llu times",
                 (unsigned long long)(s.applied + s.skipped + s.after_cutoff));
    cr_assert_eq(s.applied, 0);
    cr_assert_eq(s.skipped, 1);
}

Test(engine, unknown_poll_option_and_garbage_are_skipped) {
    uint8_t rec[RECORD_MAX_LEN];
    engine_batch_begin(eng, 1);
    cr_assert_eq(apply_at(1, "nope", "a", "alice", 5, -1), -1);
    cr_assert_eq(apply_at(1, "one", "x", "alice", 5, -1), -1, "x is an option of another poll");
    cr_assert_eq(apply_at(1, "one", "aa", "alice", 5, -1), -1);
    cr_assert_eq(apply_at(1, "On", "a", "alice", 5, -1), -1);
    size_t n = rec_make(rec, "one", "a", "alice", 5);
    rec[0] = 9; /* unknown version */
    cr_assert_eq(apply_raw(1, rec, n, -1), -1);
    cr_assert_eq(apply_raw(1, rec, 3, -1), -1);
    cr_assert_eq(apply_raw(1, (const uint8_t *)"", 0, -1), -1);
    engine_batch_end(eng, 1);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(engine_poll_generation(eng, i), 0);
    TOTALS(P_ONE, 0, 0, 0);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.skipped, 7);
    cr_assert_eq(s.applied, 0);
    /* Skipped records still move the partition on. */
    cr_assert_eq(engine_position(eng, 1), positions[1]);
    /* The voter was not remembered by the skipped votes. */
    vote("one", "b", "alice");
    TOTALS(P_ONE, 0, 1, 0);
}

Test(engine, ids_with_nul_bytes_do_not_match) {
    /* "one\0" + 6 bytes, hashing to the same low 16 bits as "one": the
     * lookup starts at "one"'s slot whatever the table size. */
    char poll[10] = {'o', 'n', 'e', 0};
    uint64_t want = XXH3_64bits("one", 3) & 0xffff;
    for (uint64_t i = 0;; i++) {
        memcpy(poll + 4, &i, 6);
        if ((XXH3_64bits(poll, sizeof poll) & 0xffff) == want)
            break;
    }
    cr_assert_eq(engine_poll_index(eng, poll, sizeof poll), -1);
    uint8_t rec[RECORD_MAX_LEN];
    vote_record_t v = {.ts_ms = 5,
                       .poll = poll,
                       .poll_len = sizeof poll,
                       .option = "a",
                       .option_len = 1,
                       .voter = "alice",
                       .voter_len = 5};
    size_t n = record_encode(&v, rec);
    cr_assert_gt(n, 0);
    engine_batch_begin(eng, 0);
    cr_assert_eq(apply_raw(0, rec, n, -1), -1, "\"one\\0...\" counted as poll one");
    engine_batch_end(eng, 0);
    TOTALS(P_ONE, 0, 0, 0);
}

Test(engine, cutoff) {
    engine_set_cutoff(eng, 10000);
    engine_batch_begin(eng, 0);
    cr_assert_eq(apply_at(0, "unl", "p", NULL, 9999, -1), P_UNL);
    cr_assert_eq(apply_at(0, "unl", "p", NULL, 10000, -1), P_UNL, "the cut-off is inclusive");
    cr_assert_eq(apply_at(0, "unl", "q", NULL, 10001, -1), -1);
    /* The log's own timestamp (ts_ms >= 0) wins over the record's. */
    cr_assert_eq(apply_at(0, "unl", "q", NULL, 5, 20000), -1);
    cr_assert_eq(apply_at(0, "unl", "q", NULL, 50000, 7), P_UNL);
    cr_assert_eq(apply_at(0, "unl", "q", NULL, 50000, 0), P_UNL);
    engine_batch_end(eng, 0);
    TOTALS(P_UNL, 2, 2);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.after_cutoff, 2);
    cr_assert_eq(s.applied, 4);
    cr_assert_eq(engine_position(eng, 0), positions[0]);

    /* A vote after the cut-off does not take the voter's one vote. */
    int part = rec_partition("one", "a", "alice", NPART, 0);
    engine_batch_begin(eng, part);
    cr_assert_eq(apply_at(part, "one", "a", "alice", 10001, -1), -1);
    cr_assert_eq(apply_at(part, "one", "b", "alice", 9000, -1), P_ONE);
    engine_batch_end(eng, part);
    TOTALS(P_ONE, 0, 1, 0);

    /* 0 turns the cut-off off. */
    engine_set_cutoff(eng, 0);
    engine_batch_begin(eng, 0);
    cr_assert_eq(apply_at(0, "unl", "p", NULL, UINT64_MAX, -1), P_UNL);
    engine_batch_end(eng, 0);
    TOTALS(P_UNL, 3, 2);
}

Test(engine, totals_sum_over_partitions) {
    uint64_t want[3] = {0};
    for (int i = 0; i < 400; i++) {
        char voter[32];
        snprintf(voter, sizeof voter, "voter-%d", i);
        int o = i % 7 == 0 ? 2 : i % 2;
        vote("one", o == 0 ? "a" : o == 1 ? "b" : "c", voter);
        want[o]++;
    }
    expect_totals(P_ONE, want);
    /* Every partition got some. */
    for (int p = 0; p < NPART; p++)
        cr_assert_gt(engine_position(eng, p), 0, "partition %d unused", p);
    /* Direct placement: the same option in every partition. */
    for (int p = 0; p < NPART; p++) {
        engine_batch_begin(eng, p);
        for (int k = 0; k <= p; k++)
            apply_at(p, "unl", "q", NULL, 1, -1);
        engine_batch_end(eng, p);
    }
    TOTALS(P_UNL, 0, 1 + 2 + 3 + 4);
}

Test(engine, generation_bumps_only_on_change) {
    uint64_t g[3];
    for (int i = 0; i < 3; i++)
        g[i] = engine_poll_generation(eng, i);

    /* An empty batch. */
    engine_batch_begin(eng, 0);
    engine_batch_end(eng, 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(engine_poll_generation(eng, i), g[i]);

    /* A counted vote bumps its poll only. */
    vote("one", "a", "alice");
    cr_assert_gt(engine_poll_generation(eng, P_ONE), g[P_ONE]);
    cr_assert_eq(engine_poll_generation(eng, P_CHG), g[P_CHG]);
    cr_assert_eq(engine_poll_generation(eng, P_UNL), g[P_UNL]);
    g[P_ONE] = engine_poll_generation(eng, P_ONE);

    /* A repeat does not. */
    vote("one", "b", "alice");
    cr_assert_eq(engine_poll_generation(eng, P_ONE), g[P_ONE]);

    /* A skipped record does not. */
    engine_batch_begin(eng, 2);
    apply_at(2, "one", "zz", "bob", 1, -1);
    engine_batch_end(eng, 2);
    cr_assert_eq(engine_poll_generation(eng, P_ONE), g[P_ONE]);

    /* Many changes in one batch bump once per batch, at its end. */
    engine_batch_begin(eng, 3);
    for (int i = 0; i < 50; i++)
        apply_at(3, "unl", "p", NULL, 1, -1);
    cr_assert_eq(engine_poll_generation(eng, P_UNL), g[P_UNL], "bumped before the batch ended");
    engine_batch_end(eng, 3);
    cr_assert_eq(engine_poll_generation(eng, P_UNL), g[P_UNL] + 1);
}

Test(engine, position_published_at_batch_end) {
    engine_batch_begin(eng, 2);
    apply_at(2, "unl", "p", NULL, 1, -1);
    apply_at(2, "unl", "p", NULL, 1, -1);
    cr_assert_eq(engine_position(eng, 2), 0);
    engine_batch_end(eng, 2);
    cr_assert_eq(engine_position(eng, 2), positions[2]);
    cr_assert_eq(engine_position(eng, 1), 0);
}

Test(engine, stats_count_voters_and_state) {
    vote("one", "a", "alice");
    vote("one", "a", "bob");
    vote("chg", "x", "alice");
    vote("one", "b", "alice");
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.voters, 3);
    cr_assert_gt(s.state_bytes, 0);
}

Test(engine, many_options_totals) {
    tally_config_t *c = config_new_defaults();
    buf_t opts = {0};
    for (int i = 0; i < 100; i++)
        buf_printf(&opts, "%so%d", i ? "," : "", i);
    conf_set(c, "poll.big", "options", opts.data);
    conf_set(c, "poll.big", "mode", "unlimited");
    buf_free(&opts);
    conf_finish(c);
    engine_t *e = engine_new(c, 3);
    uint8_t rec[RECORD_MAX_LEN];
    uint64_t pos = 0;
    for (int p = 0; p < 3; p++) {
        engine_batch_begin(e, p);
        for (int i = 0; i < 100; i++) {
            char o[8];
            snprintf(o, sizeof o, "o%d", i);
            size_t n = rec_make(rec, "big", o, NULL, 1);
            for (int k = 0; k < i % 5; k++)
                cr_assert_eq(engine_apply(e, p, rec, n, ++pos, -1), 0);
        }
        engine_batch_end(e, p);
    }
    uint64_t got[100];
    engine_poll_totals(e, 0, got);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(got[i], (uint64_t)(3 * (i % 5)));
    engine_free(e);
    config_free(c);
}

/* engine_apply_batch must count exactly as engine_apply one record at a
 * time: random logs with every mode, repeats and changes, unknown polls and
 * options, voter-less votes, a cut-off, progress-only messages and tables
 * that grow mid-batch, cut into batches of random sizes. */
Test(engine, batch_apply_equals_one_by_one) {
    enum { N = 30000 };
    static const char *polls[] = {"one", "chg", "unl", "gone"};
    static const char *opts[] = {"a", "b", "c", "x", "y", "z", "p", "q", "nope"};
    uint8_t(*recs)[RECORD_MAX_LEN] = xmalloc(sizeof *recs * N);
    vlog_msg_t *msgs = xmalloc(sizeof *msgs * N);
    uint64_t seed = 42, pos = 0;
    for (int i = 0; i < N; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = seed >> 11;
        const char *poll = polls[r % 4 == 3 && r % 7 ? 0 : r % 4];
        const char *opt = opts[(r >> 8) % 9];
        char voter[32];
        snprintf(voter, sizeof voter, "v%llu", (unsigned long long)((r >> 16) % 4000));
        pos += 20 + (r >> 40) % 7;
        msgs[i] = (vlog_msg_t){0, pos, -1, NULL, 0};
        if ((r >> 20) % 50 == 0)
            continue; /* progress only */
        size_t n =
            rec_make(recs[i], poll, opt, (r >> 24) % 10 == 0 ? NULL : voter, 1000 + (uint64_t)i);
        msgs[i].rec = recs[i];
        msgs[i].len = n;
    }
    engine_t *one = engine_new(conf, 1), *batch = engine_new(conf, 1);
    engine_set_cutoff(one, 1000 + N - 2000);
    engine_set_cutoff(batch, 1000 + N - 2000);
    for (int i = 0; i < N; i++) {
        engine_batch_begin(one, 0);
        engine_apply_batch(one, 0, &msgs[i], 1);
        engine_batch_end(one, 0);
    }
    for (int i = 0; i < N;) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int k = 1 + (int)((seed >> 33) % 300);
        if (k > N - i)
            k = N - i;
        engine_batch_begin(batch, 0);
        engine_apply_batch(batch, 0, &msgs[i], k);
        engine_batch_end(batch, 0);
        i += k;
    }
    for (int p = 0; p < engine_npolls(one); p++) {
        uint64_t a[16], b[16];
        engine_poll_totals(one, p, a);
        engine_poll_totals(batch, p, b);
        for (int o = 0; o < engine_poll(one, p)->noptions; o++)
            cr_assert_eq(a[o], b[o], "poll %d option %d: %llu one by one, %llu batched", p, o,
                         (unsigned long long)a[o], (unsigned long long)b[o]);
    }
    engine_stats_t sa = engine_stats(one), sb = engine_stats(batch);
    cr_assert_eq(sa.applied, sb.applied);
    cr_assert_eq(sa.skipped, sb.skipped);
    cr_assert_eq(sa.after_cutoff, sb.after_cutoff);
    cr_assert_eq(sa.voters, sb.voters);
    cr_assert_gt(sa.applied, N / 10); /* most options do not fit the poll */
    cr_assert_gt(sa.skipped, 0);
    cr_assert_gt(sa.after_cutoff, 0);
    cr_assert_eq(engine_position(one, 0), pos);
    cr_assert_eq(engine_position(batch, 0), pos);
    engine_free(one);
    engine_free(batch);
    free(recs);
    free(msgs);
}

Test(engine, no_polls) {
    tally_config_t *c = config_new_defaults();
    engine_t *e = engine_new(c, 2);
    cr_assert_eq(engine_npolls(e), 0);
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = rec_make(rec, "one", "a", "x", 1);
    engine_batch_begin(e, 1);
    cr_assert_eq(engine_apply(e, 1, rec, n, 10, -1), -1);
    engine_batch_end(e, 1);
    cr_assert_eq(engine_stats(e).skipped, 1);
    cr_assert_eq(engine_position(e, 1), 10);
    engine_free(e);
    config_free(c);
}

/* ---- workers over a real file log ---- */

#define VOTERS 300
#define LOG_PARTS 5

typedef struct {
    uint64_t one[3], chg[3], unl[2];
    int one_first[VOTERS]; /* option + 1, 0: none yet */
    int chg_cur[VOTERS];   /* option + 1 */
    uint64_t valid, invalid;
} expect_t;

static atomic_ulong acks_ok, acks_bad, changes;

static void on_ack(void *opaque, vlog_err_t err) {
    (void)opaque;
    if (err == VLOG_OK)
        atomic_fetch_add(&acks_ok, 1);
    else
        atomic_fetch_add(&acks_bad, 1);
}

static void on_change(void *arg) {
    (void)arg;
    atomic_fetch_add(&changes, 1);
}

typedef struct {
    char *dir;
    tally_config_t *c;
    vlog_t *log;
} wlog_t;

static void wlog_open(wlog_t *w) {
    w->dir = tmpdir_new();
    w->c = make_conf();
    char *ld = path_join(w->dir, "log");
    conf_set_str(&w->c->log_dir, ld);
    free(ld);
    char *sd = path_join(w->dir, "snap");
    conf_set_str(&w->c->snapshot_dir, sd);
    free(sd);
    w->c->log_partitions = LOG_PARTS;
    w->c->log_fsync = 0; /* durability is test_vlog's business */
    w->c->log_group_commit_us = 0;
    char err[512];
    w->log = vlog_open(w->c, VLOG_F_WRITE | VLOG_F_READ, on_ack, NULL, err, sizeof err);
    cr_assert_not_null(w->log, "vlog_open: %s", err);
}

static void wlog_close(wlog_t *w) {
    vlog_close(w->log);
    config_free(w->c);
    tmpdir_free(w->dir);
}

static void append_rec(vlog_t *log, const uint8_t *rec, size_t n, int part) {
    for (;;) {
        vlog_err_t err = vlog_append(log, part, rec, n, NULL, NULL);
        if (err == VLOG_OK)
            return;
        cr_assert_eq(err, VLOG_FULL, "append: %s", vlog_err2str(err));
        vlog_flush(log, 1000);
    }
}

/* Appends n votes from a deterministic stream and updates the expectation
 * the simple way, independently of voters.c and the voter keys. */
static void append_votes(vlog_t *log, uint64_t *seed, int n, expect_t *x) {
    uint8_t rec[RECORD_MAX_LEN];
    for (int i = 0; i < n; i++) {
        uint64_t r = rng_next(seed);
        int kind = (int)(r % 100), vi = (int)((r >> 8) % VOTERS), o = (int)((r >> 24) % 3);
        char voter[32];
        snprintf(voter, sizeof voter, "voter-%d", vi);
        uint64_t ts = 1000 + (uint64_t)i;
        size_t len;
        int part;
        if (kind < 35) {
            len = rec_make(rec, "one", o == 0 ? "a" : o == 1 ? "b" : "c", voter, ts);
            part = rec_partition("one", "a", voter, LOG_PARTS, 0);
            if (!x->one_first[vi]) {
                x->one_first[vi] = o + 1;
                x->one[o]++;
            }
            x->valid++;
        } else if (kind < 70) {
            len = rec_make(rec, "chg", o == 0 ? "x" : o == 1 ? "y" : "z", voter, ts);
            part = rec_partition("chg", "x", voter, LOG_PARTS, 0);
            if (x->chg_cur[vi])
                x->chg[x->chg_cur[vi] - 1]--;
            x->chg_cur[vi] = o + 1;
            x->chg[o]++;
            x->valid++;
        } else if (kind < 95) {
            int with_voter = (r >> 40) & 1;
            len = rec_make(rec, "unl", o == 0 ? "p" : "q", with_voter ? voter : NULL, ts);
            part = rec_partition("unl", "p", with_voter ? voter : NULL, LOG_PARTS, r >> 44);
            x->unl[o == 0 ? 0 : 1]++;
            x->valid++;
        } else {
            /* Unknown poll or option: counted as skipped. */
            len = kind % 2 ? rec_make(rec, "gone", "a", voter, ts)
                           : rec_make(rec, "one", "d", voter, ts);
            part = (int)(r % LOG_PARTS);
            x->invalid++;
        }
        append_rec(log, rec, len, part);
    }
}

static void expect_engine_totals(engine_t *e, const expect_t *x) {
    uint64_t got[3];
    engine_poll_totals(e, P_ONE, got);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(got[i], x->one[i], "one[%d]: %llu, want %llu", i, (unsigned long long)got[i],
                     (unsigned long long)x->one[i]);
    engine_poll_totals(e, P_CHG, got);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(got[i], x->chg[i], "chg[%d]: %llu, want %llu", i, (unsigned long long)got[i],
                     (unsigned long long)x->chg[i]);
    engine_poll_totals(e, P_UNL, got);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(got[i], x->unl[i], "unl[%d]: %llu, want %llu", i, (unsigned long long)got[i],
                     (unsigned long long)x->unl[i]);
}

static int caught_up(engine_t *e, const uint64_t *ends) {
    for (int p = 0; p < LOG_PARTS; p++)
        if (engine_position(e, p) < ends[p])
            return 0;
    return 1;
}

static void flush_and_ends(vlog_t *log, uint64_t *ends) {
    cr_assert_eq(vlog_flush(log, 10000 * TMOUT_MULT), 0, "log did not drain");
    char err[256];
    cr_assert_eq(vlog_end_positions(log, ends, err, sizeof err), 0, "%s", err);
}

/* A reader racing the workers: totals it sees must be consistent. */
typedef struct {
    engine_t *e;
    atomic_int stop;
    uint64_t reads;
    char failure[256];
} watcher_t;

static void *watch_main(void *arg) {
    watcher_t *w = arg;
    uint64_t last_one = 0, last_chg = 0, last_gen = 0;
    while (!atomic_load(&w->stop)) {
        uint64_t gen = engine_poll_generation(w->e, P_CHG);
        uint64_t c[3];
        engine_poll_totals(w->e, P_ONE, c);
        uint64_t one = c[0] + c[1] + c[2];
        engine_poll_totals(w->e, P_CHG, c);
        uint64_t chg = c[0] + c[1] + c[2];
        /* Both sums count distinct voters: they never go down, and a vote
         * change is never seen half done (which would show as -1 or +1). */
        if (one < last_one || chg < last_chg || one > VOTERS || chg > VOTERS || gen < last_gen) {
            snprintf(w->failure, sizeof w->failure,
                     "inconsistent read: one %llu after %llu, chg %llu after %llu",
                     (unsigned long long)one, (unsigned long long)last_one, (unsigned long long)chg,
                     (unsigned long long)last_chg);
            break;
        }
        last_one = one;
        last_chg = chg;
        last_gen = gen;
        w->reads++;
        sched_yield();
    }
    return NULL;
}

Test(engine_workers, counts_a_live_log_exactly, .timeout = 120) {
    wlog_t w;
    wlog_open(&w);
    atomic_store(&changes, 0);
    engine_t *e = engine_new(w.c, vlog_partitions(w.log));
    engine_run_opts_t ro = {
        .log = w.log,
        .threads = 3,
        .on_change = on_change,
    };
    char err[512];
    cr_assert_eq(engine_start(e, &ro, err, sizeof err), 0, "%s", err);
    watcher_t wa = {.e = e};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, watch_main, &wa), 0);

    static expect_t x;
    memset(&x, 0, sizeof x);
    uint64_t seed = 2024, ends[LOG_PARTS];
    for (int round = 0; round < 4; round++) {
        append_votes(w.log, &seed, 5000, &x);
        flush_and_ends(w.log, ends);
        WAIT_UNTIL(caught_up(e, ends), 20000);
        expect_engine_totals(e, &x);
        for (int p = 0; p < LOG_PARTS; p++)
            cr_assert_eq(engine_position(e, p), ends[p], "partition %d went past the end", p);
    }
    atomic_store(&wa.stop, 1);
    pthread_join(th, NULL);
    cr_assert_eq(wa.failure[0], '\0', "%s", wa.failure);

    engine_stats_t s = engine_stats(e);
    cr_assert_eq(s.applied, x.valid);
    cr_assert_eq(s.skipped, x.invalid);
    cr_assert_gt(atomic_load(&changes), 0, "on_change never called");
    cr_assert_eq(engine_failed(e), 0);
    engine_stop(e);
    cr_assert_eq(engine_join(e, err, sizeof err), 0, "%s", err);
    cr_assert_eq(atomic_load(&acks_bad), 0);
    engine_free(e);
    wlog_close(&w);
}

Test(engine_workers, replay_stops_exactly_at_stop_at, .timeout = 120) {
    wlog_t w;
    wlog_open(&w);
    static expect_t half, full;
    memset(&half, 0, sizeof half);
    uint64_t seed = 99, mid[LOG_PARTS], end[LOG_PARTS];
    append_votes(w.log, &seed, 4000, &half);
    flush_and_ends(w.log, mid);
    full = half;
    append_votes(w.log, &seed, 4000, &full);
    flush_and_ends(w.log, end);

    char err[512];
    /* Up to the middle: the workers stop on their own. */
    engine_t *e = engine_new(w.c, LOG_PARTS);
    engine_run_opts_t ro = {.log = w.log, .threads = 2, .stop_at = mid};
    cr_assert_eq(engine_start(e, &ro, err, sizeof err), 0, "%s", err);
    cr_assert_eq(engine_join(e, err, sizeof err), 0, "%s", err);
    for (int p = 0; p < LOG_PARTS; p++)
        cr_assert_eq(engine_position(e, p), mid[p], "partition %d", p);
    expect_engine_totals(e, &half);
    cr_assert_eq(engine_stats(e).applied, half.valid);
    engine_free(e);

    /* Up to the end, more threads than partitions. */
    e = engine_new(w.c, LOG_PARTS);
    engine_run_opts_t ro2 = {.log = w.log, .threads = 16, .stop_at = end};
    cr_assert_eq(engine_start(e, &ro2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(engine_join(e, err, sizeof err), 0, "%s", err);
    expect_engine_totals(e, &full);
    engine_stats_t s = engine_stats(e);
    cr_assert_eq(s.applied, full.valid);
    cr_assert_eq(s.skipped, full.invalid);
    engine_free(e);
    wlog_close(&w);
}

Test(engine_workers, snapshots_resume_where_they_stopped, .timeout = 120) {
    wlog_t w;
    wlog_open(&w);
    static expect_t x;
    memset(&x, 0, sizeof x);
    uint64_t seed = 7, ends[LOG_PARTS];
    char err[512];

    engine_t *e = engine_new(w.c, LOG_PARTS);
    engine_run_opts_t ro = {
        .log = w.log,
        .threads = 2,
        .snapshot_dir = w.c->snapshot_dir,
        .snapshot_interval_ms = 10,
    };
    cr_assert_eq(engine_start(e, &ro, err, sizeof err), 0, "%s", err);
    append_votes(w.log, &seed, 3000, &x);
    flush_and_ends(w.log, ends);
    WAIT_UNTIL(caught_up(e, ends), 20000);
    engine_stop(e);
    cr_assert_eq(engine_join(e, err, sizeof err), 0, "%s", err);
    engine_free(e);

    /* A new engine resumes every partition from the final snapshots. */
    e = engine_new(w.c, LOG_PARTS);
    engine_set_log_id(e, vlog_id(w.log), vlog_id_legacy(w.log));
    int resumed = -1;
    cr_assert_eq(engine_snapshot_load(e, w.c->snapshot_dir, &resumed, err, sizeof err), TALLY_OK,
                 "%s", err);
    cr_assert_eq(resumed, LOG_PARTS);
    for (int p = 0; p < LOG_PARTS; p++)
        cr_assert_eq(engine_position(e, p), ends[p]);
    expect_engine_totals(e, &x);

    /* and goes on from there: repeat voters are still known. */
    ro.snapshot_dir = NULL;
    cr_assert_eq(engine_start(e, &ro, err, sizeof err), 0, "%s", err);
    uint64_t valid_before = x.valid;
    append_votes(w.log, &seed, 3000, &x);
    flush_and_ends(w.log, ends);
    WAIT_UNTIL(caught_up(e, ends), 20000);
    expect_engine_totals(e, &x);
    /* Only the new records were read: nothing was counted twice. */
    cr_assert_eq(engine_stats(e).applied, x.valid - valid_before);
    engine_stop(e);
    cr_assert_eq(engine_join(e, err, sizeof err), 0, "%s", err);
    engine_free(e);
    wlog_close(&w);
}

Test(engine_workers, snapshot_newer_than_log_fails_the_engine, .timeout = 120) {
    wlog_t w;
    wlog_open(&w);
    static expect_t x;
    memset(&x, 0, sizeof x);
    uint64_t seed = 3, ends[LOG_PARTS];
    append_votes(w.log, &seed, 500, &x);
    flush_and_ends(w.log, ends);
    char err[512];
    engine_t *e = engine_new(w.c, LOG_PARTS);
    engine_run_opts_t ro = {.log = w.log,
                            .threads = 2,
                            .stop_at = ends,
                            .snapshot_dir = w.c->snapshot_dir,
                            .snapshot_interval_ms = 100000};
    cr_assert_eq(engine_start(e, &ro, err, sizeof err), 0, "%s", err);
    cr_assert_eq(engine_join(e, err, sizeof err), 0, "%s", err);
    engine_free(e);

    /* The same snapshots against a fresh, empty log. */
    wlog_t empty;
    wlog_open(&empty);
    e = engine_new(empty.c, LOG_PARTS);
    int resumed = -1;
    /* Under the empty log's id they are another log's: not used. */
    engine_set_log_id(e, vlog_id(empty.log), vlog_id_legacy(empty.log));
    cr_assert_str_neq(vlog_id(empty.log), vlog_id(w.log));
    cr_assert_eq(engine_snapshot_load(e, w.c->snapshot_dir, &resumed, err, sizeof err), TALLY_OK);
    cr_assert_eq(resumed, 0);
    for (int p = 0; p < LOG_PARTS; p++)
        cr_assert_eq(engine_position(e, p), 0);
    /* Under the id they were taken with (the same log, cut short behind
     * the engine's back), the reader's own check must stop the engine. */
    engine_set_log_id(e, vlog_id(w.log), 0);
    cr_assert_eq(engine_snapshot_load(e, w.c->snapshot_dir, &resumed, err, sizeof err), TALLY_OK);
    cr_assert_gt(resumed, 0);
    engine_run_opts_t ro2 = {.log = empty.log, .threads = 2};
    cr_assert_eq(engine_start(e, &ro2, err, sizeof err), 0, "%s", err);
    WAIT_UNTIL(engine_failed(e), 10000);
    engine_stop(e);
    err[0] = '\0';
    cr_assert_eq(engine_join(e, err, sizeof err), TALLY_ERR_IO);
    cr_assert_not_null(strstr(err, "past the end"), "%s", err);
    engine_free(e);
    wlog_close(&empty);
    wlog_close(&w);
}
