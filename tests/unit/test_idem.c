/* engine/idem.h and engine/series.h, alone and inside the engine: the
 * idempotency window's rules, pruning, determinism (one batch == record by
 * record == split across a snapshot save and load == an independent model),
 * and series that sum to the totals in every mode. */
#include <criterion/criterion.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/idem.h"
#include "engine/series.h"
#include "unit_helpers.h"

#define NPART 4
#define WINDOW_S 60
#define WIN ((uint64_t)WINDOW_S * 1000)

enum { P_ONE, P_CHG, P_UNL };
static const char *const poll_ids[] = {"one", "chg", "unl"};
static const char *const opt_ids[3][3] = {{"a", "b", "c"}, {"x", "y", "z"}, {"p", "q", NULL}};
static const int nopts[] = {3, 3, 2};

static tally_config_t *conf;
static engine_t *eng;
static uint64_t positions[NPART];
static char *dir;

static tally_config_t *make_conf(void) {
    tally_config_t *c = config_new_defaults();
    conf_add_poll(c, "one", "one-per-voter", "a, b, c");
    conf_add_poll(c, "chg", "changeable", "x, y, z");
    conf_add_poll(c, "unl", "unlimited", "p, q");
    char w[16];
    snprintf(w, sizeof w, "%d", WINDOW_S);
    conf_set(c, "ingest", "idempotency_window_s", w);
    conf_finish(c);
    return c;
}

static void setup(void) {
    conf = make_conf();
    eng = engine_new(conf, NPART);
    memset(positions, 0, sizeof positions);
    dir = tmpdir_new();
}

static void teardown(void) {
    engine_free(eng);
    config_free(conf);
    tmpdir_free(dir);
}

TestSuite(idem, .init = setup, .fini = teardown);

/* ---- the table alone ---- */

static voter_key_t key_of(const char *voter, const char *key) {
    return idem_key(record_poll_seed("p", 1), voter, voter ? strlen(voter) : 0, key, strlen(key));
}

static int check(idem_t *d, const char *voter, const char *key, uint64_t ts) {
    idem_observe(d, ts);
    return idem_check(d, key_of(voter, key), ts, WIN);
}

Test(idem, same_key_within_the_window_is_a_retry) {
    idem_t d;
    idem_init(&d);
    cr_assert_eq(check(&d, "alice", "k1", 1000), 0);
    cr_assert_eq(check(&d, "alice", "k1", 1000), 1);
    cr_assert_eq(check(&d, "alice", "k1", 1000 + WIN), 1, "hwm - first == window: still held");
    cr_assert_eq(check(&d, "alice", "k2", 1000), 0, "another key");
    cr_assert_eq(check(&d, "bob", "k1", 1000), 0, "another voter");
    cr_assert_eq(check(&d, NULL, "k1", 1000), 0, "anonymous is another voter");
    cr_assert_eq(check(&d, NULL, "k1", 1000), 1);
    /* The key hashes its poll too. */
    voter_key_t other = idem_key(record_poll_seed("q", 1), "alice", 5, "k1", 2);
    cr_assert_eq(idem_check(&d, other, 1000, WIN), 0);
    /* ("ab","c") and ("a","bc") are different scopes. */
    cr_assert_eq(check(&d, "ab", "c", 1000), 0);
    cr_assert_eq(check(&d, "a", "bc", 1000), 0);
    cr_assert_eq(idem_count(&d), 7);
    idem_free(&d);
}

Test(idem, a_key_lapses_once_hwm_is_past_the_window) {
    idem_t d;
    idem_init(&d);
    cr_assert_eq(check(&d, "alice", "k", 1000), 0);
    /* Any vote raises hwm, keyed or not, of any poll. */
    idem_observe(&d, 1000 + WIN + 1);
    cr_assert_eq(idem_count(&d), 0, "pruned once lapsed");
    /* A retry with an old timestamp (an ingest stamped it before the
     * newer vote) is still judged by hwm: the hold is over. */
    cr_assert_eq(check(&d, "alice", "k", 1500), 0, "lapsed: a first vote again");
    idem_free(&d);
}

