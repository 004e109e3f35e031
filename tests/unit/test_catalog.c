/* common/catalog.h: poll definitions (JSON both ways, config), the successor
 * rules, states in time, catalog versions and the live pointer. */
#include <criterion/criterion.h>
#include <string.h>

#include "common/catalog.h"
#include "common/util.h"

static const poll_def_defaults_t dflt = {600, 1700000000000ull, POLL_SRC_ADMIN};

static poll_def_t *parse_ok(const char *json) {
    poll_def_t *d = NULL;
    catalog_error_t err = {0};
    tally_err_t rc = poll_def_from_json(json, strlen(json), &dflt, &d, &err);
    cr_assert_eq(rc, TALLY_OK, "%s: %s (%s)", json, err.message, err.field);
    return d;
}

/* The field a bad definition is refused for. */
static void parse_bad(const char *json, const char *field) {
    poll_def_t *d = (poll_def_t *)1;
    catalog_error_t err = {0};
    tally_err_t rc = poll_def_from_json(json, strlen(json), &dflt, &d, &err);
    cr_assert_eq(rc, TALLY_ERR_CONFIG, "%s accepted", json);
    cr_assert_null(d);
    cr_assert_eq(err.http_status, 400);
    cr_assert_str_eq(err.code, "bad_field");
    cr_assert_str_eq(err.field, field, "%s: field '%s', expected '%s' (%s)", json, err.field, field,
                     err.message);
    cr_assert(strlen(err.message) > 0);
}

Test(catalog, minimal_definition_gets_defaults) {
    poll_def_t *d = parse_ok("{\"id\":\"duel\",\"options\":[\"a\",\"b\"]}");
    cr_assert_str_eq(d->id, "duel");
    cr_assert_str_eq(d->title, "duel");
    cr_assert_eq(d->mode, MODE_ONE_PER_VOTER);
    cr_assert_eq(d->noptions, 2);
    cr_assert_str_eq(d->options[1].id, "b");
    cr_assert_str_eq(d->options[1].label, "b");
    cr_assert_eq(d->visibility, VIS_LIVE);
    cr_assert_eq(d->voter_auth, VOTER_AUTH_NONE);
    cr_assert_eq(d->opens_at, 0);
    cr_assert_eq(d->closes_at, 0);
    cr_assert_eq(d->idempotency_window_s, 600);
    cr_assert_eq(d->created_ms, 1700000000000ull);
    cr_assert_eq(d->source, POLL_SRC_ADMIN);
    poll_def_free(d);
}

Test(catalog, canonical_json_round_trips) {
    const char *in = "{\"id\":\"final-duel\",\"title\":\"The \\u00e9 final\",\"mode\":\"capped\","
                     "\"max_votes\":20,\"options\":[{\"id\":\"a\",\"label\":\"Alice\"},"
                     "{\"id\":\"b\"}],\"visibility\":\"on_close\",\"voter_auth\":\"jwt\","
                     "\"opens_at\":\"2026-12-02T10:00:00Z\",\"closes_at\":1796205600500,"
                     "\"idempotency_window_s\":30,\"created_ms\":5,\"source\":\"config\"}";
    poll_def_t *d = parse_ok(in);
    cr_assert_eq(d->mode, MODE_CAPPED);
    cr_assert_eq(d->max_votes, 20);
    cr_assert_eq(d->opens_at, 1796205600000ull); /* 2026-12-02T10:00:00Z */
    cr_assert_eq(d->closes_at, 1796205600500ull);
    char *j = poll_def_to_json(d);
    cr_assert_str_eq(j, "{\"id\":\"final-duel\",\"title\":\"The \xc3\xa9 final\",\"mode\":"
                        "\"capped\",\"max_votes\":20,\"options\":[{\"id\":\"a\",\"label\":"
                        "\"Alice\"},{\"id\":\"b\",\"label\":\"b\"}],\"visibility\":\"on_close\","
                        "\"voter_auth\":\"jwt\",\"opens_at\":1796205600000,\"closes_at\":"
                        "1796205600500,\"idempotency_window_s\":30,\"created_ms\":5,"
                        "\"source\":\"config\"}");
    poll_def_t *back = parse_ok(j);
    cr_assert(poll_def_equal(d, back));
    char *j2 = poll_def_to_json(back);
    cr_assert_str_eq(j, j2);
    poll_def_t *dup = poll_def_dup(d);
    cr_assert(poll_def_equal(d, dup));
    free(j);
    free(j2);
    poll_def_free(d);
    poll_def_free(back);
    poll_def_free(dup);
}

