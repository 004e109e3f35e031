/* engine/snapshot.c: engine_snapshot_save / engine_snapshot_load. */
#include <criterion/criterion.h>
#include <string.h>
#include <xxhash.h>

#include "common/endian.h"
#include "engine/engine.h"
#include "engine/engine_int.h" /* a partition's voter table */
#include "unit_helpers.h"

#define NPART 2

static char *dir;
static tally_config_t *conf;
static engine_t *eng;

enum { P_ONE, P_CHG, P_UNL };

/* The polls as tests vary them: the default is the base config. */
typedef struct {
    const char *one_options, *one_mode, *chg_options, *chg_mode;
    const char *extra_poll; /* id of a fourth poll, or NULL */
    const char *one_title;
    int drop_unl;
    const char *rename_unl;
    int chg_first; /* list chg before one */
} conf_opts_t;

static tally_config_t *make_conf(const conf_opts_t *o) {
    tally_config_t *c = config_new_defaults();
    for (int k = 0; k < 2; k++) {
        if (k == (o && o->chg_first ? 1 : 0)) {
            conf_add_poll(c, "one", o && o->one_mode ? o->one_mode : "one-per-voter",
                          o && o->one_options ? o->one_options : "a, b, c");
            if (o && o->one_title)
                conf_set(c, "poll.one", "title", o->one_title);
        } else {
            conf_add_poll(c, "chg", o && o->chg_mode ? o->chg_mode : "changeable",
                          o && o->chg_options ? o->chg_options : "x, y, z");
        }
    }
    if (!(o && o->drop_unl))
        conf_add_poll(c, o && o->rename_unl ? o->rename_unl : "unl", "unlimited", "p, q");
    if (o && o->extra_poll)
        conf_add_poll(c, o->extra_poll, "one-per-voter", "m, n");
    conf_finish(c);
    return c;
}

static void setup(void) {
    dir = tmpdir_new();
    conf = make_conf(NULL);
    eng = engine_new(conf, NPART);
    tally_log_quiet = 1;
}

static void teardown(void) {
    engine_free(eng);
    config_free(conf);
    tmpdir_free(dir);
    eng = NULL;
    conf = NULL;
    dir = NULL;
}

TestSuite(snapshot, .init = setup, .fini = teardown);

/* Applies one vote to partition part of e, in a batch of its own; the
 * position advances by one "frame" per record. Returns engine_apply's. */
static int put(engine_t *e, int part, const char *poll, const char *opt, const char *voter) {
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = rec_make(rec, poll, opt, voter, 1);
    uint64_t pos = engine_position(e, part) + 8 + n;
    engine_batch_begin(e, part);
    int rc = engine_apply(e, part, rec, n, pos, -1);
    engine_batch_end(e, part);
    return rc;
}

static void totals(engine_t *e, int poll, uint64_t *out) {
    engine_poll_totals(e, poll, out);
}

static void expect3(engine_t *e, int poll, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t t[3];
    totals(e, poll, t);
    cr_assert(t[0] == a && t[1] == b && t[2] == c, "poll %d: %llu %llu %llu, want %llu %llu %llu",
              poll, (unsigned long long)t[0], (unsigned long long)t[1], (unsigned long long)t[2],
              (unsigned long long)a, (unsigned long long)b, (unsigned long long)c);
}

static void expect2(engine_t *e, int poll, uint64_t a, uint64_t b) {
    uint64_t t[2];
    totals(e, poll, t);
    cr_assert(t[0] == a && t[1] == b, "poll %d: %llu %llu, want %llu %llu", poll,
              (unsigned long long)t[0], (unsigned long long)t[1], (unsigned long long)a,
              (unsigned long long)b);
}

static void save(engine_t *e, int part) {
    char err[512];
    cr_assert_eq(engine_snapshot_save(e, part, dir, err, sizeof err), 0, "%s", err);
}

static char *snap_path(int part, uint64_t pos) {
    char name[64];
    snprintf(name, sizeof name, "p%03d-%016llx.snap", part, (unsigned long long)pos);
    return path_join(dir, name);
}

/* A fresh engine for cfg (NULL: the base config) loaded from dir. */
static engine_t *reload(tally_config_t *cfg, int nparts, int *resumed) {
    engine_t *e = engine_new(cfg ? cfg : conf, nparts);
    char err[512];
    cr_assert_eq(engine_snapshot_load(e, dir, resumed, err, sizeof err), TALLY_OK, "%s", err);
    return e;
}

/* State in every mode on both partitions. */
static void fill_state(engine_t *e) {
    put(e, 0, "one", "a", "alice");
    put(e, 0, "one", "b", "bob");
    put(e, 1, "one", "c", "carol");
    put(e, 0, "chg", "x", "alice");
    put(e, 0, "chg", "z", "alice"); /* alice changed to z */
    put(e, 1, "chg", "y", "dave");
    put(e, 0, "unl", "p", NULL);
    put(e, 1, "unl", "q", "erin");
    put(e, 1, "unl", "q", "erin");
}