Test(idem, a_lapsed_key_held_behind_an_older_one_is_judged_at_lookup) {
    idem_t d;
    idem_init(&d);
    /* A long hold queued first keeps a short one from being popped... */
    cr_assert_eq(idem_check(&d, key_of("a", "long"), 1000, 10 * WIN), 0);
    cr_assert_eq(idem_check(&d, key_of("a", "short"), 1000, WIN), 0);
    idem_observe(&d, 1000 + WIN + 1);
    cr_assert_eq(idem_count(&d), 2, "short waits behind long");
    /* ...but lookup sees it lapsed: counted, and held anew. */
    cr_assert_eq(idem_check(&d, key_of("a", "short"), 1000 + WIN + 1, WIN), 0);
    cr_assert_eq(idem_check(&d, key_of("a", "short"), 1000 + WIN + 1, WIN), 1);
    cr_assert_eq(idem_check(&d, key_of("a", "long"), 1000 + WIN + 1, 10 * WIN), 1);
    cr_assert_eq(idem_count(&d), 2, "the old entry is dead, not counted");
    idem_observe(&d, 1000 + 2 * WIN);
    cr_assert_eq(idem_count(&d), 2, "nothing lapsed at the front");
    cr_assert_eq(idem_check(&d, key_of("a", "short"), 1000 + 2 * WIN, WIN), 1);
    idem_observe(&d, 1000 + 10 * WIN + 1);
    cr_assert_eq(idem_count(&d), 0, "long popped, the dead and the new short with it");
    idem_free(&d);
}

Test(idem, memory_follows_the_keys_held) {
    idem_t d;
    idem_init(&d);
    char k[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(k, sizeof k, "k%d", i);
        cr_assert_eq(check(&d, "v", k, 1000 + (uint64_t)i / 100), 0);
    }
    cr_assert_eq(idem_count(&d), 100000);
    size_t peak = idem_bytes(&d);
    cr_assert_leq(peak, 100000 * 64 + 4096, "at most 64 bytes a key: %zu", peak);
    /* Every key is still there. */
    for (int i = 0; i < 100000; i += 997) {
        snprintf(k, sizeof k, "k%d", i);
        cr_assert_eq(idem_check(&d, key_of("v", k), 2000, WIN), 1, "%s", k);
    }
    idem_observe(&d, 1000 + 1000 + WIN + 1);
    cr_assert_eq(idem_count(&d), 0);
    cr_assert_lt(idem_bytes(&d), 4096, "shrunk after the peak: %zu", idem_bytes(&d));
    idem_free(&d);
}

static void emit_buf(void *arg, const void *p, size_t n) {
    buf_append(arg, p, n);
}

Test(idem, snapshot_body_roundtrips_and_refuses_damage) {
    idem_t d, e;
    idem_init(&d);
    idem_init(&e);
    char k[16];
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "k%d", i);
        check(&d, "v", k, 1000 + (uint64_t)i * 200);
    }
    buf_t b = {0};
    idem_snapshot_write(&d, emit_buf, &b);
    cr_assert_eq(b.len, idem_snapshot_size(&d));
    char why[160];
    cr_assert_eq(idem_snapshot_read(&e, (uint8_t *)b.data, b.len, why, sizeof why), 0, "%s", why);
    cr_assert_eq(idem_count(&e), idem_count(&d));
    cr_assert_eq(e.hwm, d.hwm);
    /* The same decisions from here on, and the same pruning. */
    for (int i = 0; i < 700; i++) {
        snprintf(k, sizeof k, "k%d", i);
        uint64_t ts = d.hwm + (uint64_t)(i % 3);
        cr_assert_eq(check(&d, "v", k, ts), check(&e, "v", k, ts), "%s", k);
        cr_assert_eq(idem_count(&d), idem_count(&e));
    }
    /* Truncated, one byte more, a repeated entry: refused, left empty. */
    cr_assert_eq(idem_snapshot_read(&e, (uint8_t *)b.data, b.len - 1, why, sizeof why), -1);
    cr_assert_eq(idem_count(&e), 0);
    buf_append(&b, "x", 1);
    cr_assert_eq(idem_snapshot_read(&e, (uint8_t *)b.data, b.len, why, sizeof why), -1);
    b.len--;
    memcpy(b.data + 16 + 24, b.data + 16, 24);
    cr_assert_eq(idem_snapshot_read(&e, (uint8_t *)b.data, b.len, why, sizeof why), -1);
    cr_assert_not_null(strstr(why, "repeated"), "%s", why);
    buf_free(&b);
    idem_free(&d);
    idem_free(&e);
}

