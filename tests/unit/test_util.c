/* common/util.h: RFC 3339 times, atomic file writes, mkdir_p, buffers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "unit_helpers.h"

static char *dir;

static void setup(void) {
    dir = tmpdir_new();
}
static void teardown(void) {
    tmpdir_free(dir);
    dir = NULL;
}

/* Parses a heap copy of exactly strlen+1 bytes so ASan sees any read past
 * the terminator. */
static int parse(const char *s, uint64_t *ms) {
    char *copy = xstrdup(s);
    int rc = parse_rfc3339(copy, ms);
    free(copy);
    return rc;
}

/* ---- fmt_rfc3339 ---- */

Test(rfc3339, format_known_values) {
    char buf[40];
    fmt_rfc3339(0, buf, sizeof buf);
    cr_assert_str_eq(buf, "1970-01-01T00:00:00.000Z");
    fmt_rfc3339(1700000000123ull, buf, sizeof buf);
    cr_assert_str_eq(buf, "2023-11-14T22:13:20.123Z");
    fmt_rfc3339(951782400007ull, buf, sizeof buf); /* leap day 2000 */
    cr_assert_str_eq(buf, "2000-02-29T00:00:00.007Z");
    fmt_rfc3339(4102444799999ull, buf, sizeof buf);
    cr_assert_str_eq(buf, "2099-12-31T23:59:59.999Z");
}

Test(rfc3339, format_respects_small_buffers) {
    char buf[11];
    memset(buf, 'x', sizeof buf);
    fmt_rfc3339(1700000000123ull, buf, sizeof buf);
    cr_assert_str_eq(buf, "2023-11-14");
}

Test(rfc3339, roundtrip) {
    uint64_t seed = 7;
    const uint64_t fixed[] = {
        0, 1, 999, 1000, 86399999, 951782400007ull, 1700000000123ull, 4102444799999ull};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0] + 2000; i++) {
        uint64_t ms =
            i < sizeof fixed / sizeof fixed[0] ? fixed[i] : rng_next(&seed) % 4102444800000ull;
        char buf[40];
        fmt_rfc3339(ms, buf, sizeof buf);
        uint64_t back = 0;
        cr_assert_eq(parse(buf, &back), 0, "cannot parse own output %s", buf);
        cr_assert_eq(back, ms, "%s -> %llu, want %llu", buf, (unsigned long long)back,
                     (unsigned long long)ms);
    }
}

/* ---- parse_rfc3339 ---- */

