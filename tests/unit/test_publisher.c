/* publisher/publisher.c: what makes a new version. A version is an event to
 * every live subscriber and a rewrite of the poll's files, so one is made
 * when what a reader would see changed, and only then. */
#include <criterion/criterion.h>
#include <string.h>

#include "engine/engine.h"
#include "publisher/publisher.h"
#include "unit_helpers.h"

#define NPART 2

static tally_config_t *conf;
static engine_t *eng;
static publisher_t *pub;
static char *dir;
static uint64_t pos[NPART];

/* What the stream was handed, in order. */
static struct {
    int n;
    uint64_t version[16];
    char poll[16][32];
} seen;

static void on_publish(void *arg, const poll_def_t *def, uint64_t version, const char *json,
                       size_t len) {
    (void)arg, (void)json, (void)len;
    cr_assert_lt(seen.n, 16);
    seen.version[seen.n] = version;
    snprintf(seen.poll[seen.n], sizeof seen.poll[0], "%s", def->id);
    seen.n++;
}

static void setup(void) {
    dir = tmpdir_new();
    conf = config_new_defaults();
    conf_add_poll(conf, "chg", "changeable", "x, y");
    conf_set_str(&conf->pub_dir, dir);
    conf_finish(conf);
    eng = engine_new(conf, NPART);
    pub = pub_new(conf, eng);
    pub_set_on_publish(pub, on_publish, NULL);
    memset(&seen, 0, sizeof seen);
    memset(pos, 0, sizeof pos);
}

static void teardown(void) {
    pub_free(pub);
    engine_free(eng);
    config_free(conf);
    tmpdir_free(dir);
}

/* Votes of one voter, all in one batch of the voter's partition. */
static void batch(const char *voter, const char *const *opts, int n) {
    int part = rec_partition("chg", opts[0], voter, NPART, 0);
    engine_batch_begin(eng, part);
    for (int i = 0; i < n; i++) {
        uint8_t rec[RECORD_MAX_LEN];
        size_t len = rec_make(rec, "chg", opts[i], voter, 1000);
        pos[part] += 8 + len;
        engine_apply(eng, part, rec, len, pos[part], -1);
    }
    engine_batch_end(eng, part);
}

static void publish(void) {
    char err[512];
    cr_assert_eq(pub_publish_all(pub, err, sizeof err), TALLY_OK, "%s", err);
}

TestSuite(publisher, .init = setup, .fini = teardown);

Test(publisher, the_same_results_are_not_a_new_version) {
    publish();
    cr_assert_eq(seen.n, 1, "the first rendering");
    publish();
    cr_assert_eq(seen.n, 1, "nothing changed, yet a new version went out");

    const char *x[] = {"x"};
    batch("v1", x, 1);
    publish();
    cr_assert_eq(seen.n, 2, "a vote is a new version");
    cr_assert_gt(seen.version[1], seen.version[0]);

    /* The voter changes to y and back in one batch: the poll's generation
     * moves, what a reader sees does not (totals and per-minute series). */
    uint64_t gen = engine_poll_generation(eng, 0);
    const char *yx[] = {"y", "x"};
    batch("v1", yx, 2);
    cr_assert_gt(engine_poll_generation(eng, 0), gen);
    publish();
    cr_assert_eq(seen.n, 2, "the same totals were sent again as version %llu",
                 (unsigned long long)seen.version[seen.n - 1]);

    const char *y[] = {"y"};
    batch("v1", y, 1);
    publish();
    cr_assert_eq(seen.n, 3, "a change after an unchanged round is published");
    cr_assert_gt(seen.version[2], seen.version[1]);
    cr_assert_str_eq(seen.poll[2], "chg");
}

Test(publisher, a_file_is_written_once_per_version) {
    publish();
    uint64_t w = pub_writes(pub);
    publish();
    publish();
    cr_assert_eq(pub_writes(pub), w, "unchanged results were written again");
    char *path = path_join(dir, "polls/chg.json");
    size_t len;
    char *text = file_read(path, &len);
    char want[64];
    snprintf(want, sizeof want, "\"version\":%llu", (unsigned long long)seen.version[0]);
    cr_assert(strstr(text, want), "the file holds the version streamed: %s", text);
    free(text);
    free(path);
}
