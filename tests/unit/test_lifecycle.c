/* tsan: per-partition worker threads apply one log. */
/* The engine's poll lifecycle: control records (DEFINE, FINAL) interleaved
 * with votes in each partition's log order; the close cut by the vote's
 * stamp, late and early votes, final, options added, capped mode, snapshots
 * of run-time polls, and live == replay across threading. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "common/catalog.h"
#include "engine/engine.h"
#include "log/record.h"
#include "unit_helpers.h"

#define NPART 4

static uint64_t pos[NPART];

typedef struct {
    uint8_t b[CONTROL_MAX_LEN];
    size_t n;
} ctl_t;

static ctl_t ctl(unsigned kind, const char *poll, uint64_t seq, uint64_t at, const char *body) {
    ctl_t c;
    control_record_t r = {.kind = kind,
                          .ts_ms = 1,
                          .seq = seq,
                          .at_ms = at,
                          .poll = poll,
                          .poll_len = strlen(poll),
                          .body = body,
                          .body_len = body ? strlen(body) : 0};
    c.n = control_encode(&r, c.b);
    cr_assert(c.n > 0);
    return c;
}

/* A DEFINE of the poll in JSON (its canonical form, as the writer makes). */
static ctl_t define(const char *json, uint64_t seq) {
    poll_def_t *d;
    catalog_error_t err;
    cr_assert_eq(poll_def_from_json(json, strlen(json), NULL, &d, &err), TALLY_OK, "%s",
                 err.message);
    char *body = poll_def_to_json(d);
    ctl_t c = ctl(CONTROL_DEFINE, d->id, seq, 0, body);
    free(body);
    poll_def_free(d);
    return c;
}

static void apply_in(engine_t *e, int p, const uint8_t *rec, size_t n) {
    pos[p] += 12 + n;
    engine_batch_begin(e, p);
    engine_apply(e, p, rec, n, pos[p], -1);
    engine_batch_end(e, p);
}

/* To every partition, as the history writer does. */
static void broadcast(engine_t *e, ctl_t c) {
    for (int p = 0; p < NPART; p++)
        apply_in(e, p, c.b, c.n);
}

static void vote_at(engine_t *e, const char *poll, const char *opt, const char *voter,
                    uint64_t ts) {
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = rec_make(rec, poll, opt, voter, ts);
    apply_in(e, rec_partition(poll, opt, voter, NPART, ts), rec, n);
}

static uint64_t total_of(engine_t *e, const char *poll, int option) {
    int i = engine_poll_index(e, poll, strlen(poll));
    cr_assert_geq(i, 0, "no poll %s", poll);
    uint64_t t[16];
    engine_poll_totals_n(e, i, t, option + 1);
    return t[option];
}

static engine_poll_status_t status_of(engine_t *e, const char *poll, uint64_t *finals) {
    int i = engine_poll_index(e, poll, strlen(poll));
    cr_assert_geq(i, 0);
    return engine_poll_status(e, i, finals);
}

static tally_config_t *conf;
static engine_t *eng;

static void setup(void) {
    memset(pos, 0, sizeof pos);
    conf = config_new_defaults();
    conf_finish(conf);
    eng = engine_new(conf, NPART);
}
static void teardown(void) {
    engine_free(eng);
    config_free(conf);
}

TestSuite(lifecycle, .init = setup, .fini = teardown);

Test(lifecycle, a_poll_defined_at_run_time_counts_from_its_define) {
    vote_at(eng, "duel", "a", "v1", 100); /* before the DEFINE: not a poll yet */
    cr_assert_eq(engine_stats(eng).skipped, 1);
    broadcast(eng, define("{\"id\":\"duel\",\"options\":[\"a\",\"b\"]}", 1));
    cr_assert_eq(engine_npolls(eng), 1);
    const catalog_t *cat = engine_catalog(eng);
    cr_assert_eq(catalog_seq(cat), 1);
    cr_assert_not_null(catalog_find(cat, "duel", 4));
    vote_at(eng, "duel", "a", "v1", 200);
    vote_at(eng, "duel", "b", "v2", 200);
    vote_at(eng, "duel", "b", "v1", 200); /* one-per-voter: repeat ignored */
    vote_at(eng, "duel", "c", "v3", 200); /* no such option */
    cr_assert_eq(total_of(eng, "duel", 0), 1);
    cr_assert_eq(total_of(eng, "duel", 1), 1);
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_partition_seq(eng, p), 1);
    cr_assert_str_eq(engine_poll(eng, 0)->id, "duel");
}