static void expect_filled(engine_t *e) {
    expect3(e, P_ONE, 1, 1, 1);
    expect3(e, P_CHG, 0, 1, 1);
    expect2(e, P_UNL, 1, 2);
}

static void expect_empty_partition(engine_t *e, int part) {
    cr_assert_eq(engine_position(e, part), 0, "partition %d resumed at %llu", part,
                 (unsigned long long)engine_position(e, part));
}

Test(snapshot, roundtrip) {
    fill_state(eng);
    uint64_t pos0 = engine_position(eng, 0), pos1 = engine_position(eng, 1);
    save(eng, 0);
    save(eng, 1);

    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 2);
    cr_assert_eq(engine_position(e, 0), pos0);
    cr_assert_eq(engine_position(e, 1), pos1);
    expect_filled(e);

    /* Voters survive: a repeat vote is still recognized ... */
    put(e, 0, "one", "c", "alice");
    put(e, 0, "one", "a", "bob");
    expect3(e, P_ONE, 1, 1, 1);
    /* ... a changeable voter's current option too: alice moves z -> y. */
    put(e, 0, "chg", "y", "alice");
    expect3(e, P_CHG, 0, 2, 0);
    put(e, 0, "chg", "y", "alice");
    expect3(e, P_CHG, 0, 2, 0);
    /* and new voters still count. */
    put(e, 1, "one", "a", "frank");
    expect3(e, P_ONE, 2, 1, 1);
    put(e, 1, "unl", "q", "erin");
    expect2(e, P_UNL, 1, 3);
    engine_free(e);
}

Test(snapshot, roundtrip_many_voters) {
    for (int i = 0; i < 20000; i++) {
        char voter[32];
        snprintf(voter, sizeof voter, "v%d", i);
        put(eng, i % NPART, "one", i % 3 == 0 ? "a" : "b", voter);
    }
    save(eng, 0);
    save(eng, 1);
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 2);
    uint64_t t[3];
    totals(e, P_ONE, t);
    cr_assert_eq(t[0], 6667);
    cr_assert_eq(t[1], 13333);
    for (int i = 0; i < 20000; i += 7) {
        char voter[32];
        snprintf(voter, sizeof voter, "v%d", i);
        put(e, i % NPART, "one", "c", voter);
    }
    expect3(e, P_ONE, 6667, 13333, 0);
    engine_free(e);
}

Test(snapshot, file_names_and_only_two_kept) {
    put(eng, 0, "unl", "p", NULL);
    uint64_t p1 = engine_position(eng, 0);
    save(eng, 0);
    put(eng, 0, "unl", "p", NULL);
    uint64_t p2 = engine_position(eng, 0);
    save(eng, 0);
    put(eng, 0, "unl", "p", NULL);
    uint64_t p3 = engine_position(eng, 0);
    save(eng, 0);
    save(eng, 0); /* same position again: same file */
    char *f1 = snap_path(0, p1), *f2 = snap_path(0, p2), *f3 = snap_path(0, p3);
    cr_assert_eq(file_size(f1), -1, "the oldest snapshot was kept");
    cr_assert_gt(file_size(f2), 0);
    cr_assert_gt(file_size(f3), 0);
    cr_assert_eq(dir_count(dir, NULL), 2, "stray files in the snapshot dir");
    /* Partition 1's snapshots are separate. */
    put(eng, 1, "unl", "q", NULL);
    save(eng, 1);
    cr_assert_eq(dir_count(dir, "p001-"), 1);
    cr_assert_eq(dir_count(dir, "p000-"), 2);
    free(f1);
    free(f2);
    free(f3);
}

