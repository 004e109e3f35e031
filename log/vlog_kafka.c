/* The vote log on Apache Kafka, through librdkafka.
 *
 * Writing: one idempotent producer (settings and why: producer_defaults).
 * Each record goes to an explicit partition, hash(poll, voter) % partitions,
 * with the key "poll/voter", so a voter's votes for a poll stay in one
 * partition while a hot poll spreads over all of them. The ack callback runs
 * from the delivery report, served by this module's poller thread, and says
 * OK only for a record the broker acknowledged with an offset of its own
 * (delivery_verdict): a 202 is never sent for a record that is not in the
 * topic. Appends are refused (503) until every partition's leader answers
 * (topic_ready), and again while the cluster is unreachable, instead of
 * queueing for minutes; the poller probes the cluster every second to notice
 * it is back.
 *
 * Reading: one consumer per engine worker with assign() of its partitions at
 * the engine's own positions (offsets kept in engine snapshots, never in
 * Kafka's committed offsets). auto.offset.reset=error: a position that
 * retention has deleted stops the engine instead of silently skipping votes.
 *
 * Every kafka.* key other than tally's own (brokers, topic, partitions) is
 * handed to librdkafka unchanged, for producers and consumers alike. */
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/ids.h"
#include "common/util.h"
#include "log/record.h"
#include "log/vlog_int.h"

#define META_TIMEOUT_MS 10000
#define PROBE_INTERVAL_MS 1000
#define READY_TIMEOUT_MS 15000 /* open waits this long for every leader, then 503s */

/* tally's producer settings; an operator's kafka.* keys still win.
 *
 * - enable.idempotence=true (implies acks=all, retries until
 *   message.timeout.ms): a retried batch is written once, and a 202 means
 *   the vote is on every in-sync replica.
 * - max.in.flight.requests.per.connection=1: librdkafka 2.0.2 reports a
 *   failed batch delivered when a later batch of the same partition succeeds
 *   ("implicitly acked by subsequent batch success"), inferring the failed
 *   one was written. A broker takes any sequence from a producer id it has no
 *   state for (its first write to each partition after every start), so a
 *   first batch answered NOT_LEADER_FOR_PARTITION (a fresh topic, a leader
 *   election) followed by a pipelined batch that succeeds loses its votes.
 *   With one request in flight per broker connection there is never a later
 *   batch to succeed past a failed one. delivery_verdict is the second line
 *   for an operator who raises it: such deliveries carry no offset.
 * - linger.ms=2: batches form under load at a small latency cost.
 * - message.timeout.ms=10000: a vote no broker takes within 10 s is
 *   answered 503, not left hanging for librdkafka's default five minutes.
 * - allow.auto.create.topics=false (also for the metadata handle): a missing
 *   topic is created by tally (topic_partitions) with kafka.partitions, not
 *   by the broker's defaults as a side effect of asking for its metadata.
 * - enable.gapless.guarantee stays false: it does not touch the implicit
 *   ack (that path is a success, not an error), and it turns any permanent
 *   produce error into a fatal one, after which every vote would be 503
 *   until a restart; a gap between independent votes harms nothing, since
 *   each failed vote is answered 503 on its own. */
/* clang-format off */
static const char *const producer_defaults[] = {
    "enable.idempotence", "true",
    "acks", "all",
    "max.in.flight.requests.per.connection", "1",
    "linger.ms", "2",
    "message.timeout.ms", "10000",
    "allow.auto.create.topics", "false",
    NULL};
/* clang-format on */

typedef struct {
    vlog_t base;
    const tally_config_t *conf;
    char *topic;
    rd_kafka_t *rk; /* producer (writing) or a plain consumer handle (metadata) */
    rd_kafka_topic_t *rkt;
    int writing;
    size_t max_pending;
    _Atomic size_t inflight;
    _Atomic int down; /* the cluster looked unreachable: refuse appends */
    _Atomic int stopping;
    pthread_t poller;
    int poller_started;
    /* Deliveries without an offset of their own; delivery reports run on the
     * poller and, during vlog_flush(), on the flushing thread too. */
    _Atomic uint64_t unowned, unowned_logged_ms;
} klog_t;

