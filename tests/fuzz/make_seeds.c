/* Writes the seed corpora of fuzz_record, fuzz_rfc3339 and fuzz_snapshot
 * into tests/fuzz/corpus/ (the directory given). Run after a format change:
 *   make BUILD=build && cmake --build build --target fuzz_make_seeds &&
 *   build/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus
 * Snapshots are written by engine_snapshot_save() itself, so the seeds are
 * what tally writes, and hold the fixture voters' keys. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/engine.h"
#include "log/record.h"
#include "snapshot_fixture.h"

static const char *root;

static void put(const char *corpus, const char *name, const void *data, size_t len) {
    char dir[4096], path[4400];
    snprintf(dir, sizeof dir, "%s/%s", root, corpus);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (mkdir_p(dir) != 0 || write_file_atomic(path, data, len, 0) != 0) {
        fprintf(stderr, "make_seeds: %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

static void seed_record(const char *name, const char *poll, const char *opt, const char *voter,
                        uint64_t ts) {
    vote_record_t v = {.ts_ms = ts,
                       .poll = poll,
                       .poll_len = strlen(poll),
                       .option = opt,
                       .option_len = strlen(opt),
                       .voter = voter,
                       .voter_len = voter ? strlen(voter) : 0};
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = record_encode(&v, rec);
    if (n == 0)
        abort();
    put("record", name, rec, n);
}

static void seeds_record(void) {
    char p64[65], o64[65], v256[257];
    memset(p64, 'p', 64);
    p64[64] = 0;
    memset(o64, 'o', 64);
    o64[64] = 0;
    memset(v256, 'v', 256);
    v256[256] = 0;
    seed_record("voter", "best-song", "track-7", "user-42", 1700000000123ull);
    seed_record("no-voter", "unl", "p", NULL, 0);
    seed_record("longest", p64, o64, v256, ~0ull);
    seed_record("short", "a", "b", "c", 1);
    static const uint8_t v2[] = {2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 'a', 1, 'b', 0, 0};
    put("record", "version-2", v2, sizeof v2);
}

static void seeds_rfc3339(void) {
    static const char *const s[] = {
        "2023-11-14T22:13:20Z", "2023-11-14T22:13:20.123+01:00",    "2000-02-29t00:00:00.5-05:30",
        "1970-01-01T00:00:00z", "9999-12-31T23:59:59.999999-23:59", "2024-02-30T00:00:00Z",
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%zu", i);
        put("rfc3339", name, s[i], strlen(s[i]));
    }
}

/* Saves partition part of e and writes the file as seed name: without its
 * checksum (the harness appends it) when ctl says so. */
static void seed_snapshot(engine_t *e, int part, int ctl, const char *name, const char *tmp) {
    char err[512], path[4200];
    if (engine_snapshot_save(e, part, tmp, err, sizeof err) != 0) {
        fprintf(stderr, "make_seeds: %s\n", err);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", tmp, part,
             (unsigned long long)engine_position(e, part));
    FILE *f = fopen(path, "rb");
    if (!f)
        abort();
    buf_t b = {0};
    uint8_t c = (uint8_t)ctl;
    buf_append(&b, &c, 1);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    unlink(path);
    size_t len = b.len - ((ctl & SNAPFIX_CTL_CHECKSUM) ? 8 : 0);
    put("snapshot", name, b.data, len);
    buf_free(&b);
}

static void seeds_snapshot(void) {
    char tmp[] = "/tmp/tally-seeds-XXXXXX";
    if (!mkdtemp(tmp))
        abort();
    tally_config_t *c = snapfix_conf();
    engine_t *e = engine_new(c, SNAPFIX_NPART);
    engine_set_log_id(e, SNAPFIX_LOG_ID, 0);
    seed_snapshot(e, 0, SNAPFIX_CTL_CHECKSUM, "empty", tmp);
    for (int k = 0; k < SNAPFIX_NVOTERS; k += 2)
        for (int i = 0; i < engine_npolls(e); i++)
            snapfix_vote(e, 0, i, k % engine_poll(e, i)->noptions, k);
    seed_snapshot(e, 0, SNAPFIX_CTL_CHECKSUM, "p0-half", tmp);
    seed_snapshot(e, 0, 0, "p0-half-raw", tmp);
    for (int k = 0; k < SNAPFIX_NVOTERS; k++)
        for (int i = 0; i < engine_npolls(e); i++)
            snapfix_vote(e, 1, i, (k + 1) % engine_poll(e, i)->noptions, k);
    seed_snapshot(e, 1, SNAPFIX_CTL_CHECKSUM | SNAPFIX_CTL_PART | (1 << SNAPFIX_CTL_SHIFT),
                  "p1-all", tmp);
    engine_free(e);
    config_free(c);
    rmdir(tmp);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    root = argv[1];
    tally_log_quiet = 1;
    seeds_record();
    seeds_rfc3339();
    seeds_snapshot();
    return 0;
}