Test(snapshot, save_creates_the_directory) {
    char *sub = path_join(dir, "a/b");
    char err[512];
    put(eng, 0, "unl", "p", NULL);
    cr_assert_eq(engine_snapshot_save(eng, 0, sub, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dir_count(sub, ".snap"), 1);
    free(sub);
}

Test(snapshot, save_fails_cleanly) {
    char *file = path_join(dir, "file");
    file_write_str(file, "x");
    char *under = path_join(dir, "file/snaps");
    char err[512] = "";
    cr_assert_eq(engine_snapshot_save(eng, 0, under, err, sizeof err), TALLY_ERR_IO);
    cr_assert_neq(err[0], '\0');
    free(file);
    free(under);
}

Test(snapshot, missing_or_empty_dir_loads_nothing) {
    char *missing = path_join(dir, "nope");
    engine_t *e = engine_new(conf, NPART);
    char err[512];
    int resumed = -1;
    cr_assert_eq(engine_snapshot_load(e, missing, &resumed, err, sizeof err), TALLY_OK);
    cr_assert_eq(resumed, 0);
    resumed = -1;
    cr_assert_eq(engine_snapshot_load(e, dir, &resumed, err, sizeof err), TALLY_OK);
    cr_assert_eq(resumed, 0);
    expect_empty_partition(e, 0);
    engine_free(e);
    free(missing);
}

/* Two snapshots of partition 0: older at `older` with one state, newest at
 * `newest` with more. */
static void two_snapshots(uint64_t *older, uint64_t *newest) {
    put(eng, 0, "one", "a", "alice");
    put(eng, 0, "unl", "p", NULL);
    *older = engine_position(eng, 0);
    save(eng, 0);
    put(eng, 0, "one", "b", "bob");
    put(eng, 0, "unl", "p", NULL);
    *newest = engine_position(eng, 0);
    save(eng, 0);
}

static void expect_older_state(engine_t *e, uint64_t older) {
    cr_assert_eq(engine_position(e, 0), older);
    expect3(e, P_ONE, 1, 0, 0);
    expect2(e, P_UNL, 1, 0);
    /* bob voted after the older snapshot: his vote comes again from the
     * log and must count. */
    put(e, 0, "one", "b", "bob");
    expect3(e, P_ONE, 1, 1, 0);
    put(e, 0, "one", "c", "alice");
    expect3(e, P_ONE, 1, 1, 0);
}

Test(snapshot, corrupt_newest_falls_back_to_older) {
    uint64_t older, newest;
    two_snapshots(&older, &newest);
    char *f = snap_path(0, newest);
    long long size = file_size(f);
    cr_assert_gt(size, 40);
    file_flip_byte(f, size / 2);
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1);
    expect_older_state(e, older);
    engine_free(e);
    free(f);
}

Test(snapshot, corrupt_checksum_falls_back_to_older) {
    uint64_t older, newest;
    two_snapshots(&older, &newest);
    char *f = snap_path(0, newest);
    file_flip_byte(f, -1); /* the checksum itself */
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1);
    expect_older_state(e, older);
    engine_free(e);
    free(f);
}

Test(snapshot, truncated_newest_falls_back_to_older) {
    uint64_t older, newest;
    two_snapshots(&older, &newest);
    char *f = snap_path(0, newest);
    file_truncate(f, file_size(f) - 9);
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1);
    expect_older_state(e, older);
    engine_free(e);
    free(f);
}

Test(snapshot, every_single_byte_flip_is_refused) {
    fill_state(eng);
    uint64_t pos = engine_position(eng, 0);
    save(eng, 0);
    char *f = snap_path(0, pos);
    size_t len;
    char *orig = file_read(f, &len);
    for (size_t i = 0; i < len; i++) {
        file_write(f, orig, len);
        file_flip_byte(f, (long long)i);
        int resumed;
        engine_t *e = reload(NULL, NPART, &resumed);
        cr_assert_eq(resumed, 0, "byte %zu flipped and the snapshot was used", i);
        expect_empty_partition(e, 0);
        expect3(e, P_ONE, 0, 0, 0);
        engine_free(e);
    }
    free(orig);
    free(f);
}

Test(snapshot, every_truncation_is_refused) {
    fill_state(eng);
    uint64_t pos = engine_position(eng, 0);
    save(eng, 0);
    char *f = snap_path(0, pos);
    size_t len;
    char *orig = file_read(f, &len);
    for (size_t n = 0; n < len; n++) {
        file_write(f, orig, n);
        int resumed;
        engine_t *e = reload(NULL, NPART, &resumed);
        cr_assert_eq(resumed, 0, "truncated to %zu of %zu and used", n, len);
        expect_empty_partition(e, 0);
        expect3(e, P_CHG, 0, 0, 0);
        engine_free(e);
    }
    /* Trailing garbage is refused too. */
    file_write(f, orig, len);
    file_append(f, "junk", 4);
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 0);
    engine_free(e);
    free(orig);
    free(f);
}

Test(snapshot, only_snapshot_truncated_starts_from_zero) {
    fill_state(eng);
    uint64_t pos = engine_position(eng, 0);
    save(eng, 0);
    save(eng, 1);
    char *f = snap_path(0, pos);
    file_truncate(f, 10);
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1, "partition 1 is unaffected");
    expect_empty_partition(e, 0);
    cr_assert_eq(engine_position(e, 1), engine_position(eng, 1));
    /* Only partition 1's share remains. */
    expect3(e, P_ONE, 0, 0, 1);
    expect3(e, P_CHG, 0, 1, 0);
    expect2(e, P_UNL, 0, 2);
    engine_free(e);
    free(f);
}

Test(snapshot, not_a_snapshot_is_ignored) {
    char *f = snap_path(0, 0x100);
    file_write_str(f, "this is not a tally snapshot at all, just text\n");
    char *g = snap_path(0, 0x200);
    file_write(g, "", 0);
    char *h = path_join(dir, "p000-zzzz.snap");
    file_write_str(h, "x");
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 0);
    expect_empty_partition(e, 0);
    engine_free(e);
    free(f);
    free(g);
    free(h);
}