typedef struct {
    vlog_reader_t base;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int n;
    int *parts;
    uint8_t *done; /* [npartitions]: the callback declined a record */
    rd_kafka_message_t **msgs;
    int cap;
} kreader_t;

/* Applies tally's defaults, then the operator's kafka.* keys (which win).
 * Returns NULL with errno EINVAL and librdkafka's message on a bad key.
 * Also the catalog topic's (catalog_kafka.c): vlog_kafka_conf. */
static rd_kafka_conf_t *make_conf(const tally_config_t *c, const char *const *defaults,
                                  char *errstr, size_t esz);
rd_kafka_conf_t *vlog_kafka_conf(const tally_config_t *c, const char *const *defaults, char *errstr,
                                 size_t esz) {
    return make_conf(c, defaults, errstr, esz);
}

static rd_kafka_conf_t *make_conf(const tally_config_t *c, const char *const *defaults,
                                  char *errstr, size_t esz) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    if (rd_kafka_conf_set(conf, "bootstrap.servers", c->kafka_brokers, err, sizeof err) !=
        RD_KAFKA_CONF_OK)
        goto bad;
    for (const char *const *d = defaults; d && d[0]; d += 2)
        if (rd_kafka_conf_set(conf, d[0], d[1], err, sizeof err) != RD_KAFKA_CONF_OK)
            goto bad;
    for (int i = 0; i < c->nkafka_props; i++)
        if (rd_kafka_conf_set(conf, c->kafka_props[i].key, c->kafka_props[i].value, err,
                              sizeof err) != RD_KAFKA_CONF_OK) {
            snprintf(errstr, esz, "kafka.%s: %s", c->kafka_props[i].key, err);
            rd_kafka_conf_destroy(conf);
            errno = EINVAL;
            return NULL;
        }
    return conf;
bad:
    snprintf(errstr, esz, "kafka: %s", err);
    rd_kafka_conf_destroy(conf);
    errno = EINVAL;
    return NULL;
}

/* Producer settings an operator may override, and what a 202 stops meaning
 * then. Overrides are the operator's call (kafka.* keys are librdkafka's),
 * but never a silent one. */
static const struct {
    const char *key, *tally, *alt, *risk;
} producer_pinned[] = {
    {"enable.idempotence", "true", NULL, "a retried batch may be written twice"},
    {"acks", "all", "-1", "a 202 no longer means every in-sync replica has the vote"},
    {"request.required.acks", "all", "-1",
     "a 202 no longer means every in-sync replica has the vote"},
    {"max.in.flight.requests.per.connection", "1", NULL,
     "a batch failing ahead of a pipelined one is answered 503 instead of retried"},
    {"max.in.flight", "1", NULL,
     "a batch failing ahead of a pipelined one is answered 503 instead of retried"},
};

static void warn_overrides(const tally_config_t *c) {
    for (int i = 0; i < c->nkafka_props; i++)
        for (size_t k = 0; k < sizeof producer_pinned / sizeof producer_pinned[0]; k++) {
            const char *v = c->kafka_props[i].value;
            if (strcmp(c->kafka_props[i].key, producer_pinned[k].key) ||
                !strcasecmp(v, producer_pinned[k].tally) ||
                (producer_pinned[k].alt && !strcmp(v, producer_pinned[k].alt)))
                continue;
            log_warn("kafka.%s=%s overrides tally's %s: %s", producer_pinned[k].key, v,
                     producer_pinned[k].tally, producer_pinned[k].risk);
        }
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    klog_t *l = opaque;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        if (!atomic_exchange(&l->down, 1))
            log_warn("kafka: all brokers are down: answering 503 until they are back (%s)", reason);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof why);
        log_error("kafka: fatal error: %s", why);
        atomic_store(&l->down, 1);
        return;
    }
    log_warn("kafka: %s", reason);
}

