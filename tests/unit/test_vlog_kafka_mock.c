/* The Kafka vote log under faults a real broker cannot stage on demand,
 * using librdkafka's mock cluster (rdkafka_mock.h): produce request errors,
 * leader changes, all brokers down. The invariant everywhere: every append
 * acknowledged OK is in the log exactly once, and nothing is in the log twice. */
#include <criterion/criterion.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/catalog.h"
#include "common/util.h"
#include "log/record.h"
#include "log/vlog.h"

#define TOPIC "votes"
#define NPART 4
#define MAXV 20000

static rd_kafka_t *mrk;
static rd_kafka_mock_cluster_t *mc;
static tally_config_t *conf;
static _Atomic int status[MAXV]; /* 0 pending, 1 ok, 2 failed */
static _Atomic int nacks;

static void ack(void *opaque, vlog_err_t err) {
    int i = (int)(intptr_t)opaque - 1;
    atomic_store(&status[i], err == VLOG_OK ? 1 : 2);
    atomic_fetch_add(&nacks, 1);
}

static void setup(void) {
    char err[256];
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_conf_set(kc, "log_level", "0", err, sizeof err);
    mrk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof err);
    cr_assert(mrk, "%s", err);
    mc = rd_kafka_mock_cluster_new(mrk, 3);
    cr_assert(mc);
    cr_assert_eq(rd_kafka_mock_topic_create(mc, TOPIC, NPART, 3), 0);
    conf = config_new_defaults();
    free(conf->kafka_brokers);
    conf->kafka_brokers = xstrdup(rd_kafka_mock_cluster_bootstraps(mc));
    free(conf->kafka_topic);
    conf->kafka_topic = xstrdup(TOPIC);
    cr_assert_eq(config_set(conf, "kafka", "message.timeout.ms", "3000", err, sizeof err), 0);
    cr_assert_eq(config_set(conf, "kafka", "log_level", "2", err, sizeof err), 0);
    memset((void *)status, 0, sizeof status);
    atomic_store(&nacks, 0);
}

static void teardown(void) {
    config_free(conf);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mrk);
}

/* Vote i (voter "v<i>") to partition, or, with partition < 0, to the one
 * its key maps to, filed under that key. */
static vlog_err_t append_vote_to(vlog_t *l, int i, int partition) {
    char voter[32];
    snprintf(voter, sizeof voter, "v%d", i);
    vote_record_t v = {.ts_ms = now_ms(),
                       .poll = "poll",
                       .poll_len = 4,
                       .option = "opt",
                       .option_len = 3,
                       .voter = voter,
                       .voter_len = strlen(voter)};
    uint8_t rec[RECORD_MAX_LEN];
    size_t len = record_encode(&v, rec);
    if (partition >= 0) /* to pile batches up on one partition */
        return vlog_append(l, partition, rec, len, NULL, (void *)(intptr_t)(i + 1));
    char key[RECORD_LOG_KEY_MAX];
    vlog_meta_t meta = {key, record_log_key(&v, key), v.ts_ms};
    return vlog_append(l, record_partition(&v, vlog_partitions(l), 0), rec, len, &meta,
                       (void *)(intptr_t)(i + 1));
}

static vlog_err_t append_vote(vlog_t *l, int i) {
    return append_vote_to(l, i, -1);
}

