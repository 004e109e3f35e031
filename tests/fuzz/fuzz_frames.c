/* Fuzzes the file log's scan (vlog_scan_buf / vlog_scan_fd_window), the code
 * that decides at open what is a torn tail and what is damage.
 *
 * Input: byte 0 picks the partition count (1..8) and the read window, the
 * rest is a votes.log body. Checked against a frame checker of this file's
 * own (same format, commit frames too, XXH3 from libxxhash):
 *   - valid end, damage and tail lie within the input, in order, disjoint;
 *   - the intact frames, damage ranges and tail tile the input exactly, each
 *     damage range is followed by a frame that checks, and no offset inside
 *     the tail (of a small input) starts a frame that checks;
 *   - frame counts add up per partition and match the walk;
 *   - the fd scan (an anonymous memfd, a small window) reports the same.
 * Nothing is written outside memory. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "log/vlog.h"
#include "log/vlog_int.h"

#define HDR 12
#define MAX_PAYLOAD 65536
#define EXHAUSTIVE_MAX 8192 /* inputs up to this size get the tail checked at every offset */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_frames: %s:%d: %s\n", __FILE__, __LINE__, #cond);                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Length of the intact frame at p (n bytes there), or 0. Kind 0: a
 * record; kind 1: a commit frame (partition 0, 8 bytes). */
static size_t frame_ok(const uint8_t *p, size_t n, int np) {
    if (n < HDR)
        return 0;
    uint32_t len = get32(p);
    unsigned part = (unsigned)p[8] | (unsigned)p[9] << 8, kind = (unsigned)p[10] | p[11] << 8;
    if (len == 0 || len > MAX_PAYLOAD || part >= (unsigned)np || kind > 1 || n - HDR < len)
        return 0;
    if (kind == 1 && (part != 0 || len != 8))
        return 0;
    uint64_t seed = (uint64_t)len | (uint64_t)part << 32 | (uint64_t)kind << 48;
    if ((uint32_t)XXH3_64bits_withSeed(p + HDR, len, seed) != get32(p + 4))
        return 0;
    return HDR + len;
}

static void check_same(const vlog_scan_t *a, const vlog_scan_t *b) {
    CHECK(a->size == b->size && a->frames == b->frames && a->valid_end == b->valid_end &&
          a->commits == b->commits);
    CHECK(a->ndamage == b->ndamage && a->has_tail == b->has_tail);
    for (size_t k = 0; k < a->ndamage; k++)
        CHECK(a->damage[k].start == b->damage[k].start && a->damage[k].end == b->damage[k].end &&
              a->damage[k].frames_after == b->damage[k].frames_after);
    if (a->has_tail)
        CHECK(a->tail.start == b->tail.start && a->tail.end == b->tail.end);
    for (int p = 0; p < a->npartitions; p++)
        CHECK(a->part_frames[p] == b->part_frames[p]);
}

/* Walks intact frames from at to stop, counting records (per partition
 * too) and commit frames. */
static size_t walk(const uint8_t *d, size_t at, size_t stop, int np, uint64_t *frames,
                   uint64_t *per, uint64_t *commits) {
    while (at < stop) {
        size_t n = frame_ok(d + at, stop - at, np);
        CHECK(n > 0); /* between bad ranges, only intact frames */
        if (d[at + 10] == 1) {
            (*commits)++;
        } else {
            per[d[at + 8]]++;
            (*frames)++;
        }
        at += n;
    }
    CHECK(at == stop);
    return at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    int np = (data[0] & 7) + 1;
    size_t window = (size_t)(data[0] >> 3) * 3 + 1;
    const uint8_t *d = data + 1;
    size_t n = size - 1;

    vlog_scan_t s;
    vlog_scan_buf(d, n, np, &s);
    CHECK(s.size == n && s.from == 0 && s.valid_end <= n && s.npartitions == np);

    /* Frames, damage, tail tile the input in order. */
    uint64_t frames = 0, per[8] = {0}, sum = 0, commits = 0;
    size_t at = 0;
    for (size_t k = 0; k < s.ndamage; k++) {
        const vlog_range_t *r = &s.damage[k];
        CHECK(r->start >= at && r->start < r->end && r->end <= n && r->why);
        at = walk(d, at, r->start, np, &frames, per, &commits);
        CHECK(frame_ok(d + r->end, n - r->end, np) > 0); /* damage ends at a good frame */
        CHECK(frame_ok(d + r->start, n - r->start, np) == 0);
        at = r->end;
    }
    size_t stop = s.has_tail ? s.tail.start : n;
    at = walk(d, at, stop, np, &frames, per, &commits);
    if (s.has_tail) {
        CHECK(s.tail.start < s.tail.end && s.tail.end == n && s.tail.why);
        CHECK(s.valid_end == s.tail.start);
        if (n <= EXHAUSTIVE_MAX)
            for (size_t q = s.tail.start; q < n; q++)
                CHECK(frame_ok(d + q, n - q, np) == 0); /* nothing intact after a tail */
    }
    if (!s.has_tail)
        CHECK(s.valid_end == n);
    CHECK(frames == s.frames && commits == s.commits);
    for (int p = 0; p < np; p++) {
        CHECK(per[p] == s.part_frames[p]);
        sum += s.part_frames[p];
    }
    CHECK(sum == s.frames);
    for (size_t k = 0; k < s.ndamage; k++)
        CHECK(s.damage[k].frames_after <= s.frames &&
              (k == 0 || s.damage[k].frames_after <= s.damage[k - 1].frames_after));
    CHECK(vlog_scan_clean(&s) ==
          (s.ndamage == 0 && (!s.has_tail || s.tail.end - s.tail.start <= VLOG_MAX_WRITE)));

    /* The same bytes through a file and a small read window. */
    int fd = memfd_create("fuzz_frames", MFD_CLOEXEC);
    if (fd >= 0) {
        size_t w = 0;
        while (w < n) {
            ssize_t k = write(fd, d + w, n - w);
            CHECK(k > 0);
            w += (size_t)k;
        }
        vlog_scan_t f;
        char err[256];
        CHECK(vlog_scan_fd_window(fd, 0, np, window, &f, err, sizeof err) == TALLY_OK);
        check_same(&s, &f);
        vlog_scan_free(&f);
        close(fd);
    }
    vlog_scan_free(&s);
    return 0;
}