/* Saves fill_state()'s partitions, then loads them under cfg. */
static int resumed_under(const conf_opts_t *o, int nparts) {
    fill_state(eng);
    save(eng, 0);
    save(eng, 1);
    tally_config_t *c = make_conf(o);
    int resumed;
    engine_t *e = reload(c, nparts, &resumed);
    if (resumed == 0) {
        /* Not used: every partition starts at 0 with empty state. */
        for (int p = 0; p < nparts; p++)
            expect_empty_partition(e, p);
        for (int i = 0; i < engine_npolls(e); i++) {
            uint64_t t[8];
            engine_poll_totals(e, i, t);
            for (int k = 0; k < engine_poll(e, i)->noptions; k++)
                cr_assert_eq(t[k], 0, "poll %d option %d kept %llu", i, k,
                             (unsigned long long)t[k]);
        }
    }
    engine_free(e);
    config_free(c);
    return resumed;
}

Test(snapshot, config_unchanged_is_used) {
    conf_opts_t o = {0};
    cr_assert_eq(resumed_under(&o, NPART), 2);
}

Test(snapshot, config_title_change_is_fine) {
    conf_opts_t o = {.one_title = "A new title"};
    cr_assert_eq(resumed_under(&o, NPART), 2);
}

Test(snapshot, config_poll_order_changed_is_fine) {
    /* Polls are matched by id, not by their place in the file. */
    fill_state(eng);
    save(eng, 0);
    save(eng, 1);
    conf_opts_t o = {.chg_first = 1};
    tally_config_t *c = make_conf(&o);
    cr_assert_str_eq(c->polls[0].id, "chg");
    int resumed;
    engine_t *e = reload(c, NPART, &resumed);
    cr_assert_eq(resumed, 2);
    uint64_t t[3];
    engine_poll_totals(e, 1, t); /* one */
    cr_assert(t[0] == 1 && t[1] == 1 && t[2] == 1);
    engine_poll_totals(e, 0, t); /* chg */
    cr_assert(t[0] == 0 && t[1] == 1 && t[2] == 1);
    /* alice's changeable vote is still z: moving her to x takes z's vote. */
    put(e, 0, "chg", "x", "alice");
    engine_poll_totals(e, 0, t);
    cr_assert(t[0] == 1 && t[1] == 1 && t[2] == 0);
    engine_free(e);
    config_free(c);
}

Test(snapshot, config_poll_added_not_used) {
    conf_opts_t o = {.extra_poll = "newpoll"};
    cr_assert_eq(resumed_under(&o, NPART), 0);
}

Test(snapshot, config_poll_removed_not_used) {
    conf_opts_t o = {.drop_unl = 1};
    cr_assert_eq(resumed_under(&o, NPART), 0);
}

Test(snapshot, config_poll_renamed_not_used) {
    conf_opts_t o = {.rename_unl = "unl2"};
    cr_assert_eq(resumed_under(&o, NPART), 0);
}

Test(snapshot, config_option_order_changed_not_used) {
    conf_opts_t o = {.chg_options = "y, x, z"};
    cr_assert_eq(resumed_under(&o, NPART), 0);
}

Test(snapshot, config_option_added_not_used) {
    conf_opts_t o = {.one_options = "a, b, c, d"};
    cr_assert_eq(resumed_under(&o, NPART), 0);
}

Test(snapshot, config_option_renamed_not_used) {
    conf_opts_t o = {.one_options = "a, b, k"};
    cr_assert_eq(resumed_under(&o, NPART), 0);
}

Test(snapshot, config_mode_changed_not_used) {
    conf_opts_t o = {.chg_mode = "one-per-voter"};
    cr_assert_eq(resumed_under(&o, NPART), 0);
    conf_opts_t o2 = {.one_mode = "unlimited"};
    teardown();
    setup();
    cr_assert_eq(resumed_under(&o2, NPART), 0);
}

Test(snapshot, partition_count_changed_not_used) {
    /* 2 -> 3 partitions: p000 and p001 exist but were cut for 2. */
    cr_assert_eq(resumed_under(NULL, 3), 0);
}

Test(snapshot, snapshot_of_another_partition_not_used) {
    fill_state(eng);
    uint64_t pos = engine_position(eng, 0);
    save(eng, 0);
    /* Pretend partition 0's file belongs to partition 1. */
    char *from = snap_path(0, pos), *to = snap_path(1, pos);
    cr_assert_eq(rename(from, to), 0);
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 0);
    expect_empty_partition(e, 1);
    engine_free(e);
    free(from);
    free(to);
}

