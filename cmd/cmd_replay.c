/* tally replay: rebuild every total from the whole vote log into fresh
 * state, write snapshots, republish, print a summary. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd/cmd.h"
#include "common/util.h"
#include "engine/engine.h"
#include "log/vlog.h"
#include "publisher/publisher.h"

static const char *help =
    "usage: tally replay -c FILE [-s section.key=value ...] [--until RFC3339]\n"
    "\n"
    "Rebuilds every poll's totals from the whole vote log into fresh state (the\n"
    "polls, their options, opens, closes and finals come from the log itself; the\n"
    "config's [poll.ID] sections are needed only for votes older than that history;\n"
    "snapshots are not read), writes new snapshots, republishes the results and\n"
    "prints a per-poll summary. Run it while `tally run` is stopped: it takes the\n"
    "log's lock (shared) and refuses to start otherwise. The log is opened\n"
    "read-only and never changed; a damaged log, or one shorter than the\n"
    "snapshots' positions, is refused (exit 1) and nothing is published.\n"
    "Progress goes to stderr.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE    configuration (the same file tally run uses)\n"
    "  -s, --set S.K=V      override a key\n"
    "      --until TIME     count only votes accepted at or before TIME (RFC 3339,\n"
    "                       e.g. 2026-11-27T21:00:00Z): the result at a poll's\n"
    "                       close. Results are published; snapshots are not written.\n"
    "  -q, --quiet          no progress lines\n";

static void noop_ack(void *opaque, vlog_err_t err) {
    (void)opaque;
    (void)err;
}

int cmd_replay(int argc, char **argv) {
    cmd_opts_t o;
    cmd_parse(argc, argv, "replay", help, 1, &o);
    o.writes = o.until ? 0 : CONFIG_DIR_SNAPSHOT; /* the log is only read */
    tally_config_t *c = cmd_load_config(&o);
    uint64_t until = 0;
    if (o.until && parse_rfc3339(o.until, &until) != 0) {
        fprintf(stderr,
                "tally replay: --until: '%s' is not an RFC 3339 time (like "
                "2026-11-27T21:00:00Z)\n",
                o.until);
        config_free(c);
        free(o.overrides);
        return EXIT_USAGE;
    }
    char err[1024];
    int rc = 1;
    engine_t *e = NULL;
    publisher_t *pub = NULL;
    uint64_t *ends = NULL;
    tally_err_t terr = TALLY_ERR_INTERNAL;
    /* Read-only: O_RDONLY under a shared lock; nothing in log.dir is written
     * or cut, and damage refuses to open. */
    vlog_t *log = vlog_open(c, VLOG_F_READ, noop_ack, &terr, err, sizeof err);
    if (!log) {
        rc = tally_err_exit(terr);
        goto out;
    }
    int np = vlog_partitions(log);
    ends = xcalloc((size_t)np, sizeof *ends);
    if (vlog_end_positions(log, ends, err, sizeof err) != 0)
        goto out;
    /* Replay does not resume from the snapshots, but it would overwrite
     * them and publish over results that counted more than this log holds:
     * refuse a log shorter than their positions. */
    if (vlog_caps(log) & VLOG_CAP_LOCAL_ENDS) {
        /* Headers only (checksum-verified, streamed): the states are not
         * loaded. Snapshots of another log are not compared (a run would
         * not use them either). */
        engine_t *hdr = engine_new(c, np);
        engine_set_log_id(hdr, vlog_id(log), vlog_id_legacy(log));
        uint64_t *pos = xcalloc((size_t)np, sizeof *pos);
        engine_snapshot_positions(hdr, c->snapshot_dir, pos);
        int bad = vlog_check_positions(log, pos, err, sizeof err) != TALLY_OK;
        free(pos);
        engine_free(hdr);
        if (bad)
            goto out;
    }
    uint64_t total_span = 0;
    for (int p = 0; p < np; p++)
        total_span += ends[p] - vlog_begin_position(log, p);
    e = engine_new(c, np);
    if (until)
        engine_set_cutoff(e, until);
    engine_run_opts_t ro = {
        .log = log,
        .snapshot_dir = until ? NULL : c->snapshot_dir,
        .snapshot_interval_ms = 86400000,
        .threads = c->engine_threads,
        .stop_at = ends,
    };
    uint64_t t0 = mono_ms();
    if (engine_start(e, &ro, err, sizeof err) != 0)
        goto out;
    int tty = isatty(2);
    uint64_t last_print = t0;
    for (;;) {
        int done = 1;
        uint64_t at = 0;
        for (int p = 0; p < np; p++) {
            uint64_t pos = engine_position(e, p);
            at += pos - vlog_begin_position(log, p);
            if (pos < ends[p])
                done = 0;
        }
        if (done || engine_failed(e))
            break;
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
        uint64_t now = mono_ms();
        if (!o.quiet && now - last_print >= (tty ? 500 : 5000)) {
            engine_stats_t s = engine_stats(e);
            fprintf(stderr, "%sreplay: %llu records, %.1f%% of the log, %.0f records/s%s",
                    tty ? "\r" : "", (unsigned long long)s.applied,
                    total_span ? 100.0 * (double)at / (double)total_span : 100.0,
                    (double)s.applied * 1000.0 / (double)(now - t0 + 1), tty ? "" : "\n");
            last_print = now;
        }
    }
    if (!o.quiet && tty)
        fputc('\n', stderr);
    engine_stop(e);
    if (engine_join(e, err, sizeof err) != 0)
        goto out;
    uint64_t ms = mono_ms() - t0;
    pub = pub_new(c, e);
    if (pub_publish_all(pub, err, sizeof err) != 0)
        goto out;

    engine_stats_t s = engine_stats(e);
    printf("replayed %llu records from the %s log (%d partitions) in %.3f s",
           (unsigned long long)(s.applied + s.skipped + s.after_cutoff), vlog_name(log), np,
           (double)ms / 1000.0);
    if (until)
        printf(", counting votes up to %s (%llu after it not counted)", o.until,
               (unsigned long long)s.after_cutoff);
    printf("\n");
    if (s.skipped)
        printf("skipped %llu records (unreadable, or for polls/options neither in the log's "
               "history nor in the config)\n",
               (unsigned long long)s.skipped);
    if (s.retried)
        printf("retried %llu votes (an Idempotency-Key already counted: not counted again)\n",
               (unsigned long long)s.retried);
    for (int i = 0; i < engine_npolls(e); i++) {
        const poll_def_t *pc = engine_poll(e, i);
        if (!pc)
            continue;
        uint64_t *counts = xmalloc(sizeof *counts * (size_t)pc->noptions);
        engine_poll_totals_n(e, i, counts, pc->noptions);
        uint64_t total = 0;
        for (int k = 0; k < pc->noptions; k++)
            total += counts[k];
        engine_poll_status_t st = engine_poll_status(e, i, NULL);
        printf("poll %s (%s): total %llu, %s", pc->id, poll_mode_name(pc->mode),
               (unsigned long long)total,
               poll_state_name(poll_def_state_at(pc, st.final, now_ms())));
        if (st.late || st.early)
            printf(", late %llu, early %llu", (unsigned long long)st.late,
                   (unsigned long long)st.early);
        printf("\n");
        for (int k = 0; k < pc->noptions; k++)
            printf("  %-20s %llu\n", pc->options[k].id, (unsigned long long)counts[k]);
        free(counts);
    }
    printf("results published to %s%s\n", c->pub_dir,
           until ? "" : "; snapshots written to engine.snapshot_dir");
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "tally replay: %s\n", err);
    pub_free(pub);
    engine_free(e);
    vlog_close(log);
    free(ends);
    config_free(c);
    free(o.overrides);
    return rc;
}
