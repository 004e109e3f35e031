/* The catalog topic on Kafka: writer (tally engine) and reader (tally
 * ingest). See catalog_kafka.h for the contract. */
#include "log/catalog_kafka.h"

#include <errno.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "log/vlog_int.h"

#define KCAT_TOPIC_MAX 256
#define KCAT_TIMEOUT_MS 10000
#define KCAT_WRITE_POLL_MS 20 /* how soon a change reaches the topic */

/* ---- the topic ---- */

/* Creates topic (1 partition, compacted) unless it exists. 0 or -1. */
static int topic_ensure(rd_kafka_t *rk, const char *topic, char *errstr, size_t esz) {
    char err[512];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, 1, -1, err, sizeof err);
    if (!nt) {
        snprintf(errstr, esz, "kafka catalog topic %s: %s", topic, err);
        return -1;
    }
    /* Compaction keeps each poll's latest entry, so the topic stays as small
     * as the catalog however long the history. */
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, KCAT_TIMEOUT_MS + 5000);
    int rc = -1;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
    const char *why = "no answer";
    if (ev) {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t cnt = 0;
        const rd_kafka_topic_result_t **tr =
            res ? rd_kafka_CreateTopics_result_topics(res, &cnt) : NULL;
        e = rd_kafka_event_error(ev);
        why = rd_kafka_event_error_string(ev);
        if (!e && cnt == 1) {
            e = rd_kafka_topic_result_error(tr[0]);
            why = rd_kafka_topic_result_error_string(tr[0]);
        }
    }
    if (!e || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        if (!e)
            log_info("kafka: created catalog topic %s (1 partition, compacted)", topic);
        rc = 0;
    } else {
        snprintf(errstr, esz, "kafka: cannot create catalog topic %s: %s", topic,
                 why ? why : rd_kafka_err2str(e));
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    return rc;
}

static uint64_t entry_seq(const catalog_entry_t *en) {
    return en->final && en->final_seq > en->def_seq ? en->final_seq : en->def_seq;
}

/* The value of an entry (malloc'd). */
static char *entry_value(const catalog_entry_t *en) {
    char *def = poll_def_to_json(en->def);
    json_t *d = json_loads(def, 0, NULL);
    free(def);
    tally_assert(d);
    json_t *v = json_pack("{sIsbsIso}", "seq", (json_int_t)entry_seq(en), "final", en->final,
                          "final_at", (json_int_t)en->final_at, "def", d);
    char *s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    return s;
}

/* ---- the writer ---- */

struct kcat_writer_s {
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    catalog_live_t *live;
    pthread_t thread;
    _Atomic int stopping;
    pthread_mutex_t mu; /* guards published */
    pthread_cond_t cv;
    uint64_t published;                /* the topic holds every entry up to this catalog seq */
    int have_published;                /* at least one complete write */
    uint64_t rewrite_asked, rewritten; /* every entry again (kcat_writer_learn) */
    _Atomic int delivery_failed;
};

/* Produces every entry of cat whose seq is above `above` (all with
 * above < 0) and waits for the acks. 0 or -1. */
