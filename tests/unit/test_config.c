/* common/config.h: INI files, -s overrides, validation and their errors. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "unit_helpers.h"

static char *dir;
static char *ini;
static char err[1024];

static void setup(void) {
    dir = tmpdir_new();
    ini = path_join(dir, "tally.ini");
    err[0] = '\0';
}
static void teardown(void) {
    free(ini);
    ini = NULL;
    tmpdir_free(dir);
    dir = NULL;
}

TestSuite(config, .init = setup, .fini = teardown);

/* config_load as a pointer: NULL exactly when it returned an error, which
 * must be TALLY_ERR_CONFIG with a message. */
static tally_config_t *cload(const char *path, const char *const *ov, int n) {
    tally_config_t *c = (tally_config_t *)1;
    tally_err_t rc = config_load(path, ov, n, &c, err, sizeof err);
    cr_assert(rc == TALLY_OK || rc == TALLY_ERR_CONFIG, "config_load returned %s",
              tally_err2str(rc));
    cr_assert_eq(rc == TALLY_OK, c != NULL, "result %s with config %p", tally_err2str(rc),
                 (void *)c);
    if (rc != TALLY_OK)
        cr_assert_neq(err[0], '\0', "no error message");
    return c;
}

static tally_config_t *load_text(const char *text) {
    file_write_str(ini, text);
    err[0] = '\0';
    return cload(ini, NULL, 0);
}

static tally_config_t *load_with(const char *text, const char *const *ov, int n) {
    file_write_str(ini, text);
    err[0] = '\0';
    return cload(ini, ov, n);
}

/* The load fails and the message holds every needle. */
static void expect_error(const char *text, const char *const *needles, int n) {
    tally_config_t *c = load_text(text);
    cr_assert_null(c, "loaded a bad config:\n%s", text);
    cr_assert_neq(err[0], '\0', "no error message");
    for (int i = 0; i < n; i++)
        cr_assert_not_null(strstr(err, needles[i]), "error '%s' lacks '%s'", err, needles[i]);
}

static const char *kafka_prop(const tally_config_t *c, const char *key) {
    for (int i = 0; i < c->nkafka_props; i++)
        if (!strcmp(c->kafka_props[i].key, key))
            return c->kafka_props[i].value;
    return NULL;
}

static const char *good =
    "; comment line\n"
    "# another comment\n"
    "[server]\n"
    "listen = 0.0.0.0:9090\n"
    "threads = 4\n"
    "max_pending = 500\n"
    "\n"
    "[log]\n"
    "dir = /var/lib/tally/log\n"
    "partitions = 8\n"
    "group_commit_us = 0\n"
    "fsync = false\n"
    "\n"
    "[engine]\n"
    "snapshot_dir = /var/lib/tally/snap\n"
    "snapshot_interval_ms = 2500\n"
    "threads = 3\n"
    "\n"
    "[publisher]\n"
    "dir = /srv/www\n"
    "min_interval_ms = 0\n"
    "\n"
    "[kafka]\n"
    "brokers = k1:9092,k2:9092\n"
    "topic = votes\n"
    "partitions = 12\n"
    "linger.ms = 5\n"
    "compression.type = zstd\n"
    "\n"
    "[poll.demo]\n"
    "title = Which act should win tonight?\n"
    "options = red, green,blue\n"
    "label.red = The Red Singers\n"
    "label.blue = Blue Notes\n"
    "mode = one-per-voter\n"
    "\n"
    "[poll.mood]\n"
    "title = How do you feel?\n"
    "options = love, like, meh\n"
    "mode = changeable\n"
    "\n"
    "[poll.applause]\n"
    "options = clap, cheer\n"
    "mode = unlimited\n"
    "\n"
    "[poll.plain]\n"
    "options = yes,no\n";

Test(config, good_file_parses) {
    tally_config_t *c = load_text(good);
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->listen, "0.0.0.0:9090");
    cr_assert_eq(c->server_threads, 4);
    cr_assert_eq(c->max_pending, 500);
    cr_assert_str_eq(c->log_dir, "/var/lib/tally/log");
    cr_assert_eq(c->log_partitions, 8);
    cr_assert_eq(c->log_group_commit_us, 0);
    cr_assert_eq(c->log_fsync, 0);
    cr_assert_str_eq(c->snapshot_dir, "/var/lib/tally/snap");
    cr_assert_eq(c->snapshot_interval_ms, 2500);
    cr_assert_eq(c->engine_threads, 3);
    cr_assert_str_eq(c->pub_dir, "/srv/www");
    cr_assert_eq(c->pub_min_interval_ms, 0);
    cr_assert_str_eq(c->kafka_brokers, "k1:9092,k2:9092");
    cr_assert_str_eq(c->kafka_topic, "votes");
    cr_assert_eq(c->kafka_partitions, 12);

    /* Unknown kafka keys go to librdkafka unchanged, known ones do not. */
    cr_assert_eq(c->nkafka_props, 2);
    cr_assert_str_eq(kafka_prop(c, "linger.ms"), "5");
    cr_assert_str_eq(kafka_prop(c, "compression.type"), "zstd");
    cr_assert_null(kafka_prop(c, "brokers"));

    cr_assert_eq(c->npolls, 4);
    const poll_conf_t *p = &c->polls[0];
    cr_assert_str_eq(p->id, "demo");
    cr_assert_str_eq(p->title, "Which act should win tonight?");
    cr_assert_eq(p->mode, MODE_ONE_PER_VOTER);
    cr_assert_eq(p->noptions, 3);
    cr_assert_str_eq(p->options[0].id, "red");
    cr_assert_str_eq(p->options[1].id, "green");
    cr_assert_str_eq(p->options[2].id, "blue");
    cr_assert_str_eq(p->options[0].label, "The Red Singers");
    cr_assert_str_eq(p->options[1].label, "green", "label defaults to the id");
    cr_assert_str_eq(p->options[2].label, "Blue Notes");

    p = &c->polls[1];
    cr_assert_str_eq(p->id, "mood");
    cr_assert_eq(p->mode, MODE_CHANGEABLE);
    cr_assert_eq(p->noptions, 3);
    cr_assert_str_eq(p->options[2].id, "meh");

    p = &c->polls[2];
    cr_assert_str_eq(p->id, "applause");
    cr_assert_str_eq(p->title, "applause", "title defaults to the id");
    cr_assert_eq(p->mode, MODE_UNLIMITED);
    cr_assert_eq(p->noptions, 2);

    p = &c->polls[3];
    cr_assert_eq(p->mode, MODE_ONE_PER_VOTER, "mode defaults to one-per-voter");
    cr_assert_eq(p->noptions, 2);

    cr_assert_eq(config_poll(c, "mood", 4), &c->polls[1]);
    cr_assert_null(config_poll(c, "moo", 3));
    cr_assert_null(config_poll(c, "moods", 5));
    cr_assert_eq(config_poll(c, "moodXYZ", 4), &c->polls[1], "length bounds the id");
    cr_assert_eq(poll_option_index(&c->polls[0], "blue", 4), 2);
    cr_assert_eq(poll_option_index(&c->polls[0], "blu", 3), -1);
    cr_assert_eq(poll_option_index(&c->polls[0], "Blue", 4), -1, "ids are case-sensitive");
    config_free(c);
}

