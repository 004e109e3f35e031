/* tally-bench restart: how soon `tally run` serves exact totals after a
 * restart on a state of N voters.
 *
 * Builds the state once: N distinct voters of one changeable poll, one vote
 * each, written through the vote log's own API (vlog_append, durable), then
 * counted by the engine in-process up to the log's end, which writes each
 * partition's snapshot as `tally run` and `tally replay` do. Then, per run:
 * empties publisher.dir (so nothing left from before can be taken for an
 * answer), spawns the real `tally run` on a free loopback port and asks
 * GET /polls/bench.json every millisecond until the totals it serves equal
 * the votes written; the time from spawn to that answer is the restart time.
 * Then SIGTERM, and the next run. */
#include <arpa/inet.h>
#include <jansson.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/verify.h"
#include "common/util.h"
#include "engine/engine.h"
#include "log/record.h"
#include "log/vlog.h"

extern char **environ;

#define POLL_ID "bench"
#define NOPTIONS 4
#define RUN_TIMEOUT_MS 600000

static const char *help =
    "usage: tally-bench restart [options]\n"
    "\n"
    "Builds a state of N voters (one changeable poll, one vote each: a log and\n"
    "the engine's snapshots of it), then times `tally run` from spawn until\n"
    "GET /polls/bench.json serves the exact totals.\n"
    "\n"
    "      --voters N           distinct voters (default 1M)\n"
    "      --partitions N       log partitions (default 4)\n"
    "  -t, --threads N          engine.threads (default 2)\n"
    "      --runs N             restarts on the same state (default 3)\n"
    "      --tally PATH         the tally binary (default: next to tally-bench)\n"
    "      --dir DIR            build the state here and keep it; a state already\n"
    "                           there for the same voters and partitions is reused\n"
    "                           (default: a temp dir, removed afterwards)\n"
    "      --seed N             generator seed (default 1)\n"
    "      --json FILE          the results as JSON too ('-' for stdout)\n"
    "  -q, --quiet              no progress on stderr\n";

typedef struct {
    uint64_t voters, seed;
    int partitions, threads, runs, quiet;
    const char *tally, *dir, *json_path;
} so_t;

static _Atomic uint64_t ack_errors;

static void on_ack(void *opaque, vlog_err_t err) {
    (void)opaque;
    if (err != VLOG_OK)
        atomic_fetch_add(&ack_errors, 1);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int parse_opts(int argc, char **argv, so_t *o) {
    enum { O_VOTERS = 256, O_PARTS, O_RUNS, O_TALLY, O_DIR, O_SEED, O_JSON };
    static const struct option longopts[] = {{"voters", required_argument, 0, O_VOTERS},
                                             {"partitions", required_argument, 0, O_PARTS},
                                             {"threads", required_argument, 0, 't'},
                                             {"runs", required_argument, 0, O_RUNS},
                                             {"tally", required_argument, 0, O_TALLY},
                                             {"dir", required_argument, 0, O_DIR},
                                             {"seed", required_argument, 0, O_SEED},
                                             {"json", required_argument, 0, O_JSON},
                                             {"quiet", no_argument, 0, 'q'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->voters = 1000000;
    o->partitions = 4;
    o->threads = 2;
    o->runs = 3;
    o->seed = 1;
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":t:qh", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
        case O_VOTERS:
            if (bench_parse_count(optarg, &o->voters) || o->voters < 1 ||
                o->voters > UINT32_MAX - 1)
                bad = "--voters: 1..4294967294";
            break;
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
        case 'q': o->quiet = 1; break;
        case 'h': fputs(help, stdout); exit(0);
        default: return bench_opt_fail("restart", ch, argv);
        }
        if (bad)
            return bench_opt_bad("restart", bad, optarg);
    }
    return bench_opt_rest("restart", argc, argv);
}

/* The tally binary: --tally, else the one next to this executable. */
static void find_tally(const so_t *o, char *out, size_t size) {
    char self[PATH_MAX];
    ssize_t n;
    if (o->tally) {
        snprintf(out, size, "%s", o->tally);
        return;
    }
    if ((n = readlink("/proc/self/exe", self, sizeof self - 1)) > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(out, size, "%.*s/tally", (int)(size - 8), self);
            if (access(out, X_OK) == 0)
                return;
        }
    }
    snprintf(out, size, "tally");
}

/* Voter i's option: deterministic from the seed, so a kept state is
 * recognized and its totals recomputed without reading it. */
static int voter_option(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull; /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (int)((z ^ (z >> 31)) % NOPTIONS);
}

