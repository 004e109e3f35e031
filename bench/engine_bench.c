/* tally-bench engine: the counter engine alone, in-process.
 *
 * One log partition per thread, as in tally (a partition has exactly one
 * writer). Each thread first encodes its own votes with record_encode()
 * (untimed): a first pass gives every voter of its partition one vote, the
 * rest go to voters drawn uniformly or by zipf, with a random option. The
 * timed part is only engine_batch_begin / engine_apply_batch /
 * engine_batch_end over those bytes, 4096 records a batch like tally's
 * workers.
 *
 * Before any speed is printed the engine's totals are checked against the
 * expectation computed while encoding (expect.c): a fast wrong engine is not
 * a result. */
#include <getopt.h>
#include <pthread.h>
#include <string.h>

#include "bench/bench.h"
#include "bench/expect.h"
#include "bench/gen.h"
#include "common/util.h"
#include "engine/engine.h"
#include "engine/voters.h"
#include "log/record.h"

#define BATCH 4096

static const char *help =
    "usage: tally-bench engine [options]\n"
    "\n"
    "Feeds pre-encoded vote records straight into the counter engine, one log\n"
    "partition and one thread per shard, checks the totals, then reports votes/s\n"
    "(total and per thread) and the bytes of engine state per distinct voter.\n"
    "\n"
    "  -t, --threads N          engine threads = partitions (default 1)\n"
    "  -n, --votes N            votes in all (default 10M)\n"
    "      --voters N           distinct voters per poll (default 1M)\n"
    "      --mode MODE          one-per-voter|changeable|unlimited (default changeable)\n"
    "      --options N          options of the poll (default 4)\n"
    "      --config FILE        take polls from tally's INI instead of --mode/--options\n"
    "                           (votes go round-robin over its polls)\n"
    "      --dist uniform|zipf  who votes after the first pass (default uniform)\n"
    "      --zipf-s S           zipf exponent (default 1.0)\n"
    "      --runs N             timed runs over the same records (default 1)\n"
    "      --seed N             generator seed (default 1)\n"
    "      --keys               every vote carries its own Idempotency-Key (the cost of\n"
    "                           the engine's idempotency table; none is a retry)\n"
    "      --json FILE          the results as JSON too ('-' for stdout)\n"
    "  -q, --quiet              no progress on stderr\n";

typedef struct {
    int threads;
    uint64_t votes, voters;
    const char *mode, *config_path;
    int noptions;
    gen_dist_t dist;
    double zipf_s;
    int runs;
    uint64_t seed;
    const char *json_path;
    int quiet;
    int keys;
} eo_t;

typedef struct eb_s eb_t;

typedef struct {
    eb_t *eb;
    int id;
    pthread_t th;
    uint32_t **lists; /* [npolls]: global voter indices of this partition */
    uint32_t *nlist;  /* [npolls] */
    buf_t recs;       /* u16 length + record, repeated */
    uint64_t nrecs;
    expect_poll_t *expect; /* [npolls] */
    uint64_t t0, t1;
} ew_t;

struct eb_s {
    eo_t o;
    tally_config_t *conf;
    int npolls;
    uint8_t *part_of; /* [voters * npolls]: partition of (poll, voter) */
    ew_t *w;
    engine_t *e;
    pthread_barrier_t bar;
    int phase; /* 0: generate, 1: timed run */
};

static void voter_id(uint32_t v, char *buf, size_t *len) { *len = (size_t)sprintf(buf, "v%u", v); }