Test(snapshot, failed_newest_leaves_nothing_behind_for_the_fallback) {
    /* The older snapshot matches the config; the newest was written under
     * a config where chg was one-per-voter, so loading it fails after poll
     * "one" (listed first) was already read in. The fallback must start
     * from a clean partition. */
    put(eng, 0, "one", "a", "alice");
    uint64_t older = engine_position(eng, 0);
    save(eng, 0);

    conf_opts_t o = {.chg_mode = "one-per-voter"};
    tally_config_t *c2 = make_conf(&o);
    engine_t *e2 = engine_new(c2, NPART);
    for (int i = 0; i < 50; i++) {
        char voter[16];
        snprintf(voter, sizeof voter, "w%d", i);
        put(e2, 0, "one", "c", voter);
    }
    put(e2, 0, "one", "c", "bob");
    cr_assert_gt(engine_position(e2, 0), older);
    char err[512];
    cr_assert_eq(engine_snapshot_save(e2, 0, dir, err, sizeof err), 0, "%s", err);
    engine_free(e2);
    config_free(c2);

    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1);
    cr_assert_eq(engine_position(e, 0), older);
    expect3(e, P_ONE, 1, 0, 0);
    /* bob and w* are unknown here: their votes count. */
    put(e, 0, "one", "b", "bob");
    put(e, 0, "one", "b", "w3");
    expect3(e, P_ONE, 1, 2, 0);
    engine_free(e);
}

/* ---- restart at scale ---- */

#define BIG_VOTERS 1500000

/* BIG_VOTERS voters on partition 0 of "chg", voter i for option i % 3, fed
 * as tally's workers do: batches of records through engine_apply_batch. */
static void fill_big(engine_t *e) {
    enum { BATCH = 4096 };
    static const char *opts[] = {"x", "y", "z"};
    uint8_t *arena = xmalloc((size_t)BATCH * RECORD_MAX_LEN);
    vlog_msg_t *msgs = xmalloc(sizeof *msgs * BATCH);
    uint64_t pos = engine_position(e, 0);
    for (int i = 0; i < BIG_VOTERS;) {
        int n = 0;
        for (; n < BATCH && i < BIG_VOTERS; n++, i++) {
            char voter[32];
            snprintf(voter, sizeof voter, "big-%d", i);
            uint8_t *rec = arena + (size_t)n * RECORD_MAX_LEN;
            size_t len = rec_make(rec, "chg", opts[i % 3], voter, 1);
            pos += 8 + len;
            msgs[n] = (vlog_msg_t){0, pos, -1, rec, len};
        }
        engine_batch_begin(e, 0);
        cr_assert_eq(engine_apply_batch(e, 0, msgs, n), n);
        engine_batch_end(e, 0);
    }
    free(msgs);
    free(arena);
}

/* Loading a snapshot must not cluster the voter table: its slots come in
 * the saved table's order (sorted by home), which poured into a small table
 * that doubles as it fills piles every voter into the first slots (restart
 * took 22 s at 1M voters, more than 10 minutes at 10M). The loaded table
 * must be sized for the snapshot and probe as a table built by random
 * inserts does: at load a, linear probing averages (1 + 1/(1-a)) / 2
 * probes, and the longest probe of a random table this size is some dozens
 * of slots. */
Test(snapshot, large_snapshot_loads_without_clustering, .timeout = 120) {
    fill_big(eng);
    voters_probe_stats_t before = voters_probe_stats(&engine_ppoll_get_int(&eng->parts[0], P_CHG)->voters);
    cr_assert_eq(before.count, BIG_VOTERS);
    save(eng, 0);

    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1);
    voters_probe_stats_t st = voters_probe_stats(&engine_ppoll_get_int(&e->parts[0], P_CHG)->voters);
    cr_assert_eq(st.count, BIG_VOTERS);
    cr_assert_eq(st.capacity, before.capacity, "loaded into %zu slots, saved from %zu", st.capacity,
                 before.capacity);
    double load = (double)st.count / (double)st.capacity;
    cr_log_info(
        "loaded %zu voters into %zu slots: mean probe %.3f (saved %.3f), max %zu (saved %zu)",
        st.count, st.capacity, st.mean_probe, before.mean_probe, st.max_probe, before.max_probe);
    double mean_bound = 1.25 * (1.0 + 1.0 / (1.0 - load)) / 2.0;
    cr_assert_leq(st.mean_probe, mean_bound, "mean probe %.2f slots at load %.2f (bound %.2f)",
                  st.mean_probe, load, mean_bound);
    cr_assert_leq(st.max_probe, 400, "longest probe %zu slots (saved table: %zu)", st.max_probe,
                  before.max_probe);
    expect3(e, P_CHG, BIG_VOTERS / 3, BIG_VOTERS / 3, BIG_VOTERS / 3);
    /* Every voter is still known: changing one moves exactly one vote. */
    put(e, 0, "chg", "x", "big-1"); /* was y */
    put(e, 0, "chg", "x", "big-3"); /* was x already */
    expect3(e, P_CHG, BIG_VOTERS / 3 + 1, BIG_VOTERS / 3 - 1, BIG_VOTERS / 3);
    engine_free(e);
}

