/* The metrics registry and its text exposition. See metrics.h. */
#include "common/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

const uint64_t METRICS_LATENCY_NS[] = {
    50000,     100000,     250000,     500000,     1000000,     2500000,
    5000000,   10000000,   25000000,   50000000,   100000000,   250000000,
    500000000, 1000000000, 2500000000, 5000000000, 10000000000,
};
const int METRICS_LATENCY_NS_N = sizeof METRICS_LATENCY_NS / sizeof METRICS_LATENCY_NS[0];
const uint64_t METRICS_BATCH_SIZES[] = {1,   2,    4,    8,    16,   32,    64,    128,  256,
                                        512, 1024, 2048, 4096, 8192, 16384, 32768, 65536};
const int METRICS_BATCH_SIZES_N = sizeof METRICS_BATCH_SIZES / sizeof METRICS_BATCH_SIZES[0];

typedef struct family_s family_t;

struct metric_s {
    family_t *fam;
    char *labels;             /* NULL: none */
    _Atomic uint64_t value;   /* counter, gauge (two's complement for a gauge) */
    _Atomic uint64_t *counts; /* histogram: [nbounds + 1], not cumulative */
    _Atomic uint64_t sum;
    metric_t *next; /* in the family */
};

struct family_s {
    char *name, *help;
    metric_type_t type;
    const uint64_t *bounds; /* histogram */
    int nbounds;
    double divisor;
    void (*collect)(void *arg, metrics_emit_t *e);
    void *collect_arg;
    metric_t *series, *last;
    family_t *next;
};

struct metrics_s {
    pthread_mutex_t mu; /* registration and rendering */
    family_t *head, *tail;
};

struct metrics_emit_s {
    buf_t *out;
    const family_t *fam;
};