static void wait_acks(int want) {
    uint64_t deadline = mono_ms() + 30000;
    while (atomic_load(&nacks) < want && mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(atomic_load(&nacks), want, "acks %d of %d", atomic_load(&nacks), want);
}

typedef struct {
    int seen[MAXV];
    int n;
} seen_t;

static int on_msg(void *arg, const vlog_msg_t *m) {
    seen_t *s = arg;
    vote_record_t v;
    cr_assert_eq(record_decode(m->rec, m->len, &v), 0);
    int i = atoi(v.voter + 1);
    s->seen[i]++;
    s->n++;
    return 0;
}

/* Reads every partition to its end; checks exactly-once against status. */
static void verify_log(vlog_t *l, int total) {
    static seen_t s;
    memset(&s, 0, sizeof s);
    char err[256];
    uint64_t ends[NPART], pos[NPART] = {0};
    int parts[NPART] = {0, 1, 2, 3};
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0, "%s", err);
    uint64_t want = 0;
    for (int p = 0; p < NPART; p++)
        want += ends[p];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, NPART, err, sizeof err);
    cr_assert(r, "%s", err);
    uint64_t deadline = mono_ms() + 30000;
    while ((uint64_t)s.n < want && mono_ms() < deadline)
        cr_assert_geq(vlog_reader_poll(r, on_msg, &s, 1000, 100, err, sizeof err), 0, "%s", err);
    vlog_reader_free(r);
    cr_assert_eq((uint64_t)s.n, want, "read %d of %llu records", s.n, (unsigned long long)want);
    int ok = 0;
    for (int i = 0; i < total; i++) {
        cr_assert_leq(s.seen[i], 1, "vote %d is in the log %d times", i, s.seen[i]);
        if (atomic_load(&status[i]) == 1) {
            ok++;
            cr_assert_eq(s.seen[i], 1, "acknowledged vote %d is not in the log", i);
        }
    }
    cr_assert_gt(ok, 0);
}

TestSuite(kafka_mock, .init = setup, .fini = teardown, .timeout = 120);

Test(kafka_mock, produce_and_read_back) {
    char err[256];
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, ack, NULL, err, sizeof err);
    cr_assert(l, "%s", err);
    cr_assert_eq(vlog_partitions(l), NPART);
    for (int i = 0; i < 2000; i++)
        cr_assert_eq(append_vote(l, i), VLOG_OK);
    wait_acks(2000);
    for (int i = 0; i < 2000; i++)
        cr_assert_eq(atomic_load(&status[i]), 1);
    verify_log(l, 2000);
    vlog_close(l);
}

Test(kafka_mock, produce_request_errors_are_retried_once) {
    char err[256];
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, ack, NULL, err, sizeof err);
    cr_assert(l, "%s", err);
    /* Produce (ApiKey 0) fails several times with retriable errors,
     * including a timeout after which the broker may or may not have
     * written: idempotence must keep it to one copy. */
    rd_kafka_mock_push_request_errors(
        mc, 0, 8, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
    for (int i = 0; i < 3000; i++)
        cr_assert_eq(append_vote(l, i), VLOG_OK);
    wait_acks(3000);
    verify_log(l, 3000);
    vlog_close(l);
}

Test(kafka_mock, leader_change_mid_stream) {
    char err[256];
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, ack, NULL, err, sizeof err);
    cr_assert(l, "%s", err);
    for (int i = 0; i < 1500; i++)
        cr_assert_eq(append_vote(l, i), VLOG_OK);
    for (int p = 0; p < NPART; p++)
        rd_kafka_mock_partition_set_leader(mc, TOPIC, p, 1 + (p + 1) % 3);
    for (int i = 1500; i < 3000; i++)
        cr_assert_eq(append_vote(l, i), VLOG_OK);
    wait_acks(3000);
    verify_log(l, 3000);
    vlog_close(l);
}

Test(kafka_mock, brokers_down_then_back) {
    char err[256];
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, ack, NULL, err, sizeof err);
    cr_assert(l, "%s", err);
    int n = 0, accepted = 0;
    for (; n < 500; n++)
        accepted += append_vote(l, n) == VLOG_OK;
    for (int b = 1; b <= 3; b++)
        rd_kafka_mock_broker_set_down(mc, b);
    /* While down: appends are refused (503) or fail within
     * message.timeout.ms; none blocks. */
    uint64_t until = mono_ms() + 5000;
    int refused = 0;
    while (mono_ms() < until && n < 5000) {
        vlog_err_t e = append_vote(l, n);
        n++;
        if (e == VLOG_OK)
            accepted++;
        else
            refused++;
        struct timespec ts = {0, 2 * 1000000};
        nanosleep(&ts, NULL);
    }
    wait_acks(accepted);
    int failed = 0;
    for (int i = 0; i < n; i++)
        failed += atomic_load(&status[i]) == 2;
    cr_assert_gt(refused + failed, 0, "the outage was not noticed");
    for (int b = 1; b <= 3; b++)
        rd_kafka_mock_broker_set_up(mc, b);
    /* Back: appends succeed again within a few seconds. */
    uint64_t deadline = mono_ms() + 30000;
    int ok_after = 0;
    while (ok_after < 200 && mono_ms() < deadline && n < MAXV) {
        if (append_vote(l, n) == VLOG_OK) {
            accepted++;
            ok_after++;
        } else {
            struct timespec ts = {0, 20 * 1000000};
            nanosleep(&ts, NULL);
        }
        n++;
    }
    cr_assert_eq(ok_after, 200, "appends did not recover");
    wait_acks(accepted);
    verify_log(l, n);
    vlog_close(l);
}

