/* tally-bench replay: how fast `tally replay` rebuilds the totals from a log.
 *
 * Writes N generated votes through the vote log's own API (vlog_append,
 * durable: into a temporary log.dir, or with --kafka into a new topic), then
 * runs the real `tally replay` binary over it and times it from spawn to exit.
 * The replayed totals that tally publishes are checked against the
 * expectation before any rate is printed. */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <spawn.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/expect.h"
#include "bench/gen.h"
#include "bench/verify.h"
#include "common/util.h"
#include "log/record.h"
#include "log/vlog.h"

extern char **environ;

static const char *help =
    "usage: tally-bench replay [options]\n"
    "\n"
    "Generates a vote log of N votes in a temporary directory (through the log's\n"
    "own API), times `tally replay` over it, checks the totals it publishes and\n"
    "reports records/s.\n"
    "\n"
    "  -n, --votes N            votes in the log (default 1M)\n"
    "      --voters N           distinct voters per poll (default 100k)\n"
    "      --mode MODE          one-per-voter|changeable|unlimited (default changeable)\n"
    "      --options N          options of the poll (default 4)\n"
    "      --config FILE        polls from tally's INI instead (passed to tally replay)\n"
    "      --partitions N       log partitions (default 4)\n"
    "  -t, --threads N          engine.threads of tally replay (default 2)\n"
    "      --runs N             replays of the same log (default 1)\n"
    "      --tally PATH         the tally binary (default: next to tally-bench)\n"
    "      --dir DIR            put the log here and keep it (default: a temp dir,\n"
    "                           removed afterwards)\n"
    "      --kafka BROKERS      use a Kafka vote log on these brokers instead (a new\n"
    "                           topic tally-bench-XXXXXXXX per run, left behind)\n"
    "      --seed N             generator seed (default 1)\n"
    "      --json FILE          the results as JSON too ('-' for stdout)\n"
    "  -q, --quiet              no progress on stderr\n";

typedef struct {
    uint64_t votes, voters;
    const char *mode, *config_path, *tally, *dir, *json_path, *kafka;
    int noptions, partitions, threads, runs, quiet;
    uint64_t seed;
} ro_t;

static _Atomic uint64_t acked, ack_errors;

static void on_ack(void *opaque, vlog_err_t err) {
    (void)opaque;
    if (err != VLOG_OK)
        atomic_fetch_add(&ack_errors, 1);
    atomic_fetch_add(&acked, 1);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int parse_opts(int argc, char **argv, ro_t *o) {
    enum {
        O_VOTERS = 256,
        O_MODE,
        O_OPTIONS,
        O_CONFIG,
        O_PARTS,
        O_RUNS,
        O_TALLY,
        O_DIR,
        O_SEED,
        O_JSON,
        O_KAFKA
    };
    static const struct option longopts[] = {{"votes", required_argument, 0, 'n'},
                                             {"voters", required_argument, 0, O_VOTERS},
                                             {"mode", required_argument, 0, O_MODE},
                                             {"options", required_argument, 0, O_OPTIONS},
                                             {"config", required_argument, 0, O_CONFIG},
                                             {"partitions", required_argument, 0, O_PARTS},
                                             {"threads", required_argument, 0, 't'},
                                             {"runs", required_argument, 0, O_RUNS},
                                             {"tally", required_argument, 0, O_TALLY},
                                             {"dir", required_argument, 0, O_DIR},
                                             {"seed", required_argument, 0, O_SEED},
                                             {"json", required_argument, 0, O_JSON},
                                             {"kafka", required_argument, 0, O_KAFKA},
                                             {"quiet", no_argument, 0, 'q'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->votes = 1000000;
    o->voters = 100000;
    o->mode = "changeable";
    o->noptions = 4;
    o->partitions = 4;
    o->threads = 2;
    o->runs = 1;
    o->seed = 1;
    int ch;
    poll_mode_t m;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":n:t:qh", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
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
        case O_PARTS:
            if (bench_parse_int(optarg, 1, 1024, &o->partitions))
                bad = "--partitions: 1..1024";
            break;
        case 't':
            if (bench_parse_int(optarg, 1, 256, &o->threads))
                bad = "--threads: 1..256";
            break;
        case O_RUNS:
            if (bench_parse_int(optarg, 1, 100, &o->runs))
                bad = "--runs: 1..100";
            break;
        case O_TALLY: o->tally = optarg; break;
        case O_DIR: o->dir = optarg; break;
        case O_SEED:
            if (bench_parse_count(optarg, &o->seed))
                bad = "--seed: a non-negative integer";
            break;
        case O_JSON: o->json_path = optarg; break;
        case O_KAFKA: o->kafka = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'h': fputs(help, stdout); exit(0);
        default: return bench_opt_fail("replay", ch, argv);
        }
        if (bad)
            return bench_opt_bad("replay", bad, optarg);
    }
    if (bench_opt_rest("replay", argc, argv) != 0)
        return -1;
    return 0;
}

/* The tally binary: --tally, else the one next to this executable. */
static void find_tally(const ro_t *o, char *out, size_t size) {
    if (o->tally) {
        snprintf(out, size, "%s", o->tally);
        return;
    }
    char self[2048];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            const char *cands[] = {"%s/tally", "%s/../tally"};
            for (size_t i = 0; i < 2; i++) {
                snprintf(out, size, cands[i], self);
                if (access(out, X_OK) == 0)
                    return;
            }
        }
    }
    snprintf(out, size, "tally");
}

