/* Helpers shared by the unit suites: temp dirs, small file I/O, configs with
 * polls, encoded records, and waiting with a deadline (never a fixed sleep).
 * Everything is static inline so each suite takes only what it uses. */
#ifndef TALLY_UNIT_HELPERS_H
#define TALLY_UNIT_HELPERS_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/config.h"
#include "common/util.h"
#include "log/record.h"

/* Sanitizer builds run several times slower: stretch every deadline. */
#ifdef TALLY_SANITIZE
#define TMOUT_MULT 5
#else
#define TMOUT_MULT 1
#endif

/* ---- Criterion under ThreadSanitizer ----
 * Criterion (BoxFort) maps its inheritable arena with MAP_FIXED at a random
 * 16 MiB slot in [0x2000'0000'0000, 0x6040'0000'0000), picked with rand_r().
 * Under TSan nearly all of that is TSan's own (shadow, meta, reserved gaps),
 * so every try fails and Criterion aborts with "Could not initialize
 * inheritable arena" (Snaipe/Criterion#274). The only free application
 * range there is 0x5500'0000'0000-0x5680'0000'0000, which also holds PIE
 * binaries below 0x5656'...; this rand_r steers BoxFort's picks into
 * 0x5660'0000'0000-0x5680'0000'0000. Only BoxFort calls rand_r in the suites;
 * the numbers stay pseudo-random for anyone else. */
#if defined(__SANITIZE_THREAD__)
int rand_r(unsigned int *seed);
int rand_r(unsigned int *seed) {
    *seed = *seed * 1103515245u + 12345u;
    return (int)(0x366000u + ((*seed >> 16) & 0x1fffu));
}

/* A report must fail the test: by default TSan only prints it and the
 * child still reports success to the Criterion runner. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void) { return "halt_on_error=1:second_deadlock_stack=1"; }
#endif

/* ---- temp dirs ---- */

static inline char *tmpdir_new(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/tally-unit-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    cr_assert(d != NULL, "mkdtemp: %s", strerror(errno));
    return xstrdup(d);
}

static inline int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf dir; frees dir. */
static inline void tmpdir_free(char *dir) {
    if (!dir)
        return;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static inline char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* ---- files ---- */

static inline void file_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    cr_assert(f != NULL, "%s: %s", path, strerror(errno));
    cr_assert(fwrite(data, 1, len, f) == len);
    cr_assert(fclose(f) == 0);
}

static inline void file_write_str(const char *path, const char *s) {
    file_write(path, s, strlen(s));
}

static inline void file_append(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "ab");
    cr_assert(f != NULL, "%s: %s", path, strerror(errno));
    cr_assert(fwrite(data, 1, len, f) == len);
    cr_assert(fclose(f) == 0);
}

/* Whole file, NUL-terminated; NULL if it cannot be opened. */
static inline char *file_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf_t b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_append(&b, tmp, n);
    fclose(f);
    if (!b.data)
        buf_append(&b, "", 0);
    if (len)
        *len = b.len;
    return b.data;
}

static inline long long file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    return (long long)st.st_size;
}

static inline void file_truncate(const char *path, long long size) {
    cr_assert(truncate(path, (off_t)size) == 0, "truncate %s: %s", path, strerror(errno));
}

/* XORs one byte of a file at off (negative: from the end). */
static inline void file_flip_byte(const char *path, long long off) {
    long long size = file_size(path);
    cr_assert(size > 0);
    if (off < 0)
        off += size;
    cr_assert(off >= 0 && off < size);
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    unsigned char c;
    cr_assert(pread(fd, &c, 1, (off_t)off) == 1);
    c ^= 0x5a;
    cr_assert(pwrite(fd, &c, 1, (off_t)off) == 1);
    close(fd);
}

/* Number of entries in dir (not . or ..) whose name contains sub (NULL: all). */
static inline int dir_count(const char *dir, const char *sub) {
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
            (!sub || strstr(de->d_name, sub)))
            n++;
    closedir(d);
    return n;
}

/* ---- configs ---- */

static inline void conf_set(tally_config_t *c, const char *section, const char *key,
                            const char *value) {
    char err[512];
    int rc = config_set(c, section, key, value, err, sizeof err);
    cr_assert(rc == 0, "config_set [%s] %s = %s: %s", section, key, value, err);
}

static inline void conf_add_poll(tally_config_t *c, const char *id, const char *mode,
                                 const char *options) {
    char sect[128];
    snprintf(sect, sizeof sect, "poll.%s", id);
    conf_set(c, sect, "options", options);
    conf_set(c, sect, "mode", mode);
}

static inline void conf_finish(tally_config_t *c) {
    char err[512];
    cr_assert(config_validate(c, err, sizeof err) == 0, "config_validate: %s", err);
}

static inline void conf_set_str(char **field, const char *value) {
    free(*field);
    *field = xstrdup(value);
}

/* ---- records ---- */

/* Encodes a vote; voter NULL means none. Returns the length. */
static inline size_t rec_make(uint8_t *out, const char *poll, const char *option,
                              const char *voter, uint64_t ts_ms) {
    vote_record_t v = {
        .ts_ms = ts_ms,
        .poll = poll,
        .poll_len = strlen(poll),
        .option = option,
        .option_len = strlen(option),
        .voter = voter,
        .voter_len = voter ? strlen(voter) : 0,
    };
    size_t n = record_encode(&v, out);
    cr_assert(n > 0, "record_encode(%s, %s, %s)", poll, option, voter ? voter : "(null)");
    return n;
}

static inline int rec_partition(const char *poll, const char *option, const char *voter,
                                int nparts, uint64_t spread) {
    vote_record_t v = {
        .poll = poll,
        .poll_len = strlen(poll),
        .option = option,
        .option_len = strlen(option),
        .voter = voter,
        .voter_len = voter ? strlen(voter) : 0,
    };
    return record_partition(&v, nparts, spread);
}

/* ---- time ---- */

/* Deterministic PRNG (splitmix64). */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Short pause between polls of a condition (not a fixed wait for an
 * outcome: callers always loop on the condition with a deadline). */
static inline void tiny_pause(void) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
}

#define WAIT_UNTIL(cond, timeout_ms)                                                           \
    do {                                                                                       \
        uint64_t wu_deadline_ = mono_ms() + (uint64_t)(timeout_ms) * TMOUT_MULT;              \
        while (!(cond)) {                                                                      \
            cr_assert(mono_ms() < wu_deadline_, "timed out waiting for: %s", #cond);           \
            tiny_pause();                                                                      \
        }                                                                                      \
    } while (0)

#endif