/* ---- inside the engine ---- */

typedef struct {
    int poll, opt;
    char voter[24]; /* "" anonymous */
    char key[24];   /* "" none */
    uint64_t ts;
} vote_t;

static size_t encode(const vote_t *v, uint8_t *out) {
    vote_record_t r = {
        .ts_ms = v->ts,
        .poll = poll_ids[v->poll],
        .poll_len = strlen(poll_ids[v->poll]),
        .option = opt_ids[v->poll][v->opt],
        .option_len = strlen(opt_ids[v->poll][v->opt]),
        .voter = v->voter[0] ? v->voter : NULL,
        .voter_len = strlen(v->voter),
        .key = v->key[0] ? v->key : NULL,
        .key_len = strlen(v->key),
    };
    size_t n = record_encode(&r, out);
    cr_assert_gt(n, 0);
    return n;
}

static int part_of(const vote_t *v) {
    vote_record_t r = {
        .poll = poll_ids[v->poll],
        .poll_len = strlen(poll_ids[v->poll]),
        .voter = v->voter,
        .voter_len = strlen(v->voter),
        .key = v->key,
        .key_len = strlen(v->key),
    };
    return record_partition(&r, NPART, (uint64_t)v->ts);
}

/* One vote in a batch of its own; 1 if it was found a retry. */
static int cast(engine_t *e, const vote_t *v) {
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = encode(v, rec);
    int p = part_of(v);
    uint64_t before = engine_stats(e).retried;
    positions[p] += 12 + n;
    engine_batch_begin(e, p);
    engine_apply(e, p, rec, n, positions[p], -1);
    engine_batch_end(e, p);
    return engine_stats(e).retried != before;
}

static vote_t V(int poll, int opt, const char *voter, const char *key, uint64_t ts) {
    vote_t v = {.poll = poll, .opt = opt, .ts = ts};
    snprintf(v.voter, sizeof v.voter, "%s", voter ? voter : "");
    snprintf(v.key, sizeof v.key, "%s", key ? key : "");
    return v;
}

static void totals_of(engine_t *e, int poll, uint64_t *out) {
    engine_poll_totals(e, poll, out);
}

#define EXPECT(e, poll, ...)                                                                       \
    do {                                                                                           \
        const uint64_t want_[] = {__VA_ARGS__};                                                    \
        uint64_t got_[3];                                                                          \
        totals_of(e, poll, got_);                                                                  \
        for (int k_ = 0; k_ < nopts[poll]; k_++)                                                   \
            cr_assert_eq(got_[k_], want_[k_], "%s/%s: %llu, want %llu", poll_ids[poll],            \
                         opt_ids[poll][k_], (unsigned long long)got_[k_],                          \
                         (unsigned long long)want_[k_]);                                           \
    } while (0)