Test(config, defaults) {
    tally_config_t *c = config_new_defaults();
    cr_assert_str_eq(c->listen, "127.0.0.1:8080");
    cr_assert_eq(c->server_threads, 1);
    cr_assert_eq(c->max_pending, 100000);
    cr_assert_str_eq(c->log_dir, "run/log");
    cr_assert_eq(c->log_partitions, 4);
    cr_assert_eq(c->log_group_commit_us, 200);
    cr_assert_eq(c->log_fsync, 1);
    cr_assert_str_eq(c->snapshot_dir, "run/snapshots");
    cr_assert_eq(c->snapshot_interval_ms, 10000);
    cr_assert_eq(c->engine_threads, 2);
    cr_assert_str_eq(c->pub_dir, "run/public");
    cr_assert_eq(c->pub_min_interval_ms, 50);
    cr_assert_str_eq(c->kafka_brokers, "");
    cr_assert_str_eq(c->kafka_topic, "tally.votes");
    cr_assert_eq(c->kafka_partitions, 4);
    cr_assert_eq(c->npolls, 0);
    cr_assert_eq(c->nkafka_props, 0);
    config_free(c);

    /* An empty file is the defaults. */
    c = load_text("");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->log_partitions, 4);
    config_free(c);
    config_free(NULL);
}

Test(config, the_shipped_demo_config_loads) {
    /* The source tree from this file's path: <src>/tests/unit/test_config.c */
    char path[4200];
    snprintf(path, sizeof path, "%s", __FILE__);
    char *cut = strstr(path, "tests/unit/test_config.c");
    if (!cut || (cut != path && cut[-1] != '/'))
        cr_skip_test("source path unknown (%s)", __FILE__);
    snprintf(cut, sizeof path - (size_t)(cut - path), "config/tally.ini");
    tally_config_t *c = cload(path, NULL, 0);
    cr_assert_not_null(c, "%s: %s", path, err);
    cr_assert_eq(c->npolls, 3);
    config_free(c);
}

Test(config, booleans) {
    const char *yes[] = {"true", "yes", "1", "on"}, *no[] = {"false", "no", "0", "off"};
    char text[128];
    for (int i = 0; i < 4; i++) {
        snprintf(text, sizeof text, "[log]\nfsync = %s\n", no[i]);
        tally_config_t *c = load_text(text);
        cr_assert_not_null(c, "%s", err);
        cr_assert_eq(c->log_fsync, 0, "%s", no[i]);
        config_free(c);
        snprintf(text, sizeof text, "[log]\nfsync = off\n[log]\nfsync = %s\n", yes[i]);
        c = load_text(text);
        cr_assert_not_null(c, "%s", err);
        cr_assert_eq(c->log_fsync, 1, "%s", yes[i]);
        config_free(c);
    }
    tally_config_t *c = load_text("[log]\nfsync = maybe\n");
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, ":2:"), "%s", err);
    cr_assert_not_null(strstr(err, "log.fsync"), "%s", err);
    cr_assert_not_null(strstr(err, "maybe"), "%s", err);
}

/* ---- errors name the file, the line and the key ---- */

static void expect_file_error(const char *text, int line, const char *k1, const char *k2) {
    char where[4200];
    snprintf(where, sizeof where, "%s:%d:", ini, line);
    const char *needles[] = {where, k1, k2};
    expect_error(text, needles, k2 ? 3 : 2);
}

Test(config, error_unknown_key) {
    expect_file_error("[server]\nlisten = 127.0.0.1:1\nbogus = 1\n", 3, "server.bogus", NULL);
    expect_file_error("[log]\n\n; c\ndirectory = x\n", 4, "log.directory", NULL);
}

Test(config, error_unknown_section) {
    expect_file_error("[server]\nthreads = 1\n[serevr]\nthreads = 2\n", 4, "serevr",
                      "unknown section");
}

Test(config, error_bad_integer) {
    expect_file_error("[server]\nthreads = two\n", 2, "server.threads", "not an integer");
    expect_file_error("[server]\nthreads = 3x\n", 2, "server.threads", "'3x'");
    expect_file_error("[engine]\nthreads = \n", 2, "engine.threads", "not an integer");
    expect_file_error("[log]\npartitions = 99999999999999999999999\n", 2, "log.partitions",
                      "not an integer");
    expect_file_error("[log]\npartitions = 1.5\n", 2, "log.partitions", "not an integer");
}

