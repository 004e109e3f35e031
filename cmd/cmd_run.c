/* tally run | ingest | engine: the pipeline, whole or by role.
 *   run:    ingest (HTTP) -> vote log -> engine workers -> publisher
 *   ingest: ingest (HTTP) -> Kafka                       (scale out: many)
 *   engine: Kafka -> engine workers -> publisher         (one)            */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"
#include "cmd/lifecycle.h"
#include "cmd/watch.h"
#include "common/catalog.h"
#include "common/json.h"
#include "common/util.h"
#include "common/catalog.h"
#include "engine/engine.h"
#include "ingest/admin.h"
#include "ingest/ingest.h"
#include "log/catalog_kafka.h"
#include "log/vlog.h"
#include "publisher/publisher.h"
#include "publisher/s3.h"

enum { ROLE_INGEST = 1, ROLE_ENGINE = 2 };

static const char *help_run =
    "usage: tally run -c FILE [-s section.key=value ...]\n"
    "\n"
    "Runs the HTTP API, the vote log, the counter engine and the publisher in one\n"
    "process. Votes are answered 202 once durable in the log (the embedded file\n"
    "log, or Kafka when kafka.brokers is set); totals are published to\n"
    "publisher.dir and served read-only on the same port.\n"
    "\n"
    "  POST /v1/polls/{poll}/votes   {\"option\":\"ID\",\"voter\":\"ID\"}\n"
    "  GET  /healthz               200, or 503 with the reason while the log takes no votes\n"
    "  GET  /v1/stats              log ends, engine positions and lag, counters\n"
    "  GET  /readyz                200 while the log takes votes and the engine keeps up\n"
    "  GET  /metrics               Prometheus text exposition\n"
    "  GET  /v1/polls/{poll}/events  the results as Server-Sent Events\n"
    "  GET  /  /polls/{poll}.html  /polls/{poll}.json  /vote/{poll}.html\n"
    "\n"
    "With admin.token_file set, the admin API (polls created, opened, closed and\n"
    "patched at run time; see tally poll --help) listens on admin.listen.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   configuration (keys: tally --help-config)\n"
    "  -s, --set S.K=V     override a key, e.g. -s server.listen=127.0.0.1:9000\n"
    "  -q, --quiet         only warnings and errors\n"
    "\n"
    "SIGTERM or SIGINT: stop accepting, answer every vote in flight, write\n"
    "snapshots and the last results, exit 0.\n";

static const char *help_ingest =
    "usage: tally ingest -c FILE [-s section.key=value ...]\n"
    "\n"
    "The HTTP API alone, appending votes to Kafka (kafka.brokers must be set).\n"
    "Stateless: run as many as the load needs, against one topic. A vote is\n"
    "answered 202 from Kafka's delivery report (acks=all, idempotent producer);\n"
    "while Kafka is unreachable or the local queue is full the answer is 503 with\n"
    "Retry-After. GET /healthz and GET /v1/stats are served too.\n"
    "\n"
    "Options: -c FILE, -s S.K=V, -q (as tally run). SIGTERM: stop accepting,\n"
    "flush, answer everything in flight, exit.\n";

static const char *help_engine =
    "usage: tally engine -c FILE [-s section.key=value ...]\n"
    "\n"
    "The counter engine and publisher alone, consuming Kafka (kafka.brokers must\n"
    "be set). It assigns itself every partition of kafka.topic, resumes from the\n"
    "offsets in its snapshots (never Kafka's committed offsets), and publishes\n"
    "to publisher.dir. Run one engine per topic. It writes the poll history: with\n"
    "admin.token_file set it serves the admin API on admin.listen, and it keeps\n"
    "the catalog topic (kafka.catalog_topic) that tally ingest reads.\n"
    "\n"
    "Options: -c FILE, -s S.K=V, -q (as tally run). SIGTERM: write snapshots and\n"
    "the last results, exit.\n";

typedef struct {
    vlog_t *log;
    engine_t *engine;
    publisher_t *pub;
    watch_t *watch;
    const _Atomic int *startup_failed; /* the engine side's start-up (NULL: none) */
} run_ctx_t;

