/* tally run: the whole pipeline in one process.
 *   ingest (HTTP) -> vote log -> engine workers -> publisher -> publisher.dir */
#include <stdio.h>
#include <stdlib.h>

#include "cmd/cmd.h"
#include "common/util.h"
#include "engine/engine.h"
#include "ingest/ingest.h"
#include "log/vlog.h"
#include "publisher/publisher.h"

static const char *help =
    "usage: tally run -c FILE [-s section.key=value ...]\n"
    "\n"
    "Runs the HTTP API, the vote log, the counter engine and the publisher in one\n"
    "process. Votes are answered 202 once durable in the log; totals are published\n"
    "to publisher.dir and served read-only on the same port.\n"
    "\n"
    "  POST /v1/polls/{poll}/votes   {\"option\":\"ID\",\"voter\":\"ID\"}\n"
    "  GET  /healthz\n"
    "  GET  /v1/stats              log ends, engine positions and lag, counters\n"
    "  GET  /  /polls/{poll}.html  /polls/{poll}.json\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   configuration (keys: tally --help-config)\n"
    "  -s, --set S.K=V     override a key, e.g. -s server.listen=127.0.0.1:9000\n"
    "  -q, --quiet         only warnings and errors\n"
    "\n"
    "SIGTERM or SIGINT: stop accepting, answer every vote in flight, write\n"
    "snapshots and the last results, exit 0.\n";

static int engine_failed_tick(void *arg) { return engine_failed(arg); }

typedef struct {
    vlog_t *log;
    engine_t *engine;
    publisher_t *pub;
} run_ctx_t;

/* GET /v1/stats: how far the engine is behind the log, and the counters.
 * Operators watch "lag"; tests wait for it to reach 0. */
static void fill_stats(void *arg, ingest_t *in, void *out) {
    run_ctx_t *rc = arg;
    buf_t *b = out;
    int np = vlog_partitions(rc->log);
    uint64_t *ends = xcalloc((size_t)np, sizeof *ends);
    char err[256];
    int have_ends = vlog_end_positions(rc->log, ends, err, sizeof err) == 0;
    uint64_t lag = 0;
    buf_printf(b, "{\"log\":{\"backend\":\"%s\",\"partitions\":%d,\"end\":[", vlog_name(rc->log), np);
    for (int p = 0; p < np; p++)
        buf_printf(b, "%s%llu", p ? "," : "", (unsigned long long)ends[p]);
    buf_puts(b, "]},\"engine\":{\"positions\":[");
    for (int p = 0; p < np; p++) {
        uint64_t pos = engine_position(rc->engine, p);
        if (have_ends && ends[p] > pos)
            lag += ends[p] - pos;
        buf_printf(b, "%s%llu", p ? "," : "", (unsigned long long)pos);
    }
    engine_stats_t es = engine_stats(rc->engine);
    ingest_stats_t is = ingest_stats(in);
    buf_printf(b,
               "],\"lag\":%llu,\"applied\":%llu,\"skipped\":%llu},\"publisher\":{\"writes\":%llu},"
               "\"ingest\":{\"accepted\":%llu,\"rejected\":%llu,\"unavailable\":%llu}}",
               (unsigned long long)lag, (unsigned long long)es.applied,
               (unsigned long long)es.skipped, (unsigned long long)pub_writes(rc->pub),
               (unsigned long long)is.accepted, (unsigned long long)is.rejected,
               (unsigned long long)is.unavailable);
    free(ends);
}

int cmd_run(int argc, char **argv) {
    cmd_opts_t o;
    cmd_parse(argc, argv, "run", help, 0, &o);
    tally_config_t *c = cmd_load_config(&o);
    char err[1024];
    int rc = 1;
    vlog_t *log = NULL;
    engine_t *e = NULL;
    publisher_t *pub = NULL;
    ingest_t *in = NULL;

    if (c->npolls == 0)
        log_warn("no [poll.ID] sections in %s: every vote will get 404", o.config_path);
    in = ingest_new(c, c->pub_dir, err, sizeof err);
    if (!in)
        goto out;
    log = vlog_open(c, VLOG_F_WRITE | VLOG_F_READ, ingest_ack, err, sizeof err);
    if (!log)
        goto out;
    e = engine_new(c, vlog_partitions(log));
    int resumed = engine_snapshot_load(e, c->snapshot_dir, err, sizeof err);
    pub = pub_new(c, e);
    engine_run_opts_t ro = {
        .log = log,
        .snapshot_dir = c->snapshot_dir,
        .snapshot_interval_ms = c->snapshot_interval_ms,
        .threads = c->engine_threads,
        .on_change = pub_notify,
        .on_change_arg = pub,
    };
    if (pub_publish_all(pub, err, sizeof err) != 0 || engine_start(e, &ro, err, sizeof err) != 0 ||
        pub_start(pub, err, sizeof err) != 0)
        goto out;
    ingest_set_log(in, log);
    ingest_set_tick(in, engine_failed_tick, e);
    run_ctx_t ctx = {log, e, pub};
    ingest_set_stats(in, fill_stats, &ctx);
    log_info("tally run: http://%s (port %d), %d polls, %s log with %d partitions, %d of them "
             "resumed from snapshots, %d engine threads",
             c->listen, ingest_port(in), c->npolls, vlog_name(log), vlog_partitions(log), resumed,
             c->engine_threads);
    ingest_run(in);

    if (vlog_flush(log, 10000) != 0)
        log_error("the log did not answer every vote in time");
    engine_stop(e);
    if (engine_join(e, err, sizeof err) != 0)
        goto out;
    pub_stop(pub);
    ingest_stats_t st = ingest_stats(in);
    engine_stats_t es = engine_stats(e);
    log_info("tally run: stopped; %llu votes accepted, %llu rejected, %llu answered 503; engine "
             "counted %llu records, skipped %llu",
             (unsigned long long)st.accepted, (unsigned long long)st.rejected,
             (unsigned long long)st.unavailable, (unsigned long long)es.applied,
             (unsigned long long)es.skipped);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "tally run: %s\n", err);
    if (pub)
        pub_stop(pub);
    if (e && rc != 0) {
        engine_stop(e);
        engine_join(e, err, sizeof err);
    }
    vlog_close(log);
    ingest_free(in);
    pub_free(pub);
    engine_free(e);
    config_free(c);
    free(o.overrides);
    return rc;
}