Test(config, error_out_of_range) {
    expect_file_error("[server]\nthreads = 0\n", 2, "server.threads", "out of range [1, 64]");
    expect_file_error("[server]\nthreads = 65\n", 2, "server.threads", "65");
    expect_file_error("[log]\npartitions = 1025\n", 2, "log.partitions", "out of range");
    expect_file_error("[log]\npartitions = -1\n", 2, "log.partitions", "out of range");
    expect_file_error("[engine]\nsnapshot_interval_ms = 99\n", 2, "engine.snapshot_interval_ms",
                      "out of range");
    /* Bounds themselves are fine. */
    tally_config_t *c = load_text("[server]\nthreads = 64\n[log]\npartitions = 1\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->server_threads, 64);
    cr_assert_eq(c->log_partitions, 1);
    config_free(c);
}

Test(config, error_bad_hostport) {
    expect_file_error("[server]\nlisten = localhost\n", 2, "server.listen", "host:port");
    expect_file_error("[server]\nlisten = :80\n", 2, "server.listen", "host:port");
    expect_file_error("[server]\nlisten = host:\n", 2, "server.listen", "host:port");
    expect_file_error("[server]\nlisten = host:70000\n", 2, "server.listen", "host:port");
    expect_file_error("[server]\nlisten = host:8o\n", 2, "server.listen", "host:port");
    tally_config_t *c = load_text("[server]\nlisten = [::1]:0\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->listen, "[::1]:0");
    config_free(c);
}

Test(config, error_bad_mode) {
    expect_file_error("[poll.p]\noptions = a,b\nmode = first-past-the-post\n", 3, "poll.p.mode",
                      "first-past-the-post");
    expect_file_error("[poll.p]\nmode = Unlimited\noptions = a\n", 2, "poll.p.mode", "Unlimited");
}

Test(config, error_bad_option_id) {
    expect_file_error("[poll.p]\noptions = a, b c\n", 2, "poll.p.options", "'b c'");
    expect_file_error("[poll.p]\noptions = a,,b\n", 2, "poll.p.options", "option id");
    expect_file_error("[poll.p]\noptions = a, b!\n", 2, "poll.p.options", "'b!'");
    char id[66], text[256];
    memset(id, 'o', 65);
    id[65] = '\0';
    snprintf(text, sizeof text, "[poll.p]\noptions = a, %s\n", id);
    expect_file_error(text, 2, "poll.p.options", "1-64 chars");
    id[64] = '\0'; /* 64 is fine */
    snprintf(text, sizeof text, "[poll.p]\noptions = a, %s\n", id);
    tally_config_t *c = load_text(text);
    cr_assert_not_null(c, "%s", err);
    config_free(c);
}

Test(config, error_duplicate_option) {
    expect_file_error("[poll.p]\ntitle = T\noptions = a, b, a\n", 3, "poll.p.options",
                      "'a' is listed twice");
}

Test(config, error_label_for_unknown_option) {
    expect_file_error("[poll.p]\noptions = a, b\nlabel.c = See\n", 3, "poll.p.label.c", "'c'");
    /* A label before the options line names no option yet. */
    expect_file_error("[poll.p]\nlabel.a = A\noptions = a, b\n", 2, "poll.p.label.a",
                      "list options first");
}

Test(config, error_bad_poll_id_and_key) {
    /* The id is checked on its section line. */
    expect_file_error("[poll.bad!id]\noptions = a\n", 1, "bad!id", "poll id");
    expect_file_error("[poll.p]\noptions = a\ncolour = red\n", 3, "poll.p", "'colour'");
}

Test(config, error_empty_options) {
    expect_file_error("[poll.p]\noptions =\n", 2, "poll.p.options", "no options");
    expect_file_error("[poll.p]\noptions = ,\n", 2, "poll.p.options", NULL);
}

Test(config, error_syntax) {
    expect_file_error("[server]\nthreads = 1\nthis line has no equals sign\n", 3, "syntax error",
                      NULL);
    expect_file_error("[server]\nthreads = 1\nnot ini\n[log]\npartitions = 2\n", 3,
                      "syntax error", NULL);
}

Test(config, error_syntax_before_a_bad_key) {
    expect_file_error("[server]\nbad line\nthreads = 0\n", 2, "syntax error", NULL);
    expect_file_error("[server\nthreads = 1\n", 1, "syntax error", NULL);
}

Test(config, error_reports_first_of_several) {
    expect_file_error("[server]\nthreads = 0\n[log]\npartitions = 0\n", 2, "server.threads", NULL);
}

Test(config, error_missing_file) {
    char *missing = path_join(dir, "nope.ini");
    tally_config_t *c = cload(missing, NULL, 0);
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, missing), "%s", err);
    cr_assert_not_null(strstr(err, "No such file"), "%s", err);
    free(missing);
}

Test(config, error_poll_without_options_names_poll_and_key) {
    tally_config_t *c = load_text("[poll.lonely]\ntitle = Nobody to vote for\n");
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, "poll.lonely"), "%s", err);
    cr_assert_not_null(strstr(err, "options"), "%s", err);
}

Test(config, error_poll_without_options_names_file) {
    tally_config_t *c = load_text("[poll.lonely]\ntitle = Nobody to vote for\n");
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, ini), "'%s' does not name %s", err, ini);
}

/* inih's lines are at most 199 characters: a longer one is an error naming
 * its line, and an indented line continues the value above it. */
Test(config, long_lines_are_refused_with_their_line) {
    char title[301];
    memset(title, 'T', 300);
    title[300] = '\0';
    buf_t text = {0};
    buf_printf(&text, "[poll.big]\noptions = a\ntitle = %s\n", title);
    expect_file_error(text.data, 3, "longer than", NULL);
    buf_free(&text);
}

Test(config, continuation_lines_carry_long_values) {
    buf_t text = {0};
    buf_puts(&text, "[poll.big]\ntitle = A very long title\n  that goes on\n\tand on\noptions = ");
    for (int i = 0; i < 60; i++)
        buf_printf(&text, "%soption_%02d%s", i % 10 ? ", " : "", i, i % 10 == 9 ? "\n  " : "");
    buf_puts(&text, "\nmode = changeable\n");
    tally_config_t *c = load_text(text.data);
    buf_free(&text);
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->polls[0].title, "A very long title that goes on and on");
    cr_assert_eq(c->polls[0].noptions, 60);
    cr_assert_str_eq(c->polls[0].options[59].id, "option_59");
    cr_assert_eq(c->polls[0].mode, MODE_CHANGEABLE);
    config_free(c);
}

/* ---- options and labels ---- */

Test(config, options_reset_keeps_labels_by_id) {
    /* In a file a poll sets each key once; -s may replace the options. */
    const char *ov[] = {"poll.p.options=c, a"};
    tally_config_t *c =
        load_with("[poll.p]\noptions = a, b\nlabel.a = Alpha\nlabel.b = Beta\n", ov, 1);
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->polls[0].noptions, 2);
    cr_assert_str_eq(c->polls[0].options[0].id, "c");
    cr_assert_str_eq(c->polls[0].options[0].label, "c");
    cr_assert_str_eq(c->polls[0].options[1].id, "a");
    cr_assert_str_eq(c->polls[0].options[1].label, "Alpha");
    config_free(c);
}