/* ---- the poll lifecycle: catalog, history writer, admin API ---- */

typedef struct {
    catalog_live_t *live; /* the process's catalog (tally run, tally engine), not owned */
    history_t *history;   /* its writer, not owned */
    admin_t *admin;       /* the admin API, when admin.token_file is set */
    _Atomic int ready;    /* the engine caught up: votes may be judged */
    engine_t *engine;
    kcat_writer_t *kwriter; /* Kafka, engine role: the catalog topic for tally ingest */
    kcat_reader_t *kreader; /* tally ingest: the catalog from that topic */
} lifecycle_t;

/* ingest_catalog_fn of tally run: the live catalog once the engine is ready. */
static const catalog_t *run_catalog(void *arg, const char **code, const char **why) {
    lifecycle_t *lc = arg;
    if (!atomic_load(&lc->ready)) {
        *code = "starting";
        *why = "the engine is catching up with the log; retry shortly";
        return NULL;
    }
    return catalog_live_get(lc->live);
}

/* admin_totals_fn: the engine's totals of a poll, whatever its visibility. */
static int admin_totals(void *arg, const char *poll, uint64_t *counts, int noptions, uint64_t *late,
                        uint64_t *early) {
    lifecycle_t *lc = arg;
    if (!lc->engine)
        return -1;
    int i = engine_poll_index(lc->engine, poll, strlen(poll));
    if (i < 0)
        return -1;
    engine_poll_totals_n(lc->engine, i, counts, noptions);
    engine_poll_status_t st = engine_poll_status(lc->engine, i, NULL);
    if (late)
        *late = st.late;
    if (early)
        *early = st.early;
    return 0;
}

/* Starts the admin API when admin.token_file is set. 0, or -1 with err
 * (*usage set for a configuration error). */
static int lifecycle_admin(lifecycle_t *lc, const tally_config_t *c, const char *cmd, char *err,
                           size_t esz, int *usage) {
    char *token = NULL;
    if (admin_read_token(c, &token, err, esz) != TALLY_OK) {
        *usage = 1;
        return -1;
    }
    if (!token) {
        log_info("tally %s: admin API off (no admin.token_file)", cmd);
        return 0;
    }
    admin_ops_t ops = {
        .totals = admin_totals,
        .totals_arg = lc,
        /* The process's metrics on the admin listener too (tally engine
         * has no other). */
        .metrics = ingest_reply_metrics,
    };
    lc->admin = admin_new(c, token, &ops, err, esz);
    memset(token, 0, strlen(token));
    free(token);
    if (!lc->admin || admin_start(lc->admin, err, esz) != TALLY_OK)
        return -1;
    log_info("tally %s: admin API on http://%s (port %d)", cmd, c->admin_listen,
             admin_port(lc->admin));
    return 0;
}

/* The start-up is done: the catalog topic (Kafka) gets its first write, the
 * admin API its catalog, ingest may judge votes. 0, or -1 with err.
 * @locality the start-up thread */
static int lifecycle_ready(lifecycle_t *lc, const tally_config_t *c, catalog_live_t *live,
                           history_t *hist, char *err, size_t esz) {
    lc->live = live;
    lc->history = hist;
    /* With Kafka, other processes may ingest: they learn the polls from the
     * catalog topic, written from here. */
    if (c->kafka_brokers && c->kafka_brokers[0]) {
        if (!(lc->kwriter = kcat_writer_new(c, live, err, esz)))
            return -1;
        /* A cut reaches their view before the log holds it. */
        history_set_learner(hist, kcat_writer_learn, lc->kwriter);
    }
    if (lc->admin)
        admin_set_catalog(lc->admin, live, hist, lc->kwriter ? kcat_writer_wait : NULL,
                          lc->kwriter);
    atomic_store(&lc->ready, 1); /* after lc->live: run_catalog reads it then */
    return 0;
}

/* The admin API and the catalog topic's threads; live and history belong
 * to the pipeline. */