static int write_entries(kcat_writer_t *w, const catalog_t *cat, int64_t above) {
    int n = 0;
    for (int i = 0; i < catalog_npolls(cat); i++) {
        const catalog_entry_t *en = catalog_at(cat, i);
        if (above >= 0 && entry_seq(en) <= (uint64_t)above)
            continue;
        char *v = entry_value(en);
        rd_kafka_resp_err_t e = rd_kafka_producev(
            w->rk, RD_KAFKA_V_RKT(w->rkt), RD_KAFKA_V_PARTITION(0),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE(v, strlen(v)),
            RD_KAFKA_V_KEY(en->def->id, strlen(en->def->id)), RD_KAFKA_V_END);
        free(v);
        if (e) {
            log_warn("kafka catalog topic: cannot produce %s: %s", en->def->id,
                     rd_kafka_err2str(e));
            return -1;
        }
        n++;
    }
    if (n && rd_kafka_flush(w->rk, KCAT_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    return 0;
}

/* The ack of one entry produced by kcat_writer_learn, shared with the
 * delivery callback: whichever of the two comes second frees it. */
typedef struct {
    _Atomic int state; /* LEARN_PENDING, then _ACKED or _ABANDONED */
    rd_kafka_resp_err_t err;
    uint64_t acked_mono;
} learn_ack_t;
enum { LEARN_PENDING, LEARN_ACKED, LEARN_ABANDONED };

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    kcat_writer_t *w = opaque;
    learn_ack_t *la = m->_private;
    if (la) {
        la->err = m->err;
        la->acked_mono = mono_ms();
        int expect = LEARN_PENDING;
        if (!atomic_compare_exchange_strong(&la->state, &expect, LEARN_ACKED))
            free(la); /* its waiter gave up */
        return;
    }
    if (m->err) {
        atomic_store(&w->delivery_failed, 1);
        log_warn("kafka catalog topic: delivery failed: %s", rd_kafka_err2str(m->err));
    }
}

static void *writer_main(void *arg) {
    kcat_writer_t *w = arg;
    thread_name("catalog-w");
    while (!atomic_load(&w->stopping)) {
        /* The rewrite asked for before the catalog is read: one asked after
         * (an entry put back) is for a later catalog. */
        pthread_mutex_lock(&w->mu);
        uint64_t rewrite = w->rewrite_asked;
        pthread_mutex_unlock(&w->mu);
        const catalog_t *cat = catalog_live_get(w->live);
        uint64_t seq = catalog_seq(cat);
        pthread_mutex_lock(&w->mu);
        int need = !w->have_published || seq > w->published || rewrite != w->rewritten;
        int64_t above = w->have_published && rewrite == w->rewritten ? (int64_t)w->published : -1;
        pthread_mutex_unlock(&w->mu);
        if (need) {
            atomic_store(&w->delivery_failed, 0);
            if (write_entries(w, cat, above) == 0 && !atomic_load(&w->delivery_failed)) {
                pthread_mutex_lock(&w->mu);
                w->published = seq;
                w->have_published = 1;
                w->rewritten = rewrite;
                pthread_cond_broadcast(&w->cv);
                pthread_mutex_unlock(&w->mu);
                continue;
            }
            /* Retried from the same point: a reader keeps the higher seq. */
            struct timespec back = {0, 200 * 1000000};
            nanosleep(&back, NULL);
        }
        rd_kafka_poll(w->rk, KCAT_WRITE_POLL_MS);
    }
    return NULL;
}

kcat_writer_t *kcat_writer_new(const tally_config_t *c, catalog_live_t *live, char *errstr,
                               size_t esz) {
    static const char *const defaults[] = {
        "enable.idempotence",       "true",  "acks", "all", "linger.ms", "0",
        "allow.auto.create.topics", "false", NULL};
    char topic[KCAT_TOPIC_MAX], err[512];
    config_catalog_topic(c, topic, sizeof topic);
    kcat_writer_t *w = xcalloc(1, sizeof *w);
    w->live = live;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    rd_kafka_conf_t *conf = vlog_kafka_conf(c, defaults, errstr, esz);
    if (!conf)
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, w);
    w->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!w->rk) {
        snprintf(errstr, esz, "kafka catalog producer: %s", err);
        goto fail;
    }
    if (topic_ensure(w->rk, topic, errstr, esz) != 0)
        goto fail;
    w->rkt = rd_kafka_topic_new(w->rk, topic, NULL);
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        snprintf(errstr, esz, "kafka catalog: cannot start the writer thread");
        goto fail;
    }
    /* Started means written: an ingest started after the engine finds
     * every poll the engine knows. */
    kcat_writer_wait(w, catalog_seq(catalog_live_get(live)));
    return w;
fail:
    if (w->rkt)
        rd_kafka_topic_destroy(w->rkt);
    if (w->rk)
        rd_kafka_destroy(w->rk);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return NULL;
}