/* ---- error classes ---- */

Test(snapshot, load_file_names_the_class) {
    fill_state(eng);
    uint64_t pos0 = engine_position(eng, 0);
    save(eng, 0);
    char *f = snap_path(0, pos0), why[256];
    engine_t *e = engine_new(conf, NPART);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_OK, "%s", why);
    cr_assert_eq(engine_position(e, 0), pos0);
    /* A sound snapshot of another state: partition 1 is not partition 0. */
    cr_assert_eq(engine_snapshot_load_file(e, 1, f, why, sizeof why), TALLY_ERR_STATE);
    cr_assert_not_null(strstr(why, "partition"), "%s", why);
    expect_empty_partition(e, 1);
    engine_free(e);

    /* ... or of another config. */
    conf_opts_t o = {.chg_mode = "one-per-voter"};
    tally_config_t *c2 = make_conf(&o);
    e = engine_new(c2, NPART);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_ERR_STATE);
    cr_assert_not_null(strstr(why, "mode"), "%s", why);
    expect_empty_partition(e, 0);
    engine_free(e);
    config_free(c2);

    e = engine_new(conf, NPART);
    /* Damage. */
    file_flip_byte(f, 20);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_ERR_CORRUPT);
    cr_assert_not_null(strstr(why, "checksum"), "%s", why);
    file_truncate(f, 0);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_ERR_CORRUPT);
    cr_assert_eq(engine_snapshot_load_file(e, 0, dir, why, sizeof why), TALLY_ERR_CORRUPT,
                 "a directory is not a snapshot");
    /* The disk. */
    char *missing = path_join(dir, "p000-0000000000000001.snap");
    cr_assert_eq(engine_snapshot_load_file(e, 0, missing, why, sizeof why), TALLY_ERR_IO);
    expect_empty_partition(e, 0);
    engine_free(e);
    free(missing);
    free(f);
}

Test(snapshot, snapshot_dir_that_is_a_file_is_a_config_error) {
    char *file = path_join(dir, "file");
    file_write_str(file, "x");
    engine_t *e = engine_new(conf, NPART);
    char err[512] = "";
    int resumed = -1;
    cr_assert_eq(engine_snapshot_load(e, file, &resumed, err, sizeof err), TALLY_ERR_CONFIG);
    cr_assert_not_null(strstr(err, file), "%s", err);
    cr_assert_eq(resumed, 0);
    engine_free(e);
    free(file);
}

/* A voter slot whose option index is beyond the poll's options, in a file
 * with a valid checksum (written by a buggy or hostile tool): used, a later
 * change of that voter's vote would decrement counts[index], outside the
 * array. It must be refused like any damage. */
Test(snapshot, voter_slot_with_an_unknown_option_is_refused) {
    put(eng, 0, "chg", "y", "alice");
    uint64_t pos = engine_position(eng, 0);
    save(eng, 0);
    char *f = snap_path(0, pos);
    size_t len;
    uint8_t *d = (uint8_t *)file_read(f, &len);
    /* The file ends with poll "unl" (no voters: 54 bytes), the end section
     * (12) and the checksum; before them, alice's slot, whose second word
     * starts with the option. */
    size_t opt_at = len - 8 - 12 - 54 - 8;
    cr_assert_eq(le_get16(d + opt_at), 1, "layout: y is option 1");
    le_put16(d + opt_at, 1000);
    le_put64(d + len - 8, XXH3_64bits(d, len - 8));
    file_write(f, d, len);
    char why[256];
    engine_t *e = engine_new(conf, NPART);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_ERR_CORRUPT);
    engine_free(e);
    int resumed;
    e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 0);
    put(e, 0, "chg", "x", "alice");
    expect3(e, P_CHG, 1, 0, 0);
    engine_free(e);
    /* The same bytes with the option put back load. */
    le_put16(d + opt_at, 1);
    le_put64(d + len - 8, XXH3_64bits(d, len - 8));
    file_write(f, d, len);
    e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 1);
    expect3(e, P_CHG, 0, 1, 0);
    engine_free(e);
    free(d);
    free(f);
}

/* ---- temp files of interrupted saves ---- */

