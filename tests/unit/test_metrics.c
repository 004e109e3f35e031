/* The metrics registry and its exposition: exact text for each type,
 * histogram buckets by their upper bound (le), labels, collectors, and
 * counters updated from several threads at once. Not labelled tsan: under
 * TSan, Criterion fails to set up its arena for this binary ("Could not
 * initialize inheritable arena", as for test_json), before any test runs;
 * the registry's atomics are exercised under TSan by test_live. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "common/metrics.h"

static char *render(metrics_t *m) {
    buf_t b = {0};
    metrics_render(m, &b);
    buf_append(&b, "", 1);
    return b.data;
}

Test(metrics, counters_gauges_and_labels_render_exactly) {
    metrics_t *m = metrics_new();
    metric_t *a = metrics_counter(m, "t_votes_total", "votes", NULL);
    metric_t *r1 = metrics_counter(m, "t_rej_total", "refused\nby reason \\", "reason=\"x\"");
    metric_t *r2 = metrics_counter(m, "t_rej_total", "ignored", "reason=\"y\"");
    metric_t *g = metrics_gauge(m, "t_subs", "subscribers", NULL);
    cr_assert_eq(metrics_counter(m, "t_rej_total", "again", "reason=\"x\""), r1, "same series");
    metric_add(a, 41);
    metric_inc(a);
    metric_inc(r2);
    metric_add(g, 5);
    metric_sub(g, 7);
    char *t = render(m);
    cr_assert_str_eq(t, "# HELP t_votes_total votes\n"
                        "# TYPE t_votes_total counter\n"
                        "t_votes_total 42\n"
                        "# HELP t_rej_total refused\\nby reason \\\\\n"
                        "# TYPE t_rej_total counter\n"
                        "t_rej_total{reason=\"x\"} 0\n"
                        "t_rej_total{reason=\"y\"} 1\n"
                        "# HELP t_subs subscribers\n"
                        "# TYPE t_subs gauge\n"
                        "t_subs -2\n");
    free(t);
    metrics_free(m);
}

Test(metrics, histogram_buckets_are_cumulative_by_upper_bound) {
    metrics_t *m = metrics_new();
    static const uint64_t bounds[] = {1000, 5000};
    metric_t *h = metrics_histogram(m, "t_lat_seconds", "latency", NULL, bounds, 2, 1e6);
    /* 1000 is in le=0.001 (bounds are inclusive), 1001 in the next, 9999
     * only in +Inf. */
    metric_observe(h, 0);
    metric_observe(h, 1000);
    metric_observe(h, 1001);
    metric_observe(h, 9999);
    uint64_t count, sum;
    metric_hist_read(h, &count, &sum);
    cr_assert_eq(count, 4);
    cr_assert_eq(sum, 12000);
    char *t = render(m);
    cr_assert_str_eq(t, "# HELP t_lat_seconds latency\n"
                        "# TYPE t_lat_seconds histogram\n"
                        "t_lat_seconds_bucket{le=\"0.001\"} 2\n"
                        "t_lat_seconds_bucket{le=\"0.005\"} 3\n"
                        "t_lat_seconds_bucket{le=\"+Inf\"} 4\n"
                        "t_lat_seconds_sum 0.012\n"
                        "t_lat_seconds_count 4\n");
    free(t);
    metrics_free(m);
}

static void rows(void *arg, metrics_emit_t *e) {
    int *n = arg;
    for (int i = 0; i < *n; i++) {
        char l[32];
        snprintf(l, sizeof l, "partition=\"%d\"", i);
        metrics_emit(e, l, i + 0.5);
    }
}

Test(metrics, collectors_emit_at_scrape_and_may_emit_nothing) {
    metrics_t *m = metrics_new();
    int n = 2;
    metrics_collector(m, "t_lag_seconds", "lag", METRIC_GAUGE, rows, &n);
    char *t = render(m);
    cr_assert_str_eq(t, "# HELP t_lag_seconds lag\n# TYPE t_lag_seconds gauge\n"
                        "t_lag_seconds{partition=\"0\"} 0.5\nt_lag_seconds{partition=\"1\"} 1.5\n");
    free(t);
    metrics_collector(m, "t_lag_seconds", "lag", METRIC_GAUGE, NULL, NULL); /* taken away */
    t = render(m);
    cr_assert_str_eq(t, "# HELP t_lag_seconds lag\n# TYPE t_lag_seconds gauge\n");
    free(t);
    metrics_free(m);
}

static void *bump(void *arg) {
    metric_t **s = arg;
    for (int i = 0; i < 100000; i++) {
        metric_inc(s[0]);
        metric_observe(s[1], (uint64_t)(i % 7));
    }
    return NULL;
}

Test(metrics, updates_from_many_threads_are_all_counted) {
    metrics_t *m = metrics_new();
    static const uint64_t bounds[] = {3};
    metric_t *s[2] = {metrics_counter(m, "t_n_total", "n", NULL),
                      metrics_histogram(m, "t_h", "h", NULL, bounds, 1, 1)};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, bump, s);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(metric_value(s[0]), 400000);
    uint64_t count, sum, expect_sum = 0;
    for (int i = 0; i < 100000; i++)
        expect_sum += (uint64_t)(i % 7);
    metric_hist_read(s[1], &count, &sum);
    cr_assert_eq(count, 400000);
    cr_assert_eq(sum, 4 * expect_sum);
    metrics_free(m);
}
