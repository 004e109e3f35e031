/* Watching a running pipeline: how far the engine is behind the log (per
 * partition, in positions and in time), readiness (GET /readyz), and the
 * pipeline's metrics that are computed at scrape time (collectors of
 * common/metrics.h).
 *
 * Lag in time. The log's frames carry accept timestamps, but the one the
 * engine last counted says nothing about how old the first uncounted one is
 * (after an idle hour the next vote is not an hour late). So the lag is
 * observed: every tick (200 ms, ingest's main loop) each partition's
 * engine position is compared with the log's durable end. A partition found
 * behind gets a mark: that end and the time it was seen; the mark clears
 * once the engine's position reaches the marked end. The partition's lag is
 * the mark's age: a lower bound on the age of its oldest uncounted vote,
 * exact to a tick, and growing without bound while the engine is stuck.
 * Only the file log's ends are known without a network round trip; with
 * Kafka lag is not tracked here (rows absent, /readyz the log's health). */
#include "cmd/watch.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/metrics.h"
#include "common/util.h"
#include "publisher/s3.h"

struct watch_s {
    vlog_t *log;
    engine_t *engine;
    const tally_config_t *conf;
    int np;
    int known;                      /* the log's ends can be read cheaply */
    uint64_t *mark_end;             /* tick thread only */
    _Atomic uint64_t *behind_since; /* [np] mono ms of the mark; 0: none */
    _Atomic uint64_t *lag_pos;      /* [np] end - position at the last tick */
    uint64_t *ends;                 /* tick thread only */
};

watch_t *watch_new(const tally_config_t *c, vlog_t *log, engine_t *e) {
    watch_t *w = xcalloc(1, sizeof *w);
    w->conf = c;
    w->log = log;
    w->engine = e;
    w->np = vlog_partitions(log);
    w->known = e && (vlog_caps(log) & VLOG_CAP_LOCAL_ENDS);
    w->mark_end = xcalloc((size_t)w->np, sizeof *w->mark_end);
    w->behind_since = xcalloc((size_t)w->np, sizeof *w->behind_since);
    w->lag_pos = xcalloc((size_t)w->np, sizeof *w->lag_pos);
    w->ends = xcalloc((size_t)w->np, sizeof *w->ends);
    return w;
}

void watch_free(watch_t *w) {
    if (!w)
        return;
    watch_metrics_unregister(w);
    free(w->mark_end);
    free((void *)w->behind_since);
    free((void *)w->lag_pos);
    free(w->ends);
    free(w);
}

void watch_tick(watch_t *w) {
    char err[256];
    if (!w->known || vlog_end_positions(w->log, w->ends, err, sizeof err) != 0)
        return;
    uint64_t now = mono_ms();
    for (int p = 0; p < w->np; p++) {
        uint64_t pos = engine_position(w->engine, p), end = w->ends[p];
        uint64_t since = atomic_load_explicit(&w->behind_since[p], memory_order_relaxed);
        if (since && pos >= w->mark_end[p])
            since = 0; /* caught up with what was marked */
        if (!since && pos < end) {
            w->mark_end[p] = end;
            since = now ? now : 1;
        }
        atomic_store_explicit(&w->behind_since[p], since, memory_order_relaxed);
        atomic_store_explicit(&w->lag_pos[p], end > pos ? end - pos : 0, memory_order_relaxed);
    }
}

uint64_t watch_lag_ms(const watch_t *w, int p) {
    uint64_t since = atomic_load_explicit(&w->behind_since[p], memory_order_relaxed);
    uint64_t now = mono_ms();
    return since && now > since ? now - since : 0;
}

int watch_ready(void *arg, char *why, size_t wsz) {
    watch_t *w = arg;
    if (!w->known)
        return 1;
    for (int p = 0; p < w->np; p++) {
        uint64_t lag = watch_lag_ms(w, p);
        if (lag >= (uint64_t)w->conf->engine_ready_lag_ms) {
            snprintf(why, wsz,
                     "the engine is %llu ms behind the log on partition %d (%llu positions; "
                     "engine.ready_lag_ms = %d)",
                     (unsigned long long)lag, p,
                     (unsigned long long)atomic_load_explicit(&w->lag_pos[p], memory_order_relaxed),
                     w->conf->engine_ready_lag_ms);
            return 0;
        }
    }
    return 1;
}

/* ---- collectors ---- */

static void collect_lag_pos(void *arg, metrics_emit_t *e) {
    watch_t *w = arg;
    char labels[32];
    for (int p = 0; w->known && p < w->np; p++) {
        snprintf(labels, sizeof labels, "partition=\"%d\"", p);
        metrics_emit(e, labels, (double)atomic_load_explicit(&w->lag_pos[p], memory_order_relaxed));
    }
}

static void collect_lag_s(void *arg, metrics_emit_t *e) {
    watch_t *w = arg;
    char labels[32];
    for (int p = 0; w->known && p < w->np; p++) {
        snprintf(labels, sizeof labels, "partition=\"%d\"", p);
        metrics_emit(e, labels, (double)watch_lag_ms(w, p) / 1000.0);
    }
}