Test(idem, retries_count_once_in_every_mode) {
    /* one-per-voter: a retry is harmless anyway, but is counted as one. */
    vote_t v = V(P_ONE, 0, "alice", "r1", 1000);
    cr_assert_eq(cast(eng, &v), 0);
    cr_assert_eq(cast(eng, &v), 1);
    EXPECT(eng, P_ONE, 1, 0, 0);
    /* changeable: the retry of an old vote must not move the voter back. */
    v = V(P_CHG, 0, "bob", "c1", 1000);
    cr_assert_eq(cast(eng, &v), 0);
    vote_t w = V(P_CHG, 1, "bob", "c2", 2000);
    cr_assert_eq(cast(eng, &w), 0);
    EXPECT(eng, P_CHG, 0, 1, 0);
    v.ts = 3000; /* the late retry of c1 */
    cr_assert_eq(cast(eng, &v), 1);
    EXPECT(eng, P_CHG, 0, 1, 0);
    /* Without a key the same request would have moved him. */
    vote_t nokey = V(P_CHG, 0, "bob", NULL, 3100);
    cr_assert_eq(cast(eng, &nokey), 0);
    EXPECT(eng, P_CHG, 1, 0, 0);
    /* unlimited, anonymous: retries meet in one partition by (poll, key). */
    for (int i = 0; i < 5; i++) {
        vote_t u = V(P_UNL, 1, NULL, "u1", 4000 + (uint64_t)i);
        cr_assert_eq(cast(eng, &u), i > 0);
    }
    vote_t u2 = V(P_UNL, 1, NULL, "u2", 4100);
    cr_assert_eq(cast(eng, &u2), 0);
    EXPECT(eng, P_UNL, 0, 2);
    /* unlimited with a voter: the key's scope is (poll, voter, key). */
    vote_t a = V(P_UNL, 0, "carol", "u1", 4200), b = V(P_UNL, 0, "dave", "u1", 4200);
    cr_assert_eq(cast(eng, &a), 0);
    cr_assert_eq(cast(eng, &b), 0);
    cr_assert_eq(cast(eng, &a), 1);
    EXPECT(eng, P_UNL, 2, 2);
    /* After the window the same key is a new vote. */
    vote_t late = V(P_UNL, 1, NULL, "u1", 4000 + WIN + 1);
    cr_assert_eq(cast(eng, &late), 0);
    EXPECT(eng, P_UNL, 2, 3);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.retried, 1 + 1 + 4 + 1);
    cr_assert_gt(s.idem_keys, 0);
}

/* ---- determinism over a generated log ---- */

#define NVOTES 6000

/* A log like a show's: keyed and unkeyed votes of the three modes, a third
 * of the keyed ones retried (soon, or after the window), changes of mind,
 * timestamps slightly out of order, over some minutes. */
static vote_t *gen_log(int n, uint64_t seed) {
    vote_t *log = xcalloc((size_t)n, sizeof *log);
    uint64_t s = seed, ts = 1700000000000ull;
    for (int i = 0; i < n; i++) {
        uint64_t r = rng_next(&s);
        ts += r % 97; /* ~50 ms apart: 6000 votes span ~5 minutes */
        if (i > 20 && r % 3 == 0) {
            /* A retry of an earlier keyed vote, as sent, stamped now. */
            int j = i - 1 - (int)(rng_next(&s) % (uint64_t)(i < 2000 ? i - 1 : 2000));
            if (log[j].key[0]) {
                log[i] = log[j];
                log[i].ts = ts - (r >> 20) % 50; /* jitter */
                continue;
            }
        }
        vote_t *v = &log[i];
        v->poll = (int)((r >> 8) % 3);
        v->opt = (int)((r >> 16) % (uint64_t)nopts[v->poll]);
        v->ts = ts - (r >> 24) % 50;
        if (v->poll != P_UNL || (r >> 30) % 2)
            snprintf(v->voter, sizeof v->voter, "v%llu", (unsigned long long)((r >> 32) % 300));
        if ((r >> 40) % 4 != 0)
            snprintf(v->key, sizeof v->key, "k%d", i);
    }
    /* And a stretch after a pause longer than the window: old keys retried. */
    for (int i = n - 200; i < n; i++) {
        if (i == n - 200)
            ts += WIN + 5000;
        log[i] = log[i - 2000];
        log[i].ts = ts + (uint64_t)(i % 7);
    }
    return log;
}

/* The rule as the design note states it, written independently: per
 * partition, hwm = max ts so far; a keyed vote is a retry iff an earlier
 * keyed vote of the same (poll, voter, key) was held and first_ts + window
 * >= hwm, the held first_ts being that of the vote that started the hold. */
typedef struct {
    int part, poll;
    const char *voter, *key;
    uint64_t first;
} hold_t;

