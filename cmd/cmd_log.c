/* tally log verify | salvage: look at the embedded log's file without
 * opening it as a log (vlog_file_examine: read-only, nothing written into
 * log.dir), report what a scan finds, and copy every intact frame into a
 * new log directory. */
#include <jansson.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/cmd.h"
#include "common/util.h"
#include "log/vlog.h"

static const char *help_log = "usage: tally log verify  -c FILE [-s S.K=V ...] [--json]\n"
                              "       tally log salvage -c FILE [-s S.K=V ...] --out DIR\n"
                              "\n"
                              "Tools for a damaged embedded vote log (log.dir/votes.log); see\n"
                              "`tally log verify --help` and `tally log salvage --help`.\n";

static const char *help_verify =
    "usage: tally log verify -c FILE [-s section.key=value ...] [--json]\n"
    "\n"
    "Scans log.dir/votes.log from its first byte (read-only: nothing in log.dir is\n"
    "written, no lock is needed) and reports the intact frames per partition, every\n"
    "damaged byte range with the intact frames after it, and a tail of bad bytes\n"
    "after the last intact frame (a torn write when no longer than one group commit\n"
    "write, 16 MiB: `tally run` cuts it at open; it was never acknowledged).\n"
    "\n"
    "It may run while `tally run` is up: a tail is then reported as a commit in\n"
    "flight and does not count against the log.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  configuration (log.dir, log.partitions)\n"
    "  -s, --set S.K=V    override a key\n"
    "      --json         one JSON object on stdout instead of text\n"
    "\n"
    "Exit status: 0 clean, 1 damaged or torn (or the log cannot be read),\n"
    "2 usage or configuration error.\n";

static const char *help_salvage =
    "usage: tally log salvage -c FILE [-s section.key=value ...] --out DIR\n"
    "\n"
    "Writes a new log directory DIR (votes.log and META) holding every intact frame\n"
    "of log.dir/votes.log, in order, and reports exactly which byte ranges of the\n"
    "original were left out. The original is only read, never changed; DIR must\n"
    "not exist or be empty, and must not be log.dir. Refused while `tally run`\n"
    "holds the log (stop it first: it would still be writing).\n"
    "\n"
    "Frame offsets change, so snapshots do not fit the salvaged log: DIR/META gets\n"
    "a new log id, and snapshots of the original are not used with it (each\n"
    "partition is recounted from the salvaged log; see README, Recovery).\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  configuration (log.dir, log.partitions)\n"
    "  -s, --set S.K=V    override a key\n"
    "      --out DIR      the new log directory\n"
    "\n"
    "Exit status: 0 salvaged, 1 runtime failure, 2 usage or configuration error.\n";

typedef struct {
    cmd_opts_t o;
    int json;
    const char *out;
} log_opts_t;

/* Parses the options of `tally log SUB`; exits on --help or a bad option. */
static void log_parse(int argc, char **argv, const char *sub, const char *help, log_opts_t *lo) {
    static const struct option longopts[] = {{"config", required_argument, 0, 'c'},
                                             {"set", required_argument, 0, 's'},
                                             {"help", no_argument, 0, 'h'},
                                             {"quiet", no_argument, 0, 'q'},
                                             {"json", no_argument, 0, 'j'},
                                             {"out", required_argument, 0, 'o'},
                                             {0, 0, 0, 0}};
    memset(lo, 0, sizeof *lo);
    lo->o.overrides = xcalloc((size_t)argc + 1, sizeof(char *));
    int is_verify = !strcmp(sub, "verify"), ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":c:s:hq", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': lo->o.config_path = optarg; break;
        case 's': lo->o.overrides[lo->o.noverrides++] = optarg; break;
        case 'q': lo->o.quiet = 1; break;
        case 'h': fputs(help, stdout); exit(0);
        case 'j':
            if (!is_verify)
                goto bad;
            lo->json = 1;
            break;
        case 'o':
            if (is_verify)
                goto bad;
            lo->out = optarg;
            break;
        case ':':
            fprintf(stderr, "tally log %s: option %s needs a value\n", sub, argv[optind - 1]);
            exit(EXIT_USAGE);
        default:
        bad:
            fprintf(stderr, "tally log %s: unknown option '%s' (see tally log %s --help)\n", sub,
                    argv[optind - 1], sub);
            exit(EXIT_USAGE);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tally log %s: unexpected argument '%s'\n", sub, argv[optind]);
        exit(EXIT_USAGE);
    }
    if (!lo->o.config_path) {
        fprintf(stderr, "tally log %s: -c FILE is required (see tally log %s --help)\n", sub, sub);
        exit(EXIT_USAGE);
    }
    if (!is_verify && (!lo->out || !lo->out[0])) {
        fprintf(stderr,
                "tally log salvage: --out DIR is required (see tally log salvage --help)\n");
        exit(EXIT_USAGE);
    }
    tally_log_quiet = lo->o.quiet;
}