Test(snapshot, stale_temp_files_are_removed_at_load) {
    fill_state(eng);
    uint64_t pos0 = engine_position(eng, 0);
    save(eng, 0);
    save(eng, 1);
    char *real = snap_path(0, pos0);
    size_t real_len;
    char *real_data = file_read(real, &real_len);
    /* What a crash between fopen and rename leaves, of either partition. */
    const char *stale[] = {"p000-00000000000000ff.snap.tmp", "p001-0000000000000001.snap.tmp"};
    /* Not ours: kept. */
    const char *other[] = {"notes.tmp", "p000-xyz.snap.tmp", "p000-00000000000000ff.snap.tmp.bak",
                           "x.snap.tmp"};
    for (size_t i = 0; i < 2; i++) {
        char *p = path_join(dir, stale[i]);
        file_write_str(p, "half a snapshot");
        free(p);
    }
    for (size_t i = 0; i < 4; i++) {
        char *p = path_join(dir, other[i]);
        file_write_str(p, "keep me");
        free(p);
    }
    int resumed;
    engine_t *e = reload(NULL, NPART, &resumed);
    cr_assert_eq(resumed, 2);
    expect_filled(e);
    for (size_t i = 0; i < 2; i++) {
        char *p = path_join(dir, stale[i]);
        cr_assert_eq(access(p, F_OK), -1, "%s is still there", stale[i]);
        free(p);
    }
    for (size_t i = 0; i < 4; i++) {
        char *p = path_join(dir, other[i]);
        cr_assert_eq(access(p, F_OK), 0, "%s was removed", other[i]);
        free(p);
    }
    size_t len;
    char *data = file_read(real, &len);
    cr_assert(len == real_len && !memcmp(data, real_data, len), "the snapshot changed");
    free(data);
    free(real_data);
    free(real);
    engine_free(e);
}

/* ---- log ids and the header reader ---- */

#define ID_A "file:0123456789abcdef0123456789abcdef"
#define ID_B "file:fedcba9876543210fedcba9876543210"

/* Rewrites the TLYSNAP4 file at f, which holds config polls only, as the
 * tally before the lifecycle wrote it (TLYSNAP3): no applied_seq, no flags
 * and late/early per poll, no sections. Layouts from snapshot.c's header
 * comment. */
static void make_v3(const char *f) {
    size_t len;
    uint8_t *d = (uint8_t *)file_read(f, &len);
    cr_assert(len > 41 && !memcmp(d, "TLYSNAP4", 8));
    uint8_t *o = malloc(len);
    size_t at = 33 + d[32], n = 0;
    memcpy(o, d, at);
    memcpy(o, "TLYSNAP3", 8);
    n = at;
    at += 8; /* applied_seq */
    uint32_t np = le_get32(d + at);
    memcpy(o + n, d + at, 4);
    at += 4, n += 4;
    for (uint32_t k = 0; k < np; k++) {
        size_t idl = d[at];
        memcpy(o + n, d + at, 1 + idl);
        n += 1 + idl, at += 1 + idl;
        cr_assert_eq(d[at], 0, "a config poll only");
        at++; /* flags */
        uint32_t nopt = le_get32(d + at + 1);
        memcpy(o + n, d + at, 5);
        n += 5, at += 5;
        for (uint32_t q = 0; q < nopt; q++) {
            size_t ol = d[at];
            memcpy(o + n, d + at, 1 + ol + 8);
            n += 1 + ol + 8, at += 1 + ol + 8;
        }
        at += 16; /* late, early */
        uint64_t nv = le_get64(d + at);
        memcpy(o + n, d + at, 8 + nv * 16);
        n += 8 + nv * 16, at += 8 + nv * 16;
    }
    cr_assert_eq(at + 12 + 8, len, "one end section, then the checksum");
    n += 8;
    le_put64(o + n - 8, XXH3_64bits(o, n - 8));
    file_write(f, o, n);
    free(o);
    free(d);
}

/* Rewrites the TLYSNAP3 file at f as tally before log ids wrote it:
 * magic TLYSNAP2, no log id, checksum recomputed. Layout from snapshot.c's
 * header comment. */
static void make_v2(const char *f) {
    size_t len;
    make_v3(f);
    uint8_t *d = (uint8_t *)file_read(f, &len);
    cr_assert(len > 41 && !memcmp(d, "TLYSNAP3", 8));
    size_t idlen = d[32];
    size_t n2 = len - 1 - idlen;
    uint8_t *o = malloc(n2);
    memcpy(o, d, 32);
    memcpy(o, "TLYSNAP2", 8);
    memcpy(o + 32, d + 33 + idlen, len - 33 - idlen - 8);
    le_put64(o + n2 - 8, XXH3_64bits(o, n2 - 8));
    file_write(f, o, n2);
    free(o);
    free(d);
}