static void model(const vote_t *log, int n, uint64_t (*tot)[3], uint64_t *retried) {
    hold_t *holds = xcalloc((size_t)n, sizeof *holds);
    int nh = 0;
    uint64_t hwm[NPART] = {0};
    int *counted = xmalloc(sizeof(int) * 3 * 300); /* option counted per voter, -1 none */
    for (int i = 0; i < 3 * 300; i++)
        counted[i] = -1;
    memset(tot, 0, sizeof(uint64_t) * 3 * 3);
    *retried = 0;
    for (int i = 0; i < n; i++) {
        const vote_t *v = &log[i];
        int p = part_of(v);
        if (v->ts > hwm[p])
            hwm[p] = v->ts;
        if (v->key[0]) {
            int found = -1;
            for (int h = 0; h < nh; h++)
                if (holds[h].part == p && holds[h].poll == v->poll &&
                    !strcmp(holds[h].voter, v->voter) && !strcmp(holds[h].key, v->key))
                    found = h;
            if (found >= 0 && holds[found].first + WIN >= hwm[p]) {
                (*retried)++;
                continue;
            }
            if (found >= 0)
                holds[found].first = v->ts;
            else
                holds[nh++] = (hold_t){p, v->poll, v->voter, v->key, v->ts};
        }
        if (v->poll == P_UNL) {
            tot[v->poll][v->opt]++;
            continue;
        }
        int vi = atoi(v->voter + 1), *c = &counted[v->poll * 300 + vi];
        if (*c < 0) {
            *c = v->opt;
            tot[v->poll][v->opt]++;
        } else if (v->poll == P_CHG && *c != v->opt) {
            tot[v->poll][*c]--;
            tot[v->poll][v->opt]++;
            *c = v->opt;
        }
    }
    free(counted);
    free(holds);
}

/* Everything a run decided: totals, retries, keys held, the series. */
typedef struct {
    uint64_t tot[3][3];
    uint64_t retried, keys;
    series_view_t series[3];
} outcome_t;

static void outcome(engine_t *e, outcome_t *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < 3; i++) {
        series_view_init(&o->series[i], nopts[i]);
        engine_poll_read(e, i, o->tot[i], nopts[i], &o->series[i]);
    }
    engine_stats_t s = engine_stats(e);
    o->retried = s.retried;
    o->keys = s.idem_keys;
}

static void outcome_free(outcome_t *o) {
    for (int i = 0; i < 3; i++)
        series_view_free(&o->series[i]);
}

static void expect_same(const outcome_t *a, const outcome_t *b, const char *what) {
    cr_assert_eq(a->retried, b->retried, "%s: retried %llu vs %llu", what,
                 (unsigned long long)a->retried, (unsigned long long)b->retried);
    cr_assert_eq(a->keys, b->keys, "%s: keys held", what);
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < nopts[i]; k++)
            cr_assert_eq(a->tot[i][k], b->tot[i][k], "%s: %s/%s", what, poll_ids[i], opt_ids[i][k]);
        cr_assert_eq(a->series[i].n, b->series[i].n, "%s: %s series length", what, poll_ids[i]);
        cr_assert(!memcmp(a->series[i].t_ms, b->series[i].t_ms, a->series[i].n * 8), "%s", what);
        cr_assert(!memcmp(a->series[i].counts, b->series[i].counts,
                          a->series[i].n * (size_t)nopts[i] * 8),
                  "%s: %s series", what, poll_ids[i]);
    }
}

/* The series sums to the totals, and each minute is one of the log's. */
static void expect_series_sums(const outcome_t *o) {
    for (int i = 0; i < 3; i++) {
        int64_t sum[3] = {0};
        const series_view_t *s = &o->series[i];
        cr_assert_gt(s->n, 1, "%s: several minutes", poll_ids[i]);
        for (size_t r = 0; r < s->n; r++) {
            cr_assert_eq(s->t_ms[r] % SERIES_BUCKET_MS, 0);
            if (r)
                cr_assert_gt(s->t_ms[r], s->t_ms[r - 1]);
            for (int k = 0; k < nopts[i]; k++)
                sum[k] += s->counts[r * (size_t)nopts[i] + (size_t)k];
        }
        for (int k = 0; k < nopts[i]; k++)
            cr_assert_eq((uint64_t)sum[k], o->tot[i][k], "%s/%s: series sums to %lld, total %llu",
                         poll_ids[i], opt_ids[i][k], (long long)sum[k],
                         (unsigned long long)o->tot[i][k]);
    }
}