Test(catalog, null_times_are_unset) {
    poll_def_t *d = parse_ok("{\"id\":\"p\",\"options\":[\"a\"],\"opens_at\":null,"
                             "\"closes_at\":null}");
    cr_assert_eq(d->opens_at, 0);
    char *j = poll_def_to_json(d);
    cr_assert(strstr(j, "\"opens_at\":null,\"closes_at\":null"));
    free(j);
    poll_def_free(d);
}

Test(catalog, an_unknown_key_is_repeated_only_when_id_shaped) {
    static const char *const bad[] = {
        "{\"id\":\"p\",\"options\":[\"a\"],\"<b>\\u00e9\":1}",
        "{\"id\":\"p\",\"options\":[{\"id\":\"a\",\"<b>\\u00e9\":1}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        poll_def_t *d;
        catalog_error_t err = {0};
        cr_assert_eq(poll_def_from_json(bad[i], strlen(bad[i]), &dflt, &d, &err), TALLY_ERR_CONFIG);
        cr_assert(!strstr(err.message, "<b>") && !strstr(err.message, "\xc3"), "%s", err.message);
        cr_assert(!strstr(err.field, "<b>") && !strstr(err.field, "\xc3"), "%s", err.field);
    }
    poll_def_t *d;
    catalog_error_t err = {0};
    const char *ok = "{\"id\":\"p\",\"options\":[\"a\"],\"colour\":1}";
    cr_assert_eq(poll_def_from_json(ok, strlen(ok), &dflt, &d, &err), TALLY_ERR_CONFIG);
    cr_assert(strstr(err.message, "unknown key 'colour'"), "%s", err.message);
}

Test(catalog, every_bad_field_is_named) {
    parse_bad("[1]", "");
    parse_bad("{\"id\":", "");
    parse_bad("{\"options\":[\"a\"]}", "id");
    parse_bad("{\"id\":\"has space\",\"options\":[\"a\"]}", "id");
    parse_bad("{\"id\":7,\"options\":[\"a\"]}", "id");
    parse_bad("{\"id\":\"p\"}", "options");
    parse_bad("{\"id\":\"p\",\"options\":[]}", "options");
    parse_bad("{\"id\":\"p\",\"options\":\"a\"}", "options");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\",\"a\"]}", "options[1].id");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\",\"b c\"]}", "options[1]");
    parse_bad("{\"id\":\"p\",\"options\":[{\"label\":\"x\"}]}", "options[0].id");
    parse_bad("{\"id\":\"p\",\"options\":[{\"id\":\"a\",\"colour\":1}]}", "options[0].colour");
    parse_bad("{\"id\":\"p\",\"options\":[{\"id\":\"a\",\"label\":\"\"}]}", "options[0].label");
    parse_bad("{\"id\":\"p\",\"options\":[3]}", "options[0]");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"twice\"}", "mode");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"capped\"}", "max_votes");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"max_votes\":3}", "max_votes");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"capped\",\"max_votes\":0}",
              "max_votes");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":\"capped\",\"max_votes\":65536}",
              "max_votes");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"visibility\":\"hidden\"}", "visibility");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"voter_auth\":\"oauth\"}", "voter_auth");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"opens_at\":\"tomorrow\"}", "opens_at");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"closes_at\":-5}", "closes_at");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"opens_at\":200,\"closes_at\":100}", "closes_at");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"opens_at\":200,\"closes_at\":200}", "closes_at");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"title\":\"\"}", "title");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"title\":\"a\\u0000b\"}",
              ""); /* jansson refuses NUL */
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"idempotency_window_s\":-1}",
              "idempotency_window_s");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"source\":\"cli\"}", "source");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"created_ms\":\"x\"}", "created_ms");
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"colour\":\"red\"}", "colour");
    /* Keys may be any UTF-8: named only when id-shaped, never repeated else. */
    parse_bad("{\"id\":\"p\",\"options\":[\"a\"],\"<b>\\u00e9\":1}", "");
    parse_bad(
        "{\"id\":\"p\",\"options\":[{\"id\":\"a\",\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9"
        "\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\":1}]}",
        "options[0]");
    parse_bad("{\"id\":\"p\",\"id\":\"q\",\"options\":[\"a\"]}", "");
    char title[400];
    memset(title, 'x', 300);
    title[300] = 0;
    char json[600];
    snprintf(json, sizeof json, "{\"id\":\"p\",\"options\":[\"a\"],\"title\":\"%s\"}", title);
    parse_bad(json, "title");
}