/* Writes the votes into the log; fills the expectation. */
static int write_log(const ro_t *o, tally_config_t *c, expect_poll_t *expect, uint64_t *bytes,
                     char *err, size_t esz) {
    vlog_t *l = vlog_open(c, VLOG_F_WRITE, on_ack, NULL, err, esz);
    if (!l)
        return -1;
    rng_t rng;
    rng_seed(&rng, o->seed);
    uint64_t ts = now_ms();
    uint8_t rec[RECORD_MAX_LEN];
    char vid[16];
    *bytes = 0;
    for (uint64_t j = 0; j < o->votes; j++) {
        int i = (int)(j % (uint64_t)c->npolls);
        const poll_conf_t *pc = &c->polls[i];
        uint32_t voter = (uint32_t)(rng_next(&rng) % o->voters);
        int opt = (int)(rng_next(&rng) % (uint64_t)pc->noptions);
        int vlen = snprintf(vid, sizeof vid, "v%u", voter);
        vote_record_t v = {
            .ts_ms = ts,
            .poll = pc->id,
            .poll_len = strlen(pc->id),
            .option = pc->options[opt].id,
            .option_len = strlen(pc->options[opt].id),
            .voter = vid,
            .voter_len = (size_t)vlen,
        };
        size_t len = record_encode(&v, rec);
        tally_assert(len > 0);
        int part = record_partition(&v, vlog_partitions(l), j);
        char key[RECORD_LOG_KEY_MAX]; /* keyed as ingest keys it */
        vlog_meta_t meta = {key, record_log_key(&v, key), v.ts_ms};
        vlog_err_t e;
        while ((e = vlog_append(l, part, rec, len, &meta, NULL)) == VLOG_FULL)
            vlog_flush(l, 60000); /* let the writer catch up */
        if (e != VLOG_OK) {
            snprintf(err, esz, "log append: %s", vlog_err2str(e));
            vlog_close(l);
            return -1;
        }
        /* A voter's votes share a partition, so the log keeps their order:
         * the engine will see them in this order. */
        expect_poll_accept(&expect[i], voter, opt);
        *bytes += len + 8;
    }
    int rc = vlog_flush(l, 120000);
    vlog_close(l);
    if (rc != 0 || atomic_load(&ack_errors)) {
        snprintf(err, esz, "the log did not take every vote (%llu errors)",
                 (unsigned long long)atomic_load(&ack_errors));
        return -1;
    }
    return 0;
}