Test(snapshot, header_reader_reads_what_save_wrote) {
    engine_set_log_id(eng, ID_A, 0);
    fill_state(eng);
    uint64_t pos0 = engine_position(eng, 0);
    save(eng, 0);
    char *f = snap_path(0, pos0), why[256];
    snap_header_t h;
    for (int verify = 0; verify < 2; verify++) {
        cr_assert_eq(engine_snapshot_read_header(f, verify, &h, why, sizeof why), TALLY_OK, "%s",
                     why);
        cr_assert_eq(h.version, 4);
        cr_assert_eq(h.partition, 0);
        cr_assert_eq(h.npartitions, NPART);
        cr_assert_eq(h.position, pos0);
        cr_assert_gt(h.created_ms, 0);
        cr_assert_str_eq(h.log_id, ID_A);
    }
    cr_assert_eq(engine_snapshot_header_check(eng, 0, &h, why, sizeof why), TALLY_OK, "%s", why);
    cr_assert_eq(engine_snapshot_header_check(eng, 1, &h, why, sizeof why), TALLY_ERR_STATE);
    /* A byte of the state (past the header): only verify sees it. */
    long long size = file_size(f);
    file_flip_byte(f, size - 12);
    cr_assert_eq(engine_snapshot_read_header(f, 0, &h, why, sizeof why), TALLY_OK, "%s", why);
    cr_assert_eq(engine_snapshot_read_header(f, 1, &h, why, sizeof why), TALLY_ERR_CORRUPT);
    cr_assert_not_null(strstr(why, "checksum"), "%s", why);
    file_flip_byte(f, size - 12);
    /* Every truncation is refused when verifying. */
    size_t len;
    char *orig = file_read(f, &len);
    for (size_t k = 0; k < len; k++) {
        file_write(f, orig, k);
        cr_assert_neq(engine_snapshot_read_header(f, 1, &h, why, sizeof why), TALLY_OK,
                      "cut at %zu", k);
    }
    file_write(f, orig, len);
    free(orig);
    /* Not a snapshot; missing. */
    file_write_str(f, "TLYSNAPXxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    cr_assert_eq(engine_snapshot_read_header(f, 0, &h, why, sizeof why), TALLY_ERR_CORRUPT);
    char *missing = path_join(dir, "p000-0000000000000009.snap");
    cr_assert_eq(engine_snapshot_read_header(missing, 0, &h, why, sizeof why), TALLY_ERR_IO);
    free(missing);
    free(f);
}

Test(snapshot, another_logs_snapshot_is_refused_and_recounted) {
    engine_set_log_id(eng, ID_A, 0);
    fill_state(eng);
    uint64_t pos0 = engine_position(eng, 0);
    save(eng, 0);
    save(eng, 1);
    char *f = snap_path(0, pos0), why[256];
    engine_t *e = engine_new(conf, NPART);
    engine_set_log_id(e, ID_B, 1); /* legacy acceptance is for id-less ones only */
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_ERR_STATE);
    cr_assert_not_null(strstr(why, "another log"), "%s", why);
    cr_assert_not_null(strstr(why, ID_A), "%s", why);
    expect_empty_partition(e, 0);
    int resumed = -1;
    cr_assert_eq(engine_snapshot_load(e, dir, &resumed, why, sizeof why), TALLY_OK);
    cr_assert_eq(resumed, 0);
    uint64_t pos[NPART] = {7, 7};
    engine_snapshot_positions(e, dir, pos);
    cr_assert(pos[0] == 0 && pos[1] == 0, "another log's positions used");
    engine_free(e);
    /* The same id: used, and the light reader agrees with the load. */
    e = engine_new(conf, NPART);
    engine_set_log_id(e, ID_A, 0);
    cr_assert_eq(engine_snapshot_load(e, dir, &resumed, why, sizeof why), TALLY_OK);
    cr_assert_eq(resumed, NPART);
    engine_snapshot_positions(e, dir, pos);
    cr_assert_eq(pos[0], engine_position(e, 0));
    cr_assert_eq(pos[1], engine_position(e, 1));
    cr_assert_eq(pos[0], pos0);
    engine_free(e);
    free(f);
}

Test(snapshot, old_format_snapshot_only_for_a_legacy_log) {
    fill_state(eng);
    uint64_t pos0 = engine_position(eng, 0);
    save(eng, 0);
    char *f = snap_path(0, pos0), why[256];
    make_v2(f);
    snap_header_t h;
    cr_assert_eq(engine_snapshot_read_header(f, 1, &h, why, sizeof why), TALLY_OK, "%s", why);
    cr_assert_eq(h.version, 2);
    cr_assert_eq(h.position, pos0);
    cr_assert_str_eq(h.log_id, "");
    engine_t *e = engine_new(conf, NPART);
    engine_set_log_id(e, ID_A, 0);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_ERR_STATE);
    cr_assert_not_null(strstr(why, "before log ids"), "%s", why);
    expect_empty_partition(e, 0);
    engine_set_log_id(e, "legacy:0011223344556677", 1);
    cr_assert_eq(engine_snapshot_load_file(e, 0, f, why, sizeof why), TALLY_OK, "%s", why);
    cr_assert_eq(engine_position(e, 0), pos0);
    uint64_t t[3];
    engine_poll_totals(e, P_ONE, t);
    cr_assert(t[0] == 1 && t[1] == 1 && t[2] == 0, "%llu %llu %llu", (unsigned long long)t[0],
              (unsigned long long)t[1], (unsigned long long)t[2]);
    engine_free(e);
    free(f);
}
