/* Watching a running pipeline: engine lag per partition, readiness, and
 * the scrape-time metrics of the engine and snapshots (see watch.c). */
#ifndef TALLY_WATCH_H
#define TALLY_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "engine/engine.h"
#include "log/vlog.h"

typedef struct watch_s watch_t;

/* e may be NULL (an ingest-only process: nothing to watch). */
watch_t *watch_new(const tally_config_t *c, vlog_t *log, engine_t *e);
/* Also takes its collectors away (watch_metrics_unregister). */
void watch_free(watch_t *w);
/* Samples the positions. @locality one thread (ingest's main loop tick) */
void watch_tick(watch_t *w);
/* Partition p's lag in ms (0: caught up). @locality any thread */
uint64_t watch_lag_ms(const watch_t *w, int p);
/* ingest's ready callback: 1, or 0 with why (engine.ready_lag_ms). */
int watch_ready(void *w, char *why, size_t wsz);
/* Registers the collectors in metrics_default() (lag, records applied and
 * skipped, snapshot age, and the families of later sources). */
void watch_metrics_register(watch_t *w);
void watch_metrics_unregister(watch_t *w);

#endif