/* msgs of partition p from log[from..to), encoded into arena. */
static int batch_of(const vote_t *log, int from, int to, int p, vlog_msg_t *msgs, uint8_t *arena,
                    uint64_t *pos) {
    int n = 0;
    for (int i = from; i < to; i++) {
        if (part_of(&log[i]) != p)
            continue;
        uint8_t *rec = arena + (size_t)i * RECORD_MAX_LEN;
        size_t len = encode(&log[i], rec);
        pos[p] += 12 + len;
        msgs[n++] = (vlog_msg_t){p, pos[p], -1, rec, len};
    }
    return n;
}

static void apply_batches(engine_t *e, const vote_t *log, int from, int to, uint8_t *arena,
                          uint64_t *pos) {
    vlog_msg_t *msgs = xcalloc((size_t)(to - from + 1), sizeof *msgs);
    for (int p = 0; p < NPART; p++) {
        int n = batch_of(log, from, to, p, msgs, arena, pos);
        engine_batch_begin(e, p);
        engine_apply_batch(e, p, msgs, n);
        engine_batch_end(e, p);
    }
    free(msgs);
}

Test(idem, same_decisions_in_one_batch_record_by_record_and_across_a_snapshot) {
    vote_t *log = gen_log(NVOTES, 42);
    uint8_t *arena = xmalloc((size_t)NVOTES * RECORD_MAX_LEN);
    uint64_t mtot[3][3], mretried;
    model(log, NVOTES, mtot, &mretried);
    cr_assert_gt(mretried, NVOTES / 10, "the log retries: %llu", (unsigned long long)mretried);

    /* 1: record by record. */
    for (int i = 0; i < NVOTES; i++)
        cast(eng, &log[i]);
    outcome_t one;
    outcome(eng, &one);
    cr_assert_eq(one.retried, mretried, "engine %llu retries, the model %llu",
                 (unsigned long long)one.retried, (unsigned long long)mretried);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < nopts[i]; k++)
            cr_assert_eq(one.tot[i][k], mtot[i][k], "%s/%s vs the model", poll_ids[i],
                         opt_ids[i][k]);
    expect_series_sums(&one);

    /* 2: each partition's records in one batch. */
    engine_t *e2 = engine_new(conf, NPART);
    uint64_t pos2[NPART] = {0};
    apply_batches(e2, log, 0, NVOTES, arena, pos2);
    outcome_t two;
    outcome(e2, &two);
    expect_same(&one, &two, "one batch");

    /* 3: half, snapshots, a new engine loads them, the rest. */
    engine_t *e3 = engine_new(conf, NPART);
    uint64_t pos3[NPART] = {0};
    apply_batches(e3, log, 0, NVOTES / 2, arena, pos3);
    char err[512];
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_snapshot_save(e3, p, dir, err, sizeof err), TALLY_OK, "%s", err);
    engine_free(e3);
    e3 = engine_new(conf, NPART);
    int resumed = 0;
    cr_assert_eq(engine_snapshot_load(e3, dir, &resumed, err, sizeof err), TALLY_OK, "%s", err);
    cr_assert_eq(resumed, NPART);
    cr_assert_gt(engine_stats(e3).idem_keys, 0, "keys came back from the snapshots");
    apply_batches(e3, log, NVOTES / 2, NVOTES, arena, pos3);
    outcome_t three;
    outcome(e3, &three);
    /* retried is not state (counted since start): compare the rest, and
     * the retries of the second half. */
    cr_assert_lt(three.retried, one.retried);
    three.retried = one.retried;
    expect_same(&one, &three, "across a snapshot");

    outcome_free(&one);
    outcome_free(&two);
    outcome_free(&three);
    engine_free(e2);
    engine_free(e3);
    free(arena);
    free(log);
}