Test(config, options_whitespace_and_trailing_comma) {
    tally_config_t *c = load_text("[poll.p]\noptions =  a ,\tb\t,c,\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->polls[0].noptions, 3);
    cr_assert_str_eq(c->polls[0].options[0].id, "a");
    cr_assert_str_eq(c->polls[0].options[1].id, "b");
    cr_assert_str_eq(c->polls[0].options[2].id, "c");
    config_free(c);
}

Test(config, a_poll_is_declared_once) {
    /* Reopening a poll section used to merge silently. */
    expect_file_error("[poll.p]\noptions = a\n[poll.q]\noptions = x\n[poll.p]\n"
                      "mode = changeable\n",
                      5, "[poll.p]: declared twice", "first at line 1");
    expect_file_error("[poll.p]\noptions = a\n[poll.p]\n", 3, "declared twice", NULL);
    /* Other sections may repeat; a later key wins. */
    tally_config_t *c = load_text("[server]\nthreads = 2\n[poll.p]\noptions = a\n[server]\n"
                                  "threads = 3\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->server_threads, 3);
    config_free(c);
}

Test(config, a_poll_sets_each_key_once) {
    expect_file_error("[poll.p]\ntitle = A\noptions = a\ntitle = B\n", 4, "poll.p.title",
                      "first at line 2");
    expect_file_error("[poll.p]\noptions = a\nmode = unlimited\nmode = changeable\n", 4,
                      "poll.p.mode", "set twice");
    expect_file_error("[poll.p]\noptions = a\noptions = a, b\n", 3, "poll.p.options", "set twice");
    expect_file_error("[poll.p]\noptions = a, b\nlabel.b = B\nlabel.a = A\nlabel.b = C\n", 5,
                      "poll.p.label.b", "first at line 3");
    /* Continuation lines are one value, not a repeat. */
    tally_config_t *c = load_text("[poll.p]\noptions = a,\n  b\ntitle = T\n  U\nlabel.b = B\n"
                                  "  C\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->polls[0].noptions, 2);
    cr_assert_str_eq(c->polls[0].title, "T U");
    cr_assert_str_eq(c->polls[0].options[1].label, "B C");
    config_free(c);
}

Test(config, an_empty_poll_section_is_an_error_at_its_line) {
    expect_file_error("[server]\nthreads = 1\n[poll.e]\n", 3, "poll.e: 'options' is required",
                      NULL);
}

Test(config, many_options) {
    tally_config_t *c = config_new_defaults();
    buf_t opts = {0};
    for (int i = 0; i < 1000; i++)
        buf_printf(&opts, "%so%d", i ? "," : "", i);
    conf_set(c, "poll.big", "options", opts.data);
    buf_free(&opts);
    conf_finish(c);
    cr_assert_eq(c->polls[0].noptions, 1000);
    cr_assert_eq(poll_option_index(&c->polls[0], "o999", 4), 999);
    cr_assert_str_eq(c->polls[0].options[500].label, "o500");
    config_free(c);
}

/* ---- -s overrides ---- */

Test(config, overrides_apply_after_the_file) {
    const char *ov[] = {
        "server.listen=127.0.0.1:0",
        "log.partitions=16",
        "log.dir=/tmp/x=y",          /* '=' in the value */
        "poll.demo.title=New title",
        "poll.demo.mode=changeable",
        "poll.demo.label.red=Rouge", /* key with a dot */
        "poll.extra.options=u,v",    /* a poll only on the command line */
        "kafka.linger.ms=7",         /* librdkafka key with a dot */
        "kafka.compression.type=lz4",
        "kafka.topic=t2",
    };
    tally_config_t *c = load_with(good, ov, (int)(sizeof ov / sizeof ov[0]));
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->listen, "127.0.0.1:0");
    cr_assert_eq(c->log_partitions, 16);
    cr_assert_str_eq(c->log_dir, "/tmp/x=y");
    cr_assert_str_eq(c->polls[0].title, "New title");
    cr_assert_eq(c->polls[0].mode, MODE_CHANGEABLE);
    cr_assert_str_eq(c->polls[0].options[0].label, "Rouge");
    cr_assert_str_eq(c->polls[0].options[2].label, "Blue Notes");
    cr_assert_eq(c->npolls, 5);
    cr_assert_str_eq(c->polls[4].id, "extra");
    cr_assert_str_eq(c->polls[4].title, "extra");
    cr_assert_eq(c->polls[4].noptions, 2);
    cr_assert_str_eq(kafka_prop(c, "linger.ms"), "7");
    cr_assert_str_eq(kafka_prop(c, "compression.type"), "lz4");
    cr_assert_eq(c->nkafka_props, 2, "a repeated kafka key must replace, not add");
    cr_assert_str_eq(c->kafka_topic, "t2");
    config_free(c);
}

Test(config, overrides_without_file) {
    const char *ov[] = {"poll.p.options=a,b", "poll.p.mode=unlimited", "kafka.acks=all"};
    tally_config_t *c = cload(NULL, ov, 3);
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->npolls, 1);
    cr_assert_eq(c->polls[0].mode, MODE_UNLIMITED);
    cr_assert_str_eq(kafka_prop(c, "acks"), "all");
    config_free(c);
}

Test(config, overrides_bad_syntax) {
    const char *bad[] = {
        "noequals", "server.listen", "nodot=1", ".threads=1", "server.=1", "=1", "=",
        "poll.demo=1", /* poll needs poll.ID.key */
        "poll.=x",     "server",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tally_config_t *c = cload(NULL, &bad[i], 1);
        cr_assert_null(c, "-s %s accepted", bad[i]);
        char want[256];
        snprintf(want, sizeof want, "-s %s", bad[i]);
        cr_assert_not_null(strstr(err, want), "'%s' lacks '%s'", err, want);
        cr_assert_not_null(strstr(err, "section.key=value"), "%s", err);
    }
}

Test(config, overrides_bad_values_name_override_and_key) {
    struct {
        const char *ov, *needle;
    } cases[] = {
        {"server.threads=0", "server.threads"},
        {"server.bogus=1", "unknown key 'server.bogus'"},
        {"nosuch.key=1", "unknown section '[nosuch]'"},
        {"log.partitions=lots", "not an integer"},
        {"poll.demo.mode=sometimes", "poll.demo.mode"},
        {"poll.demo.label.purple=P", "poll.demo.label.purple"},
        {"poll.demo.options=a,a", "listed twice"},
        {"poll.bad$id.options=a", "poll id"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tally_config_t *c = load_with(good, &cases[i].ov, 1);
        cr_assert_null(c, "-s %s accepted", cases[i].ov);
        char want[256];
        snprintf(want, sizeof want, "-s %s:", cases[i].ov);
        cr_assert_not_null(strstr(err, want), "'%s' lacks '%s'", err, want);
        cr_assert_not_null(strstr(err, cases[i].needle), "'%s' lacks '%s'", err,
                           cases[i].needle);
    }
}

Test(config, override_creating_poll_without_options_fails) {
    const char *ov[] = {"poll.ghost.title=Boo"};
    tally_config_t *c = cload(NULL, ov, 1);
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, "poll.ghost"), "%s", err);
}