/* The kafka backend has no file to look at. */
static int file_log_only(const tally_config_t *c, const char *sub) {
    if (c->kafka_brokers && c->kafka_brokers[0]) {
        fprintf(stderr,
                "tally log %s: kafka.brokers is set: the vote log is the Kafka topic, not a "
                "file (these tools are for the embedded log)\n",
                sub);
        return -1;
    }
    return 0;
}

/* A tail below the durable end CHECKPOINT names was acknowledged: damage,
 * refused at open, not a torn write. */
static int tail_acked(const vlog_examine_t *x) {
    return x->scan.has_tail && x->scan.tail.start < x->durable;
}

static const char *scan_status(const vlog_examine_t *x) {
    const vlog_scan_t *s = &x->scan;
    if (!vlog_scan_clean(s) || tail_acked(x))
        return "damaged";
    if (s->has_tail && !x->live)
        return "torn";
    return "clean";
}

static void print_range(const char *what, const vlog_range_t *r, const char *after) {
    printf("  %s: bytes [%llu, %llu) (%llu bytes: %s)%s\n", what, (unsigned long long)r->start,
           (unsigned long long)r->end, (unsigned long long)(r->end - r->start), r->why, after);
}

static void verify_text(const vlog_examine_t *x) {
    const vlog_scan_t *s = &x->scan;
    printf("%s: %llu bytes, %llu intact frames (and %llu commit frames, one a write), %d "
           "partitions (META)\n",
           x->path, (unsigned long long)s->size, (unsigned long long)s->frames,
           (unsigned long long)s->commits, x->npartitions);
    if (x->live)
        printf("  in use by a running tally: bytes past the last frame may be a commit in "
               "flight\n");
    for (int p = 0; p < s->npartitions; p++)
        printf("  partition %d: %llu frames\n", p, (unsigned long long)s->part_frames[p]);
    for (size_t k = 0; k < s->ndamage; k++) {
        char after[96];
        if (s->damage[k].frames_after)
            snprintf(after, sizeof after, ", %llu intact frames after it",
                     (unsigned long long)s->damage[k].frames_after);
        else /* only commit frames after it: its write was acknowledged */
            snprintf(after, sizeof after,
                     ", only commit frames after it (its write was acknowledged)");
        print_range("damage", &s->damage[k], after);
    }
    if (s->has_tail) {
        uint64_t n = s->tail.end - s->tail.start;
        print_range(n > VLOG_MAX_WRITE ? "damage (tail longer than one write)"
                    : tail_acked(x)    ? "damage (below the end CHECKPOINT says was durable)"
                    : x->live          ? "tail (a commit in flight, or torn)"
                                       : "torn tail",
                    &s->tail,
                    n > VLOG_MAX_WRITE || tail_acked(x) ? ""
                    : x->live                           ? ""
                              : ", never acknowledged: `tally run` cuts it at open");
    }
    printf("status: %s\n", scan_status(x));
}

static json_t *range_json(const vlog_range_t *r) {
    return json_pack("{s:I,s:I,s:I,s:s}", "start", (json_int_t)r->start, "end", (json_int_t)r->end,
                     "bytes", (json_int_t)(r->end - r->start), "why", r->why ? r->why : "");
}