Test(lifecycle, the_close_is_cut_by_the_votes_stamp) {
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"unlimited\","
                          "\"opens_at\":1000,\"closes_at\":5000}",
                          1));
    vote_at(eng, "p", "a", NULL, 999);  /* early */
    vote_at(eng, "p", "a", NULL, 1000); /* first counted ms */
    vote_at(eng, "p", "a", NULL, 4999); /* last counted ms */
    vote_at(eng, "p", "a", NULL, 5000); /* late */
    vote_at(eng, "p", "a", NULL, 9000); /* late */
    cr_assert_eq(total_of(eng, "p", 0), 2);
    engine_poll_status_t st = status_of(eng, "p", NULL);
    cr_assert_eq(st.late, 2);
    cr_assert_eq(st.early, 1);
    cr_assert_eq(st.final, 0);
    engine_stats_t s = engine_stats(eng);
    cr_assert_eq(s.late, 2);
    cr_assert_eq(s.early, 1);
    cr_assert_eq(s.applied, 2);
}

Test(lifecycle, a_close_moved_later_counts_what_the_new_close_allows) {
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"unlimited\","
                          "\"closes_at\":5000}",
                          1));
    vote_at(eng, "p", "a", NULL, 5500); /* late under the first close */
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"unlimited\","
                          "\"closes_at\":6000}",
                          2));
    vote_at(eng, "p", "a", NULL, 5500); /* counts under the second */
    cr_assert_eq(total_of(eng, "p", 0), 1);
    cr_assert_eq(status_of(eng, "p", NULL).late, 1);
}

Test(lifecycle, final_freezes_the_totals_in_each_partition_and_needs_them_all) {
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\",\"b\"],\"mode\":\"unlimited\","
                          "\"closes_at\":5000}",
                          1));
    vote_at(eng, "p", "a", NULL, 100);
    ctl_t fin = ctl(CONTROL_FINAL, "p", 2, 5000, NULL);
    uint64_t finals[NPART];
    for (int p = 0; p < NPART - 1; p++)
        apply_in(eng, p, fin.b, fin.n);
    cr_assert_eq(status_of(eng, "p", finals).final, 0, "not every partition has it");
    cr_assert_eq(finals[NPART - 1], 0);
    cr_assert_eq(finals[0], pos[0]);
    /* In the partition without its FINAL a vote stamped before the close
     * still counts (it was answered 202 before the cut). */
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = rec_make(rec, "p", "b", NULL, 4000);
    apply_in(eng, NPART - 1, rec, n);
    cr_assert_eq(total_of(eng, "p", 1), 1);
    /* After a FINAL the same stamp is late. */
    apply_in(eng, 0, rec, n);
    cr_assert_eq(total_of(eng, "p", 1), 1);
    cr_assert_eq(status_of(eng, "p", NULL).late, 1);
    apply_in(eng, NPART - 1, fin.b, fin.n);
    engine_poll_status_t st = status_of(eng, "p", finals);
    cr_assert_eq(st.final, 1);
    for (int p = 0; p < NPART; p++)
        cr_assert_gt(finals[p], 0);
    cr_assert_eq(finals[NPART - 1], pos[NPART - 1]);
    const catalog_entry_t *en = catalog_find(engine_catalog(eng), "p", 1);
    cr_assert(en->final);
    cr_assert_eq(en->final_at, 5000);
    /* A DEFINE after the FINAL changes nothing. */
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\",\"b\"],\"mode\":\"unlimited\","
                          "\"closes_at\":90000}",
                          3));
    vote_at(eng, "p", "a", NULL, 6000);
    cr_assert_eq(total_of(eng, "p", 0), 1);
}

