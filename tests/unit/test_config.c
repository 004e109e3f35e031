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

static tally_config_t *load_text(const char *text) {
    file_write_str(ini, text);
    err[0] = '\0';
    return config_load(ini, NULL, 0, err, sizeof err);
}

static tally_config_t *load_with(const char *text, const char *const *ov, int n) {
    file_write_str(ini, text);
    err[0] = '\0';
    return config_load(ini, ov, n, err, sizeof err);
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
    tally_config_t *c = config_load(path, NULL, 0, err, sizeof err);
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
    expect_file_error("[poll.bad!id]\noptions = a\n", 2, "bad!id", "poll id");
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
    tally_config_t *c = config_load(missing, NULL, 0, err, sizeof err);
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
    tally_config_t *c = load_text("[poll.p]\noptions = a, b\nlabel.a = Alpha\nlabel.b = Beta\n"
                                  "options = c, a\n");
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

Test(config, poll_sections_split_and_reopened) {
    tally_config_t *c = load_text("[poll.p]\noptions = a\n[poll.q]\noptions = x\n[poll.p]\n"
                                  "mode = changeable\ntitle = P\n");
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->npolls, 2);
    cr_assert_str_eq(c->polls[0].id, "p");
    cr_assert_eq(c->polls[0].mode, MODE_CHANGEABLE);
    cr_assert_str_eq(c->polls[0].title, "P");
    cr_assert_str_eq(c->polls[1].id, "q");
    config_free(c);
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
    tally_config_t *c = config_load(NULL, ov, 3, err, sizeof err);
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
        tally_config_t *c = config_load(NULL, &bad[i], 1, err, sizeof err);
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
    tally_config_t *c = config_load(NULL, ov, 1, err, sizeof err);
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, "poll.ghost"), "%s", err);
}

/* ---- config_set / validate / help ---- */

Test(config, config_set_direct) {
    tally_config_t *c = config_new_defaults();
    cr_assert_eq(config_set(c, "server", "threads", "8", err, sizeof err), 0);
    cr_assert_eq(c->server_threads, 8);
    cr_assert_eq(config_set(c, "server", "threads", "x", err, sizeof err), -1);
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
}

Test(config, help_lists_every_key) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print_help(f);
    fclose(f);
    const char *keys[] = {"[server]", "listen", "max_pending", "[log]", "partitions",
                          "group_commit_us", "fsync", "[engine]", "snapshot_dir",
                          "snapshot_interval_ms", "[publisher]", "min_interval_ms", "[kafka]",
                          "brokers", "topic", "[poll.ID]", "label.OPTION", "one-per-voter"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_assert_not_null(strstr(text, keys[i]), "help lacks %s", keys[i]);
    free(text);
}