static void gen_thread(ew_t *w) {
    eb_t *eb = w->eb;
    int T = eb->o.threads, P = eb->npolls;
    uint64_t V = eb->o.voters;
    /* Partition of every (poll, voter), split over the threads. */
    uint64_t lo = V * (uint64_t)w->id / (uint64_t)T, hi = V * (uint64_t)(w->id + 1) / (uint64_t)T;
    char vid[16];
    for (uint64_t v = lo; v < hi; v++) {
        size_t vlen;
        voter_id((uint32_t)v, vid, &vlen);
        for (int i = 0; i < P; i++) {
            const char *pid = eb->conf->polls[i].id;
            vote_record_t r = {
                .poll = pid, .poll_len = strlen(pid), .voter = vid, .voter_len = vlen};
            eb->part_of[v * (uint64_t)P + (uint64_t)i] = (uint8_t)record_partition(&r, T, 0);
        }
    }
    pthread_barrier_wait(&eb->bar);
    /* This partition's voters. */
    w->lists = xcalloc((size_t)P, sizeof *w->lists);
    w->nlist = xcalloc((size_t)P, sizeof *w->nlist);
    w->expect = xcalloc((size_t)P, sizeof *w->expect);
    for (int i = 0; i < P; i++) {
        size_t cap = (size_t)(V / (uint64_t)T + 64);
        w->lists[i] = xmalloc(cap * sizeof(uint32_t));
        for (uint64_t v = 0; v < V; v++) {
            if (eb->part_of[v * (uint64_t)P + (uint64_t)i] != w->id)
                continue;
            if (w->nlist[i] == cap) {
                cap *= 2;
                w->lists[i] = xrealloc(w->lists[i], cap * sizeof(uint32_t));
            }
            w->lists[i][w->nlist[i]++] = (uint32_t)v;
        }
        expect_poll_init(&w->expect[i], eb->conf->polls[i].mode, eb->conf->polls[i].noptions,
                         w->nlist[i]);
    }
    /* This thread's share of the votes. */
    uint64_t n = eb->o.votes / (uint64_t)T + ((uint64_t)w->id < eb->o.votes % (uint64_t)T);
    rng_t rng;
    rng_seed(&rng, eb->o.seed * 1000003u + (uint64_t)w->id);
    uint32_t *cursor = xcalloc((size_t)P, sizeof *cursor);
    buf_reserve(&w->recs, (size_t)n * 32);
    uint64_t ts = now_ms();
    uint8_t rec[RECORD_MAX_LEN];
    char key[32];
    for (uint64_t j = 0; j < n; j++) {
        int i = (int)(j % (uint64_t)P);
        if (w->nlist[i] == 0)
            continue;
        const poll_conf_t *pc = &eb->conf->polls[i];
        uint32_t local = cursor[i] < w->nlist[i]
                             ? cursor[i]++
                             : gen_rank(eb->o.dist, eb->o.zipf_s, w->nlist[i], rng_unit(&rng));
        int opt = (int)(rng_next(&rng) % (uint64_t)pc->noptions);
        size_t vlen;
        voter_id(w->lists[i][local], vid, &vlen);
        vote_record_t r = {
            .ts_ms = ts,
            .poll = pc->id,
            .poll_len = strlen(pc->id),
            .option = pc->options[opt].id,
            .option_len = strlen(pc->options[opt].id),
            .voter = vid,
            .voter_len = vlen,
        };
        if (eb->o.keys) {
            r.key = key;
            r.key_len = (size_t)snprintf(key, sizeof key, "t%dk%llu", w->id, (unsigned long long)j);
        }
        size_t len = record_encode(&r, rec);
        tally_assert(len > 0);
        uint16_t l16 = (uint16_t)len;
        buf_append(&w->recs, &l16, sizeof l16);
        buf_append(&w->recs, rec, len);
        w->nrecs++;
        expect_poll_accept(&w->expect[i], local, opt);
    }
    free(cursor);
}

static void run_thread(ew_t *w) {
    eb_t *eb = w->eb;
    engine_t *e = eb->e;
    int p = w->id;
    const uint8_t *at = (const uint8_t *)w->recs.data, *end = at + w->recs.len;
    pthread_barrier_wait(&eb->bar);
    vlog_msg_t *msgs = xmalloc(sizeof *msgs * BATCH);
    w->t0 = mono_ns();
    uint64_t pos = 0;
    while (at < end) {
        int n = 0;
        for (; n < BATCH && at < end; n++) {
            uint16_t len;
            memcpy(&len, at, sizeof len);
            at += sizeof len;
            pos += sizeof len + len;
            msgs[n] = (vlog_msg_t){p, pos, -1, at, len};
            at += len;
        }
        engine_batch_begin(e, p);
        engine_apply_batch(e, p, msgs, n);
        engine_batch_end(e, p);
    }
    w->t1 = mono_ns();
    free(msgs);
}

static void *thread_main(void *arg) {
    ew_t *w = arg;
    if (w->eb->phase == 0)
        gen_thread(w);
    else
        run_thread(w);
    return NULL;
}

static void run_phase(eb_t *eb, int phase) {
    eb->phase = phase;
    pthread_barrier_init(&eb->bar, NULL, (unsigned)eb->o.threads);
    for (int t = 0; t < eb->o.threads; t++)
        if (pthread_create(&eb->w[t].th, NULL, thread_main, &eb->w[t]) != 0)
            tally_assert(!"cannot start a bench thread");
    for (int t = 0; t < eb->o.threads; t++)
        pthread_join(eb->w[t].th, NULL);
    pthread_barrier_destroy(&eb->bar);
}