/* ---- config_set / validate / help ---- */

Test(config, config_set_direct) {
    tally_config_t *c = config_new_defaults();
    cr_assert_eq(config_set(c, "server", "threads", "8", err, sizeof err), 0);
    cr_assert_eq(c->server_threads, 8);
    cr_assert_eq(config_set(c, "server", "threads", "x", err, sizeof err), TALLY_ERR_CONFIG);
    cr_assert_eq(c->server_threads, 8, "a failed set changed the value");
    cr_assert_eq(config_set(c, "log", "dir", "/a", err, sizeof err), 0);
    cr_assert_eq(config_set(c, "log", "dir", "/b", err, sizeof err), 0);
    cr_assert_str_eq(c->log_dir, "/b");
    config_free(c);
}

Test(config, validate_fills_defaults) {
    tally_config_t *c = config_new_defaults();
    conf_set(c, "poll.p", "options", "a,b");
    conf_set(c, "poll.p", "label.b", "Bee");
    cr_assert_null(c->polls[0].title);
    cr_assert_null(c->polls[0].options[0].label);
    conf_finish(c);
    cr_assert_str_eq(c->polls[0].title, "p");
    cr_assert_str_eq(c->polls[0].options[0].label, "a");
    cr_assert_str_eq(c->polls[0].options[1].label, "Bee");
    config_free(c);
}

Test(config, mode_names) {
    cr_assert_str_eq(poll_mode_name(MODE_ONE_PER_VOTER), "one-per-voter");
    cr_assert_str_eq(poll_mode_name(MODE_CHANGEABLE), "changeable");
    cr_assert_str_eq(poll_mode_name(MODE_UNLIMITED), "unlimited");
    cr_assert_str_eq(poll_mode_name((poll_mode_t)7), "?");
    poll_mode_t m = MODE_UNLIMITED;
    cr_assert_eq(poll_mode_parse("changeable", &m), TALLY_OK);
    cr_assert_eq(m, MODE_CHANGEABLE);
    cr_assert_eq(poll_mode_parse("Changeable", &m), TALLY_ERR_CONFIG);
    cr_assert_eq(m, MODE_CHANGEABLE, "a failed parse changed the mode");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(poll_mode_parse(poll_mode_name((poll_mode_t)i), &m), TALLY_OK);
        cr_assert_eq((int)m, i);
    }
}

Test(config, help_lists_every_key) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print_help(f);
    fclose(f);
    const char *keys[] = {"[server]", "listen", "max_pending", "[log]", "partitions",
                          "group_commit_us", "group_commit_max_us", "fsync", "[engine]",
                          "snapshot_dir", "snapshot_interval_ms", "[publisher]",
                          "min_interval_ms", "[kafka]", "brokers", "topic", "[poll.ID]",
                          "label.OPTION", "one-per-voter"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_assert_not_null(strstr(text, keys[i]), "help lacks %s", keys[i]);
    free(text);
}

/* ---- long ids: inih keeps 49 bytes of a section name and of a key ---- */

static char *rep_str(char ch, int n, const char *tail) {
    buf_t b = {0};
    for (int i = 0; i < n; i++)
        buf_append(&b, &ch, 1);
    buf_puts(&b, tail);
    return b.data;
}

Test(config, poll_ids_of_64_chars_stay_apart) {
    char *a = rep_str('p', 50, "aaaaaaaaaaaaaa"), *b = rep_str('p', 50, "bbbb");
    cr_assert_eq(strlen(a), 64);
    buf_t text = {0};
    buf_printf(&text, "[poll.%s]\noptions = x\ntitle = A\n[poll.%s]\noptions = y\ntitle = B\n", a,
               b);
    tally_config_t *c = load_text(text.data);
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->npolls, 2);
    cr_assert_str_eq(c->polls[0].id, a);
    cr_assert_str_eq(c->polls[0].title, "A");
    cr_assert_str_eq(c->polls[0].options[0].id, "x");
    cr_assert_str_eq(c->polls[1].id, b);
    cr_assert_str_eq(c->polls[1].title, "B");
    config_free(c);
    /* 65 is refused on its line, naming the limit. */
    text.len = 0;
    buf_printf(&text, "; c\n[poll.%sX]\noptions = x\n", a);
    expect_file_error(text.data, 2, "1-64 chars", "65 given");
    buf_free(&text);
    free(a);
    free(b);
}

Test(config, long_section_names_are_kept_whole_in_errors) {
    char *name = rep_str('s', 120, "");
    buf_t text = {0};
    buf_printf(&text, "[%s]\nthreads = 1\n", name);
    expect_file_error(text.data, 2, "unknown section",
                      "[ssssssssssssssssssssssssssssssssssssssss"
                      "ssssssssssssssssssssssssssssssssssssssss");
    buf_free(&text);
    free(name);
}

Test(config, labels_of_64_char_options_continue_on_the_right_option) {
    /* inih hands a continuation line the key cut at 49 bytes: "label." and
     * 43 characters, here the id of another option. */
    char *shortid = rep_str('o', 43, ""), *longid = rep_str('o', 43, "zzzzzzzzzzzzzzzzzzzzz");
    cr_assert_eq(strlen(longid), 64);
    buf_t text = {0};
    buf_printf(&text, "[poll.p]\noptions = %s, %s\nlabel.%s = first\n  more\n", shortid, longid,
               longid);
    tally_config_t *c = load_text(text.data);
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->polls[0].options[1].label, "first more");
    cr_assert_str_eq(c->polls[0].options[0].label, shortid);
    config_free(c);
    buf_free(&text);
    free(shortid);
    free(longid);
}

/* ---- section lines as inih reads them ---- */

Test(config, section_lines_follow_inih) {
    tally_config_t *c = load_text("\xEF\xBB\xBF[poll.p] ; a comment\noptions = a\n"
                                  "title = T\n  [poll.q]\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->npolls, 1, "an indented line after a key continues its value");
    cr_assert_str_eq(c->polls[0].title, "T [poll.q]");
    config_free(c);
    /* Indented with no key above: a section. */
    c = load_text("[poll.p]\n  [poll.q]\noptions = a\n");
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, ":1: poll.p: 'options' is required"), "%s", err);
    expect_file_error("[poll.p ; not closed]\noptions = a\n", 1, "syntax error", NULL);
    expect_file_error("threads = 1\n", 1, "unknown section '[]'", NULL);
    /* Whatever follows ']' is ignored, as inih does. */
    c = load_text("[poll.p]junk\noptions = a\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->polls[0].id, "p");
    config_free(c);
}