Test(lifecycle, options_appended_at_run_time_keep_the_counts) {
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\",\"b\"],\"mode\":\"changeable\"}", 1));
    vote_at(eng, "p", "a", "v1", 10);
    vote_at(eng, "p", "c", "v2", 10); /* not an option yet */
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\",\"b\",{\"id\":\"c\",\"label\":\"C\"}],"
                          "\"mode\":\"changeable\"}",
                          2));
    vote_at(eng, "p", "c", "v2", 20);
    vote_at(eng, "p", "c", "v1", 20); /* v1 changes a -> c */
    cr_assert_eq(total_of(eng, "p", 0), 0);
    cr_assert_eq(total_of(eng, "p", 2), 2);
    cr_assert_eq(engine_poll(eng, 0)->noptions, 3);
    cr_assert_str_eq(engine_poll(eng, 0)->options[2].label, "C");
    cr_assert_eq(engine_stats(eng).skipped, 1);
}

Test(lifecycle, capped_mode_counts_a_voters_first_n_votes) {
    broadcast(eng, define("{\"id\":\"ev\",\"options\":[\"a\",\"b\",\"c\"],\"mode\":\"capped\","
                          "\"max_votes\":3}",
                          1));
    const char *seq[] = {"a", "a", "b", "c", "a", "b"};
    for (int i = 0; i < 6; i++)
        vote_at(eng, "ev", seq[i], "phone1", 10 + (uint64_t)i);
    vote_at(eng, "ev", "c", "phone2", 10);
    cr_assert_eq(total_of(eng, "ev", 0), 2);
    cr_assert_eq(total_of(eng, "ev", 1), 1);
    cr_assert_eq(total_of(eng, "ev", 2), 1);
}

Test(lifecycle, a_rebroadcast_or_incompatible_define_is_ignored) {
    ctl_t d1 = define("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"unlimited\"}", 1);
    broadcast(eng, d1);
    vote_at(eng, "p", "a", NULL, 10);
    broadcast(eng, d1); /* after a crash mid-broadcast: idempotent */
    /* A mode change would corrupt the counted votes: refused. */
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"one-per-voter\"}", 2));
    cr_assert_eq(engine_poll(eng, 0)->mode, MODE_UNLIMITED);
    vote_at(eng, "p", "a", NULL, 10);
    cr_assert_eq(total_of(eng, "p", 0), 2);
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_partition_seq(eng, p), 2);
}

Test(lifecycle, v1_votes_count_against_the_config_polls) {
    tally_config_t *c = config_new_defaults();
    conf_add_poll(c, "old", "one-per-voter", "a, b");
    conf_finish(c);
    engine_t *e = engine_new(c, NPART);
    uint8_t rec[64];
    /* A v1 record by hand (log/record.h's layout). */
    size_t n = 0;
    rec[n++] = 1;
    rec[n++] = 0;
    memset(rec + n, 0, 8);
    rec[n] = 10;
    n += 8;
    rec[n++] = 3;
    memcpy(rec + n, "old", 3);
    n += 3;
    rec[n++] = 1;
    rec[n++] = 'b';
    rec[n++] = 2;
    rec[n++] = 0;
    memcpy(rec + n, "vv", 2);
    n += 2;
    apply_in(e, 0, rec, n);
    uint64_t t[2];
    engine_poll_totals(e, 0, t);
    cr_assert_eq(t[1], 1);
    /* The DEFINE of the same poll (startup appends it) keeps the counts. */
    ctl_t d = define("{\"id\":\"old\",\"options\":[\"a\",\"b\"],\"source\":\"config\"}", 1);
    for (int p = 0; p < NPART; p++)
        apply_in(e, p, d.b, d.n);
    engine_poll_totals(e, 0, t);
    cr_assert_eq(t[1], 1);
    cr_assert_eq(catalog_find(engine_catalog(e), "old", 3)->def_seq, 1);
    engine_free(e);
    config_free(c);
}

/* ---- snapshots ---- */