/* OK only for a record the broker acknowledged itself: no error, status
 * PERSISTED, and the offset the broker gave its batch. A message librdkafka
 * "implicitly acked by subsequent batch success" also reports no error and
 * PERSISTED, but its own batch never succeeded, so it has no offset: it may
 * not be in the topic, and is answered 503. So is a timeout (possibly
 * persisted) or any other failure. */
static vlog_err_t delivery_verdict(klog_t *l, const rd_kafka_message_t *m) {
    if (m->err)
        return VLOG_UNAVAIL;
    if (m->offset >= 0 && rd_kafka_message_status(m) == RD_KAFKA_MSG_STATUS_PERSISTED)
        return VLOG_OK;
    /* A whole batch comes at once: one line a second, with the count. */
    uint64_t n = atomic_fetch_add(&l->unowned, 1) + 1;
    uint64_t now = mono_ms(), last = atomic_load(&l->unowned_logged_ms);
    if (now - last >= 1000 && atomic_compare_exchange_strong(&l->unowned_logged_ms, &last, now))
        log_warn("kafka %s[%d]: %llu votes so far reported delivered without an offset of their "
                 "own (implicitly acked by a later batch): answered 503",
                 rd_kafka_topic_name(m->rkt), (int)m->partition, (unsigned long long)n);
    return VLOG_UNAVAIL;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    klog_t *l = opaque;
    vlog_err_t err = delivery_verdict(l, m);
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT || m->err == RD_KAFKA_RESP_ERR__TRANSPORT)
            atomic_store(&l->down, 1);
    } else if (err == VLOG_OK && atomic_load(&l->down)) {
        atomic_store(&l->down, 0);
        log_info("kafka: deliveries succeed again");
    }
    atomic_fetch_sub(&l->inflight, 1);
    l->base.ack(m->_private, err);
}

/* Whether the topic can take votes now: it has the partitions this log was
 * opened with and every partition's leader serves it. Metadata alone is not
 * enough: a broker lists a new partition's leader a moment before that
 * leader serves it (NOT_LEADER_FOR_PARTITION), so every leader is also asked
 * for its partition's end offset (ListOffsets, which only a serving leader
 * answers). Writes nothing. On 0, why says what is missing.
 * @locality any thread */