/* Runs argv, returns its exit status; its stdout lands in out. */
static int spawn_capture(char *const *argv, buf_t *out, char *err, size_t esz) {
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(err, esz, "pipe: %s", strerror(errno));
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        snprintf(err, esz, "cannot run %s: %s", argv[0], strerror(rc));
        return -1;
    }
    char chunk[4096];
    ssize_t n;
    while ((n = read(fds[0], chunk, sizeof chunk)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        buf_append(out, chunk, (size_t)n);
    }
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st)) {
        snprintf(err, esz, "%s died of signal %d", argv[0], WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        return -1;
    }
    return WEXITSTATUS(st);
}

static int write_ini(const char *path, const tally_config_t *c) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "; written by tally-bench replay\n");
    for (int i = 0; i < c->npolls; i++) {
        const poll_conf_t *p = &c->polls[i];
        fprintf(f, "[poll.%s]\nmode = %s\noptions = ", p->id, poll_mode_name(p->mode));
        for (int k = 0; k < p->noptions; k++)
            fprintf(f, "%s%s", k ? ", " : "", p->options[k].id);
        fprintf(f, "\n");
    }
    return fclose(f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int bench_replay_main(int argc, char **argv) {
    ro_t o;
    char err[1024] = "";
    int rc = BENCH_EXIT_USAGE;
    tally_config_t *c = NULL;
    expect_poll_t *expect = NULL;
    json_t *json = NULL;
    char dir[1024] = "", ini[1100], tally[PATH_MAX];
    int made_dir = 0;
    if (parse_opts(argc, argv, &o) != 0)
        return BENCH_EXIT_USAGE;
    char opts[4096] = "";
    for (int k = 0; k < o.noptions; k++)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "%so%d", k ? "," : "", k);
    c = bench_load_polls(o.config_path, "bench", opts, o.mode, err, sizeof err);
    if (!c)
        goto out;
    if (c->npolls == 0) {
        snprintf(err, sizeof err, "%s has no polls", o.config_path);
        goto out;
    }
    rc = BENCH_EXIT_FAIL;
    if (o.dir) {
        snprintf(dir, sizeof dir, "%.1000s", o.dir);
        if (mkdir_p(dir) != 0) {
            snprintf(err, sizeof err, "%.900s: %s", dir, strerror(errno));
            goto out;
        }
    } else {
        const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(dir, sizeof dir, "%.900s/tally-bench-replay.XXXXXX", tmp);
        if (!mkdtemp(dir)) {
            snprintf(err, sizeof err, "mkdtemp %.900s: %s", dir, strerror(errno));
            goto out;
        }
        made_dir = 1;
    }
    char logdir[1100], snapdir[1100], pubdir[1100];
    snprintf(logdir, sizeof logdir, "%s/log", dir);
    snprintf(snapdir, sizeof snapdir, "%s/snapshots", dir);
    snprintf(pubdir, sizeof pubdir, "%s/public", dir);
    char parts[32];
    snprintf(parts, sizeof parts, "%d", o.partitions);
    if (config_set(c, "log", "dir", logdir, err, sizeof err) != 0 ||
        config_set(c, "log", "partitions", parts, err, sizeof err) != 0 ||
        config_set(c, "log", "group_commit_us", "0", err, sizeof err) != 0)
        goto out;
    char topic[64] = "";
    if (o.kafka && config_set(c, "kafka", "brokers", o.kafka, err, sizeof err) != 0)
        goto out;
    int kafka = c->kafka_brokers && c->kafka_brokers[0];
    if (kafka) {
        /* A topic of its own: replay reads the whole topic, so it must hold
         * exactly the votes written here. */
        rng_t idr;
        rng_seed(&idr, bench_seed());
        snprintf(topic, sizeof topic, "tally-bench-%08llx",
                 (unsigned long long)(rng_next(&idr) >> 32));
        if (config_set(c, "kafka", "topic", topic, err, sizeof err) != 0 ||
            config_set(c, "kafka", "partitions", parts, err, sizeof err) != 0)
            goto out;
    }
    expect = xcalloc((size_t)c->npolls, sizeof *expect);
    for (int i = 0; i < c->npolls; i++)
        expect_poll_init(&expect[i], c->polls[i].mode, c->polls[i].noptions, (uint32_t)o.voters);
    if (!o.quiet)
        fprintf(stderr, "replay: writing %llu votes into %s%s...\n", (unsigned long long)o.votes,
                kafka ? "Kafka topic " : "", kafka ? topic : logdir);
    uint64_t w0 = mono_ms(), log_bytes = 0;
    if (write_log(&o, c, expect, &log_bytes, err, sizeof err) != 0)
        goto out;
    /* Every vote is durable (acknowledged) when write_log returns. */
    double write_secs = (double)(mono_ms() - w0) / 1e3;
    if (!o.quiet)
        fprintf(stderr, "replay: log written in %.1f s (%.1f MB)\n", (double)(mono_ms() - w0) / 1e3,
                (double)log_bytes / 1e6);
    if (o.config_path) {
        snprintf(ini, sizeof ini, "%.1090s", o.config_path);
    } else {
        snprintf(ini, sizeof ini, "%s/bench.ini", dir);
        if (write_ini(ini, c) != 0) {
            snprintf(err, sizeof err, "%.900s: %s", ini, strerror(errno));
            goto out;
        }
    }
    find_tally(&o, tally, sizeof tally);
    char s_log[1200], s_snap[1200], s_pub[1200], s_parts[64], s_threads[64], s_brokers[1200],
        s_topic[128], s_kparts[64];
    snprintf(s_log, sizeof s_log, "log.dir=%s", logdir);
    snprintf(s_snap, sizeof s_snap, "engine.snapshot_dir=%s", snapdir);
    snprintf(s_pub, sizeof s_pub, "publisher.dir=%s", pubdir);
    snprintf(s_parts, sizeof s_parts, "log.partitions=%d", o.partitions);
    snprintf(s_threads, sizeof s_threads, "engine.threads=%d", o.threads);
    snprintf(s_brokers, sizeof s_brokers, "kafka.brokers=%.1100s", kafka ? c->kafka_brokers : "");
    snprintf(s_topic, sizeof s_topic, "kafka.topic=%s", topic);
    snprintf(s_kparts, sizeof s_kparts, "kafka.partitions=%d", o.partitions);
    char *args[32];
    int na = 0;
    char *fixed[] = {tally, "replay", "-q", "-c",    ini,  "-s",      s_log, "-s",     s_snap,
                     "-s",  s_pub,    "-s", s_parts, "-s", s_threads, "-s",  s_brokers};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        args[na++] = fixed[i];
    if (kafka) {
        args[na++] = "-s";
        args[na++] = s_topic;
        args[na++] = "-s";
        args[na++] = s_kparts;
    }
    args[na] = NULL;

    printf("tally-bench replay: %llu votes (%.1f MB of records) in the %s log, %d partitions, "
           "%d engine threads, %s\n",
           (unsigned long long)o.votes, (double)log_bytes / 1e6, kafka ? "Kafka" : "file",
           o.partitions, o.threads, tally);
    json = json_object();
    bench_json_set_num(json, "votes", (double)o.votes);
    bench_json_set_str(json, "log", kafka ? "kafka" : "file");
    if (kafka)
        bench_json_set_str(json, "topic", topic);
    bench_json_set_num(json, "log_bytes", (double)log_bytes);
    /* The write phase: vlog_append with the log's own producer settings and
     * no client in front, as `kcat -P` has none. */
    bench_json_set_num(json, "write_seconds", write_secs);
    bench_json_set_num(json, "write_records_per_sec",
                       write_secs > 0 ? (double)o.votes / write_secs : 0);
    bench_json_set_num(json, "partitions", o.partitions);
    bench_json_set_num(json, "threads", o.threads);
    json_t *jruns = bench_json_set(json, "runs", json_array());
    double rates[100];
    for (int r = 0; r < o.runs; r++) {
        buf_t out = {0};
        uint64_t t0 = mono_ns();
        int st = spawn_capture(args, &out, err, sizeof err);
        double secs = (double)(mono_ns() - t0) / 1e9;
        buf_append(&out, "", 1);
        if (st != 0) {
            if (st > 0)
                snprintf(err, sizeof err, "tally replay exited %d:\n%s", st, out.data);
            buf_free(&out);
            goto out;
        }
        unsigned long long n = 0;
        double own = 0;
        const char *line = strstr(out.data, "replayed ");
        if (!line ||
            sscanf(line, "replayed %llu records from the %*s log (%*d partitions) in %lf s", &n,
                   &own) != 2) {
            snprintf(err, sizeof err, "tally replay said something unexpected:\n%s", out.data);
            buf_free(&out);
            goto out;
        }
        buf_free(&out);
        if (n != o.votes) {
            snprintf(err, sizeof err, "tally replay read %llu records, the log has %llu", n,
                     (unsigned long long)o.votes);
            goto out;
        }
        /* The totals tally published must be the expected ones. */
        for (int i = 0; i < c->npolls; i++) {
            const poll_conf_t *p = &c->polls[i];
            uint64_t *want = xcalloc((size_t)p->noptions, sizeof *want);
            uint64_t *got = xcalloc((size_t)p->noptions, sizeof *got);
            expect_poll_totals(&expect[i], NULL, want);
            int bad = verify_read_poll(pubdir, p, got, err, sizeof err) != 0 ||
                      memcmp(want, got, sizeof *want * (size_t)p->noptions) != 0;
            if (bad && !err[0])
                snprintf(err, sizeof err, "poll %s: replayed totals differ from the log's votes",
                         p->id);
            free(want);
            free(got);
            if (bad)
                goto out;
        }
        rates[r] = (double)o.votes / secs;
        printf("  run %-3d      %.3f s wall (tally's own %.3f s): %.2f M records/s wall, %.2f M "
               "records/s tally's own\n",
               r + 1, secs, own, rates[r] / 1e6, own > 0 ? (double)o.votes / own / 1e6 : 0);
        json_t *jr = json_object();
        bench_json_set_num(jr, "seconds", secs);
        bench_json_set_num(jr, "tally_seconds", own);
        bench_json_set_num(jr, "records_per_sec", rates[r]);
        json_array_append_new(jruns, jr);
    }
    qsort(rates, (size_t)o.runs, sizeof *rates, cmp_double);
    double med = o.runs % 2 ? rates[o.runs / 2] : (rates[o.runs / 2 - 1] + rates[o.runs / 2]) / 2;
    printf("  check         OK: the published totals equal the log's votes\n");
    printf("  records/s     median %.2f M (min %.2f, max %.2f), process start to exit\n", med / 1e6,
           rates[0] / 1e6, rates[o.runs - 1] / 1e6);
    bench_json_set_num(json, "records_per_sec", med);
    bench_json_set_num(json, "records_per_sec_min", rates[0]);
    bench_json_set_num(json, "records_per_sec_max", rates[o.runs - 1]);
    json_object_set_new(json, "check_ok", json_boolean(1));
    rc = 0;
    err[0] = '\0';
    if (o.json_path && bench_json_write(o.json_path, json) != 0) {
        fprintf(stderr, "tally-bench replay: cannot write %s\n", o.json_path);
        rc = BENCH_EXIT_FAIL;
    }
out:
    if (err[0])
        fprintf(stderr, "tally-bench replay: %s\n", err);
    json_decref(json);
    if (made_dir)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; expect && i < c->npolls; i++)
        expect_poll_free(&expect[i]);
    free(expect);
    config_free(c);
    return rc;
}