Test(catalog, config_poll_becomes_a_config_definition) {
    poll_option_t opts[2] = {{"x", "Ex"}, {"y", NULL}};
    poll_conf_t pc = {.id = "cfg",
                      .title = NULL,
                      .mode = MODE_CAPPED,
                      .options = opts,
                      .noptions = 2,
                      .max_votes = 3,
                      .visibility = 1,
                      .closes_at = 99};
    poll_def_t *d = poll_def_from_conf(&pc, &dflt);
    cr_assert_str_eq(d->title, "cfg");
    cr_assert_eq(d->source, POLL_SRC_CONFIG);
    cr_assert_eq(d->max_votes, 3);
    cr_assert_eq(d->visibility, VIS_ON_CLOSE);
    cr_assert_eq(d->closes_at, 99);
    cr_assert_str_eq(d->options[0].label, "Ex");
    cr_assert_str_eq(d->options[1].label, "y");
    poll_def_free(d);
}

static void successor(const char *cur_json, int final, const char *next_json, uint64_t now,
                      const char *code, const char *field) {
    poll_def_t *cur = parse_ok(cur_json), *next = parse_ok(next_json);
    catalog_error_t err = {0};
    tally_err_t rc = poll_def_check_successor(cur, final, next, now, 3000, &err);
    if (!code) {
        cr_assert_eq(rc, TALLY_OK, "%s -> %s refused: %s", cur_json, next_json, err.message);
    } else {
        cr_assert_eq(rc, TALLY_ERR_STATE, "%s -> %s accepted", cur_json, next_json);
        cr_assert_eq(err.http_status, 409);
        cr_assert_str_eq(err.code, code);
        cr_assert_str_eq(err.field, field, "field %s (%s)", err.field, err.message);
    }
    poll_def_free(cur);
    poll_def_free(next);
}

#define P "\"id\":\"p\","
Test(catalog, successor_keeps_what_counted_votes_depend_on) {
    const char *base = "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":100000}";
    /* allowed */
    successor(base, 0, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":100000,\"title\":\"T\"}",
              1000, NULL, NULL);
    successor(base, 0,
              "{" P "\"options\":[{\"id\":\"a\",\"label\":\"A!\"},\"b\",\"c\"],"
              "\"closes_at\":100000}",
              1000, NULL, NULL);
    successor(base, 0, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":200000}", 1000, NULL, NULL);
    successor(base, 0, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":4000}", 1000, NULL, NULL);
    successor(base, 0,
              "{" P "\"options\":[\"a\",\"b\"],\"visibility\":\"on_close\","
              "\"closes_at\":100000}",
              1000, NULL, NULL);
    /* refused */
    successor(base, 0, "{\"id\":\"q\",\"options\":[\"a\",\"b\"],\"closes_at\":100000}", 1000,
              "incompatible", "id");
    successor(base, 0,
              "{" P "\"options\":[\"a\",\"b\"],\"mode\":\"changeable\","
              "\"closes_at\":100000}",
              1000, "incompatible", "mode");
    successor(base, 0,
              "{" P "\"options\":[\"a\",\"b\"],\"voter_auth\":\"jwt\","
              "\"closes_at\":100000}",
              1000, "incompatible", "voter_auth");
    successor(base, 0, "{" P "\"options\":[\"a\"],\"closes_at\":100000}", 1000, "incompatible",
              "options");
    successor(base, 0, "{" P "\"options\":[\"b\",\"a\"],\"closes_at\":100000}", 1000,
              "incompatible", "options[0].id");
    /* earlier than now + close delay (1000 + 3000) */
    successor(base, 0, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":3999}", 1000, "incompatible",
              "closes_at");
    /* once closed, the close stays */
    successor(base, 0, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":900000}", 100000,
              "incompatible", "closes_at");
    /* final: nothing changes */
    successor(base, 1, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":100000,\"title\":\"T\"}",
              200000, "poll_final", "");
    successor(base, 1, "{" P "\"options\":[\"a\",\"b\"],\"closes_at\":100000}", 200000, NULL, NULL);
    const char *capped = "{" P "\"options\":[\"a\"],\"mode\":\"capped\",\"max_votes\":5}";
    successor(capped, 0, "{" P "\"options\":[\"a\"],\"mode\":\"capped\",\"max_votes\":6}", 0,
              "incompatible", "max_votes");
    /* opens_at: movable while scheduled, not after */
    const char *sched = "{" P "\"options\":[\"a\"],\"opens_at\":5000}";
    successor(sched, 0, "{" P "\"options\":[\"a\"],\"opens_at\":7000}", 1000, NULL, NULL);
    successor(sched, 0, "{" P "\"options\":[\"a\"],\"opens_at\":7000}", 5000, "incompatible",
              "opens_at");
    /* a close set on an open poll without one: at least now + delay */
    const char *open = "{" P "\"options\":[\"a\"]}";
    successor(open, 0, "{" P "\"options\":[\"a\"],\"closes_at\":4000}", 1000, NULL, NULL);
    successor(open, 0, "{" P "\"options\":[\"a\"],\"closes_at\":3000}", 1000, "incompatible",
              "closes_at");
}