/* 1 once the topic holds catalog seq, 0 after KCAT_TIMEOUT_MS. */
static int writer_wait(kcat_writer_t *w, uint64_t seq) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += KCAT_TIMEOUT_MS / 1000;
    int ok = 1;
    pthread_mutex_lock(&w->mu);
    while (!(w->have_published && w->published >= seq && w->rewritten == w->rewrite_asked))
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT) {
            log_warn("kafka catalog topic: seq %llu not written within %d s",
                     (unsigned long long)seq, KCAT_TIMEOUT_MS / 1000);
            ok = 0;
            break;
        }
    pthread_mutex_unlock(&w->mu);
    return ok;
}

void kcat_writer_wait(void *arg, uint64_t seq) {
    writer_wait(arg, seq);
}

int kcat_writer_learn(void *arg, const catalog_entry_t *en, uint64_t *learned_mono) {
    kcat_writer_t *w = arg;
    /* After everything the writer thread has to write: a reader keeps an
     * entry of equal seq, so the older one must not come after this. */
    if (!learned_mono) {
        /* Putting an entry back: the writer thread rewrites every entry
         * (retried until the topic has them all), so that a reader that
         * got the pending entry late gets the current one after it. */
        pthread_mutex_lock(&w->mu);
        w->rewrite_asked++;
        pthread_mutex_unlock(&w->mu);
        return 0;
    }
    if (!writer_wait(w, catalog_seq(catalog_live_get(w->live))))
        return -1;
    learn_ack_t *la = xcalloc(1, sizeof *la);
    char *v = entry_value(en);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        w->rk, RD_KAFKA_V_RKT(w->rkt), RD_KAFKA_V_PARTITION(0),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE(v, strlen(v)),
        RD_KAFKA_V_KEY(en->def->id, strlen(en->def->id)), RD_KAFKA_V_OPAQUE(la), RD_KAFKA_V_END);
    free(v);
    if (e) {
        log_warn("kafka catalog topic: cannot produce %s: %s", en->def->id, rd_kafka_err2str(e));
        free(la);
        return -1;
    }
    uint64_t deadline = mono_ms() + KCAT_TIMEOUT_MS;
    while (atomic_load(&la->state) == LEARN_PENDING && mono_ms() < deadline)
        rd_kafka_poll(w->rk, 5); /* the ack may be served here or by the writer thread */
    int expect = LEARN_PENDING;
    if (atomic_compare_exchange_strong(&la->state, &expect, LEARN_ABANDONED)) {
        log_warn("kafka catalog topic: %s not acknowledged within %d s", en->def->id,
                 KCAT_TIMEOUT_MS / 1000);
        return -1; /* the callback frees la */
    }
    int rc = -1;
    if (la->err)
        log_warn("kafka catalog topic: %s: delivery failed: %s", en->def->id,
                 rd_kafka_err2str(la->err));
    else {
        /* A reader confirmed fresh has consumed everything acknowledged
         * before its last watermark query, which is at most KCAT_FRESH_MS
         * old whenever it judges a vote. */
        *learned_mono = la->acked_mono + KCAT_FRESH_MS;
        rc = 0;
    }
    free(la);
    return rc;
}