static void lifecycle_free(lifecycle_t *lc) {
    admin_free(lc->admin); /* stops its thread first: no change in flight */
    kcat_writer_free(lc->kwriter);
    kcat_reader_free(lc->kreader);
}

/* Start-up of the engine side (tally run, tally engine): the whole poll
 * history read before any vote is taken (each partition to the log's end
 * as of now), broadcasts a crash cut short completed, the config's polls
 * put in the history, then the live catalog handed to ingest and the FINAL
 * scheduler started. With ingest in the process it runs in its own thread
 * while ingest answers 503 "starting". */
typedef struct {
    const tally_config_t *c;
    engine_t *e;
    vlog_t *log;
    ingest_t *in;
    catalog_live_t *live;
    history_t *hist;
    lifecycle_sched_t *sched;
    lifecycle_t *lc;  /* the admin API and the catalog topic, told when ready */
    publisher_t *pub; /* held until the engine has caught up */
    pthread_t th;
    int threaded;
    _Atomic int failed;
    tally_err_t err;
    char msg[1024];
} startup_t;

static void *startup_main(void *arg) {
    startup_t *s = arg;
    s->err = lifecycle_catch_up(s->e, s->log, s->msg, sizeof s->msg);
    if (s->err == TALLY_OK)
        pub_hold(s->pub, 0); /* the totals are the log's now */
    if (s->err == TALLY_OK) {
        s->live = catalog_live_new(catalog_dup(engine_catalog(s->e)));
        s->hist = history_new(s->log, s->live, 10000);
        s->err = lifecycle_repair(s->e, s->hist, catalog_live_get(s->live), s->msg, sizeof s->msg);
    }
    if (s->err == TALLY_OK)
        s->err = lifecycle_config_polls(s->c, s->hist, s->live, s->msg, sizeof s->msg);
    if (s->err != TALLY_OK) {
        atomic_store(&s->failed, 1); /* the tick stops ingest */
        return NULL;
    }
    s->sched = lifecycle_sched_start(s->hist, s->live, (uint64_t)s->c->admin_final_grace_ms);
    if (lifecycle_ready(s->lc, s->c, s->live, s->hist, s->msg, sizeof s->msg) != 0) {
        s->err = TALLY_ERR_UNAVAIL;
        atomic_store(&s->failed, 1);
        return NULL;
    }
    if (s->in) {
        ingest_set_starting(s->in, 0);
        log_info("ready: taking votes for %d polls", catalog_npolls(catalog_live_get(s->live)));
    }
    return NULL;
}

/* ingest's tick: samples the engine's lag; stops the server once the
 * engine or its start-up failed. */
static int run_tick(void *arg) {
    run_ctx_t *rc = arg;
    if (rc->watch)
        watch_tick(rc->watch);
    return (rc->engine && engine_failed(rc->engine)) ||
           (rc->startup_failed && atomic_load(rc->startup_failed));
}

/* GET /v1/stats: how far the engine is behind the log, and the counters.
 * Operators watch "lag"; tests wait for it to reach 0. */