metrics_t *metrics_new(void) {
    metrics_t *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static pthread_once_t default_once = PTHREAD_ONCE_INIT;
static metrics_t *default_reg;
static void default_init(void) {
    default_reg = metrics_new();
}

metrics_t *metrics_default(void) {
    pthread_once(&default_once, default_init);
    return default_reg;
}

void metrics_free(metrics_t *m) {
    if (!m)
        return;
    for (family_t *f = m->head, *fn; f; f = fn) {
        fn = f->next;
        for (metric_t *s = f->series, *sn; s; s = sn) {
            sn = s->next;
            free(s->labels);
            free((void *)s->counts);
            free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* @locks m->mu held */
static family_t *family_get(metrics_t *m, const char *name, const char *help, metric_type_t type) {
    for (family_t *f = m->head; f; f = f->next)
        if (!strcmp(f->name, name))
            return f;
    family_t *f = xcalloc(1, sizeof *f);
    f->name = xstrdup(name);
    f->help = xstrdup(help);
    f->type = type;
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    return f;
}

static int labels_eq(const char *a, const char *b) {
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static metric_t *series_get(metrics_t *m, const char *name, const char *help, metric_type_t type,
                            const char *labels, const uint64_t *bounds, int n, double divisor) {
    pthread_mutex_lock(&m->mu);
    family_t *f = family_get(m, name, help, type);
    tally_assert(f->type == type);
    metric_t *s;
    for (s = f->series; s; s = s->next)
        if (labels_eq(s->labels, labels))
            goto out;
    if (type == METRIC_HISTOGRAM && !f->bounds) {
        f->bounds = bounds;
        f->nbounds = n;
        f->divisor = divisor > 0 ? divisor : 1;
    }
    s = xcalloc(1, sizeof *s);
    s->fam = f;
    s->labels = labels && labels[0] ? xstrdup(labels) : NULL;
    if (type == METRIC_HISTOGRAM)
        s->counts = xcalloc((size_t)f->nbounds + 1, sizeof *s->counts);
    if (f->last)
        f->last->next = s;
    else
        f->series = s;
    f->last = s;
out:
    pthread_mutex_unlock(&m->mu);
    return s;
}

metric_t *metrics_counter(metrics_t *m, const char *name, const char *help, const char *labels) {
    return series_get(m, name, help, METRIC_COUNTER, labels, NULL, 0, 1);
}

metric_t *metrics_gauge(metrics_t *m, const char *name, const char *help, const char *labels) {
    return series_get(m, name, help, METRIC_GAUGE, labels, NULL, 0, 1);
}

metric_t *metrics_histogram(metrics_t *m, const char *name, const char *help, const char *labels,
                            const uint64_t *bounds, int n, double divisor) {
    return series_get(m, name, help, METRIC_HISTOGRAM, labels, bounds, n, divisor);
}

/* fn runs under the registry's lock: it must not register. fn NULL takes
 * a collector away (its arg is about to be freed). */
void metrics_collector(metrics_t *m, const char *name, const char *help, metric_type_t type,
                       void (*fn)(void *arg, metrics_emit_t *e), void *arg) {
    pthread_mutex_lock(&m->mu);
    family_t *f = family_get(m, name, help, type);
    f->collect = fn;
    f->collect_arg = arg;
    pthread_mutex_unlock(&m->mu);
}

/* Values are only read by a scrape: relaxed is enough (metrics.h). */
void metric_add(metric_t *s, uint64_t n) {
    atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
}
void metric_sub(metric_t *s, uint64_t n) {
    atomic_fetch_sub_explicit(&s->value, n, memory_order_relaxed);
}
void metric_set(metric_t *s, int64_t v) {
    atomic_store_explicit(&s->value, (uint64_t)v, memory_order_relaxed);
}
uint64_t metric_value(const metric_t *s) {
    return atomic_load_explicit(&s->value, memory_order_relaxed);
}

void metric_observe(metric_t *s, uint64_t v) {
    const family_t *f = s->fam;
    int lo = 0, hi = f->nbounds; /* first bound >= v, or nbounds (+Inf) */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (f->bounds[mid] >= v)
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&s->counts[lo], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum, v, memory_order_relaxed);
}

void metric_hist_read(const metric_t *s, uint64_t *count, uint64_t *sum) {
    uint64_t c = 0;
    for (int i = 0; i <= s->fam->nbounds; i++)
        c += atomic_load_explicit(&s->counts[i], memory_order_relaxed);
    *count = c;
    *sum = atomic_load_explicit(&s->sum, memory_order_relaxed);
}

/* ---- exposition ---- */

static void put_double(buf_t *out, double v) {
    if (isinf(v))
        buf_puts(out, v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v))
        buf_puts(out, "NaN");
    else if (v > -1e15 && v < 1e15 && v == (double)(long long)v)
        buf_printf(out, "%.0f", v);
    else
        buf_printf(out, "%.9g", v);
}

/* name{labels,extra} : either part may be absent. */
static void put_name(buf_t *out, const char *name, const char *suffix, const char *labels,
                     const char *extra) {
    buf_puts(out, name);
    if (suffix)
        buf_puts(out, suffix);
    if (!labels && !extra)
        return;
    buf_puts(out, "{");
    if (labels)
        buf_puts(out, labels);
    if (labels && extra)
        buf_puts(out, ",");
    if (extra)
        buf_puts(out, extra);
    buf_puts(out, "}");
}

/* HELP text escapes backslash and newline (0.0.4). */
static void put_help(buf_t *out, const family_t *f) {
    static const char *types[] = {"counter", "gauge", "histogram"};
    buf_printf(out, "# HELP %s ", f->name);
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\')
            buf_puts(out, "\\\\");
        else if (*p == '\n')
            buf_puts(out, "\\n");
        else
            buf_append(out, p, 1);
    }
    buf_printf(out, "\n# TYPE %s %s\n", f->name, types[f->type]);
}

void metrics_emit(metrics_emit_t *e, const char *labels, double value) {
    put_name(e->out, e->fam->name, NULL, labels && labels[0] ? labels : NULL, NULL);
    buf_puts(e->out, " ");
    put_double(e->out, value);
    buf_puts(e->out, "\n");
}

static void render_hist(buf_t *out, const family_t *f, const metric_t *s) {
    uint64_t cum = 0;
    char le[48];
    for (int i = 0; i <= f->nbounds; i++) {
        cum += atomic_load_explicit(&s->counts[i], memory_order_relaxed);
        if (i < f->nbounds) {
            buf_t v = {0};
            put_double(&v, (double)f->bounds[i] / f->divisor);
            snprintf(le, sizeof le, "le=\"%s\"", v.data);
            buf_free(&v);
        } else {
            snprintf(le, sizeof le, "le=\"+Inf\"");
        }
        put_name(out, f->name, "_bucket", s->labels, le);
        buf_printf(out, " %llu\n", (unsigned long long)cum);
    }
    /* The sum is read after the buckets: a concurrent observation may be in
     * one and not the other; Prometheus tolerates that skew. */
    put_name(out, f->name, "_sum", s->labels, NULL);
    buf_puts(out, " ");
    put_double(out, (double)atomic_load_explicit(&s->sum, memory_order_relaxed) / f->divisor);
    buf_puts(out, "\n");
    put_name(out, f->name, "_count", s->labels, NULL);
    buf_printf(out, " %llu\n", (unsigned long long)cum);
}

void metrics_render(metrics_t *m, buf_t *out) {
    pthread_mutex_lock(&m->mu);
    for (const family_t *f = m->head; f; f = f->next) {
        put_help(out, f);
        for (const metric_t *s = f->series; s; s = s->next) {
            if (f->type == METRIC_HISTOGRAM) {
                render_hist(out, f, s);
                continue;
            }
            uint64_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
            put_name(out, f->name, NULL, s->labels, NULL);
            if (f->type == METRIC_GAUGE)
                buf_printf(out, " %lld\n", (long long)(int64_t)v);
            else
                buf_printf(out, " %llu\n", (unsigned long long)v);
        }
        if (f->collect) {
            metrics_emit_t e = {out, f};
            f->collect(f->collect_arg, &e);
        }
    }
    pthread_mutex_unlock(&m->mu);
}