Test(rfc3339, parse_zones_and_fractions) {
    uint64_t ms;
    cr_assert_eq(parse("2023-11-14T22:13:20Z", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
    cr_assert_eq(parse("2023-11-14T22:13:20z", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
    cr_assert_eq(parse("2023-11-14T22:13:20.5Z", &ms), 0);
    cr_assert_eq(ms, 1700000000500ull);
    cr_assert_eq(parse("2023-11-14T22:13:20.12Z", &ms), 0);
    cr_assert_eq(ms, 1700000000120ull);
    cr_assert_eq(parse("2023-11-14T22:13:20.123Z", &ms), 0);
    cr_assert_eq(ms, 1700000000123ull);
    /* Digits past milliseconds are truncated, not rounded. */
    cr_assert_eq(parse("2023-11-14T22:13:20.123999999Z", &ms), 0);
    cr_assert_eq(ms, 1700000000123ull);
    cr_assert_eq(parse("2023-11-14T22:13:20.000Z", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
}

Test(rfc3339, parse_offsets) {
    uint64_t ms;
    /* 23:13:20+01:00 is 22:13:20Z */
    cr_assert_eq(parse("2023-11-14T23:13:20+01:00", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
    cr_assert_eq(parse("2023-11-14T16:43:20-05:30", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
    cr_assert_eq(parse("2023-11-14T22:13:20+00:00", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
    cr_assert_eq(parse("2023-11-14T22:13:20-00:00", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull);
    cr_assert_eq(parse("2023-11-15T08:13:20.250+10:00", &ms), 0);
    cr_assert_eq(ms, 1700000000250ull);
    cr_assert_eq(parse("2023-11-14T22:13:20+23:59", &ms), 0);
    cr_assert_eq(ms, 1700000000000ull - (23 * 3600 + 59 * 60) * 1000ull);
    /* An offset that crosses midnight and the year. */
    cr_assert_eq(parse("2023-12-31T23:30:00-01:00", &ms), 0);
    uint64_t want;
    cr_assert_eq(parse("2024-01-01T00:30:00Z", &want), 0);
    cr_assert_eq(ms, want);
}

Test(rfc3339, parse_epoch_edges) {
    uint64_t ms = 99;
    cr_assert_eq(parse("1970-01-01T00:00:00Z", &ms), 0);
    cr_assert_eq(ms, 0);
    cr_assert_eq(parse("1970-01-01T01:00:00+01:00", &ms), 0);
    cr_assert_eq(ms, 0);
    /* Before the epoch cannot be held in a uint64 of ms. */
    ms = 99;
    cr_assert_eq(parse("1969-12-31T23:59:59Z", &ms), -1);
    cr_assert_eq(parse("1970-01-01T00:00:00+00:01", &ms), -1);
    cr_assert_eq(ms, 99, "output written on failure");
}

Test(rfc3339, parse_rejects_bad_inputs) {
    const char *bad[] = {
        "",
        "garbage",
        "2023",
        "2023-11-14",
        "2023-11-14T22:13",
        "2023-11-14T22:13:20",   /* no zone */
        "2023-11-14T22:13:20.Z", /* empty fraction */
        "2023-11-14T22:13:20.5", /* fraction without zone */
        "2023-11-14T22:13:20ZZ",
        "2023-11-14T22:13:20Z ",
        "2023-11-14T22:13:20 Z",
        "2023-11-14T22:13:20+01:00x",
        "2023-11-14T22:13:20+0100",
        "2023-11-14T22:13:20+01",
        "2023-11-14T22:13:20+24:00",
        "2023-11-14T22:13:20+01:60",
        "2023-11-14T22:13:20+ab:cd",
        "2023-11-14T22:13:20UTC",
        "2023-13-14T22:13:20Z", /* month 13 */
        "2023-11-32T22:13:20Z", /* day 32 */
        "2023-11-14T25:13:20Z", /* hour 25 */
        "2023-11-14T22:61:20Z",
        "2023-11-14 22:13:20Z", /* space instead of T */
        "2023/11/14T22:13:20Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 12345;
        cr_assert_eq(parse(bad[i], &ms), -1, "'%s' was accepted as %llu", bad[i],
                     (unsigned long long)ms);
        cr_assert_eq(ms, 12345, "'%s': output written on failure", bad[i]);
    }
}

Test(rfc3339, parse_rejects_malformed_offsets) {
    const char *bad[] = {
        "2023-11-14T22:13:20+1:30",  "2023-11-14T22:13:20+01:3",  "2023-11-14T22:13:20+1:3",
        "2023-11-14T22:13:20+-1:-5", "2023-11-14T22:13:20+ 1: 5", "2023-11-14T22:13:20-+1:+1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 12345;
        cr_assert_eq(parse(bad[i], &ms), -1, "'%s' was accepted as %llu", bad[i],
                     (unsigned long long)ms);
    }
}

Test(rfc3339, parse_rejects_impossible_dates) {
    const char *bad[] = {
        "2023-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2023-04-31T12:00:00Z",
        "2023-1-4T02:03:04Z",   "2023-01-04T2:3:4Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 12345;
        cr_assert_eq(parse(bad[i], &ms), -1, "'%s' was accepted as %llu", bad[i],
                     (unsigned long long)ms);
    }
    uint64_t ms;
    cr_assert_eq(parse("2024-02-29T00:00:00Z", &ms), 0, "a real leap day");
}

/* ---- mkdir_p / write_file_atomic ---- */

Test(files, mkdir_p_nested_and_existing, .init = setup, .fini = teardown) {
    char *deep = path_join(dir, "a/b/c/d");
    cr_assert_eq(mkdir_p(deep), 0);
    struct stat st;
    cr_assert_eq(stat(deep, &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(mkdir_p(deep), 0, "existing directory is an error");
    char *trailing = path_join(dir, "x/y/");
    cr_assert_eq(mkdir_p(trailing), 0);
    char *file = path_join(dir, "plain");
    file_write_str(file, "x");
    char *under_file = path_join(dir, "plain/sub");
    cr_assert_eq(mkdir_p(under_file), -1);
    cr_assert_eq(mkdir_p(""), -1);
    free(deep);
    free(trailing);
    free(file);
    free(under_file);
}

Test(files, write_file_atomic_creates_and_replaces, .init = setup, .fini = teardown) {
    char *path = path_join(dir, "out.json");
    for (int durable = 0; durable <= 1; durable++) {
        const char *first = "{\"v\":1}\n";
        cr_assert_eq(write_file_atomic(path, first, strlen(first), durable), 0);
        size_t len;
        char *got = file_read(path, &len);
        cr_assert_str_eq(got, first);
        free(got);

        /* Replacing with something shorter leaves no trace of the old file. */
        cr_assert_eq(write_file_atomic(path, "ab", 2, durable), 0);
        got = file_read(path, &len);
        cr_assert_eq(len, 2);
        cr_assert_str_eq(got, "ab");
        free(got);
    }
    /* Binary data with NULs, and a large payload. */
    size_t big = 3u << 20;
    char *data = xmalloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 131);
    cr_assert_eq(write_file_atomic(path, data, big, 0), 0);
    size_t len;
    char *got = file_read(path, &len);
    cr_assert_eq(len, big);
    cr_assert_eq(memcmp(got, data, big), 0);
    free(got);
    free(data);
    /* Empty file. */
    cr_assert_eq(write_file_atomic(path, "", 0, 1), 0);
    cr_assert_eq(file_size(path), 0);
    /* No temp file is left behind. */
    cr_assert_eq(dir_count(dir, NULL), 1);
    free(path);
}

Test(files, write_file_atomic_fails_cleanly, .init = setup, .fini = teardown) {
    char *path = path_join(dir, "missing/out.json");
    errno = 0;
    cr_assert_eq(write_file_atomic(path, "x", 1, 1), -1);
    cr_assert_eq(errno, ENOENT);
    free(path);

    /* Renaming over a directory fails: the temp file must be removed and
     * the directory left alone. */
    char *sub = path_join(dir, "adir");
    cr_assert_eq(mkdir(sub, 0755), 0);
    cr_assert_eq(write_file_atomic(sub, "x", 1, 0), -1);
    struct stat st;
    cr_assert_eq(stat(sub, &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(dir_count(dir, NULL), 1, "temp file left behind");
    free(sub);

    char longpath[5000];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    errno = 0;
    cr_assert_eq(write_file_atomic(longpath, "x", 1, 0), -1);
    cr_assert_eq(errno, ENAMETOOLONG);
}

Test(files, fsync_dir, .init = setup, .fini = teardown) {
    cr_assert_eq(fsync_dir(dir), 0);
    char *missing = path_join(dir, "nope");
    cr_assert_eq(fsync_dir(missing), -1);
    free(missing);
}

/* ---- buffers and strings ---- */

Test(buf, append_puts_printf_grow) {
    buf_t b = {0};
    buf_puts(&b, "hello");
    cr_assert_eq(b.len, 5);
    cr_assert_str_eq(b.data, "hello");
    buf_printf(&b, " %d %s", 42, "x");
    cr_assert_str_eq(b.data, "hello 42 x");
    for (int i = 0; i < 10000; i++)
        buf_printf(&b, "%04d", i % 10000);
    cr_assert_eq(b.len, 10 + 40000);
    cr_assert(b.cap > b.len);
    cr_assert_eq(memcmp(b.data + 10, "000000010002", 12), 0);
    cr_assert_eq(memcmp(b.data + b.len - 4, "9999", 4), 0);
    cr_assert_eq(b.data[b.len], '\0');
    buf_append(&b, "\0z", 2);
    cr_assert_eq(b.len, 40012);
    cr_assert_eq(b.data[40011], 'z');
    buf_free(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    buf_free(&b);

    buf_t big = {0};
    char chunk[5000];
    memset(chunk, 'q', sizeof chunk);
    buf_append(&big, chunk, sizeof chunk);
    buf_printf(&big, "%s", "");
    cr_assert_eq(big.len, sizeof chunk);
    buf_free(&big);
}

Test(strings, xstrndup_and_xstrdup) {
    char *s = xstrndup("abcdef", 3);
    cr_assert_str_eq(s, "abc");
    free(s);
    s = xstrdup("");
    cr_assert_str_eq(s, "");
    free(s);
    void *z = xcalloc(0, 0);
    cr_assert_not_null(z);
    free(z);
    z = xmalloc(0);
    cr_assert_not_null(z);
    z = xrealloc(z, 0);
    cr_assert_not_null(z);
    free(z);
}

Test(clock, clocks_move_forward) {
    uint64_t a = mono_ns(), b = mono_ns();
    cr_assert_geq(b, a);
    cr_assert_geq(mono_ms() + 1, a / 1000000);
    /* Wall clock after 2020 and before 2200. */
    uint64_t now = now_ms();
    cr_assert_gt(now, 1577836800000ull);
    cr_assert_lt(now, 7258118400000ull);
}

Test(assert, tally_assert_aborts, .signal = SIGABRT) {
    int x = 1;
    tally_assert(x == 2);
}

Test(grow, capacities_double_from_16_and_new_elements_are_zero) {
    cr_assert_eq(grow_cap(0, 0), 0, "nothing needed, nothing grown");
    cr_assert_eq(grow_cap(0, 1), 16);
    cr_assert_eq(grow_cap(16, 16), 16);
    cr_assert_eq(grow_cap(16, 17), 32);
    cr_assert_eq(grow_cap(16, 1000), 1024);
    uint64_t *a = xrealloc_zero(NULL, 0, 4, sizeof *a);
    for (int i = 0; i < 4; i++)
        a[i] += 7 + (uint64_t)i; /* zero, then these */
    a = xrealloc_zero(a, 4, 1000, sizeof *a);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(a[i], 7 + (uint64_t)i, "a kept element changed");
    for (int i = 4; i < 1000; i++)
        cr_assert_eq(a[i], 0, "element %d not zeroed", i);
    free(a);
}