Test(lifecycle, snapshot_round_trip_keeps_run_time_polls) {
    char *dir = tmpdir_new();
    broadcast(eng, define("{\"id\":\"p\",\"options\":[\"a\",\"b\"],\"mode\":\"capped\","
                          "\"max_votes\":2,\"closes_at\":5000}",
                          1));
    broadcast(eng, define("{\"id\":\"q\",\"title\":\"Q\",\"options\":[\"x\"],"
                          "\"visibility\":\"on_close\"}",
                          2));
    for (int i = 0; i < 40; i++) {
        char v[16];
        snprintf(v, sizeof v, "v%d", i % 7);
        vote_at(eng, "p", i % 3 ? "a" : "b", v, 100 + (uint64_t)i * 150);
        vote_at(eng, "q", "x", v, 100);
    }
    broadcast(eng, ctl(CONTROL_FINAL, "p", 3, 5000, NULL));
    char err[256];
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_snapshot_save(eng, p, dir, err, sizeof err), TALLY_OK, "%s", err);
    engine_t *e = engine_new(conf, NPART);
    int resumed = 0;
    cr_assert_eq(engine_snapshot_load(e, dir, &resumed, err, sizeof err), TALLY_OK, "%s", err);
    cr_assert_eq(resumed, NPART);
    cr_assert_eq(engine_npolls(e), 2);
    cr_assert_eq(catalog_seq(engine_catalog(e)), 3);
    for (const char *const *id = (const char *const[]){"p", "q", NULL}; *id; id++) {
        const catalog_entry_t *a = catalog_find(engine_catalog(eng), *id, 1);
        const catalog_entry_t *b = catalog_find(engine_catalog(e), *id, 1);
        cr_assert(poll_def_equal(a->def, b->def));
        cr_assert_eq(a->final, b->final);
        engine_poll_status_t sa = status_of(eng, *id, NULL), sb = status_of(e, *id, NULL);
        cr_assert_eq(sa.late, sb.late);
        cr_assert_eq(sa.final, sb.final);
        for (int o = 0; o < a->def->noptions; o++)
            cr_assert_eq(total_of(eng, *id, o), total_of(e, *id, o));
    }
    cr_assert(status_of(e, "p", NULL).final);
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_partition_seq(e, p), 3);
    /* Capped counts survived: v0 already has 2 counted votes. */
    uint64_t before = total_of(e, "q", 0);
    memcpy(pos, (uint64_t[NPART]){0}, sizeof pos);
    for (int p = 0; p < NPART; p++)
        pos[p] = engine_position(e, p);
    broadcast(e, define("{\"id\":\"q\",\"title\":\"Q\",\"options\":[\"x\",\"y\"],"
                        "\"visibility\":\"on_close\"}",
                        4));
    vote_at(e, "q", "y", "new", 100);
    cr_assert_eq(total_of(e, "q", 0), before);
    cr_assert_eq(total_of(e, "q", 1), 1);
    /* Adding a poll at run time keeps the snapshot usable. */
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(engine_snapshot_save(e, p, dir, err, sizeof err), TALLY_OK, "%s", err);
    engine_t *e2 = engine_new(conf, NPART);
    cr_assert_eq(engine_snapshot_load(e2, dir, &resumed, err, sizeof err), TALLY_OK);
    cr_assert_eq(resumed, NPART);
    cr_assert_eq(total_of(e2, "q", 1), 1);
    engine_free(e2);
    engine_free(e);
    tmpdir_free(dir);
}

/* ---- live == replay ---- */

enum { NREC = 6000 };

typedef struct {
    uint8_t b[512];
    size_t n;
    int part; /* -1: every partition */
} lrec_t;

/* A log: polls defined, re-defined with more options and a close moved,
 * votes stamped around the closes, FINALs; deterministic. */