Test(catalog, state_at_boundaries) {
    poll_def_t *d = parse_ok("{" P "\"options\":[\"a\"],\"opens_at\":1000,\"closes_at\":2000}");
    cr_assert_eq(poll_def_state_at(d, 0, 999), POLL_SCHEDULED);
    cr_assert_eq(poll_def_state_at(d, 0, 1000), POLL_OPEN);
    cr_assert_eq(poll_def_state_at(d, 0, 1999), POLL_OPEN);
    cr_assert_eq(poll_def_state_at(d, 0, 2000), POLL_CLOSED);
    cr_assert_eq(poll_def_state_at(d, 1, 2000), POLL_FINAL);
    cr_assert_eq(poll_def_state_at(d, 1, 500), POLL_FINAL);
    cr_assert_str_eq(poll_state_name(POLL_CLOSED), "closed");
    cr_assert_str_eq(poll_state_name(POLL_SCHEDULED), "scheduled");
    poll_def_free(d);
    d = parse_ok("{" P "\"options\":[\"a\"]}");
    cr_assert_eq(poll_def_state_at(d, 0, 0), POLL_OPEN);
    cr_assert_eq(poll_def_state_at(d, 0, UINT64_MAX), POLL_OPEN);
    poll_def_free(d);
}

static catalog_entry_t *entry(const char *id, int nopt, uint64_t seq) {
    char json[256];
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"options\":[\"a\"%s]}", id,
             nopt > 1 ? ",\"b\"" : "");
    return catalog_entry_new(parse_ok(json), seq);
}

Test(catalog, versions_are_immutable_and_share_entries) {
    catalog_t *c0 = catalog_new_empty();
    cr_assert_eq(catalog_npolls(c0), 0);
    cr_assert_null(catalog_find(c0, "x", 1));
    catalog_entry_t *a = entry("a", 1, 1), *b = entry("b", 1, 2), *a2 = entry("a", 2, 3);
    catalog_t *c1 = catalog_with(c0, a, 1);
    catalog_t *c2 = catalog_with(c1, b, 2);
    catalog_t *c3 = catalog_with(c2, a2, 3);
    catalog_entry_unref(a);
    catalog_entry_unref(b);
    catalog_entry_unref(a2);
    cr_assert_eq(catalog_seq(c3), 3);
    cr_assert_eq(catalog_npolls(c3), 2);
    cr_assert_str_eq(catalog_at(c3, 0)->def->id, "a"); /* order of first definition */
    cr_assert_eq(catalog_find(c3, "a", 1)->def->noptions, 2);
    cr_assert_eq(catalog_find(c2, "a", 1)->def->noptions, 1);
    cr_assert_eq(catalog_find(c3, "b", 1), catalog_find(c2, "b", 1));
    cr_assert_null(catalog_find(c1, "b", 1));
    catalog_entry_t *f = catalog_entry_finalized(catalog_find(c3, "b", 1), 4, 77);
    catalog_t *c4 = catalog_with(c3, f, 4);
    catalog_entry_unref(f);
    cr_assert(catalog_find(c4, "b", 1)->final);
    cr_assert_eq(catalog_find(c4, "b", 1)->final_at, 77);
    cr_assert(!catalog_find(c3, "b", 1)->final);
    catalog_free(c0);
    catalog_free(c1);
    catalog_free(c2);
    catalog_free(c3);
    cr_assert_str_eq(catalog_find(c4, "a", 1)->def->id, "a"); /* still referenced */
    catalog_free(c4);
}