/* ---- series ---- */

Test(idem, series_buckets_are_the_minutes_of_the_changes) {
    uint64_t t0 = 1700000040000ull; /* minute start */
    cast(eng, &(vote_t){.poll = P_CHG, .opt = 0, .voter = "al", .ts = t0 + 5});
    cast(eng, &(vote_t){.poll = P_CHG, .opt = 0, .voter = "bo", .ts = t0 + 59999});
    cast(eng, &(vote_t){.poll = P_CHG, .opt = 2, .voter = "al", .ts = t0 + 60000}); /* moves */
    cast(eng, &(vote_t){.poll = P_CHG, .opt = 2, .voter = "al", .ts = t0 + 61000}); /* no-op */
    cast(eng, &(vote_t){.poll = P_CHG, .opt = 0, .voter = "al", .ts = t0 + 3 * 60000 + 1});
    cast(eng, &(vote_t){.poll = P_CHG, .opt = 2, .voter = "al", .ts = t0 + 3 * 60000 + 2});
    series_view_t s;
    series_view_init(&s, 3);
    uint64_t tot[3];
    engine_poll_read(eng, P_CHG, tot, 3, &s);
    cr_assert_eq(tot[0], 1);
    cr_assert_eq(tot[2], 1);
    /* minute 3 nets to nothing (x +1 -1, z -1 +1): left out. */
    cr_assert_eq(s.n, 2);
    cr_assert_eq(s.t_ms[0], t0);
    cr_assert_eq(s.counts[0], 2);
    cr_assert_eq(s.counts[2], 0);
    cr_assert_eq(s.t_ms[1], t0 + 60000);
    cr_assert_eq(s.counts[3], -1);
    cr_assert_eq(s.counts[5], 1);
    series_view_free(&s);
}

Test(idem, series_older_than_the_ring_fold_into_its_oldest_minute) {
    series_t s;
    series_init(&s, 2);
    uint64_t m0 = 28000000; /* minutes */
    series_add(&s, m0 * 60000, 0, 1);
    series_add(&s, (m0 + 10) * 60000, 1, 1);
    /* A day and an hour later: both drop out of the ring, into its oldest. */
    series_add(&s, (m0 + SERIES_MINUTES + 60) * 60000, 0, 1);
    /* And a vote stamped long before. */
    series_add(&s, (m0 - 5000) * 60000, 1, 1);
    series_view_t v;
    series_view_init(&v, 2);
    series_read_into(&s, &v);
    series_view_finish(&v);
    cr_assert_eq(v.n, 2);
    cr_assert_eq(v.t_ms[0], (m0 + 61) * 60000, "the ring's oldest minute");
    cr_assert_eq(v.counts[0], 1);
    cr_assert_eq(v.counts[1], 2);
    cr_assert_eq(v.t_ms[1], (m0 + SERIES_MINUTES + 60) * 60000);
    cr_assert_eq(v.counts[2], 1);
    /* Snapshot body roundtrip gives the same view. */
    buf_t b = {0};
    series_snapshot_write(&s, emit_buf, &b);
    cr_assert_eq(b.len, series_snapshot_size(&s));
    series_t t;
    series_init(&t, 2);
    char why[160];
    cr_assert_eq(series_snapshot_read(&t, 2, (uint8_t *)b.data, b.len, why, sizeof why), 0, "%s", why);
    series_view_t w;
    series_view_init(&w, 2);
    series_read_into(&t, &w);
    series_view_finish(&w);
    cr_assert_eq(w.n, v.n);
    cr_assert(!memcmp(w.t_ms, v.t_ms, 8 * v.n));
    cr_assert(!memcmp(w.counts, v.counts, 16 * v.n));
    cr_assert_eq(series_snapshot_read(&t, 2, (uint8_t *)b.data, b.len - 8, why, sizeof why), -1);
    buf_free(&b);
    series_view_free(&v);
    series_view_free(&w);
    series_free(&s);
    series_free(&t);
}
