/* A small metrics registry rendered as Prometheus text exposition (format
 * 0.0.4): counters, gauges and fixed-bucket histograms, each series a
 * family name plus a fixed label set given at registration, and collectors
 * that write series computed at scrape time (engine lag per partition,
 * snapshot age, values another module owns).
 *
 * Hot paths touch one atomic per update (relaxed: a scrape needs no order
 * between series, only that each value is whole). Registration takes the
 * registry's lock and is meant for start-up; series live as long as the
 * registry (never freed one by one), so a pointer kept in a static is
 * always valid.
 *
 * Histogram values are integers in a base unit (nanoseconds, records) with
 * a divisor for the exposition (1e9 shows nanoseconds as seconds), so
 * observing is an integer add, without a CAS loop on a double.
 *
 * @locality any thread, every function. */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/util.h"

typedef struct metrics_s metrics_t;
typedef struct metric_s metric_t; /* one series */

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type_t;

/* The process's registry, created on first use. */
metrics_t *metrics_default(void);
metrics_t *metrics_new(void);
void metrics_free(metrics_t *m);

/* labels: NULL, or the label pairs as they appear between the braces
 * (`reason="unknown_poll"`), values already escaped. A second registration
 * of the same name and labels returns the first series. help and type are
 * the family's (the first registration's). */
metric_t *metrics_counter(metrics_t *m, const char *name, const char *help, const char *labels);
metric_t *metrics_gauge(metrics_t *m, const char *name, const char *help, const char *labels);
/* bounds[0..n): ascending upper bounds in base units; +Inf is implied.
 * divisor: base units per exposed unit (1e9 for ns shown as seconds). */
metric_t *metrics_histogram(metrics_t *m, const char *name, const char *help, const char *labels,
                            const uint64_t *bounds, int n, double divisor);

void metric_add(metric_t *s, uint64_t n); /* counter or gauge */
static inline void metric_inc(metric_t *s) {
    metric_add(s, 1);
}
void metric_set(metric_t *s, int64_t v);      /* gauge */
void metric_sub(metric_t *s, uint64_t n);     /* gauge */
void metric_observe(metric_t *s, uint64_t v); /* histogram, in base units */
uint64_t metric_value(const metric_t *s);     /* counter or gauge (as uint64) */
/* Histogram: observations so far and their sum (base units). */
void metric_hist_read(const metric_t *s, uint64_t *count, uint64_t *sum);

/* A collector writes a family's series at scrape time through
 * metrics_emit (value already in the exposed unit). Rendered after the
 * registered series, in registration order. A family with a collector may
 * emit no rows at all (then only its HELP and TYPE lines appear). */
typedef struct metrics_emit_s metrics_emit_t;
void metrics_emit(metrics_emit_t *e, const char *labels, double value);
void metrics_collector(metrics_t *m, const char *name, const char *help, metric_type_t type,
                       void (*fn)(void *arg, metrics_emit_t *e), void *arg);

/* Appends the text exposition of every family to out. */
void metrics_render(metrics_t *m, buf_t *out);

/* Monotonic nanoseconds, for latency histograms. */
static inline uint64_t metrics_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Common bucket sets. */
extern const uint64_t METRICS_LATENCY_NS[]; /* 50 us .. 10 s */
extern const int METRICS_LATENCY_NS_N;
extern const uint64_t METRICS_BATCH_SIZES[]; /* 1 .. 65536 */
extern const int METRICS_BATCH_SIZES_N;

#endif