static lrec_t *make_log(int *out_n) {
    lrec_t *log = xcalloc(NREC + 64, sizeof *log);
    int n = 0;
    uint64_t seed = 7, seq = 0;
    const char *ids[] = {"u", "o", "c", "k"};
    const char *modes[] = {"unlimited", "one-per-voter", "changeable", "capped"};
    for (int i = 0; i < NREC; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = seed >> 11;
        if (i % 1000 == 0 && i / 1000 < 4) {
            int k = i / 1000;
            char json[256];
            snprintf(json, sizeof json,
                     "{\"id\":\"%s\",\"options\":[\"a\",\"b\"],\"mode\":\"%s\"%s,\"closes_at\":"
                     "%d}",
                     ids[k], modes[k], k == 3 ? ",\"max_votes\":2" : "", 5000 + 1000 * k);
            ctl_t c = define(json, ++seq);
            memcpy(log[n].b, c.b, c.n);
            log[n].n = c.n;
            log[n++].part = -1;
        } else if (i == 4500) {
            ctl_t c = define("{\"id\":\"o\",\"options\":[\"a\",\"b\",\"c\"],\"mode\":"
                             "\"one-per-voter\",\"closes_at\":7000}",
                             ++seq);
            memcpy(log[n].b, c.b, c.n);
            log[n].n = c.n;
            log[n++].part = -1;
        } else if (i == 5500) {
            ctl_t c = ctl(CONTROL_FINAL, "u", ++seq, 5000, NULL);
            memcpy(log[n].b, c.b, c.n);
            log[n].n = c.n;
            log[n++].part = -1;
        } else {
            const char *poll = ids[r % 4];
            const char *opt = (const char *[]){"a", "b", "c"}[(r >> 8) % 3];
            char voter[16];
            snprintf(voter, sizeof voter, "v%llu", (unsigned long long)((r >> 12) % 300));
            uint64_t ts = 2000 + (uint64_t)i;
            log[n].n = rec_make(log[n].b, poll, opt, voter, ts);
            log[n].part = rec_partition(poll, opt, voter, NPART, 0);
            n++;
        }
    }
    *out_n = n;
    return log;
}

typedef struct {
    engine_t *e;
    const lrec_t *log;
    int n, part;
} worker_arg_t;

static void apply_part(engine_t *e, const lrec_t *log, int n, int p, uint64_t *ppos) {
    for (int i = 0; i < n; i++) {
        if (log[i].part != -1 && log[i].part != p)
            continue;
        *ppos += 12 + log[i].n;
        engine_batch_begin(e, p);
        engine_apply(e, p, log[i].b, log[i].n, *ppos, -1);
        engine_batch_end(e, p);
    }
}

static void *worker(void *arg) {
    worker_arg_t *w = arg;
    uint64_t ppos = 0;
    apply_part(w->e, w->log, w->n, w->part, &ppos);
    return NULL;
}

Test(lifecycle, one_thread_and_a_thread_per_partition_count_the_same) {
    int n;
    lrec_t *log = make_log(&n);
    engine_t *one = engine_new(conf, NPART), *many = engine_new(conf, NPART);
    for (int p = 0; p < NPART; p++) {
        uint64_t ppos = 0;
        apply_part(one, log, n, p, &ppos);
    }
    pthread_t th[NPART];
    worker_arg_t args[NPART];
    for (int p = 0; p < NPART; p++) {
        args[p] = (worker_arg_t){many, log, n, p};
        cr_assert_eq(pthread_create(&th[p], NULL, worker, &args[p]), 0);
    }
    for (int p = 0; p < NPART; p++)
        pthread_join(th[p], NULL);
    cr_assert_eq(engine_npolls(one), 4);
    cr_assert_eq(engine_npolls(many), 4);
    uint64_t sum = 0;
    for (const char *const *id = (const char *const[]){"u", "o", "c", "k", NULL}; *id; id++) {
        for (int o = 0; o < 3; o++) {
            cr_assert_eq(total_of(one, *id, o), total_of(many, *id, o), "%s/%d", *id, o);
            sum += total_of(one, *id, o);
        }
        cr_assert_eq(status_of(one, *id, NULL).late, status_of(many, *id, NULL).late);
        cr_assert_eq(status_of(one, *id, NULL).final, status_of(many, *id, NULL).final);
    }
    cr_assert_gt(sum, 100, "the log counts something");
    cr_assert(status_of(one, "u", NULL).final);
    cr_assert_gt(status_of(one, "u", NULL).late, 0, "votes after u's close are late");
    cr_assert_gt(total_of(one, "o", 2), 0, "the option added at run time counts");
    engine_free(one);
    engine_free(many);
    free(log);
}
