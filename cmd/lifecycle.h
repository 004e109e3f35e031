/* The poll lifecycle at start and while running (tally run, tally engine). */
#ifndef TALLY_LIFECYCLE_H
#define TALLY_LIFECYCLE_H

#include "common/catalog.h"
#include "engine/engine.h"
#include "log/vlog.h"

/* Waits until every partition of the running engine reached the log's end
 * as of this call: then the engine's catalog holds the whole history. */
tally_err_t lifecycle_catch_up(engine_t *e, vlog_t *log, char *errstr, size_t esz);
/* Re-appends to each partition the control records it lacks up to cat's
 * seq (a broadcast a crash cut short): the latest definition and FINAL of
 * every poll changed after the partition's own seq, in seq order. */
tally_err_t lifecycle_repair(engine_t *e, history_t *h, const catalog_t *cat, char *errstr,
                             size_t esz);
/* Config polls against the history: absent -> a DEFINE (source config);
 * present with another mode, max_votes, voter_auth or option ids ->
 * TALLY_ERR_CONFIG naming poll and field; options appended in the config ->
 * a DEFINE with them (no recount); other differences -> a warning (the
 * history wins). */
tally_err_t lifecycle_config_polls(const tally_config_t *c, history_t *h, catalog_live_t *live,
                                   char *errstr, size_t esz);

/* A thread that appends CONTROL_FINAL for every poll once now >= closes_at
 * + grace_ms, checking every 250 ms. */
typedef struct lifecycle_sched_s lifecycle_sched_t;
lifecycle_sched_t *lifecycle_sched_start(history_t *h, catalog_live_t *live, uint64_t grace_ms);
void lifecycle_sched_stop(lifecycle_sched_t *s);

#endif