/* The log: voter i votes once, for voter_option(i). */
static int write_log(const so_t *o, tally_config_t *c, char *err, size_t esz) {
    vlog_t *l = vlog_open(c, VLOG_F_WRITE, on_ack, NULL, err, esz);
    if (!l)
        return -1;
    const poll_conf_t *pc = &c->polls[0];
    uint64_t ts = now_ms();
    uint8_t rec[RECORD_MAX_LEN];
    char vid[16];
    int rc = -1;
    for (uint64_t i = 0; i < o->voters; i++) {
        int opt = voter_option(o->seed, i);
        int vlen = snprintf(vid, sizeof vid, "v%llu", (unsigned long long)i);
        vote_record_t v = {.ts_ms = ts,
                           .poll = pc->id,
                           .poll_len = strlen(pc->id),
                           .option = pc->options[opt].id,
                           .option_len = strlen(pc->options[opt].id),
                           .voter = vid,
                           .voter_len = (size_t)vlen};
        size_t len = record_encode(&v, rec);
        tally_assert(len > 0);
        vlog_err_t e;
        while ((e = vlog_append(l, record_partition(&v, vlog_partitions(l), i), rec, len, NULL,
                                NULL)) == VLOG_FULL)
            vlog_flush(l, 60000); /* let the writer catch up */
        if (e != VLOG_OK) {
            snprintf(err, esz, "log append: %s", vlog_err2str(e));
            goto out;
        }
    }
    if (vlog_flush(l, 120000) != 0 || atomic_load(&ack_errors)) {
        snprintf(err, esz, "the log did not take every vote");
        goto out;
    }
    rc = 0;
out:
    vlog_close(l);
    return rc;
}

/* Counts the whole log in-process, as `tally replay` does; the workers write
 * each partition's snapshot when they stop. */
static int write_snapshots(tally_config_t *c, char *err, size_t esz) {
    int rc = -1;
    engine_t *e = NULL;
    vlog_t *l = vlog_open(c, VLOG_F_READ, on_ack, NULL, err, esz);
    if (!l)
        return -1;
    int np = vlog_partitions(l);
    uint64_t *ends = xcalloc((size_t)np, sizeof *ends);
    if (vlog_end_positions(l, ends, err, esz) != 0)
        goto out;
    e = engine_new(c, np);
    engine_run_opts_t ro = {.log = l,
                            .snapshot_dir = c->snapshot_dir,
                            .snapshot_interval_ms = 86400000,
                            .threads = c->engine_threads,
                            .stop_at = ends};
    if (engine_start(e, &ro, err, esz) != 0)
        goto out;
    for (;;) {
        int done = 1;
        for (int p = 0; p < np; p++)
            done &= engine_position(e, p) >= ends[p];
        if (done || engine_failed(e))
            break;
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    engine_stop(e);
    if (engine_join(e, err, esz) != 0)
        goto out;
    rc = 0;
out:
    engine_free(e);
    vlog_close(l);
    free(ends);
    return rc;
}

/* A free loopback port (bound, read back, released). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* GET path from 127.0.0.1:port, Connection: close. The body lands in body;
 * returns the status, or -1 when nothing answered. */
static int http_get(int port, const char *path, buf_t *body) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int status = -1;
    buf_t resp = {0};
    char req[256], chunk[8192];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        write(fd, req, (size_t)n) != n)
        goto out;
    ssize_t got;
    while ((got = read(fd, chunk, sizeof chunk)) > 0)
        buf_append(&resp, chunk, (size_t)got);
    buf_append(&resp, "", 1);
    const char *sep = strstr(resp.data, "\r\n\r\n");
    if (!sep || sscanf(resp.data, "HTTP/1.%*d %d", &status) != 1) {
        status = -1;
        goto out;
    }
    body->len = 0;
    buf_append(body, sep + 4, resp.len - 1 - (size_t)(sep + 4 - (const char *)resp.data));
out:
    if (fd >= 0)
        close(fd);
    buf_free(&resp);
    return status;
}