Test(catalog, many_polls_are_all_found) {
    catalog_t *c = catalog_new_empty();
    for (int i = 0; i < 2000; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        catalog_entry_t *en = entry(id, 1, (uint64_t)i + 1);
        catalog_t *n = catalog_with(c, en, (uint64_t)i + 1);
        catalog_entry_unref(en);
        catalog_free(c);
        c = n;
    }
    for (int i = 0; i < 2000; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        const catalog_entry_t *en = catalog_find(c, id, strlen(id));
        cr_assert_not_null(en);
        cr_assert_eq(en->def_seq, (uint64_t)i + 1);
    }
    cr_assert_null(catalog_find(c, "p2000", 5));
    catalog_free(c);
}

Test(catalog, live_swap_keeps_recent_versions_readable) {
    catalog_live_t *l = catalog_live_new(NULL);
    const catalog_t *v0 = catalog_live_get(l);
    cr_assert_eq(catalog_seq(v0), 0);
    catalog_entry_t *a = entry("a", 1, 1);
    catalog_live_swap(l, catalog_with(v0, a, 1));
    catalog_entry_unref(a);
    /* v0 was retired less than the grace period ago: still valid */
    cr_assert_eq(catalog_npolls(v0), 0);
    cr_assert_eq(catalog_seq(catalog_live_get(l)), 1);
    catalog_live_free(l);
}

/* ---- the history writer over a real file log ---- */

#include <stdatomic.h>

#include "log/record.h"
#include "unit_helpers.h"

static _Atomic int other_acks;
static void other_ack(void *opaque, vlog_err_t err) {
    cr_assert_eq((uintptr_t)opaque, (uintptr_t)0x1000);
    cr_assert_eq(err, VLOG_OK);
    atomic_fetch_add(&other_acks, 1);
}

typedef struct {
    uint64_t seq[4][16];
    unsigned kind[4][16];
    char body[4][16][512];
    int n[4];
} seen_t;

static int on_rec(void *arg, const vlog_msg_t *m) {
    seen_t *s = arg;
    control_record_t c;
    if (!m->rec || control_decode(m->rec, m->len, &c) != 0)
        return 0;
    int k = s->n[m->partition]++;
    s->seq[m->partition][k] = c.seq;
    s->kind[m->partition][k] = c.kind;
    snprintf(s->body[m->partition][k], 512, "%.*s", (int)c.body_len, c.body ? c.body : "");
    return 0;
}

static poll_def_t *def_of(const char *json) {
    poll_def_t *d;
    catalog_error_t err;
    cr_assert_eq(poll_def_from_json(json, strlen(json), &dflt, &d, &err), TALLY_OK);
    return d;
}

/* A history writer on a file log of nparts partitions in a fresh dir. */
typedef struct {
    char *dir;
    tally_config_t *c;
    vlog_t *log;
    catalog_live_t *live;
    history_t *h;
} history_fix_t;

static void history_fix_open(history_fix_t *f, int nparts) {
    char err[512];
    f->dir = tmpdir_new();
    f->c = config_new_defaults();
    free(f->c->log_dir);
    f->c->log_dir = path_join(f->dir, "log");
    f->c->log_partitions = nparts;
    f->c->log_fsync = 0;
    history_ack_init(other_ack);
    f->log = vlog_open(f->c, VLOG_F_WRITE | VLOG_F_READ, history_log_ack, NULL, err, sizeof err);
    cr_assert_not_null(f->log, "%s", err);
    f->live = catalog_live_new(NULL);
    f->h = history_new(f->log, f->live, 5000);
}

static void history_fix_close(history_fix_t *f) {
    history_free(f->h);
    catalog_live_free(f->live);
    vlog_close(f->log);
    config_free(f->c);
    tmpdir_free(f->dir);
}

static int slow_calls;