static void verify_json(const vlog_examine_t *x) {
    const vlog_scan_t *s = &x->scan;
    json_t *pf = json_array(), *dmg = json_array(), *tail = json_null();
    for (int p = 0; p < s->npartitions; p++)
        json_array_append_new(pf, json_integer((json_int_t)s->part_frames[p]));
    for (size_t k = 0; k < s->ndamage; k++) {
        json_t *d = range_json(&s->damage[k]);
        json_object_set_new(d, "frames_after", json_integer((json_int_t)s->damage[k].frames_after));
        json_array_append_new(dmg, d);
    }
    if (s->has_tail) {
        json_decref(tail);
        tail = range_json(&s->tail);
        json_object_set_new(
            tail, "torn",
            json_boolean(s->tail.end - s->tail.start <= VLOG_MAX_WRITE && !tail_acked(x)));
    }
    json_t *jpath = json_string(x->path); /* NULL when the path is not UTF-8 */
    json_t *o = json_pack("{s:o,s:I,s:i,s:b,s:I,s:I,s:o,s:I,s:o,s:o,s:s}", "log",
                          jpath ? jpath : json_string("(path is not valid UTF-8)"), "size",
                          (json_int_t)s->size, "partitions", x->npartitions, "live", x->live,
                          "frames", (json_int_t)s->frames, "commit_frames", (json_int_t)s->commits,
                          "frames_per_partition", pf, "valid_end", (json_int_t)s->valid_end,
                          "damage", dmg, "tail", tail, "status", scan_status(x));
    tally_assert(o != NULL);
    char *text = json_dumps(o, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    json_decref(o);
}

static int log_verify(int argc, char **argv) {
    log_opts_t lo;
    log_parse(argc, argv, "verify", help_verify, &lo);
    tally_config_t *c = cmd_load_config(&lo.o);
    char err[1024];
    vlog_examine_t x;
    int rc = EXIT_USAGE;
    if (file_log_only(c, "verify") != 0)
        goto out;
    tally_err_t e = vlog_file_examine(c, &x, err, sizeof err);
    if (e != TALLY_OK) {
        fprintf(stderr, "tally log verify: %s\n", err);
        rc = tally_err_exit(e);
        goto out;
    }
    if (lo.json)
        verify_json(&x);
    else
        verify_text(&x);
    rc = strcmp(scan_status(&x), "clean") ? TALLY_EXIT_RUNTIME : TALLY_EXIT_OK;
    vlog_file_examine_close(&x);
out:
    config_free(c);
    free(lo.o.overrides);
    return rc;
}

/* Entries of dir other than . and .. (0 when it cannot be read). */
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* 0 when dir does not exist or is an empty directory. */
static int out_dir_usable(const char *dir, char *why, size_t wsz) {
    struct stat st;
    if (stat(dir, &st) != 0)
        return errno == ENOENT ? 0 : (snprintf(why, wsz, "%s", strerror(errno)), -1);
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, wsz, "exists and is not a directory");
        return -1;
    }
    if (dir_entries(dir) != 0) {
        snprintf(why, wsz, "exists and is not empty (salvage writes a new log only)");
        return -1;
    }
    return 0;
}

/* Copies src[from, to) to out at its end. */
static int copy_range(int src, int out, uint64_t from, uint64_t to, uint8_t *buf, size_t bsz) {
    while (from < to) {
        size_t n = to - from < bsz ? (size_t)(to - from) : bsz;
        ssize_t got = pread(src, buf, n, (off_t)from);
        if (got <= 0) {
            if (got < 0 && errno == EINTR)
                continue;
            if (got == 0)
                errno = EIO; /* the file shrank under us */
            return -1;
        }
        for (ssize_t w = 0; w < got;) {
            ssize_t k = write(out, buf + w, (size_t)(got - w));
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            w += k;
        }
        from += (uint64_t)got;
    }
    return 0;
}