void kcat_writer_free(kcat_writer_t *w) {
    if (!w)
        return;
    atomic_store(&w->stopping, 1);
    pthread_join(w->thread, NULL);
    rd_kafka_flush(w->rk, KCAT_TIMEOUT_MS);
    rd_kafka_topic_destroy(w->rkt);
    rd_kafka_destroy(w->rk);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* ---- the reader ---- */

struct kcat_reader_s {
    rd_kafka_t *rk;
    /* Watermark queries on a handle of their own: on the consumer's
     * connection a query waits behind the pending fetch (fetch.wait.max.ms),
     * half a second that would eat the learn bound. */
    rd_kafka_t *qk;
    char topic[KCAT_TOPIC_MAX];
    catalog_live_t *live;
    pthread_t thread;
    _Atomic int stopping;
    _Atomic int ready;          /* consumed up to a watermark once */
    _Atomic uint64_t confirmed; /* mono ms of the last query caught up with */
    int64_t position;           /* next offset to consume (reader thread) */
};

/* Applies one record: kept when its poll is new or its seq not lower (an
 * entry of equal seq is a cut learned before its DEFINE is logged, or the
 * entry put back after such a cut failed: kcat_writer_learn). */
static void apply(kcat_reader_t *r, const rd_kafka_message_t *m) {
    json_error_t je;
    json_t *v = json_loadb(m->payload, m->len, 0, &je);
    json_t *seqj = json_object_get(v, "seq"), *def = json_object_get(v, "def");
    if (!v || !json_is_integer(seqj) || !json_is_object(def)) {
        log_warn("kafka catalog topic %s@%lld: not a catalog entry: skipped", r->topic,
                 (long long)m->offset);
        json_decref(v);
        return;
    }
    uint64_t seq = (uint64_t)json_integer_value(seqj);
    char *text = json_dumps(def, JSON_COMPACT);
    poll_def_defaults_t dd = {
        .idempotency_window_s = 600, .now_ms = now_ms(), .source = POLL_SRC_ADMIN};
    poll_def_t *d = NULL;
    catalog_error_t err;
    if (poll_def_from_json(text, strlen(text), &dd, &d, &err) != TALLY_OK) {
        log_warn("kafka catalog topic %s@%lld: %s: skipped", r->topic, (long long)m->offset,
                 err.message);
        free(text);
        json_decref(v);
        return;
    }
    free(text);
    const catalog_t *cur = catalog_live_get(r->live);
    const catalog_entry_t *old = catalog_find(cur, d->id, strlen(d->id));
    if (old && entry_seq(old) > seq) {
        poll_def_free(d);
        json_decref(v);
        return;
    }
    catalog_entry_t *en = catalog_entry_new(d, seq);
    if (json_is_true(json_object_get(v, "final"))) {
        json_t *fa = json_object_get(v, "final_at");
        catalog_entry_t *fin = catalog_entry_finalized(
            en, seq, json_is_integer(fa) ? (uint64_t)json_integer_value(fa) : 0);
        catalog_entry_unref(en);
        en = fin;
    }
    uint64_t top = catalog_seq(cur) > seq ? catalog_seq(cur) : seq;
    catalog_live_swap(r->live, catalog_with(cur, en, top));
    catalog_entry_unref(en);
    json_decref(v);
}

static void *reader_main(void *arg) {
    kcat_reader_t *r = arg;
    thread_name("catalog-r");
    uint64_t next_check = 0, pending_t0 = 0, warned_ms = 0;
    int64_t pending_hi = -1;
    while (!atomic_load(&r->stopping)) {
        uint64_t now = mono_ms();
        if (now >= next_check) {
            next_check = now + KCAT_CHECK_MS;
            int64_t lo, hi;
            /* The query's start is what a catch-up confirms: anything
             * acknowledged before it is below hi. */
            rd_kafka_resp_err_t e =
                rd_kafka_query_watermark_offsets(r->qk, r->topic, 0, &lo, &hi, KCAT_FRESH_MS);
            uint64_t took = mono_ms() - now;
            if (took > KCAT_FRESH_MS / 2 && now - warned_ms >= 10000) {
                log_warn("kafka catalog topic %s: the watermark query took %llu ms (%s): votes "
                         "may get 503 catalog_stale",
                         r->topic, (unsigned long long)took, rd_kafka_err2str(e));
                warned_ms = now;
            }
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
                pending_hi = hi;
                pending_t0 = now;
            }
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, 20);
        if (m) {
            if (!m->err) {
                apply(r, m);
                r->position = m->offset + 1;
            } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                log_warn("kafka catalog topic %s: %s", r->topic, rd_kafka_message_errstr(m));
            }
            rd_kafka_message_destroy(m);
        }
        if (pending_hi >= 0 && r->position >= pending_hi) {
            atomic_store(&r->confirmed, pending_t0);
            if (!atomic_exchange(&r->ready, 1))
                log_info("kafka catalog topic %s: %d polls loaded (seq %llu): taking votes",
                         r->topic, catalog_npolls(catalog_live_get(r->live)),
                         (unsigned long long)catalog_seq(catalog_live_get(r->live)));
            pending_hi = -1;
        }
    }
    return NULL;
}