/* Every ingest elsewhere has a change 5 s after it is handed over. */
static int slow_learner(void *arg, const catalog_entry_t *en, uint64_t *learned_mono) {
    (void)arg;
    (void)en;
    slow_calls++;
    if (learned_mono)
        *learned_mono = mono_ms() + 5000;
    return 0;
}

/* Hands a change over after longer than a catalog version lives once
 * swapped out. */
static int very_slow_learner(void *arg, const catalog_entry_t *en, uint64_t *learned_mono) {
    (void)arg;
    (void)en;
    struct timespec ts = {CATALOG_GRACE_MS / 1000, 300 * 1000000};
    nanosleep(&ts, NULL);
    if (learned_mono)
        *learned_mono = mono_ms();
    return 0;
}

/* A learner slower than CATALOG_GRACE_MS: the close still takes the next
 * seq and a cut past the learning. (The version it started from may be
 * freed by any swap meanwhile; under ASan this caught the seq read from it
 * while the moved cut was still swapped in, 497a467.) */
Test(catalog, a_learner_slower_than_the_grace_reads_nothing_freed, .timeout = 60) {
    history_fix_t f;
    history_fix_open(&f, 2);
    catalog_live_t *live = f.live;
    history_t *h = f.h;
    catalog_error_t e = {0};
    cr_assert_eq(history_create(h, def_of("{\"id\":\"s\",\"options\":[\"a\"]}"), NULL, &e),
                 TALLY_OK, "%s", e.message);
    history_set_learner(h, very_slow_learner, NULL);
    catalog_entry_t *en = NULL;
    uint64_t now = now_ms();
    char def[96];
    snprintf(def, sizeof def, "{\"id\":\"s\",\"options\":[\"a\"],\"closes_at\":%llu}",
             (unsigned long long)(now + 100));
    cr_assert_eq(history_update(h, def_of(def), now, 100, &en, &e), TALLY_OK, "%s", e.message);
    cr_assert_eq(en->def_seq, 2);
    cr_assert_geq(en->def->closes_at, now + CATALOG_GRACE_MS + 100);
    catalog_entry_unref(en);
    cr_assert_eq(catalog_seq(catalog_live_get(live)), 2);
    history_fix_close(&f);
}