static void fill_stats(void *arg, ingest_t *in, buf_t *b) {
    run_ctx_t *rc = arg;
    int np = vlog_partitions(rc->log);
    uint64_t *ends = xcalloc((size_t)np, sizeof *ends);
    char err[256];
    /* Kafka's ends are a network round trip per partition: not on the
     * event loop. */
    int have_ends = (vlog_caps(rc->log) & VLOG_CAP_LOCAL_ENDS) &&
                    vlog_end_positions(rc->log, ends, err, sizeof err) == 0;
    buf_printf(b, "{\"log\":{\"backend\":\"%s\",\"partitions\":%d,\"end\":[", vlog_name(rc->log),
               np);
    for (int p = 0; have_ends && p < np; p++)
        buf_printf(b, "%s%llu", p ? "," : "", (unsigned long long)ends[p]);
    buf_puts(b, "]}");
    if (rc->engine) {
        uint64_t lag = 0;
        buf_puts(b, ",\"engine\":{\"positions\":[");
        for (int p = 0; p < np; p++) {
            uint64_t pos = engine_position(rc->engine, p);
            if (have_ends && ends[p] > pos)
                lag += ends[p] - pos;
            buf_printf(b, "%s%llu", p ? "," : "", (unsigned long long)pos);
        }
        engine_stats_t es = engine_stats(rc->engine);
        buf_printf(b, "],\"lag\":%lld,\"applied\":%llu,\"skipped\":%llu",
                   have_ends ? (long long)lag : -1LL, (unsigned long long)es.applied,
                   (unsigned long long)es.skipped);
        buf_printf(b, ",\"late\":%llu,\"early\":%llu", (unsigned long long)es.late,
                   (unsigned long long)es.early);
        buf_printf(b, ",\"retried\":%llu,\"idempotency_keys\":%llu,\"idempotency_bytes\":%llu}",
                   (unsigned long long)es.retried, (unsigned long long)es.idem_keys,
                   (unsigned long long)es.idem_bytes);
        buf_printf(b, ",\"publisher\":{\"writes\":%llu}", (unsigned long long)pub_writes(rc->pub));
    }
    s3_stats_t s3;
    s3_stats(&s3);
    if (s3.enabled) {
        buf_printf(b,
                   ",\"s3\":{\"uploads_ok\":%llu,\"failures\":%llu,\"unchanged\":%llu,"
                   "\"pending\":%llu,\"last_error\":",
                   (unsigned long long)s3.uploads_ok, (unsigned long long)s3.failures,
                   (unsigned long long)s3.unchanged, (unsigned long long)s3.pending);
        json_put_str(b, s3.last_error);
        buf_printf(b, ",\"last_error_ms\":%llu}", (unsigned long long)s3.last_error_ms);
    }
    ingest_stats_t is = ingest_stats(in);
    buf_printf(b,
               ",\"ingest\":{\"accepted\":%llu,\"rejected\":%llu,\"unavailable\":%llu,"
               "\"closed\":%llu,\"not_open\":%llu}}",
               (unsigned long long)is.accepted, (unsigned long long)is.rejected,
               (unsigned long long)is.unavailable, (unsigned long long)is.closed,
               (unsigned long long)is.not_open);
    free(ends);
}

int cmd_check_snapshot_positions(engine_t *e, vlog_t *log, char *errstr, size_t esz) {
    int np = vlog_partitions(log);
    uint64_t *pos = xcalloc((size_t)np, sizeof *pos);
    for (int p = 0; p < np; p++)
        pos[p] = engine_position(e, p);
    tally_err_t rc = vlog_check_positions(log, pos, errstr, esz);
    free(pos);
    return rc != TALLY_OK;
}

/* The engine role without HTTP: waits for SIGINT/SIGTERM or an engine
 * failure. The signals are blocked in every thread (set before any start). */
static void wait_for_signal(engine_t *e, const sigset_t *set) {
    for (;;) {
        struct timespec ts = {0, 200 * 1000000};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            log_info("engine: %s received: writing snapshots and results",
                     sig == SIGINT ? "SIGINT" : "SIGTERM");
            return;
        }
        if (engine_failed(e))
            return;
    }
}

