#include <getopt.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "common/utf8.h"
#include "common/util.h"

int bench_parse_count(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    double mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1e3, end++;
    else if (*end == 'm' || *end == 'M')
        mult = 1e6, end++;
    else if (*end == 'g' || *end == 'G')
        mult = 1e9, end++;
    if (*end != '\0')
        return -1;
    v *= mult;
    if (v > 1e18 || v != floor(v))
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int bench_parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int bench_parse_mode(const char *s, poll_mode_t *m) {
    return poll_mode_parse(s, m) == TALLY_OK ? 0 : -1;
}

tally_config_t *bench_load_polls(const char *config_path, const char *polls_csv,
                                 const char *options_csv, const char *mode, char *errstr,
                                 size_t esz) {
    tally_config_t *c = NULL;
    if (config_path) {
        config_load(config_path, NULL, 0, &c, errstr, esz); /* NULL on error */
        return c;
    }
    c = config_new_defaults();
    char *list = xstrdup(polls_csv ? polls_csv : "bench");
    int rc = 0;
    for (char *save = NULL, *id = strtok_r(list, ",", &save); id && rc == 0;
         id = strtok_r(NULL, ",", &save)) {
        char section[128];
        snprintf(section, sizeof section, "poll.%s", id);
        rc = config_set(c, section, "options", options_csv ? options_csv : "a,b,c,d", errstr, esz);
        if (rc == 0)
            rc = config_set(c, section, "mode", mode ? mode : "one-per-voter", errstr, esz);
    }
    free(list);
    if (rc == 0)
        rc = config_validate(c, errstr, esz);
    if (rc != 0) {
        config_free(c);
        return NULL;
    }
    return c;
}

static double ms(uint64_t ns) { return (double)ns / 1e6; }

void bench_print_latency(FILE *out, const char *label, const hist_t *h) {
    if (hist_count(h) == 0) {
        fprintf(out, "  %-13s no samples\n", label);
        return;
    }
    fprintf(out, "  %-13s p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n", label,
            ms(hist_percentile(h, 50)), ms(hist_percentile(h, 90)), ms(hist_percentile(h, 99)),
            ms(hist_percentile(h, 99.9)), ms(h->max), hist_mean(h) / 1e6);
}

json_t *bench_json_num(double v) {
    json_t *j;
    if (!isfinite(v))
        j = json_null();
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        j = json_integer((json_int_t)v);
    else
        j = json_real(v);
    tally_assert(j);
    return j;
}

json_t *bench_json_set(json_t *o, const char *key, json_t *child) {
    tally_assert(child); /* out of memory */
    int rc = json_object_set_new(o, key, child);
    tally_assert(rc == 0);
    return child;
}

void bench_json_set_num(json_t *o, const char *key, double v) {
    bench_json_set(o, key, bench_json_num(v));
}

void bench_json_set_str(json_t *o, const char *key, const char *s) {
    buf_t b = {0};
    utf8_put_valid(&b, s, strlen(s));
    bench_json_set(o, key, json_stringn_nocheck(b.data ? b.data : "", b.len));
    buf_free(&b);
}

json_t *bench_json_latency(const hist_t *h) {
    json_t *o = json_object();
    tally_assert(o);
    bench_json_set_num(o, "count", (double)hist_count(h));
    bench_json_set_num(o, "p50", ms(hist_percentile(h, 50)));
    bench_json_set_num(o, "p90", ms(hist_percentile(h, 90)));
    bench_json_set_num(o, "p99", ms(hist_percentile(h, 99)));
    bench_json_set_num(o, "p99_9", ms(hist_percentile(h, 99.9)));
    bench_json_set_num(o, "max", ms(hist_count(h) ? h->max : 0));
    bench_json_set_num(o, "mean", hist_mean(h) / 1e6);
    return o;
}

int bench_json_write(const char *path, const json_t *item) {
    /* 15 significant digits, as before: measurements, not exact values. */
    char *s = json_dumps(item, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    if (!s)
        return -1;
    size_t len = strlen(s);
    FILE *f = !strcmp(path, "-") ? stdout : fopen(path, "w");
    int rc = -1;
    if (f) {
        rc = fwrite(s, 1, len, f) == len && fputc('\n', f) != EOF ? 0 : -1;
        if (f != stdout && fclose(f) != 0)
            rc = -1;
    }
    free(s);
    return rc;
}

uint64_t bench_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long long size = 0, rss = 0;
    int n = fscanf(f, "%llu %llu", &size, &rss);
    fclose(f);
    return n == 2 ? rss * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

uint64_t bench_seed(void) { return mono_ns() ^ ((uint64_t)getpid() << 32) ^ now_ms(); }

int bench_opt_fail(const char *cmd, int ch, char **argv) {
    if (ch == ':')
        fprintf(stderr, "tally-bench %s: option %s needs a value\n", cmd, argv[optind - 1]);
    else
        fprintf(stderr, "tally-bench %s: unknown option '%s' (see --help)\n", cmd,
                argv[optind - 1]);
    return -1;
}

int bench_opt_bad(const char *cmd, const char *why, const char *value) {
    fprintf(stderr, "tally-bench %s: %s (got '%s')\n", cmd, why, value);
    return -1;
}

int bench_opt_rest(const char *cmd, int argc, char **argv) {
    if (optind < argc) {
        fprintf(stderr, "tally-bench %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return -1;
    }
    return 0;
}

int bench_parse_int(const char *s, int lo, int hi, int *out) {
    uint64_t u;
    if (bench_parse_count(s, &u) != 0 || u < (uint64_t)lo || u > (uint64_t)hi)
        return -1;
    *out = (int)u;
    return 0;
}