/* ---- bytes: NUL, length, files that are not files ---- */

Test(config, nul_bytes_are_errors_naming_their_line) {
    static const struct {
        const char *text;
        size_t len;
        int line;
    } cases[] = {
        {"[poll.p]\ntitle = ab\0cd\noptions = a\n", 33, 2},
        {"[poll.p]\noptions = a\n\0", 22, 3},
        {"\0", 1, 1},
        {"[ser\0ver]\n", 10, 1},
        {"[server]\nthreads = 1\n; comment \0 too\n", 37, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tally_config_t *c = (tally_config_t *)1;
        tally_err_t rc = config_load_string("mem.ini", cases[i].text, cases[i].len, NULL, 0, &c,
                                            err, sizeof err);
        cr_assert_eq(rc, TALLY_ERR_CONFIG, "case %zu loaded", i);
        cr_assert_null(c);
        char want[64];
        snprintf(want, sizeof want, "mem.ini:%d: NUL byte", cases[i].line);
        cr_assert_not_null(strstr(err, want), "case %zu: '%s' lacks '%s'", i, err, want);
    }
}

Test(config, load_string_reads_len_bytes_only) {
    const char text[] = "[server]\nthreads = 3XYZ";
    tally_config_t *c = NULL;
    cr_assert_eq(config_load_string("m", text, strlen(text) - 3, NULL, 0, &c, err, sizeof err),
                 TALLY_OK, "%s", err);
    cr_assert_eq(c->server_threads, 3);
    config_free(c);
    cr_assert_eq(config_load_string("m", NULL, 0, NULL, 0, &c, err, sizeof err), TALLY_OK);
    cr_assert_eq(c->npolls, 0);
    config_free(c);
    const char *ov[] = {"server.threads=0"};
    cr_assert_eq(config_load_string("m", "", 0, ov, 1, &c, err, sizeof err), TALLY_ERR_CONFIG);
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, "-s server.threads=0"), "%s", err);
}

Test(config, a_directory_is_not_a_config_file) {
    tally_config_t *c = cload(dir, NULL, 0);
    cr_assert_null(c, "a directory loaded as a config");
    cr_assert_not_null(strstr(err, dir), "%s", err);
    cr_assert_not_null(strstr(err, "is a directory"), "%s", err);
}

Test(config, an_unreadable_config_names_path_and_reason) {
    if (access("/proc/self/mem", F_OK) != 0)
        cr_skip_test("no /proc/self/mem");
    tally_config_t *c = cload("/proc/self/mem", NULL, 0); /* opens; reads fail with EIO */
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, "/proc/self/mem: cannot read: Input/output error"), "%s", err);
}

/* ---- server.listen ---- */

Test(config, parse_listen_accepts) {
    static const struct {
        const char *in, *host;
        int port;
    } ok[] = {
        {"127.0.0.1:8080", "127.0.0.1", 8080},
        {"[::1]:0", "::1", 0},
        {"[::]:65535", "::", 65535},
        {"[fe80::1%eth0]:80", "fe80::1%eth0", 80},
        {"localhost:1", "localhost", 1},
        {"my-host.example_1:00080", "my-host.example_1", 80},
        {"[::ffff:1.2.3.4]:9", "::ffff:1.2.3.4", 9},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char host[CONFIG_LISTEN_HOST_MAX];
        int port = -1;
        cr_assert_eq(config_parse_listen(ok[i].in, host, sizeof host, &port, err, sizeof err),
                     TALLY_OK, "%s: %s", ok[i].in, err);
        cr_assert_str_eq(host, ok[i].host, "%s", ok[i].in);
        cr_assert_eq(port, ok[i].port, "%s", ok[i].in);
    }
}

Test(config, parse_listen_refuses) {
    char longhost[400], manybrackets[400];
    memset(longhost, 'h', 300);
    strcpy(longhost + 300, ":80");
    memset(manybrackets, '[', 300);
    strcpy(manybrackets + 300, ":80");
    const char *bad[] = {
        "[:80",      "[::1",      "[::1]",      "[::1]:",       "[::1]80",
        "[]:80",     "[::1]x:80", "::1:80",     "[1.2.3.4]:80", "[::1%]:80",
        "[::g]:80",  "[::1]:80x", "host:",      "host:65536",   "host:99999999999",
        "host:-1",   "host:+80",  "host:8o",    "host: 80",     "ho st:80",
        ":80",       "localhost", "",           "host:123456",  "h/x:80",
        "[::1]]:80", longhost,    manybrackets,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char host[CONFIG_LISTEN_HOST_MAX] = "untouched";
        int port = -7;
        err[0] = '\0';
        cr_assert_eq(config_parse_listen(bad[i], host, sizeof host, &port, err, sizeof err),
                     TALLY_ERR_CONFIG, "'%s' accepted as %s port %d", bad[i], host, port);
        cr_assert_neq(err[0], '\0', "%s", bad[i]);
        cr_assert_str_eq(host, "untouched", "%s", bad[i]);
        cr_assert_eq(port, -7, "%s", bad[i]);
    }
    /* The caller's buffer bounds the host too. */
    char small[4];
    int port;
    cr_assert_eq(config_parse_listen("abcd:80", small, sizeof small, &port, err, sizeof err),
                 TALLY_ERR_CONFIG);
    cr_assert_eq(config_parse_listen("abc:80", small, sizeof small, &port, err, sizeof err),
                 TALLY_OK);
    /* The same values are refused as server.listen, naming the key. */
    expect_file_error("[server]\nlisten = [:80\n", 2, "server.listen", "']'");
    expect_file_error("[server]\nlisten = ::1:80\n", 2, "server.listen", "brackets");
}

/* ---- directories ---- */

static tally_config_t *dirs_conf(const char *log, const char *snap, const char *pub) {
    tally_config_t *c = config_new_defaults();
    conf_set(c, "log", "dir", log);
    conf_set(c, "engine", "snapshot_dir", snap);
    conf_set(c, "publisher", "dir", pub);
    return c;
}

static tally_err_t check_dirs(const char *log, const char *snap, const char *pub, unsigned writes) {
    tally_config_t *c = dirs_conf(log, snap, pub);
    err[0] = '\0';
    tally_err_t rc = config_check_dirs(c, writes, err, sizeof err);
    config_free(c);
    return rc;
}

static char *sub(const char *name) {
    return path_join(dir, name);
}