/* The shape of the start-up loss on a fresh topic (issue 7): the first
 * ProduceRequest of a partition fails NOT_LEADER_FOR_PARTITION while later
 * batches of the same partition are already in flight and succeed. A broker
 * takes any sequence from a producer it has no state for (the mock takes any
 * sequence from a non-transactional producer), so librdkafka 2.0.2 takes the
 * later success for proof that the failed batch was written and reports it
 * delivered ("implicitly acked by subsequent batch success"). Partition 0's
 * leader answers the first Produce with the error after 200 ms, so the
 * batches behind it are surely in flight by then. */
#define PILE 200
static void lead_partition0_from_broker1(void) {
    /* Before the producer reads metadata: it must send to broker 1 first. */
    cr_assert_eq(rd_kafka_mock_partition_set_leader(mc, TOPIC, 0, 1), 0);
}

static void inject_not_leader_on_first_of_inflight(void) {
    cr_assert_eq(rd_kafka_mock_broker_push_request_error_rtts(
                     mc, 1, 0 /* Produce */, 1, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, 200),
                 0);
}

static void assert_error_consumed(void) {
    size_t left = 1;
    cr_assert_eq(rd_kafka_mock_broker_error_stack_cnt(mc, 1, 0 /* Produce */, &left), 0);
    cr_assert_eq(left, 0, "the injected Produce error was never served");
}

/* tally's own producer settings: one request in flight per connection, so
 * no later batch can succeed past a failed one; every vote gets OK. */
Test(kafka_mock, not_leader_on_first_of_two_inflight_batches_loses_nothing) {
    char err[256];
    cr_assert_eq(config_set(conf, "kafka", "batch.num.messages", "1", err, sizeof err), 0);
    cr_assert_eq(config_set(conf, "kafka", "linger.ms", "5", err, sizeof err), 0);
    lead_partition0_from_broker1();
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, ack, NULL, err, sizeof err);
    cr_assert(l, "%s", err);
    inject_not_leader_on_first_of_inflight();
    for (int i = 0; i < PILE; i++)
        cr_assert_eq(append_vote_to(l, i, 0), VLOG_OK);
    wait_acks(PILE);
    assert_error_consumed();
    for (int i = 0; i < PILE; i++)
        cr_assert_eq(atomic_load(&status[i]), 1, "vote %d was not acknowledged", i);
    verify_log(l, PILE);
    vlog_close(l);
}

/* An operator who raises max.in.flight back to 5 for throughput gets the
 * implicit acks again; a delivery report without an offset of its own is
 * then answered as a failure (503), never as OK: nothing acknowledged may be
 * missing, and the failed batch must indeed have been refused. */
Test(kafka_mock, implicit_ack_under_pipelining_is_never_an_acknowledgement) {
    char err[256];
    cr_assert_eq(
        config_set(conf, "kafka", "max.in.flight.requests.per.connection", "5", err, sizeof err),
        0);
    cr_assert_eq(config_set(conf, "kafka", "batch.num.messages", "1", err, sizeof err), 0);
    cr_assert_eq(config_set(conf, "kafka", "linger.ms", "5", err, sizeof err), 0);
    lead_partition0_from_broker1();
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, ack, NULL, err, sizeof err);
    cr_assert(l, "%s", err);
    inject_not_leader_on_first_of_inflight();
    for (int i = 0; i < PILE; i++)
        cr_assert_eq(append_vote_to(l, i, 0), VLOG_OK);
    wait_acks(PILE);
    assert_error_consumed();
    verify_log(l, PILE);
    int failed = 0;
    for (int i = 0; i < PILE; i++)
        failed += atomic_load(&status[i]) == 2;
    /* Else the refused batch was not ahead of a pipelined one: no test. */
    cr_assert_gt(failed, 0, "every vote was answered OK although the first batch was refused");
    vlog_close(l);
}