static int topic_ready(klog_t *l, int timeout_ms, char *why, size_t wsz) {
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *tl = NULL;
    int n = l->base.npartitions, ready = 0;
    rd_kafka_resp_err_t e = rd_kafka_metadata(l->rk, 0, l->rkt, &md, timeout_ms);
    if (e) {
        snprintf(why, wsz, "metadata: %s", rd_kafka_err2str(e));
        goto out;
    }
    e = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    if (e) {
        snprintf(why, wsz, "%s", rd_kafka_err2str(e));
        goto out;
    }
    if (md->topics[0].partition_cnt != n) {
        snprintf(why, wsz, "it has %d partitions, opened with %d", md->topics[0].partition_cnt, n);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (md->topics[0].partitions[i].leader < 0) {
            snprintf(why, wsz, "partition %d has no leader", md->topics[0].partitions[i].id);
            goto out;
        }
    tl = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(tl, l->topic, p)->offset = RD_KAFKA_OFFSET_END;
    e = rd_kafka_offsets_for_times(l->rk, tl, timeout_ms);
    if (e) {
        snprintf(why, wsz, "end offsets: %s", rd_kafka_err2str(e));
        goto out;
    }
    for (int i = 0; i < tl->cnt; i++)
        if (tl->elems[i].err) {
            snprintf(why, wsz, "partition %d: %s", tl->elems[i].partition,
                     rd_kafka_err2str(tl->elems[i].err));
            goto out;
        }
    ready = 1;
out:
    if (tl)
        rd_kafka_topic_partition_list_destroy(tl);
    if (md)
        rd_kafka_metadata_destroy(md);
    return ready;
}

/* Before the first vote: waits for topic_ready up to READY_TIMEOUT_MS. Past
 * that the log starts refusing appends (503) and the poller takes over. */
static void wait_ready(klog_t *l) {
    char why[256] = "";
    uint64_t deadline = mono_ms() + READY_TIMEOUT_MS;
    while (!topic_ready(l, 1000, why, sizeof why)) {
        if (mono_ms() >= deadline) {
            atomic_store(&l->down, 1);
            log_warn("kafka topic %s is not ready after %d s (%s): answering 503 until it is",
                     l->topic, READY_TIMEOUT_MS / 1000, why);
            return;
        }
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
}

/* Serves delivery reports; while the log refuses appends, probes the topic. */
static void *poller_main(void *arg) {
    klog_t *l = arg;
    thread_name("kafka");
    uint64_t last_probe = 0;
    char why[256];
    while (!atomic_load(&l->stopping)) {
        rd_kafka_poll(l->rk, 100);
        if (atomic_load(&l->down) && mono_ms() - last_probe >= PROBE_INTERVAL_MS) {
            last_probe = mono_ms();
            if (topic_ready(l, 1000, why, sizeof why) && atomic_exchange(&l->down, 0))
                log_info("kafka: every partition's leader answers: accepting votes");
        }
    }
    return NULL;
}

/* The topic's partition count, creating the topic when it is missing. */
static int topic_partitions(klog_t *l, char *errstr, size_t esz) {
    for (int attempt = 0; attempt < 2; attempt++) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(l->rk, 0, l->rkt, &md, META_TIMEOUT_MS);
        if (e) {
            snprintf(errstr, esz, "kafka %s: cannot read metadata: %s", l->conf->kafka_brokers,
                     rd_kafka_err2str(e));
            return -1;
        }
        int n = -1;
        rd_kafka_resp_err_t terr =
            md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
        if (!terr)
            n = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
        if (n > 0)
            return n;
        if (attempt == 1 || (terr != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
                             terr != RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC && terr != 0)) {
            snprintf(errstr, esz, "kafka topic %s: %s", l->topic, rd_kafka_err2str(terr));
            return -1;
        }
        /* Create it: partitions from kafka.partitions, the broker's default
         * replication factor. */
        char err[512];
        rd_kafka_NewTopic_t *nt =
            rd_kafka_NewTopic_new(l->topic, l->conf->kafka_partitions, -1, err, sizeof err);
        if (!nt) {
            snprintf(errstr, esz, "kafka topic %s: %s", l->topic, err);
            return -1;
        }
        rd_kafka_queue_t *q = rd_kafka_queue_new(l->rk);
        rd_kafka_CreateTopics(l->rk, &nt, 1, NULL, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, META_TIMEOUT_MS + 5000);
        rd_kafka_resp_err_t cerr = RD_KAFKA_RESP_ERR__TIMED_OUT;
        const char *cwhy = "no answer";
        if (ev) {
            const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
            size_t cnt = 0;
            const rd_kafka_topic_result_t **tr =
                res ? rd_kafka_CreateTopics_result_topics(res, &cnt) : NULL;
            cerr = rd_kafka_event_error(ev);
            cwhy = rd_kafka_event_error_string(ev);
            if (!cerr && cnt == 1) {
                cerr = rd_kafka_topic_result_error(tr[0]);
                cwhy = rd_kafka_topic_result_error_string(tr[0]);
            }
        }
        if (cerr && cerr != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            snprintf(errstr, esz, "kafka: cannot create topic %s: %s", l->topic,
                     cwhy ? cwhy : rd_kafka_err2str(cerr));
            if (ev)
                rd_kafka_event_destroy(ev);
            rd_kafka_queue_destroy(q);
            rd_kafka_NewTopic_destroy(nt);
            return -1;
        }
        if (ev)
            rd_kafka_event_destroy(ev);
        rd_kafka_queue_destroy(q);
        rd_kafka_NewTopic_destroy(nt);
        if (!cerr)
            log_info("kafka: created topic %s with %d partitions", l->topic,
                     l->conf->kafka_partitions);
        /* Metadata takes a moment to show a new topic's leaders. */
        for (int i = 0; i < 100; i++) {
            const struct rd_kafka_metadata *m2 = NULL;
            int ready = 0;
            if (!rd_kafka_metadata(l->rk, 0, l->rkt, &m2, 1000)) {
                ready = m2->topic_cnt == 1 && !m2->topics[0].err && m2->topics[0].partition_cnt > 0;
                for (int p = 0; ready && p < m2->topics[0].partition_cnt; p++)
                    if (m2->topics[0].partitions[p].leader < 0)
                        ready = 0;
                rd_kafka_metadata_destroy(m2);
            }
            if (ready)
                break;
            struct timespec ts = {0, 100 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    return -1;
}

static vlog_err_t klog_append(vlog_t *base, int partition, const uint8_t *rec, size_t len,
                              const vlog_meta_t *meta, void *opaque) {
    klog_t *l = (klog_t *)base;
    if (!l->writing)
        return VLOG_ERR;
    if (atomic_load(&l->down) || atomic_load(&l->stopping))
        return VLOG_UNAVAIL;
    if (atomic_fetch_add(&l->inflight, 1) >= l->max_pending) {
        atomic_fetch_sub(&l->inflight, 1);
        return VLOG_FULL;
    }
    /* The caller's key ("poll/voter" keeps a voter's votes together for any
     * Kafka tool) and time; the partition itself is chosen by tally. */
    rd_kafka_resp_err_t e = rd_kafka_producev(
        l->rk, RD_KAFKA_V_RKT(l->rkt), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)rec, len),
        RD_KAFKA_V_KEY(meta ? (void *)meta->key : NULL, meta && meta->key ? meta->key_len : 0),
        RD_KAFKA_V_TIMESTAMP(meta ? (int64_t)meta->ts_ms : 0), RD_KAFKA_V_OPAQUE(opaque),
        RD_KAFKA_V_END);
    if (e) {
        atomic_fetch_sub(&l->inflight, 1);
        return e == RD_KAFKA_RESP_ERR__QUEUE_FULL ? VLOG_FULL : VLOG_UNAVAIL;
    }
    return VLOG_OK;
}

static int klog_flush(vlog_t *base, int timeout_ms) {
    klog_t *l = (klog_t *)base;
    if (!l->writing)
        return 0;
    /* rd_kafka_flush serves the delivery reports itself. */
    return rd_kafka_flush(l->rk, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

static void klog_close(vlog_t *base) {
    klog_t *l = (klog_t *)base;
    atomic_store(&l->stopping, 1);
    if (l->poller_started)
        pthread_join(l->poller, NULL);
    if (l->rk && l->writing) {
        if (rd_kafka_flush(l->rk, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
            log_error("kafka: %d messages still undelivered at close", rd_kafka_outq_len(l->rk));
        /* Anything still queued is failed back to its caller by destroy's
         * purge: no vote is left unanswered. */
        rd_kafka_purge(l->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(l->rk, 0);
    }
    if (l->rkt)
        rd_kafka_topic_destroy(l->rkt);
    if (l->rk)
        rd_kafka_destroy(l->rk);
    free(l->topic);
    free(l);
}

static int retriable(rd_kafka_resp_err_t e) {
    switch (e) {
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN: return 1;
    default: return 0;
    }
}

/* Low and high watermarks of a partition, retrying what a fresh topic or a
 * leader election answers for a moment. */
static int watermarks(klog_t *l, rd_kafka_t *rk, int p, int64_t *lo, int64_t *hi, char *errstr,
                      size_t esz) {
    uint64_t deadline = mono_ms() + META_TIMEOUT_MS * 3;
    rd_kafka_resp_err_t e;
    while ((e = rd_kafka_query_watermark_offsets(rk, l->topic, p, lo, hi, META_TIMEOUT_MS)) &&
           retriable(e) && mono_ms() < deadline) {
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (e) {
        snprintf(errstr, esz, "kafka %s[%d]: cannot read offsets: %s", l->topic, p,
                 rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

static int klog_end_positions(vlog_t *base, uint64_t *ends, char *errstr, size_t esz) {
    klog_t *l = (klog_t *)base;
    for (int p = 0; p < base->npartitions; p++) {
        int64_t lo, hi;
        if (watermarks(l, l->rk, p, &lo, &hi, errstr, esz) != 0)
            return -1;
        ends[p] = (uint64_t)hi;
    }
    return 0;
}

static uint64_t klog_begin_position(vlog_t *base, int p) {
    klog_t *l = (klog_t *)base;
    int64_t lo = 0, hi = 0;
    char err[256];
    if (watermarks(l, l->rk, p, &lo, &hi, err, sizeof err) != 0)
        return 0;
    return (uint64_t)lo;
}

static void kreader_free(vlog_reader_t *rb) {
    kreader_t *r = (kreader_t *)rb;
    if (r->q)
        rd_kafka_queue_destroy(r->q);
    if (r->rk) {
        rd_kafka_assign(r->rk, NULL);
        rd_kafka_destroy(r->rk);
    }
    free(r->parts);
    free(r->done);
    free(r->msgs);
    free(r);
}

static vlog_reader_t *klog_reader_new(vlog_t *base, const int *parts, const uint64_t *pos, int n,
                                      char *errstr, size_t esz) {
    klog_t *l = (klog_t *)base;
    rd_kafka_topic_partition_list_t *tl = NULL;
    kreader_t *r = xcalloc(1, sizeof *r);
    r->base.log = base;
    r->n = n;
    r->parts = xmalloc(sizeof(int) * (size_t)(n ? n : 1));
    r->done = xcalloc((size_t)base->npartitions, 1);
    r->cap = 4096;
    r->msgs = xmalloc(sizeof *r->msgs * (size_t)r->cap);
    static const char *const defaults[] = {"group.id",
                                           "tally-engine",
                                           "enable.auto.commit",
                                           "false",
                                           "enable.auto.offset.store",
                                           "false",
                                           "auto.offset.reset",
                                           "error",
                                           "enable.partition.eof",
                                           "false",
                                           NULL};
    char err[512];
    rd_kafka_conf_t *conf = make_conf(l->conf, defaults, errstr, esz);
    if (!conf)
        goto fail;
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!r->rk) {
        snprintf(errstr, esz, "kafka consumer: %s", err);
        goto fail;
    }
    tl = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++) {
        r->parts[i] = parts[i];
        int64_t lo, hi;
        if (watermarks(l, r->rk, parts[i], &lo, &hi, errstr, esz) != 0)
            goto fail;
        if ((int64_t)pos[i] < lo) {
            snprintf(errstr, esz,
                     "kafka %s[%d]: the engine needs offset %llu but the log now starts at %lld: "
                     "votes were deleted by retention; counting would not be exact",
                     l->topic, parts[i], (unsigned long long)pos[i], (long long)lo);
            goto fail;
        }
        if ((int64_t)pos[i] > hi) {
            snprintf(errstr, esz,
                     "kafka %s[%d]: the snapshot is at offset %llu, past the log's end %lld "
                     "(was the topic recreated?)",
                     l->topic, parts[i], (unsigned long long)pos[i], (long long)hi);
            goto fail;
        }
        rd_kafka_topic_partition_list_add(tl, l->topic, parts[i])->offset = (int64_t)pos[i];
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rk, tl);
    if (e) {
        snprintf(errstr, esz, "kafka assign: %s", rd_kafka_err2str(e));
        goto fail;
    }
    rd_kafka_topic_partition_list_destroy(tl);
    r->q = rd_kafka_queue_get_consumer(r->rk);
    return &r->base;
fail:
    if (tl)
        rd_kafka_topic_partition_list_destroy(tl);
    kreader_free(&r->base);
    return NULL;
}

static int klog_reader_poll(vlog_reader_t *rb, vlog_msg_cb *cb, void *arg, int max, int timeout_ms,
                            char *errstr, size_t esz) {
    kreader_t *r = (kreader_t *)rb;
    if (max > r->cap)
        max = r->cap;
    ssize_t got = rd_kafka_consume_batch_queue(r->q, timeout_ms, r->msgs, (size_t)max);
    if (got < 0) {
        snprintf(errstr, esz, "kafka consume: %s", rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    int delivered = 0, rc = 0;
    for (ssize_t i = 0; i < got; i++) {
        rd_kafka_message_t *m = r->msgs[i];
        if (rc == 0 && m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                /* nothing */
            } else if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
                       m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE ||
                       m->err == RD_KAFKA_RESP_ERR__FATAL) {
                snprintf(errstr, esz, "kafka %s[%d]: %s", rd_kafka_topic_name(m->rkt), m->partition,
                         rd_kafka_message_errstr(m));
                rc = -1;
            } else {
                log_warn("kafka consumer: %s", rd_kafka_message_errstr(m));
            }
        } else if (rc == 0 && m->partition >= 0 && m->partition < rb->log->npartitions &&
                   !r->done[m->partition]) {
            rd_kafka_timestamp_type_t tst;
            int64_t ts = rd_kafka_message_timestamp(m, &tst);
            vlog_msg_t vm = {m->partition, (uint64_t)m->offset + 1,
                             tst == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? -1 : ts, m->payload, m->len};
            if (cb(arg, &vm) != 0) {
                r->done[m->partition] = 1;
                rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(tl, rd_kafka_topic_name(m->rkt), m->partition);
                rd_kafka_pause_partitions(r->rk, tl);
                rd_kafka_topic_partition_list_destroy(tl);
            } else {
                delivered++;
            }
        }
        rd_kafka_message_destroy(m);
    }
    return rc < 0 ? -1 : delivered;
}

/* While the cluster looks unreachable or a partition has no serving leader,
 * every append is refused: /healthz says so. */
static tally_err_t klog_health(vlog_t *base, char *errstr, size_t esz) {
    klog_t *l = (klog_t *)base;
    if (!atomic_load(&l->down))
        return TALLY_OK;
    snprintf(errstr, esz,
             "kafka topic %s: the cluster is unreachable or a partition has no "
             "serving leader; votes get 503 until it answers",
             l->topic);
    return TALLY_ERR_UNAVAIL;
}

static const vlog_ops_t klog_ops = {
    .name = "kafka",
    .health = klog_health,
    .append = klog_append,
    .flush = klog_flush,
    .close = klog_close,
    .end_positions = klog_end_positions,
    .begin_position = klog_begin_position,
    .reader_new = klog_reader_new,
    .reader_poll = klog_reader_poll,
    .reader_free = kreader_free,
};

vlog_t *vlog_kafka_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, tally_err_t *errc,
                        char *errstr, size_t esz) {
    klog_t *l = xcalloc(1, sizeof *l);
    l->base.ops = &klog_ops;
    l->base.ack = ack;
    l->conf = c;
    l->topic = xstrdup(c->kafka_topic);
    l->writing = (flags & VLOG_F_WRITE) != 0;
    l->max_pending = (size_t)c->max_pending;
    static const char *const meta_defaults[] = {"group.id", "tally-meta",
                                                "allow.auto.create.topics", "false", NULL};
    int e0 = 0;
    char err[512];
    rd_kafka_conf_t *conf =
        make_conf(c, l->writing ? producer_defaults : meta_defaults, errstr, esz);
    if (!conf) {
        e0 = EINVAL;
        goto fail;
    }
    rd_kafka_conf_set_opaque(conf, l);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (l->writing)
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    l->rk = rd_kafka_new(l->writing ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!l->rk) {
        snprintf(errstr, esz, "kafka: %s", err);
        e0 = EINVAL;
        goto fail;
    }
    l->rkt = rd_kafka_topic_new(l->rk, l->topic, NULL);
    int n = topic_partitions(l, errstr, esz);
    if (n <= 0)
        goto fail;
    l->base.npartitions = n;
    l->base.caps = VLOG_CAP_KEYS;
    if (l->writing) {
        warn_overrides(c);
        wait_ready(l);
        if (pthread_create(&l->poller, NULL, poller_main, l) != 0) {
            snprintf(errstr, esz, "kafka: cannot start the delivery thread");
            goto fail;
        }
        l->poller_started = 1;
    }
    return &l->base;
fail:
    klog_close(&l->base);
    *errc = e0 == EINVAL ? TALLY_ERR_CONFIG : TALLY_ERR_UNAVAIL;
    return NULL;
}