Test(catalog, history_writer_broadcasts_waits_then_swaps) {
    history_fix_t f;
    history_fix_open(&f, 4);
    vlog_t *log = f.log;
    catalog_live_t *live = f.live;
    history_t *h = f.h;
    char err[512];
    catalog_error_t e = {0};
    catalog_entry_t *en = NULL;
    cr_assert_eq(history_create(h, def_of("{\"id\":\"p\",\"options\":[\"a\"]}"), &en, &e), TALLY_OK,
                 "%s", e.message);
    cr_assert_eq(en->def_seq, 1);
    catalog_entry_unref(en);
    cr_assert_eq(catalog_seq(catalog_live_get(live)), 1);
    cr_assert_not_null(catalog_find(catalog_live_get(live), "p", 1));
    /* Exists: 409 poll_exists, nothing written. */
    cr_assert_eq(history_create(h, def_of("{\"id\":\"p\",\"options\":[\"b\"]}"), NULL, &e),
                 TALLY_ERR_STATE);
    cr_assert_str_eq(e.code, "poll_exists");
    cr_assert_eq(e.http_status, 409);
    /* Incompatible: named field. */
    cr_assert_eq(history_update(h,
                                def_of("{\"id\":\"p\",\"options\":[\"a\"],\"mode\":"
                                       "\"unlimited\"}"),
                                1000, 3000, NULL, &e),
                 TALLY_ERR_STATE);
    cr_assert_str_eq(e.field, "mode");
    cr_assert_eq(
        history_update(h, def_of("{\"id\":\"zz\",\"options\":[\"a\"]}"), 1000, 3000, NULL, &e),
        TALLY_ERR_STATE);
    cr_assert_eq(e.http_status, 404);
    /* No close: no final. */
    cr_assert_eq(history_final(h, "p", now_ms(), 0, NULL, &e), TALLY_ERR_STATE);
    cr_assert_str_eq(e.field, "closes_at");
    cr_assert_eq(history_update(h,
                                def_of("{\"id\":\"p\",\"options\":[\"a\",\"b\"],"
                                       "\"closes_at\":9000}"),
                                1000, 3000, NULL, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_eq(history_final(h, "p", now_ms(), 0, &en, &e), TALLY_OK, "%s", e.message);
    cr_assert(en->final);
    cr_assert_eq(en->final_at, 9000);
    catalog_entry_unref(en);
    cr_assert_eq(history_final(h, "p", now_ms(), 0, NULL, &e), TALLY_ERR_STATE);
    cr_assert_str_eq(e.code, "poll_final");
    cr_assert_eq(catalog_seq(catalog_live_get(live)), 3);
    /* Another append's ack goes to the next callback, untouched. */
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = rec_make(rec, "p", "a", "v", 1);
    cr_assert_eq(vlog_append(log, 0, rec, n, NULL, (void *)0x1000), VLOG_OK);
    cr_assert_eq(vlog_flush(log, 5000), 0);
    cr_assert_eq(atomic_load(&other_acks), 1);
    /* Every partition holds the same history, in order. */
    seen_t *s = xcalloc(1, sizeof *s);
    int parts[4] = {0, 1, 2, 3};
    uint64_t zero[4] = {0};
    vlog_reader_t *r = vlog_reader_new(log, parts, zero, 4, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    while (vlog_reader_poll(r, on_rec, s, 100, 0, err, sizeof err) > 0)
        ;
    vlog_reader_free(r);
    for (int p = 0; p < 4; p++) {
        cr_assert_eq(s->n[p], 3, "partition %d", p);
        for (int k = 0; k < 3; k++)
            cr_assert_eq(s->seq[p][k], (uint64_t)k + 1);
        cr_assert_eq(s->kind[p][2], CONTROL_FINAL);
        cr_assert_str_eq(s->body[p][1], s->body[0][1]);
    }
    poll_def_t *back = def_of(s->body[2][1]);
    cr_assert_eq(back->noptions, 2);
    cr_assert_eq(back->closes_at, 9000);
    poll_def_free(back);
    free(s);
    /* A close is learned before it is logged; when it is learned at or
     * after its cut (here the cut is the caller's now, delay 0), the cut
     * moves past the learning. */
    cr_assert_eq(history_create(h, def_of("{\"id\":\"q\",\"options\":[\"a\"]}"), NULL, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_eq(history_update(h, def_of("{\"id\":\"q\",\"options\":[\"a\"],\"closes_at\":5000}"),
                                5000, 0, &en, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_gt(en->def->closes_at, 5000);
    cr_assert_leq(en->def->closes_at, 5000 + 1000);
    catalog_entry_unref(en);

    /* Other processes' ingests (a learner) have a change 5 s from now: a
     * close moves past that; an opening moved later is refused when the
     * old opening came first, and the old view is back. */
    history_set_learner(h, slow_learner, NULL);
    cr_assert_eq(history_create(h,
                                def_of("{\"id\":\"r\",\"options\":[\"a\"],\"opens_at\":"
                                       "3000}"),
                                NULL, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_eq(history_update(h,
                                def_of("{\"id\":\"r\",\"options\":[\"a\"],\"opens_at\":"
                                       "3000,\"closes_at\":4000}"),
                                1000, 100, &en, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_geq(en->def->closes_at, 1000 + 5000 + 100, "%llu",
                  (unsigned long long)en->def->closes_at);
    catalog_entry_unref(en);
    cr_assert_eq(history_update(h,
                                def_of("{\"id\":\"r\",\"options\":[\"a\"],\"opens_at\":"
                                       "4000,\"closes_at\":9000000}"),
                                1000, 100, NULL, &e),
                 TALLY_ERR_STATE);
    cr_assert_str_eq(e.field, "opens_at");
    const catalog_entry_t *rent = catalog_find(catalog_live_get(live), "r", 1);
    cr_assert_eq(rent->def->opens_at, 3000);
    cr_assert_eq(slow_calls, 3, "%d", slow_calls); /* the close, the opening, its putting back */
    /* The FINAL is judged under the lock against the cut in force, not the
     * caller's older view. */
    uint64_t rcut = rent->def->closes_at;
    cr_assert_eq(history_final(h, "r", rcut + 50, 100, NULL, &e), TALLY_ERR_STATE);
    cr_assert_str_eq(e.code, "not_due");
    cr_assert_eq(history_final(h, "r", rcut + 100, 100, NULL, &e), TALLY_OK, "%s", e.message);
    history_fix_close(&f);
}