Test(kafka_mock, bad_librdkafka_key_is_a_config_error) {
    char err[256];
    cr_assert_eq(config_set(conf, "kafka", "no.such.property", "1", err, sizeof err), 0);
    errno = 0;
    vlog_t *l = vlog_open(conf, VLOG_F_WRITE, ack, NULL, err, sizeof err);
    cr_assert_null(l);
    cr_assert_eq(errno, EINVAL);
    cr_assert(strstr(err, "kafka.no.such.property"), "%s", err);
}

/* ---- the history writer over Kafka ---- */

static int learner_calls;

/* The ingests of other processes have every cut at once. */
static int learn_now(void *arg, const catalog_entry_t *en, uint64_t *learned_mono) {
    (void)arg;
    (void)en;
    if (learned_mono) {
        learner_calls++;
        *learned_mono = mono_ms();
    }
    return 0;
}

typedef struct {
    int total;                          /* control records read */
    int n[NPART];                       /* of poll p */
    int close_pos[NPART], r_pos[NPART]; /* where p's first close, r's DEFINE were read */
    int final_pos[NPART];               /* where p's last FINAL was read */
    char closes[64];                    /* "closes_at":<the cut> */
    unsigned kind[NPART][8];
    uint64_t seq[NPART][8];
    char body[NPART][8][512];
} controls_t;

static int on_control(void *arg, const vlog_msg_t *m) {
    controls_t *s = arg;
    control_record_t c;
    if (!m->rec || control_decode(m->rec, m->len, &c) != 0)
        return 0;
    s->total++;
    if (c.poll_len == 1 && c.poll[0] == 'r')
        s->r_pos[m->partition] = s->total;
    if (c.poll_len != 1 || c.poll[0] != 'p')
        return 0;

    int k = s->n[m->partition]++;
    cr_assert_lt(k, 8);
    s->kind[m->partition][k] = c.kind;
    s->seq[m->partition][k] = c.seq;
    snprintf(s->body[m->partition][k], 512, "%.*s", (int)c.body_len, c.body ? c.body : "");
    if (c.kind == CONTROL_FINAL)
        s->final_pos[m->partition] = s->total;
    if (c.kind == CONTROL_DEFINE && strstr(s->body[m->partition][k], s->closes) &&
        !s->close_pos[m->partition])
        s->close_pos[m->partition] = s->total;
    return 0;
}

/* Reads every partition of l to its end into s (the test's own walk). */
static void read_controls(vlog_t *l, controls_t *s) {
    char err[256];
    uint64_t ends[NPART], pos[NPART] = {0};
    int parts[NPART] = {0, 1, 2, 3};
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0, "%s", err);
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, NPART, err, sizeof err);
    cr_assert(r, "%s", err);
    uint64_t want = 0, deadline = mono_ms() + 30000;
    for (int p = 0; p < NPART; p++)
        want += ends[p];
    while ((uint64_t)s->total < want && mono_ms() < deadline)
        cr_assert_geq(vlog_reader_poll(r, on_control, s, 1000, 100, err, sizeof err), 0, "%s", err);
    vlog_reader_free(r);
}

/* The history of the lifecycle tests over a Kafka log on the mock cluster,
 * its acknowledgements in `ack`. */
static history_t *history_open(vlog_t **l, catalog_live_t **live) {
    char err[256];
    history_ack_init(ack);
    *l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, history_log_ack, NULL, err, sizeof err);
    cr_assert(*l, "%s", err);
    *live = catalog_live_new(NULL);
    return history_new(*l, *live, 1500);
}

static void history_close(history_t *h, catalog_live_t *live, vlog_t *l) {
    history_free(h);
    catalog_live_free(live);
    vlog_close(l);
}

/* From now on every Produce the mock cluster gets is refused (20,000 times:
 * more than a test's retries), as a topic the producer may not write. */