static void expect_dirs_refused(const char *log, const char *snap, const char *pub, const char *n1,
                                const char *n2) {
    cr_assert_eq(check_dirs(log, snap, pub, 0), TALLY_ERR_CONFIG, "accepted log=%s snap=%s pub=%s",
                 log, snap, pub);
    cr_assert_not_null(strstr(err, n1), "'%s' lacks '%s'", err, n1);
    if (n2)
        cr_assert_not_null(strstr(err, n2), "'%s' lacks '%s'", err, n2);
}

Test(config, dirs_must_be_named_and_be_directories) {
    char *log = sub("log"), *snap = sub("snap"), *pub = sub("pub"), *f = sub("file");
    file_write_str(f, "x");
    expect_dirs_refused("", snap, pub, "log.dir is empty", NULL);
    expect_dirs_refused(log, "", pub, "engine.snapshot_dir is empty", NULL);
    expect_dirs_refused(log, snap, "", "publisher.dir is empty", NULL);
    expect_dirs_refused(f, snap, pub, "log.dir", "not a directory");
    expect_dirs_refused(log, f, pub, "engine.snapshot_dir", "not a directory");
    char *under = path_join(f, "x");
    expect_dirs_refused(log, snap, under, "publisher.dir", "not a directory");
    free(under);
    /* Nothing was created by a check that failed, or by one with no writes. */
    cr_assert_eq(check_dirs(log, snap, pub, 0), TALLY_OK, "%s", err);
    cr_assert_eq(access(log, F_OK), -1);
    cr_assert_eq(access(snap, F_OK), -1);
    /* With Kafka as the log, log.dir is not used. */
    tally_config_t *c = dirs_conf("", snap, pub);
    conf_set(c, "kafka", "brokers", "127.0.0.1:1");
    cr_assert_eq(config_check_dirs(c, CONFIG_DIR_LOG, err, sizeof err), TALLY_OK, "%s", err);
    config_free(c);
    free(log);
    free(snap);
    free(pub);
    free(f);
}

Test(config, written_dirs_are_created_and_proven_writable) {
    char *log = sub("a/log"), *snap = sub("b/c/snap"), *pub = sub("pub");
    cr_assert_eq(check_dirs(log, snap, pub, CONFIG_DIR_LOG | CONFIG_DIR_SNAPSHOT), TALLY_OK, "%s",
                 err);
    struct stat st;
    cr_assert(stat(log, &st) == 0 && S_ISDIR(st.st_mode));
    cr_assert(stat(snap, &st) == 0 && S_ISDIR(st.st_mode));
    cr_assert_eq(access(pub, F_OK), -1, "publisher.dir is the publisher's to create");
    DIR *d = opendir(log);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    cr_assert_eq(entries, 0, "the write check left a file behind");
    /* A directory that refuses files, even to root. */
    if (access("/sys/kernel", F_OK) == 0) {
        cr_assert_eq(check_dirs(log, "/sys/kernel", pub, CONFIG_DIR_SNAPSHOT), TALLY_ERR_IO);
        cr_assert_not_null(strstr(err, "engine.snapshot_dir /sys/kernel: not writable"), "%s", err);
        cr_assert_eq(check_dirs("/sys/kernel/tally-x", snap, pub, CONFIG_DIR_LOG), TALLY_ERR_IO);
        cr_assert_not_null(strstr(err, "log.dir /sys/kernel/tally-x: cannot create"), "%s", err);
        /* Not written: not checked. */
        cr_assert_eq(check_dirs(log, "/sys/kernel", pub, CONFIG_DIR_LOG), TALLY_OK, "%s", err);
    }
    free(log);
    free(snap);
    free(pub);
}

Test(config, publisher_dir_stays_out_of_private_data) {
    char *log = sub("log"), *snap = sub("snap"), *pub = sub("pub");
    cr_assert_eq(mkdir(log, 0755), 0);
    char *loglink = sub("loglink"), *toplink = sub("toplink"), *dangling = sub("dangling");
    char *elsewhere = tmpdir_new();
    cr_assert_eq(symlink(log, loglink), 0);
    cr_assert_eq(symlink(dir, toplink), 0);
    cr_assert_eq(symlink("/nonexistent/tally", dangling), 0);
    buf_t b = {0};
#define P(...) (b.len = 0, buf_printf(&b, __VA_ARGS__), xstrdup(b.data))
    char *cases[] = {
        P("%s", log),
        P("%s/", log),
        P("%s//.", log),
        P("%s/../log", log),
        P("%s", dir),
        P("%s/public", log),
        P("%s/x/y/../../z", log),
        P("%s", loglink),
        P("%s/new/deeper", loglink),
        P("%s", toplink),
        P("%s/nothere/../log", dir),
        P("%s/nothere/../loglink/q", dir),
        P("/"),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_dirs_refused(log, snap, cases[i], "publisher.dir", "log.dir");
        cr_assert_not_null(strstr(err, "must not be, contain or lie inside"), "%s", err);
        /* The same against the snapshots, the log elsewhere. */
        if (strcmp(cases[i], "/"))
            expect_dirs_refused(elsewhere, log, cases[i], "publisher.dir", "engine.snapshot_dir");
        free(cases[i]);
    }
    tmpdir_free(elsewhere);
    /* A relative path is taken from the working directory. */
    char *cwd = getcwd(NULL, 0);
    cr_assert_eq(chdir(dir), 0);
    expect_dirs_refused("log", snap, "./log/../log/www", "publisher.dir", "log.dir");
    cr_assert_eq(check_dirs("log", "snap", "pub", 0), TALLY_OK, "%s", err);
    cr_assert_eq(chdir(cwd), 0);
    free(cwd);
    expect_dirs_refused(log, snap, dangling, "publisher.dir", "dangling symbolic link");
    /* Snapshots and the log: not one directory; nested is fine. */
    expect_dirs_refused(log, loglink, pub, "engine.snapshot_dir and log.dir", "same directory");
    char *nested = path_join(log, "snap");
    cr_assert_eq(check_dirs(log, nested, pub, 0), TALLY_OK, "%s", err);
    free(nested);
    /* Names sharing a prefix are siblings. */
    char *logpub = P("%spublic", log);
    cr_assert_eq(check_dirs(log, snap, logpub, 0), TALLY_OK, "%s", err);
    free(logpub);
#undef P
    buf_free(&b);
    free(log);
    free(snap);
    free(pub);
    free(loglink);
    free(toplink);
    free(dangling);
}