/* One restart: spawn to exact totals served, in seconds; -1 on failure. */
static double restart_once(char *const *args, int port, const poll_conf_t *pc, const uint64_t *want,
                           char *err, size_t esz) {
    pid_t pid;
    double secs = -1;
    buf_t body = {0};
    uint64_t got[NOPTIONS];
    uint64_t t0 = mono_ns();
    int rc = posix_spawn(&pid, args[0], NULL, NULL, args, environ);
    if (rc != 0) {
        snprintf(err, esz, "cannot run %s: %s", args[0], strerror(rc));
        return -1;
    }
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            snprintf(err, esz, "tally run exited before serving the totals (status %d)", st);
            pid = -1;
            goto out;
        }
        char perr[256];
        if (http_get(port, "/polls/" POLL_ID ".json", &body) == 200 &&
            verify_parse_poll(body.data, body.len, pc, got, perr, sizeof perr) == 0 &&
            !memcmp(got, want, sizeof got)) {
            secs = (double)(mono_ns() - t0) / 1e9;
            break;
        }
        if (mono_ns() - t0 > (uint64_t)RUN_TIMEOUT_MS * 1000000) {
            snprintf(err, esz, "tally run did not serve the exact totals within %d s",
                     RUN_TIMEOUT_MS / 1000);
            goto out;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
out:
    if (pid > 0) {
        kill(pid, SIGTERM);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    buf_free(&body);
    return secs;
}

static int write_ini(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f,
            "; written by tally-bench restart\n[poll.%s]\nmode = changeable\noptions = ", POLL_ID);
    for (int k = 0; k < NOPTIONS; k++)
        fprintf(f, "%so%d", k ? ", " : "", k);
    fprintf(f, "\n");
    return fclose(f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int bench_restart_main(int argc, char **argv) {
    so_t o;
    char err[1024] = "", dir[1024] = "", tally[PATH_MAX];
    int rc = BENCH_EXIT_USAGE, made_dir = 0;
    tally_config_t *c = NULL;
    json_t *json = NULL;
    if (parse_opts(argc, argv, &o) != 0)
        return BENCH_EXIT_USAGE;
    rc = BENCH_EXIT_FAIL;
    if (o.dir) {
        snprintf(dir, sizeof dir, "%.1000s", o.dir);
        if (mkdir_p(dir) != 0) {
            snprintf(err, sizeof err, "%.900s: %s", dir, strerror(errno));
            goto out;
        }
    } else {
        const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(dir, sizeof dir, "%.900s/tally-bench-restart.XXXXXX", tmp);
        if (!mkdtemp(dir)) {
            snprintf(err, sizeof err, "mkdtemp %.900s: %s", dir, strerror(errno));
            goto out;
        }
        made_dir = 1;
    }
    char ini[1100], logdir[1100], snapdir[1100], pubdir[1100], stamp[1100];
    snprintf(ini, sizeof ini, "%s/bench.ini", dir);
    snprintf(logdir, sizeof logdir, "%s/log", dir);
    snprintf(snapdir, sizeof snapdir, "%s/snapshots", dir);
    snprintf(pubdir, sizeof pubdir, "%s/public", dir);
    snprintf(stamp, sizeof stamp, "%s/state", dir);
    char parts[32], threads[32];
    snprintf(parts, sizeof parts, "%d", o.partitions);
    snprintf(threads, sizeof threads, "%d", o.threads);
    if (write_ini(ini) != 0) {
        snprintf(err, sizeof err, "%.900s: %s", ini, strerror(errno));
        goto out;
    }
    config_load(ini, NULL, 0, &c, err, sizeof err); /* c stays NULL on error */
    if (!c || config_set(c, "log", "dir", logdir, err, sizeof err) != 0 ||
        config_set(c, "log", "partitions", parts, err, sizeof err) != 0 ||
        config_set(c, "log", "group_commit_us", "0", err, sizeof err) != 0 ||
        config_set(c, "engine", "snapshot_dir", snapdir, err, sizeof err) != 0 ||
        config_set(c, "engine", "threads", threads, err, sizeof err) != 0 ||
        config_validate(c, err, sizeof err) != 0)
        goto out;

    /* The state, unless this dir already holds the same one. */
    char want_stamp[128], have_stamp[128] = "";
    snprintf(want_stamp, sizeof want_stamp, "voters=%llu partitions=%d seed=%llu\n",
             (unsigned long long)o.voters, o.partitions, (unsigned long long)o.seed);
    FILE *sf = fopen(stamp, "r");
    if (sf) {
        if (!fgets(have_stamp, sizeof have_stamp, sf))
            have_stamp[0] = '\0';
        fclose(sf);
    }
    if (strcmp(want_stamp, have_stamp) != 0) {
        nftw(logdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        nftw(snapdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        unlink(stamp);
        if (!o.quiet)
            fprintf(stderr, "restart: writing %llu voters into %s...\n",
                    (unsigned long long)o.voters, logdir);
        uint64_t t0 = mono_ms();
        if (write_log(&o, c, err, sizeof err) != 0)
            goto out;
        uint64_t t1 = mono_ms();
        if (write_snapshots(c, err, sizeof err) != 0)
            goto out;
        if (!o.quiet)
            fprintf(stderr, "restart: log written in %.1f s, counted and snapshotted in %.1f s\n",
                    (double)(t1 - t0) / 1e3, (double)(mono_ms() - t1) / 1e3);
        sf = fopen(stamp, "w");
        if (!sf || fputs(want_stamp, sf) < 0 || fclose(sf) != 0) {
            snprintf(err, sizeof err, "%.900s: cannot write", stamp);
            goto out;
        }
    }
    uint64_t want[NOPTIONS] = {0};
    for (uint64_t i = 0; i < o.voters; i++)
        want[voter_option(o.seed, i)]++;
    uint64_t snap_bytes = 0;
    for (int p = 0; p < o.partitions; p++) {
        /* Only the newest of each partition is read. */
        unsigned long long best = 0;
        char name[64] = "";
        DIR *d = opendir(snapdir);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            unsigned long long pos;
            int part;
            if (sscanf(de->d_name, "p%3d-%16llx.snap", &part, &pos) == 2 && part == p &&
                pos >= best) {
                best = pos;
                snprintf(name, sizeof name, "%.63s", de->d_name);
            }
        }
        if (d)
            closedir(d);
        struct stat st;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", snapdir, name);
        if (name[0] && stat(path, &st) == 0)
            snap_bytes += (uint64_t)st.st_size;
    }

    find_tally(&o, tally, sizeof tally);
    int port = free_port();
    if (port < 0) {
        snprintf(err, sizeof err, "no free loopback port");
        goto out;
    }
    char s_listen[64], s_log[1200], s_snap[1200], s_pub[1200], s_parts[64], s_threads[64];
    snprintf(s_listen, sizeof s_listen, "server.listen=127.0.0.1:%d", port);
    snprintf(s_log, sizeof s_log, "log.dir=%s", logdir);
    snprintf(s_snap, sizeof s_snap, "engine.snapshot_dir=%s", snapdir);
    snprintf(s_pub, sizeof s_pub, "publisher.dir=%s", pubdir);
    snprintf(s_parts, sizeof s_parts, "log.partitions=%d", o.partitions);
    snprintf(s_threads, sizeof s_threads, "engine.threads=%d", o.threads);
    char *args[] = {tally, "run",  "-q", "-c",  ini,  "-s",    s_listen, "-s",      s_log,
                    "-s",  s_snap, "-s", s_pub, "-s", s_parts, "-s",     s_threads, NULL};

    printf("tally-bench restart: %llu voters (changeable, 1 poll), %d partitions, %.1f MB of "
           "snapshots, %d engine threads, %s\n",
           (unsigned long long)o.voters, o.partitions, (double)snap_bytes / 1e6, o.threads, tally);
    json_t *jruns = json_array();
    json = json_pack("{s:I,s:i,s:i,s:I,s:o}", "voters", (json_int_t)o.voters, "partitions",
                     o.partitions, "threads", o.threads, "snapshot_bytes", (json_int_t)snap_bytes,
                     "runs", jruns);
    double secs[100];
    for (int r = 0; r < o.runs; r++) {
        /* Nothing published before this run may answer for it. */
        nftw(pubdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        secs[r] = restart_once(args, port, &c->polls[0], want, err, sizeof err);
        if (secs[r] < 0)
            goto out;
        printf("  run %-3d      %.3f s from spawn to the exact totals served\n", r + 1, secs[r]);
        json_array_append_new(jruns, json_real(secs[r]));
    }
    qsort(secs, (size_t)o.runs, sizeof *secs, cmp_double);
    double med = o.runs % 2 ? secs[o.runs / 2] : (secs[o.runs / 2 - 1] + secs[o.runs / 2]) / 2;
    printf("  check         OK: GET /polls/%s.json served %llu votes, equal to the log's\n",
           POLL_ID, (unsigned long long)o.voters);
    printf("  restart       median %.3f s (min %.3f, max %.3f)\n", med, secs[0], secs[o.runs - 1]);
    json_object_set_new(json, "seconds", json_real(med));
    json_object_set_new(json, "seconds_min", json_real(secs[0]));
    json_object_set_new(json, "seconds_max", json_real(secs[o.runs - 1]));
    json_object_set_new(json, "check_ok", json_true());
    rc = 0;
    err[0] = '\0';
    if (o.json_path && bench_json_write(o.json_path, json) != 0) {
        fprintf(stderr, "tally-bench restart: cannot write %s\n", o.json_path);
        rc = BENCH_EXIT_FAIL;
    }
out:
    if (err[0])
        fprintf(stderr, "tally-bench restart: %s\n", err);
    json_decref(json);
    if (made_dir)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    config_free(c);
    return rc;
}