static void refuse_every_produce(void) {
    static rd_kafka_resp_err_t refuse[20000];
    for (size_t i = 0; i < sizeof refuse / sizeof refuse[0]; i++)
        refuse[i] = RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    rd_kafka_mock_push_request_errors_array(mc, 0 /* Produce */, sizeof refuse / sizeof refuse[0],
                                            refuse);
}

static poll_def_t *poll_of(const char *json) {
    poll_def_t *d;
    catalog_error_t e;
    poll_def_defaults_t dd = {.idempotency_window_s = 600, .now_ms = 1, .source = POLL_SRC_ADMIN};
    cr_assert_eq(poll_def_from_json(json, strlen(json), &dd, &d, &e), TALLY_OK, "%s", e.message);
    return d;
}

/* A close learned by every ingest whose DEFINE then failed (the votes topic
 * refused it): the stricter view stays, and the failed DEFINE is appended
 * again, under its own seq, before any other change: before, the FINAL
 * scheduler wrote a FINAL at a cut no DEFINE carried, and a later change
 * reused (or skipped past) the seq some partitions might hold. */
Test(kafka_mock, a_close_whose_write_failed_is_logged_before_the_final) {
    vlog_t *l;
    catalog_live_t *live;
    history_t *h = history_open(&l, &live);
    history_set_learner(h, learn_now, NULL);
    catalog_error_t e = {0};
    cr_assert_eq(history_create(h, poll_of("{\"id\":\"p\",\"options\":[\"a\"]}"), NULL, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_eq(history_create(h, poll_of("{\"id\":\"q\",\"options\":[\"a\"]}"), NULL, &e),
                 TALLY_OK, "%s", e.message);

    refuse_every_produce();
    uint64_t now = now_ms(), cut = now + 200;
    char def[128];
    snprintf(def, sizeof def, "{\"id\":\"p\",\"options\":[\"a\"],\"closes_at\":%llu}",
             (unsigned long long)cut);
    uint64_t seq0 = catalog_seq(catalog_live_get(live));
    cr_assert_neq(history_update(h, poll_of(def), now, 200, NULL, &e), TALLY_OK);
    cr_assert_eq(learner_calls, 1);
    /* Ingest refuses from the cut on (the view learned first stays); the
     * failed DEFINE keeps its seq, and comes before any other change. */
    const catalog_entry_t *en = catalog_find(catalog_live_get(live), "p", 1);
    cr_assert_eq(en->def->closes_at, cut);
    cr_assert_eq(catalog_seq(catalog_live_get(live)), seq0);
    def[7] = 'q'; /* the same close of poll q */
    cr_assert_eq(history_update(h, poll_of(def), now, 200, NULL, &e), TALLY_ERR_UNAVAIL);
    cr_assert(strstr(e.message, "poll p"), "%s", e.message);
    cr_assert_eq(learner_calls, 1, "q's close was learned although p's change comes first");
    rd_kafka_mock_clear_request_errors(mc, 0);
    /* Another poll's creation completes p's close first (seq0 + 1), then
     * takes seq0 + 2: no partition gets the later seq without the earlier. */
    catalog_entry_t *made = NULL;
    cr_assert_eq(history_create(h, poll_of("{\"id\":\"r\",\"options\":[\"a\"]}"), &made, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_eq(made->def_seq, seq0 + 2);
    catalog_entry_unref(made);
    en = catalog_find(catalog_live_get(live), "p", 1);
    cr_assert_eq(en->def_seq, seq0 + 1);
    /* Logged with the cut moved past the other processes' clock allowance
     * (1 s); the ingests refused from the earlier one meanwhile. */
    cr_assert_geq(en->def->closes_at, now + 1000 + 200);
    cut = en->def->closes_at;
    while (now_ms() <= cut)
        ;
    catalog_entry_t *fin = NULL;
    cr_assert_eq(history_final(h, "p", now_ms(), 0, &fin, &e), TALLY_OK, "%s", e.message);
    cr_assert_eq(fin->final_at, cut);
    catalog_entry_unref(fin);

    /* Every partition, for p: the create, the close's DEFINE with its cut, the
     * FINAL (a failed append may have reached some partitions: then its
     * DEFINE is there twice, never missing). */
    static controls_t s;
    memset(&s, 0, sizeof s);
    snprintf(s.closes, sizeof s.closes, "\"closes_at\":%llu", (unsigned long long)cut);
    read_controls(l, &s);
    char closes[64];
    snprintf(closes, sizeof closes, "\"closes_at\":%llu", (unsigned long long)cut);
    for (int p = 0; p < NPART; p++) {
        int k = s.n[p];
        cr_assert_geq(k, 3, "partition %d: %d control records", p, k);
        cr_assert_eq(s.kind[p][k - 1], CONTROL_FINAL, "partition %d", p);
        cr_assert_eq(s.kind[p][k - 2], CONTROL_DEFINE, "partition %d", p);
        cr_assert(strstr(s.body[p][k - 2], closes), "partition %d: %s", p, s.body[p][k - 2]);
        cr_assert_lt(s.close_pos[p], s.r_pos[p], "partition %d: r's DEFINE before p's close", p);
    }
    history_close(h, live, l);
}

/* A close whose DEFINE reached some partitions only (partition 0's leader
 * down for longer than message.timeout.ms): the next change of any poll
 * first writes it again to every partition under its seq, so partition 0
 * gets it before r's DEFINE, and the partitions that had it hold it twice
 * at one seq (the engine applies a seq once). Before, the next change took
 * the failed record's seq (ignored where that seq was) and, had a later
 * seq landed first, no start could have repaired partition 0. */
Test(kafka_mock, a_close_that_reached_some_partitions_is_completed_before_the_next_change) {
    cr_assert_eq(rd_kafka_mock_partition_set_leader(mc, TOPIC, 0, 1), 0);
    for (int p = 1; p < NPART; p++)
        cr_assert_eq(rd_kafka_mock_partition_set_leader(mc, TOPIC, p, 2), 0);
    vlog_t *l;
    catalog_live_t *live;
    history_t *h = history_open(&l, &live);
    catalog_error_t e = {0};
    cr_assert_eq(history_create(h, poll_of("{\"id\":\"p\",\"options\":[\"a\"]}"), NULL, &e),
                 TALLY_OK, "%s", e.message);
    uint64_t seq0 = catalog_seq(catalog_live_get(live));
    cr_assert_eq(rd_kafka_mock_broker_set_down(mc, 1), 0);
    uint64_t now = now_ms(), cut = now + 5000;
    char def[128];
    snprintf(def, sizeof def, "{\"id\":\"p\",\"options\":[\"a\"],\"closes_at\":%llu}",
             (unsigned long long)cut);
    cr_assert_eq(history_update(h, poll_of(def), now, 200, NULL, &e), TALLY_ERR_UNAVAIL);
    cr_assert_eq(rd_kafka_mock_broker_set_up(mc, 1), 0);
    /* Another poll: p's close goes first, then r at the seq after it. */
    catalog_entry_t *made = NULL;
    uint64_t deadline = mono_ms() + 30000;
    while (history_create(h, poll_of("{\"id\":\"r\",\"options\":[\"a\"]}"), &made, &e) !=
           TALLY_OK) {
        cr_assert_lt(mono_ms(), deadline, "%s", e.message);
        struct timespec ts = {0, 200 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(made->def_seq, seq0 + 2);
    catalog_entry_unref(made);
    const catalog_entry_t *en = catalog_find(catalog_live_get(live), "p", 1);
    cr_assert_eq(en->def_seq, seq0 + 1);
    cr_assert_eq(en->def->closes_at, cut);

    static controls_t s;
    memset(&s, 0, sizeof s);
    snprintf(s.closes, sizeof s.closes, "\"closes_at\":%llu", (unsigned long long)cut);
    read_controls(l, &s);
    int twice = 0;
    for (int p = 0; p < NPART; p++) {
        cr_assert_gt(s.close_pos[p], 0, "partition %d never got p's close", p);
        cr_assert_lt(s.close_pos[p], s.r_pos[p], "partition %d: r's DEFINE before p's close", p);
        int copies = 0;
        for (int k = 0; k < s.n[p]; k++)
            if (strstr(s.body[p][k], s.closes)) {
                copies++;
                cr_assert_eq(s.seq[p][k], seq0 + 1, "partition %d", p);
            }
        twice += copies == 2;
    }
    cr_assert_gt(twice, 0, "no partition had the close before: the append was not partial");
    history_close(h, live, l);
}

/* A FINAL whose write failed (the votes topic refused it) is the debt too:
 * the poll is not final in the live view until it is logged, the FINAL
 * scheduler's settle writes it under its seq, and a later change comes
 * after it on every partition. Before the debt was kept, the next change
 * took the FINAL's seq, and a retried FINAL was written at another. */
Test(kafka_mock, a_final_whose_write_failed_is_written_before_the_next_change) {
    vlog_t *l;
    catalog_live_t *live;
    history_t *h = history_open(&l, &live);
    catalog_error_t e = {0};
    uint64_t cut = now_ms() + 100;
    char def[128];
    snprintf(def, sizeof def, "{\"id\":\"p\",\"options\":[\"a\"],\"closes_at\":%llu}",
             (unsigned long long)cut);
    cr_assert_eq(history_create(h, poll_of(def), NULL, &e), TALLY_OK, "%s", e.message);
    uint64_t seq0 = catalog_seq(catalog_live_get(live));
    while (now_ms() <= cut)
        ;

    refuse_every_produce();
    cr_assert_eq(history_final(h, "p", now_ms(), 0, NULL, &e), TALLY_ERR_UNAVAIL);
    const catalog_entry_t *en = catalog_find(catalog_live_get(live), "p", 1);
    cr_assert(!en->final, "final in the live view before its FINAL is in the log");
    cr_assert_eq(catalog_seq(catalog_live_get(live)), seq0);
    /* While the log refuses it, every change waits, naming it. */
    cr_assert_eq(history_create(h, poll_of("{\"id\":\"r\",\"options\":[\"a\"]}"), NULL, &e),
                 TALLY_ERR_UNAVAIL);
    cr_assert(strstr(e.message, "poll p"), "%s", e.message);
    cr_assert_eq(history_settle(h, &e), TALLY_ERR_UNAVAIL);
    rd_kafka_mock_clear_request_errors(mc, 0);

    /* The scheduler's next round: settle, then the FINAL is already there. */
    cr_assert_eq(history_settle(h, &e), TALLY_OK, "%s", e.message);
    en = catalog_find(catalog_live_get(live), "p", 1);
    cr_assert(en->final);
    cr_assert_eq(en->final_at, cut);
    cr_assert_eq(catalog_seq(catalog_live_get(live)), seq0 + 1);
    cr_assert_eq(history_final(h, "p", now_ms(), 0, NULL, &e), TALLY_ERR_STATE);
    cr_assert_str_eq(e.code, "poll_final");
    catalog_entry_t *made = NULL;
    cr_assert_eq(history_create(h, poll_of("{\"id\":\"r\",\"options\":[\"a\"]}"), &made, &e),
                 TALLY_OK, "%s", e.message);
    cr_assert_eq(made->def_seq, seq0 + 2);
    catalog_entry_unref(made);

    /* Every partition: p's FINAL at seq0 + 1 (once, or twice if the refused
     * append reached it), before r's DEFINE. */
    static controls_t s;
    memset(&s, 0, sizeof s);
    snprintf(s.closes, sizeof s.closes, "\"closes_at\":%llu", (unsigned long long)cut);
    read_controls(l, &s);
    for (int p = 0; p < NPART; p++) {
        int k = s.n[p], finals = 0;
        cr_assert_geq(k, 2, "partition %d: %d control records of p", p, k);
        cr_assert_eq(s.kind[p][0], CONTROL_DEFINE, "partition %d", p);
        for (int j = 1; j < k; j++) {
            cr_assert_eq(s.kind[p][j], CONTROL_FINAL, "partition %d record %d", p, j);
            cr_assert_eq(s.seq[p][j], seq0 + 1, "partition %d", p);
            finals++;
        }
        cr_assert_geq(finals, 1, "partition %d has no FINAL", p);
        cr_assert_gt(s.r_pos[p], 0, "partition %d never got r's DEFINE", p);
        cr_assert_lt(s.final_pos[p], s.r_pos[p], "partition %d: r's DEFINE before p's FINAL", p);
    }
    history_close(h, live, l);
}