kcat_reader_t *kcat_reader_new(const tally_config_t *c, char *errstr, size_t esz) {
    /* clang-format off */
    static const char *const defaults[] = {
        "group.id", "tally-ingest-catalog",
        "enable.auto.commit", "false",
        "enable.auto.offset.store", "false",
        "enable.partition.eof", "false",
        "allow.auto.create.topics", "false",
        "fetch.wait.max.ms", "100", /* a change arrives within this */
        NULL};
    /* clang-format on */
    char err[512];
    kcat_reader_t *r = xcalloc(1, sizeof *r);
    config_catalog_topic(c, r->topic, sizeof r->topic);
    r->live = catalog_live_new(catalog_new_empty());
    rd_kafka_topic_partition_list_t *tl = NULL;
    rd_kafka_conf_t *conf = vlog_kafka_conf(c, defaults, errstr, esz);
    if (!conf)
        goto fail;
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!r->rk) {
        snprintf(errstr, esz, "kafka catalog consumer: %s", err);
        goto fail;
    }
    if (topic_ensure(r->rk, r->topic, errstr, esz) != 0)
        goto fail;
    if (!(conf = vlog_kafka_conf(c, defaults, errstr, esz)))
        goto fail;
    r->qk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!r->qk) {
        snprintf(errstr, esz, "kafka catalog consumer: %s", err);
        goto fail;
    }
    rd_kafka_poll_set_consumer(r->rk);
    tl = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tl, r->topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rk, tl);
    rd_kafka_topic_partition_list_destroy(tl);
    if (e) {
        snprintf(errstr, esz, "kafka catalog topic %s: assign: %s", r->topic, rd_kafka_err2str(e));
        goto fail;
    }
    if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
        snprintf(errstr, esz, "kafka catalog: cannot start the reader thread");
        goto fail;
    }
    return r;
fail:
    if (r->qk)
        rd_kafka_destroy(r->qk);
    if (r->rk)
        rd_kafka_destroy(r->rk);
    catalog_live_free(r->live);
    free(r);
    return NULL;
}

const catalog_t *kcat_reader_get(void *arg, const char **code, const char **why) {
    kcat_reader_t *r = arg;
    if (!atomic_load(&r->ready)) {
        *code = "starting";
        *why = "the poll catalog is still being read from Kafka; retry shortly";
        return NULL;
    }
    if (mono_ms() - atomic_load(&r->confirmed) > KCAT_FRESH_MS) {
        *code = "catalog_stale";
        *why = "the poll catalog could not be confirmed up to date within 1 s (Kafka slow or "
               "unreachable); retry shortly";
        return NULL;
    }
    return catalog_live_get(r->live);
}

int kcat_reader_wait_ready(kcat_reader_t *r, int timeout_ms) {
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    while (!atomic_load(&r->ready) && mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000000};
        nanosleep(&ts, NULL);
    }
    return atomic_load(&r->ready);
}

uint64_t kcat_reader_seq(kcat_reader_t *r) {
    return catalog_seq(catalog_live_get(r->live));
}

void kcat_reader_free(kcat_reader_t *r) {
    if (!r)
        return;
    atomic_store(&r->stopping, 1);
    pthread_join(r->thread, NULL);
    rd_kafka_assign(r->rk, NULL);
    rd_kafka_consumer_close(r->rk);
    rd_kafka_destroy(r->rk);
    rd_kafka_destroy(r->qk);
    catalog_live_free(r->live);
    free(r);
}