Test(config, path_canonical_resolves_what_exists) {
    char *real = realpath(dir, NULL);
    char *a = sub("a"), *link = sub("l");
    cr_assert_eq(mkdir(a, 0755), 0);
    cr_assert_eq(symlink(a, link), 0);
    struct {
        const char *in, *want; /* want relative to the real temp dir */
    } cases[] = {
        {"l", "/a"},
        {"l/", "/a"},
        {"l/new/x", "/a/new/x"},
        {"l/../a", "/a"},
        {"new/../l/z", "/a/z"},
        {"./a/./b/..", "/a"},
        {"new/./x/../y", "/new/y"},
    };
    char *cwd = getcwd(NULL, 0);
    cr_assert_eq(chdir(dir), 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = path_canonical(cases[i].in);
        char want[4200];
        snprintf(want, sizeof want, "%s%s", real, cases[i].want);
        cr_assert_not_null(got, "%s: %s", cases[i].in, strerror(errno));
        cr_assert_str_eq(got, want, "%s", cases[i].in);
        free(got);
    }
    char *root = path_canonical("/../..");
    cr_assert_str_eq(root, "/");
    free(root);
    file_write_str("f", "x");
    errno = 0;
    cr_assert_null(path_canonical("f/x"));
    cr_assert_eq(errno, ENOTDIR);
    cr_assert_null(path_canonical(""));
    cr_assert_eq(chdir(cwd), 0);
    free(cwd);
    free(real);
    free(a);
    free(link);
}

Test(config, help_comes_from_the_tables) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print_help(f);
    fclose(f);
    const char *needles[] = {"the first vote of a voter counts",
                             "the voter's latest vote counts",
                             "every vote counts",
                             "declared once",
                             "1-64",
                             "one-per-voter | changeable | unlimited",
                             "must not be, contain or lie inside"};
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        cr_assert_not_null(strstr(text, needles[i]), "help lacks '%s':\n%s", needles[i], text);
    free(text);
}

/* S3 keys: checked without touching a file at load (config_load_string is
 * the fuzzer's entry); the key files by config_check_s3, each error naming
 * its key. */
Test(config, s3_keys_are_checked_and_key_files_read_by_config_check_s3) {
    struct {
        const char *ini, *key; /* key NULL: loads */
    } cases[] = {
        {"[publisher]\n", NULL},
        {"[publisher]\ns3_endpoint = http://h:9000\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\n", "publisher.s3_bucket"},
        {"[publisher]\ns3_endpoint = http://h:9000\ns3_bucket = ok-bucket\n"
         "s3_secret_key_file = b\n", "publisher.s3_access_key_file"},
        {"[publisher]\ns3_endpoint = h:9000\ns3_bucket = b1b\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\n", "publisher.s3_endpoint"},
        {"[publisher]\ns3_endpoint = http://\ns3_bucket = b1b\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\n", "publisher.s3_endpoint"},
        {"[publisher]\ns3_endpoint = https://h\ns3_bucket = UPPER\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\n", "publisher.s3_bucket"},
        {"[publisher]\ns3_endpoint = https://h\ns3_bucket = b1b\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\ns3_prefix = x/../y\n", "publisher.s3_prefix"},
        {"[publisher]\ns3_endpoint = https://h\ns3_bucket = b1b\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\ns3_region = eu west\n", "publisher.s3_region"},
        {"[publisher]\ns3_endpoint = https://h\ns3_bucket = b1b\ns3_access_key_file = a\n"
         "s3_secret_key_file = b\ns3_prefix = live/\ns3_path_style = false\n", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tally_config_t *c = NULL;
        tally_err_t rc = config_load_string("t.ini", cases[i].ini, strlen(cases[i].ini), NULL, 0,
                                            &c, err, sizeof err);
        if (!cases[i].key) {
            cr_assert(rc == TALLY_OK, "case %zu: %s", i, err);
            config_free(c);
        } else {
            cr_assert(rc == TALLY_ERR_CONFIG, "case %zu loaded", i);
            cr_assert_not_null(strstr(err, cases[i].key), "case %zu: %s", i, err);
        }
    }
    /* The files: missing, empty, a directory, then good ones (first line,
     * trimmed). */
    char *ak = path_join(dir, "ak"), *sk = path_join(dir, "sk"), *empty = path_join(dir, "e");
    file_write_str(ak, "  AKID \nsecond line\n");
    file_write_str(empty, "\n");
    tally_config_t *c = config_new_defaults();
    conf_set(c, "publisher", "s3_endpoint", "http://127.0.0.1:1");
    conf_set(c, "publisher", "s3_bucket", "res");
    conf_set(c, "publisher", "s3_access_key_file", ak);
    conf_set(c, "publisher", "s3_secret_key_file", sk);
    conf_finish(c);
    cr_assert(config_check_s3(c, err, sizeof err) == TALLY_ERR_CONFIG);
    cr_assert_not_null(strstr(err, "publisher.s3_secret_key_file"), "%s", err);
    conf_set(c, "publisher", "s3_secret_key_file", empty);
    cr_assert(config_check_s3(c, err, sizeof err) == TALLY_ERR_CONFIG);
    cr_assert_not_null(strstr(err, "empty"), "%s", err);
    conf_set(c, "publisher", "s3_secret_key_file", dir);
    cr_assert(config_check_s3(c, err, sizeof err) == TALLY_ERR_CONFIG);
    file_write_str(sk, "s3cr3t");
    conf_set(c, "publisher", "s3_secret_key_file", sk);
    cr_assert(config_check_s3(c, err, sizeof err) == TALLY_OK, "%s", err);
    buf_t key = {0};
    cr_assert(config_read_secret("k", ak, &key, err, sizeof err) == TALLY_OK);
    cr_assert_eq(key.len, 4);
    cr_assert(!memcmp(key.data, "AKID", 4));
    buf_free(&key);
    config_free(c);
    free(ak);
    free(sk);
    free(empty);
}

Test(config, cache_control_goes_into_headers_so_no_control_characters) {
    tally_config_t *c = NULL;
    const char *ok = "[publisher]\ncache_control = public, max-age=10\n";
    cr_assert(config_load_string("t.ini", ok, strlen(ok), NULL, 0, &c, err, sizeof err) ==
              TALLY_OK, "%s", err);
    cr_assert_str_eq(c->pub_cache_control, "public, max-age=10");
    config_free(c);
    const char *bad = "[publisher]\ncache_control = public\x01\n";
    cr_assert(config_load_string("t.ini", bad, strlen(bad), NULL, 0, &c, err, sizeof err) ==
              TALLY_ERR_CONFIG);
    cr_assert_not_null(strstr(err, "publisher.cache_control"), "%s", err);
}