/* Compares the engine with the expectation; prints the difference. */
static int check_totals(eb_t *eb, uint64_t nvotes) {
    int ok = 1;
    engine_stats_t s = engine_stats(eb->e);
    if (s.applied != nvotes || s.skipped != 0) {
        fprintf(stderr, "engine: applied %llu and skipped %llu of %llu records\n",
                (unsigned long long)s.applied, (unsigned long long)s.skipped,
                (unsigned long long)nvotes);
        ok = 0;
    }
    for (int i = 0; i < eb->npolls; i++) {
        const poll_conf_t *pc = &eb->conf->polls[i];
        expect_poll_t sum;
        expect_poll_init(&sum, pc->mode, pc->noptions, 0);
        for (int t = 0; t < eb->o.threads; t++)
            expect_poll_add_delta(&sum, &eb->w[t].expect[i]);
        uint64_t *want = xcalloc((size_t)pc->noptions, sizeof *want);
        uint64_t *got = xcalloc((size_t)pc->noptions, sizeof *got);
        expect_poll_totals(&sum, NULL, want);
        engine_poll_totals(eb->e, i, got);
        for (int k = 0; k < pc->noptions; k++)
            if (want[k] != got[k]) {
                fprintf(stderr, "engine: poll %s option %s: expected %llu, engine has %llu\n",
                        pc->id, pc->options[k].id, (unsigned long long)want[k],
                        (unsigned long long)got[k]);
                ok = 0;
            }
        free(want);
        free(got);
        expect_poll_free(&sum);
    }
    return ok;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int parse_opts(int argc, char **argv, eo_t *o) {
    enum {
        O_VOTERS = 256,
        O_MODE,
        O_OPTIONS,
        O_CONFIG,
        O_DIST,
        O_ZIPF,
        O_RUNS,
        O_SEED,
        O_JSON,
        O_KEYS
    };
    static const struct option longopts[] = {{"threads", required_argument, 0, 't'},
                                             {"votes", required_argument, 0, 'n'},
                                             {"voters", required_argument, 0, O_VOTERS},
                                             {"mode", required_argument, 0, O_MODE},
                                             {"options", required_argument, 0, O_OPTIONS},
                                             {"config", required_argument, 0, O_CONFIG},
                                             {"dist", required_argument, 0, O_DIST},
                                             {"zipf-s", required_argument, 0, O_ZIPF},
                                             {"runs", required_argument, 0, O_RUNS},
                                             {"keys", no_argument, 0, O_KEYS},
                                             {"seed", required_argument, 0, O_SEED},
                                             {"json", required_argument, 0, O_JSON},
                                             {"quiet", no_argument, 0, 'q'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->threads = 1;
    o->votes = 10000000;
    o->voters = 1000000;
    o->mode = "changeable";
    o->noptions = 4;
    o->zipf_s = 1.0;
    o->runs = 1;
    o->seed = 1;
    int ch;
    poll_mode_t m;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":t:n:qh", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
        case 't':
            if (bench_parse_int(optarg, 1, 255, &o->threads))
                bad = "--threads: 1..255";
            break;
        case 'n':
            if (bench_parse_count(optarg, &o->votes) || o->votes < 1)
                bad = "--votes: a count >= 1";
            break;
        case O_VOTERS:
            if (bench_parse_count(optarg, &o->voters) || o->voters < 1 ||
                o->voters > UINT32_MAX - 1)
                bad = "--voters: 1..4294967294";
            break;
        case O_MODE:
            if (bench_parse_mode(optarg, &m))
                bad = "--mode: one-per-voter, changeable or unlimited";
            o->mode = optarg;
            break;
        case O_OPTIONS:
            if (bench_parse_int(optarg, 1, 1000, &o->noptions))
                bad = "--options: 1..1000";
            break;
        case O_CONFIG: o->config_path = optarg; break;
        case O_DIST:
            if (!strcmp(optarg, "uniform"))
                o->dist = DIST_UNIFORM;
            else if (!strcmp(optarg, "zipf"))
                o->dist = DIST_ZIPF;
            else
                bad = "--dist: uniform or zipf";
            break;
        case O_ZIPF:
            if (bench_parse_double(optarg, &o->zipf_s) || o->zipf_s <= 0 || o->zipf_s > 10)
                bad = "--zipf-s: (0, 10]";
            break;
        case O_RUNS:
            if (bench_parse_int(optarg, 1, 1000, &o->runs))
                bad = "--runs: 1..1000";
            break;
        case O_SEED:
            if (bench_parse_count(optarg, &o->seed))
                bad = "--seed: a non-negative integer";
            break;
        case O_JSON: o->json_path = optarg; break;
        case O_KEYS: o->keys = 1; break;
        case 'q': o->quiet = 1; break;
        case 'h': fputs(help, stdout); exit(0);
        default:
            return bench_opt_fail("engine", ch, argv);
        }
        if (bad)
            return bench_opt_bad("engine", bad, optarg);
    }
    if (bench_opt_rest("engine", argc, argv) != 0)
        return -1;
    return 0;
}

int bench_engine_main(int argc, char **argv) {
    eb_t *eb = xcalloc(1, sizeof *eb);
    char err[1024] = "";
    int rc = BENCH_EXIT_USAGE;
    json_t *json = NULL;
    double *rates = NULL, *thread_rates = NULL;
    if (parse_opts(argc, argv, &eb->o) != 0)
        goto out;
    char opts[4096] = "";
    for (int k = 0; k < eb->o.noptions; k++)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "%so%d", k ? "," : "", k);
    eb->conf = bench_load_polls(eb->o.config_path, "bench", opts, eb->o.mode, err, sizeof err);
    if (!eb->conf)
        goto out;
    if (eb->conf->npolls == 0) {
        snprintf(err, sizeof err, "%s has no polls", eb->o.config_path);
        goto out;
    }
    rc = BENCH_EXIT_FAIL;
    eb->npolls = eb->conf->npolls;
    int T = eb->o.threads;
    eb->w = xcalloc((size_t)T, sizeof *eb->w);
    for (int t = 0; t < T; t++) {
        eb->w[t].eb = eb;
        eb->w[t].id = t;
    }
    if (!eb->o.quiet)
        fprintf(stderr, "engine: encoding %llu votes of %llu voters x %d poll(s)...\n",
                (unsigned long long)eb->o.votes, (unsigned long long)eb->o.voters, eb->npolls);
    uint64_t g0 = mono_ms();
    eb->part_of = xmalloc((size_t)(eb->o.voters * (uint64_t)eb->npolls));
    run_phase(eb, 0);
    free(eb->part_of);
    eb->part_of = NULL;
    uint64_t nvotes = 0, rec_bytes = 0;
    for (int t = 0; t < T; t++) {
        nvotes += eb->w[t].nrecs;
        rec_bytes += eb->w[t].recs.len;
        for (int i = 0; i < eb->npolls; i++) {
            free(eb->w[t].lists[i]);
            eb->w[t].lists[i] = NULL;
        }
    }
    if (!eb->o.quiet)
        fprintf(stderr, "engine: encoded in %.1f s (%.1f bytes a record); running\n",
                (double)(mono_ms() - g0) / 1000.0,
                (double)rec_bytes / (double)(nvotes ? nvotes : 1));

    const char *mode_name = eb->o.config_path ? "config" : eb->o.mode;
    printf("tally-bench engine: %s, %d poll(s), %d thread(s), %llu votes, %llu voters per poll\n",
           mode_name, eb->npolls, T, (unsigned long long)nvotes, (unsigned long long)eb->o.voters);
    json = json_object();
    bench_json_set_str(json, "mode", mode_name);
    bench_json_set_num(json, "threads", T);
    bench_json_set_num(json, "votes", (double)nvotes);
    bench_json_set_num(json, "voters", (double)eb->o.voters);
    json_t *jruns = bench_json_set(json, "runs", json_array());
    rates = xcalloc((size_t)eb->o.runs, sizeof *rates);
    thread_rates = xcalloc((size_t)eb->o.runs * (size_t)T, sizeof *thread_rates);
    uint64_t distinct = 0, state_bytes = 0, rss_delta = 0;
    for (int r = 0; r < eb->o.runs; r++) {
        uint64_t rss0 = bench_rss_bytes();
        eb->e = engine_new(eb->conf, T);
        run_phase(eb, 1);
        uint64_t rss1 = bench_rss_bytes();
        if (!check_totals(eb, nvotes)) {
            fprintf(stderr,
                    "tally-bench engine: the engine's totals are wrong; no speed reported\n");
            goto out;
        }
        uint64_t t0 = UINT64_MAX, t1 = 0;
        json_t *jr = json_object();
        json_t *jt = bench_json_set(jr, "per_thread", json_array());
        for (int t = 0; t < T; t++) {
            ew_t *w = &eb->w[t];
            t0 = w->t0 < t0 ? w->t0 : t0;
            t1 = w->t1 > t1 ? w->t1 : t1;
            double tr = (double)w->nrecs / ((double)(w->t1 - w->t0) / 1e9);
            thread_rates[r * T + t] = tr;
            json_array_append_new(jt, bench_json_num(tr));
        }
        double secs = (double)(t1 - t0) / 1e9;
        rates[r] = (double)nvotes / secs;
        bench_json_set_num(jr, "seconds", secs);
        bench_json_set_num(jr, "votes_per_sec", rates[r]);
        json_array_append_new(jruns, jr);
        printf("  run %-3d      %.3f s  %.2f M votes/s  (per thread:", r + 1, secs, rates[r] / 1e6);
        for (int t = 0; t < T; t++)
            printf(" %.2f", thread_rates[r * T + t] / 1e6);
        printf(" M/s)\n");
        /* The state: voter tables of every partition and poll. */
        engine_stats_t st = engine_stats(eb->e);
        distinct = st.voters;
        state_bytes = st.state_bytes;
        rss_delta = rss1 > rss0 ? rss1 - rss0 : 0;
        engine_free(eb->e);
        eb->e = NULL;
    }
    printf("  check         OK: every poll's totals equal the expected ones (%llu applied, 0 "
           "skipped)\n",
           (unsigned long long)nvotes);
    double sorted[1000];
    memcpy(sorted, rates, sizeof *rates * (size_t)eb->o.runs);
    qsort(sorted, (size_t)eb->o.runs, sizeof *sorted, cmp_double);
    double med = sorted[eb->o.runs / 2];
    if (eb->o.runs % 2 == 0)
        med = (sorted[eb->o.runs / 2 - 1] + sorted[eb->o.runs / 2]) / 2;
    printf("  votes/s       median %.2f M (min %.2f, max %.2f) over %d run(s); %.2f M per thread\n",
           med / 1e6, sorted[0] / 1e6, sorted[eb->o.runs - 1] / 1e6, eb->o.runs, med / 1e6 / T);
    if (distinct) {
        printf("  state         %llu distinct (poll, voter) pairs in %llu bytes of voter tables: "
               "%.1f bytes per voter (%zu-byte slots); RSS grew %.1f bytes per voter\n",
               (unsigned long long)distinct, (unsigned long long)state_bytes,
               (double)state_bytes / (double)distinct, sizeof(voter_slot_t),
               (double)rss_delta / (double)distinct);
    } else {
        printf("  state         no per-voter state (unlimited mode)\n");
    }
    bench_json_set_num(json, "votes_per_sec", med);
    bench_json_set_num(json, "votes_per_sec_min", sorted[0]);
    bench_json_set_num(json, "votes_per_sec_max", sorted[eb->o.runs - 1]);
    bench_json_set_num(json, "votes_per_sec_per_thread", med / T);
    bench_json_set_num(json, "distinct_voters", (double)distinct);
    bench_json_set_num(json, "state_bytes", (double)state_bytes);
    bench_json_set_num(json, "bytes_per_voter",
                       distinct ? (double)state_bytes / (double)distinct : 0);
    bench_json_set_num(json, "rss_bytes_per_voter",
                       distinct ? (double)rss_delta / (double)distinct : 0);
    json_object_set_new(json, "check_ok", json_boolean(1));
    rc = 0;
    if (eb->o.json_path && bench_json_write(eb->o.json_path, json) != 0) {
        fprintf(stderr, "tally-bench engine: cannot write %s\n", eb->o.json_path);
        rc = BENCH_EXIT_FAIL;
    }
out:
    if (err[0])
        fprintf(stderr, "tally-bench engine: %s\n", err);
    json_decref(json);
    free(rates);
    free(thread_rates);
    if (eb->e)
        engine_free(eb->e);
    for (int t = 0; eb->w && t < eb->o.threads; t++) {
        ew_t *w = &eb->w[t];
        for (int i = 0; w->expect && i < eb->npolls; i++) {
            expect_poll_free(&w->expect[i]);
            free(w->lists[i]);
        }
        free(w->expect);
        free(w->lists);
        free(w->nlist);
        buf_free(&w->recs);
    }
    free(eb->w);
    free(eb->part_of);
    config_free(eb->conf);
    free(eb);
    return rc;
}