static int pipeline(int argc, char **argv, const char *cmd, const char *help, int roles) {
    cmd_opts_t o;
    cmd_parse(argc, argv, cmd, help, 0, &o);
    o.writes = ((roles & ROLE_INGEST) && (roles & ROLE_ENGINE) ? CONFIG_DIR_LOG : 0) |
               ((roles & ROLE_ENGINE) ? CONFIG_DIR_SNAPSHOT : 0);
    tally_config_t *c = cmd_load_config(&o);
    char err[1024] = "";
    int rc = 1;
    tally_err_t terr = TALLY_ERR_INTERNAL;
    vlog_t *log = NULL;
    engine_t *e = NULL;
    publisher_t *pub = NULL;
    ingest_t *in = NULL;
    watch_t *watch = NULL;
    startup_t su = {.err = TALLY_OK};
    lifecycle_t lc = {0};
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);

    if (roles != (ROLE_INGEST | ROLE_ENGINE) && !(c->kafka_brokers && c->kafka_brokers[0])) {
        fprintf(stderr,
                "tally %s: kafka.brokers is empty: the %s role alone needs Kafka as the vote "
                "log; with the embedded log use tally run\n",
                cmd, cmd);
        rc = EXIT_USAGE;
        goto done;
    }
    if (c->npolls == 0)
        log_warn("no [poll.ID] sections in %s", o.config_path);
    if (!(roles & ROLE_INGEST))
        pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* before any thread starts */
    if ((roles & ROLE_INGEST) && ingest_check_config(c, err, sizeof err) != 0) {
        rc = EXIT_USAGE;
        goto out;
    }
    if (roles & ROLE_INGEST) {
        in = ingest_new(c, (roles & ROLE_ENGINE) ? c->pub_dir : NULL, err, sizeof err);
        if (!in)
            goto out;
    }
    /* The engine writes too: the poll history's control records. Their
     * acks go to the history writer, the votes' to ingest. */
    history_ack_init(in ? ingest_ack : NULL);
    log = vlog_open(c, VLOG_F_WRITE | ((roles & ROLE_ENGINE) ? VLOG_F_READ : 0), history_log_ack,
                    &terr, err, sizeof err);
    if (!log) {
        rc = tally_err_exit(terr);
        goto out;
    }
    int resumed = 0;
    if (roles & ROLE_ENGINE) {
        e = engine_new(c, vlog_partitions(log));
        /* Snapshots of another log (salvaged, swapped, replaced) are not
         * used: their partitions are recounted. */
        engine_set_log_id(e, vlog_id(log), vlog_id_legacy(log));
        tally_err_t lerr = engine_snapshot_load(e, c->snapshot_dir, &resumed, err, sizeof err);
        if (lerr != TALLY_OK) {
            rc = tally_err_exit(lerr);
            goto out;
        }
        /* Snapshots past the log's end: the log lost votes they counted.
         * Stop before anything is published. */
        if ((vlog_caps(log) & VLOG_CAP_LOCAL_ENDS) &&
            cmd_check_snapshot_positions(e, log, err, sizeof err))
            goto out;
        pub = pub_new(c, e);
        if (in) { /* live results: every rendering goes out as an event */
            ingest_enable_sse(in);
            pub_set_on_publish(pub, ingest_sse_publish, in);
            /* Before the publisher's first rendering: the stream finds
             * run-time polls in the catalog (ingest/routes.c). */
            ingest_set_catalog(in, run_catalog, &lc, 0);
        }
        engine_run_opts_t ro = {
            .log = log,
            .snapshot_dir = c->snapshot_dir,
            .snapshot_interval_ms = c->snapshot_interval_ms,
            .threads = c->engine_threads,
            .on_change = pub_notify,
            .on_change_arg = pub,
        };
        /* Nothing is published before the engine has caught up with the
         * log (startup_main releases the hold): a snapshot's totals are
         * older than what an earlier run published. */
        pub_hold(pub, 1);
        if (engine_start(e, &ro, err, sizeof err) != TALLY_OK ||
            pub_start(pub, err, sizeof err) != TALLY_OK)
            goto out;
        /* The admin API listens from now on (503 "starting" until the
         * start-up below hands it the catalog). */
        lc.engine = e;
        int usage = 0;
        if (lifecycle_admin(&lc, c, cmd, err, sizeof err, &usage) != 0) {
            rc = usage ? EXIT_USAGE : 1;
            goto out;
        }
        su.c = c;
        su.e = e;
        su.log = log;
        su.in = in;
        su.lc = &lc;
        su.pub = pub;
        if (in) {
            /* Votes and /healthz get 503 "starting" until the history is
             * read: ingest serves while the engine catches up. */
            ingest_set_starting(in, 1);
            if (pthread_create(&su.th, NULL, startup_main, &su) != 0) {
                snprintf(err, sizeof err, "cannot start the start-up thread");
                goto out;
            }
            su.threaded = 1;
        } else {
            startup_main(&su);
            if (su.err != TALLY_OK) {
                snprintf(err, sizeof err, "%s", su.msg);
                rc = tally_err_exit(su.err);
                goto out;
            }
        }
    }
    watch = watch_new(c, log, e);
    run_ctx_t ctx = {log, e, pub, watch, e ? &su.failed : NULL};
    watch_metrics_register(ctx.watch);
    watch_tick(ctx.watch); /* /readyz knows the lag from the first request */
    log_info("tally %s: %d polls, %s log with %d partitions (log id %s)%s", cmd, c->npolls,
             vlog_name(log), vlog_partitions(log), vlog_id(log),
             e ? "" : ", no engine in this process");
    if (e)
        log_info("tally %s: %d engine threads, %d partitions resumed from snapshots", cmd,
                 c->engine_threads, resumed);
    if (in) {
        ingest_set_log(in, log);
        ingest_set_tick(in, run_tick, &ctx);
        ingest_set_ready(in, watch_ready, ctx.watch);
        ingest_set_stats(in, fill_stats, &ctx);
        if (!e) { /* with an engine: set above, before any publishing */
            if (!(lc.kreader = kcat_reader_new(c, err, sizeof err)))
                goto out;
            ingest_set_catalog(in, kcat_reader_get, lc.kreader, 1);
            /* Like the log's readiness: answer the first votes with the
             * catalog loaded rather than 503 (after 15 s: 503 until it is). */
            if (!kcat_reader_wait_ready(lc.kreader, 15000))
                log_warn("tally %s: the poll catalog is not loaded after 15 s: votes get 503 "
                         "starting until it is",
                         cmd);
        }
        log_info("tally %s: listening on http://%s (port %d)", cmd, c->listen, ingest_port(in));
        ingest_run(in);
        if (su.threaded) {
            pthread_join(su.th, NULL);
            su.threaded = 0;
            if (su.err != TALLY_OK) {
                snprintf(err, sizeof err, "%s", su.msg);
                rc = tally_err_exit(su.err);
                goto out;
            }
        }
        if (vlog_flush(log, 10000) != 0)
            log_error("the log did not answer every vote in time");
    } else {
        wait_for_signal(e, &sigs);
    }
    admin_stop(lc.admin); /* no change is written after this */
    lifecycle_sched_stop(su.sched);
    su.sched = NULL;
    if (e) {
        engine_stop(e);
        if (engine_join(e, err, sizeof err) != 0)
            goto out;
        pub_stop(pub);
        engine_stats_t es = engine_stats(e);
        log_info("tally %s: engine counted %llu records, skipped %llu", cmd,
                 (unsigned long long)es.applied, (unsigned long long)es.skipped);
    }
    if (in) {
        ingest_stats_t st = ingest_stats(in);
        log_info("tally %s: %llu votes accepted, %llu rejected, %llu answered 503", cmd,
                 (unsigned long long)st.accepted, (unsigned long long)st.rejected,
                 (unsigned long long)st.unavailable);
    }
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "tally %s: %s\n", cmd, err);
    admin_stop(lc.admin);
    if (su.threaded)
        pthread_join(su.th, NULL);
    lifecycle_sched_stop(su.sched);
    if (pub)
        pub_stop(pub);
    if (e && rc != 0) {
        engine_stop(e);
        engine_join(e, err, sizeof err);
    }
    vlog_close(log);
    lifecycle_free(&lc); /* before the catalog it reads */
    history_free(su.hist);
    catalog_live_free(su.live);
    ingest_free(in);
    watch_free(watch);
    pub_free(pub);
    engine_free(e);
done:
    config_free(c);
    free(o.overrides);
    return rc;
}

int cmd_run(int argc, char **argv) {
    return pipeline(argc, argv, "run", help_run, ROLE_INGEST | ROLE_ENGINE);
}
int cmd_ingest(int argc, char **argv) {
    return pipeline(argc, argv, "ingest", help_ingest, ROLE_INGEST);
}
int cmd_engine(int argc, char **argv) {
    return pipeline(argc, argv, "engine", help_engine, ROLE_ENGINE);
}