static int log_salvage(int argc, char **argv) {
    log_opts_t lo;
    log_parse(argc, argv, "salvage", help_salvage, &lo);
    tally_config_t *c = cmd_load_config(&lo.o);
    char err[1024] = "", why[256], real_log[PATH_MAX], real_out[PATH_MAX], path[PATH_MAX + 64];
    vlog_examine_t x = {.fd = -1, .lockfd = -1};
    int rc = EXIT_USAGE, out = -1;
    uint8_t *buf = NULL;
    if (file_log_only(c, "salvage") != 0)
        goto out;
    if (out_dir_usable(lo.out, why, sizeof why) != 0) {
        fprintf(stderr, "tally log salvage: --out %s: %s\n", lo.out, why);
        goto out;
    }
    if (realpath(c->log_dir, real_log) && realpath(lo.out, real_out) &&
        !strcmp(real_log, real_out)) {
        fprintf(stderr, "tally log salvage: --out is log.dir itself; salvage never writes in "
                        "place\n");
        goto out;
    }
    tally_err_t e = vlog_file_examine(c, &x, err, sizeof err);
    if (e != TALLY_OK) {
        fprintf(stderr, "tally log salvage: %s\n", err);
        rc = tally_err_exit(e);
        goto out;
    }
    rc = TALLY_EXIT_RUNTIME;
    if (x.live) {
        fprintf(stderr, "tally log salvage: %s is in use by a running tally: stop it first\n",
                x.path);
        goto out;
    }
    /* The lost ranges, in file order: damage, then the tail. */
    const vlog_scan_t *s = &x.scan;
    size_t nlost = s->ndamage + (s->has_tail ? 1 : 0);
    vlog_range_t *lost = xcalloc(nlost ? nlost : 1, sizeof *lost);
    memcpy(lost, s->damage, s->ndamage * sizeof *lost);
    if (s->has_tail)
        lost[s->ndamage] = s->tail;
    if (mkdir_p(lo.out) != 0) {
        fprintf(stderr, "tally log salvage: --out %s: %s\n", lo.out, strerror(errno));
        free(lost);
        goto out;
    }
    snprintf(path, sizeof path, "%s/votes.log", lo.out);
    out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    buf = xmalloc(1u << 20);
    uint64_t at = s->from, kept = 0;
    int ok = out >= 0;
    for (size_t k = 0; ok && k <= nlost; k++) {
        uint64_t to = k < nlost ? lost[k].start : s->size;
        ok = copy_range(x.fd, out, at, to, buf, 1u << 20) == 0;
        kept += to - at;
        if (k < nlost)
            at = lost[k].end;
    }
    /* Another byte layout: a new log id, so that no snapshot or
     * CHECKPOINT of the original (whose positions do not apply here) is
     * ever used with it. */
    char meta[PATH_MAX + 64], text[64 + VLOG_ID_MAX], id[VLOG_ID_MAX];
    snprintf(meta, sizeof meta, "%s/META", lo.out);
    if (ok && vlog_file_new_id(id, sizeof id) != TALLY_OK)
        ok = 0;
    int tn = ok ? vlog_file_meta_text(x.npartitions, id, text, sizeof text) : 0;
    if (!ok || fsync(out) != 0 || close(out) != 0 ||
        write_file_atomic(meta, text, (size_t)tn, 1) != 0 || fsync_dir(lo.out) != 0) {
        fprintf(stderr, "tally log salvage: writing %s: %s\n", lo.out, strerror(errno));
        if (ok)
            out = -1; /* closed (or failed to) above */
        free(lost);
        goto out;
    }
    out = -1;
    /* Check the copy as any open would: every frame intact, no tail. */
    int chk = open(path, O_RDONLY | O_CLOEXEC);
    vlog_scan_t v;
    if (chk < 0 || vlog_scan_fd(chk, 0, x.npartitions, &v, err, sizeof err) != TALLY_OK) {
        fprintf(stderr, "tally log salvage: checking %s: %s\n", path,
                chk < 0 ? strerror(errno) : err);
        if (chk >= 0)
            close(chk);
        free(lost);
        goto out;
    }
    close(chk);
    int good = v.frames == s->frames && v.ndamage == 0 && !v.has_tail && v.size == kept;
    vlog_scan_free(&v);
    if (!good) {
        fprintf(stderr, "tally log salvage: the copy in %s does not scan clean; do not use it\n",
                path);
        free(lost);
        goto out;
    }
    uint64_t nl = 0;
    printf("salvaged %llu intact frames (%llu bytes) of %s into %s\n",
           (unsigned long long)s->frames, (unsigned long long)kept, x.path, path);
    for (size_t k = 0; k < nlost; k++) {
        printf("lost: bytes [%llu, %llu) (%llu bytes: %s)\n", (unsigned long long)lost[k].start,
               (unsigned long long)lost[k].end, (unsigned long long)(lost[k].end - lost[k].start),
               lost[k].why);
        nl += lost[k].end - lost[k].start;
    }
    printf("%llu bytes lost in %zu ranges%s\n", (unsigned long long)nl, nlost,
           nlost ? "" : " (the log was intact)");
    printf("log id: %s (new: snapshots of the original are not used with it)\n", id);
    printf("next: stop tally, move %s away, move %s in as log.dir, then tally run: it "
           "recounts every partition from the salvaged log (README: Recovery)\n",
           c->log_dir, lo.out);
    free(lost);
    rc = TALLY_EXIT_OK;
out:
    if (out >= 0)
        close(out);
    free(buf);
    vlog_file_examine_close(&x);
    config_free(c);
    free(lo.o.overrides);
    return rc;
}

int cmd_log(int argc, char **argv) {
    if (argc < 2) {
        fputs(help_log, stderr);
        return EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help")) {
        fputs(help_log, stdout);
        return 0;
    }
    if (!strcmp(sub, "verify"))
        return log_verify(argc - 1, argv + 1);
    if (!strcmp(sub, "salvage"))
        return log_salvage(argc - 1, argv + 1);
    fprintf(stderr, "tally log: unknown subcommand '%s'\n\n%s", sub, help_log);
    return EXIT_USAGE;
}
