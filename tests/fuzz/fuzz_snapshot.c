/* engine/snapshot.c: engine_snapshot_load() of arbitrary files.
 *
 * The input (see snapshot_fixture.h for its control byte) becomes the one
 * snapshot file in a temp dir, loaded through the public API into a fresh
 * engine of the fixture's config. Then:
 * - a snapshot not used leaves nothing behind: the partition is empty, at
 *   position 0;
 * - a used one puts the partition at the position its header names; every
 *   fixture voter then votes in every poll, twice: the first vote counts at
 *   most once (exactly once in unlimited mode), the repeat changes nothing
 *   in the voter modes; and the state after that saves to a snapshot that
 *   loads into a second engine with the same totals, voters and position:
 *   tally never writes a snapshot it will not read back. */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/util.h"
#include "engine/engine.h"
#include "fuzz.h"
#include "snapshot_fixture.h"

#define MAX_OPTS 8

static tally_config_t *conf; /* lives as long as the process */
static char *load_dir, *save_dir;

static void write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        FUZZ_CHECK(w > 0);
        b += w;
        n -= (size_t)w;
    }
}

static uint64_t sum_totals(engine_t *e, int i, uint64_t *counts) {
    engine_poll_totals(e, i, counts);
    uint64_t s = 0;
    for (int o = 0; o < engine_poll(e, i)->noptions; o++)
        s += counts[o];
    return s;
}

/* Both engines hold the same counts, voters and positions. */
static void check_same_state(engine_t *a, engine_t *b) {
    for (int i = 0; i < engine_npolls(a); i++) {
        uint64_t ca[MAX_OPTS], cb[MAX_OPTS];
        sum_totals(a, i, ca);
        sum_totals(b, i, cb);
        FUZZ_CHECK(memcmp(ca, cb, sizeof(uint64_t) * (size_t)engine_poll(a, i)->noptions) == 0);
    }
    for (int p = 0; p < SNAPFIX_NPART; p++)
        FUZZ_CHECK(engine_position(a, p) == engine_position(b, p));
    FUZZ_CHECK(engine_stats(a).voters == engine_stats(b).voters);
}

static void vote_all(engine_t *e, int part, int sel) {
    for (int i = 0; i < engine_npolls(e); i++) {
        const poll_def_t *pc = engine_poll(e, i);
        uint64_t before[MAX_OPTS], after[MAX_OPTS];
        uint64_t s0 = sum_totals(e, i, before);
        for (int k = 0; k < SNAPFIX_NVOTERS; k++) {
            int o = (k + sel) % pc->noptions;
            FUZZ_CHECK(snapfix_vote(e, part, i, o, k) == i);
            uint64_t s1 = sum_totals(e, i, after);
            if (pc->mode == MODE_UNLIMITED) {
                FUZZ_CHECK(s1 == s0 + 1 && after[o] == before[o] + 1);
            } else {
                FUZZ_CHECK(s1 == s0 || s1 == s0 + 1);
                FUZZ_CHECK(after[o] == before[o] || after[o] == before[o] + 1);
                /* The same vote again: the voter is known now. */
                FUZZ_CHECK(snapfix_vote(e, part, i, o, k) == i);
                FUZZ_CHECK(sum_totals(e, i, before) == s1);
                FUZZ_CHECK(memcmp(after, before, sizeof(uint64_t) * (size_t)pc->noptions) == 0);
            }
            memcpy(before, after, sizeof before);
            s0 = s1;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!conf) {
        fuzz_quiet_stderr();
        tally_log_quiet = 1;
        conf = snapfix_conf();
        load_dir = fuzz_tmpdir_sub("load");
        save_dir = fuzz_tmpdir_sub("save");
        for (int i = 0; i < conf->npolls; i++)
            FUZZ_CHECK(conf->polls[i].noptions <= MAX_OPTS);
    }
    if (size < 1)
        return 0;
    int ctl = data[0], part = (ctl & SNAPFIX_CTL_PART) ? 1 : 0;
    const uint8_t *body = data + 1;
    size_t blen = size - 1;

    /* The file is named by the position in its header, as tally names it. */
    uint64_t position = 0;
    if (blen >= 24)
        for (int i = 0; i < 8; i++)
            position |= (uint64_t)body[16 + i] << (8 * i);
    char path[4200];
    snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", load_dir, part,
             (unsigned long long)position);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0);
    write_all(fd, body, blen);
    if (ctl & SNAPFIX_CTL_CHECKSUM) {
        uint64_t sum = XXH3_64bits(body, blen);
        uint8_t b[8];
        for (int i = 0; i < 8; i++)
            b[i] = (uint8_t)(sum >> (8 * i));
        write_all(fd, b, sizeof b);
    }
    FUZZ_CHECK(close(fd) == 0);

    char err[512] = "";
    engine_t *e = engine_new(conf, SNAPFIX_NPART), *e2 = NULL;
    engine_set_log_id(e, SNAPFIX_LOG_ID, 1);
    /* The light header reader agrees with the full load: whatever loads
     * has a sound header that passes the same check, at the same position. */
    snap_header_t h;
    tally_err_t herr = engine_snapshot_read_header(path, 1, &h, err, sizeof err);
    int hok =
        herr == TALLY_OK && engine_snapshot_header_check(e, part, &h, err, sizeof err) == TALLY_OK;
    int resumed = 0;
    FUZZ_CHECK(engine_snapshot_load(e, load_dir, &resumed, err, sizeof err) == TALLY_OK);
    FUZZ_CHECK(!resumed || (hok && h.position == position));
    fuzz_dir_clear(load_dir);
    /* engine_stats() publishes voter counts at the end of a batch, and a
     * load is none: an empty batch brings them up to date. */
    engine_batch_begin(e, part);
    engine_batch_end(e, part);
    FUZZ_CHECK(resumed == 0 || resumed == 1);
    FUZZ_CHECK(engine_position(e, 1 - part) == 0);
    if (!resumed) {
        /* Nothing of a rejected file stays behind. */
        FUZZ_CHECK(engine_position(e, part) == 0);
        FUZZ_CHECK(engine_stats(e).voters == 0);
        for (int i = 0; i < engine_npolls(e); i++) {
            uint64_t c[MAX_OPTS];
            FUZZ_CHECK(sum_totals(e, i, c) == 0);
        }
        /* What follows would count on a fresh engine, as every run does. */
        goto out;
    }
    FUZZ_CHECK(engine_position(e, part) == position);

    vote_all(e, part, ctl >> SNAPFIX_CTL_SHIFT);

    FUZZ_CHECK(engine_snapshot_save(e, part, save_dir, err, sizeof err) == 0);
    e2 = engine_new(conf, SNAPFIX_NPART);
    engine_set_log_id(e2, SNAPFIX_LOG_ID, 0);
    int resumed2 = 0;
    FUZZ_CHECK(engine_snapshot_load(e2, save_dir, &resumed2, err, sizeof err) == TALLY_OK &&
               resumed2 == 1);
    fuzz_dir_clear(save_dir);
    engine_batch_begin(e2, part);
    engine_batch_end(e2, part);
    check_same_state(e, e2);

out:
    engine_free(e2);
    engine_free(e);
    return 0;
}