static void collect_applied(void *arg, metrics_emit_t *e) {
    metrics_emit(e, NULL, (double)engine_stats(((watch_t *)arg)->engine).applied);
}

static void collect_skipped(void *arg, metrics_emit_t *e) {
    metrics_emit(e, NULL, (double)engine_stats(((watch_t *)arg)->engine).skipped);
}

/* The age of each partition's newest snapshot file (its mtime): names are
 * pNNN-<position>.snap (engine/snapshot.c). */
static void collect_snapshot_age(void *arg, metrics_emit_t *e) {
    watch_t *w = arg;
    const char *dir = w->conf->snapshot_dir;
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d)
        return;
    int64_t *newest = xcalloc((size_t)w->np, sizeof *newest);
    struct dirent *de;
    while ((de = readdir(d))) {
        int p;
        size_t n = strlen(de->d_name);
        if (n < 10 || de->d_name[0] != 'p' || strcmp(de->d_name + n - 5, ".snap") != 0 ||
            sscanf(de->d_name, "p%d-", &p) != 1 || p < 0 || p >= w->np)
            continue;
        char path[4200];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &st) == 0) {
            int64_t ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
            if (ms > newest[p])
                newest[p] = ms;
        }
    }
    closedir(d);
    int64_t now = (int64_t)now_ms();
    char labels[32];
    for (int p = 0; p < w->np; p++) {
        if (!newest[p])
            continue; /* no snapshot yet: no row, not a made-up age */
        snprintf(labels, sizeof labels, "partition=\"%d\"", p);
        metrics_emit(e, labels, (double)(now > newest[p] ? now - newest[p] : 0) / 1000.0);
    }
    free(newest);
}

/* Without an engine (tally ingest) the engine's families have no rows. */
static void collect_none(void *arg, metrics_emit_t *e) {
    (void)arg, (void)e;
}

/* tally_polls{state}: the engine's catalog, each poll in its state now
 * (as the publisher would render it); a row per state, 0 included. */
static void collect_polls(void *arg, metrics_emit_t *e) {
    watch_t *w = arg;
    uint64_t n[4] = {0}, now = now_ms();
    int np = engine_npolls(w->engine);
    for (int i = 0; i < np; i++) {
        const catalog_entry_t *en = engine_poll_entry(w->engine, i);
        if (!en)
            continue; /* an unreadable DEFINE */
        engine_poll_status_t st = engine_poll_status(w->engine, i, NULL);
        poll_state_t s = poll_def_state_at(en->def, st.final, now);
        if ((int)s >= 0 && (int)s < 4)
            n[s]++;
    }
    static const poll_state_t states[] = {POLL_SCHEDULED, POLL_OPEN, POLL_CLOSED, POLL_FINAL};
    char labels[32];
    for (size_t k = 0; k < sizeof states / sizeof states[0]; k++) {
        snprintf(labels, sizeof labels, "state=\"%s\"", poll_state_name(states[k]));
        metrics_emit(e, labels, (double)n[states[k]]);
    }
}

/* The S3 uploader's counters (s3_stats); no row while S3 is off. */
static void collect_s3_failures(void *arg, metrics_emit_t *e) {
    (void)arg;
    s3_stats_t st;
    s3_stats(&st);
    if (st.enabled)
        metrics_emit(e, NULL, (double)st.failures);
}

static const struct {
    const char *name, *help;
    metric_type_t type;
    void (*fn)(void *, metrics_emit_t *);
} collectors[] = {
    {"tally_engine_lag_positions",
     "how far the engine is behind the log's durable end per partition (file log: bytes)",
     METRIC_GAUGE, collect_lag_pos},
    {"tally_engine_lag_seconds",
     "how long each partition has been behind the log's durable end (0: caught up)", METRIC_GAUGE,
     collect_lag_s},
    {"tally_engine_records_applied_total", "log records counted (or found repeated) by the engine",
     METRIC_COUNTER, collect_applied},
    {"tally_engine_records_skipped_total",
     "log records skipped (undecodable, unknown poll or option)", METRIC_COUNTER, collect_skipped},
    {"tally_snapshot_age_seconds", "age of each partition's newest engine snapshot", METRIC_GAUGE,
     collect_snapshot_age},
    {"tally_s3_upload_failures_total", "results objects the S3 publisher failed to upload",
     METRIC_COUNTER, collect_s3_failures},
    {"tally_polls", "polls by lifecycle state", METRIC_GAUGE, collect_polls},
};
#define NCOLLECTORS (sizeof collectors / sizeof collectors[0])

void watch_metrics_register(watch_t *w) {
    for (size_t i = 0; i < NCOLLECTORS; i++)
        metrics_collector(metrics_default(), collectors[i].name, collectors[i].help,
                          collectors[i].type, w->engine ? collectors[i].fn : collect_none, w);
}

void watch_metrics_unregister(watch_t *w) {
    (void)w;
    for (size_t i = 0; i < NCOLLECTORS; i++)
        metrics_collector(metrics_default(), collectors[i].name, collectors[i].help,
                          collectors[i].type, NULL, NULL);
}
