/* log/record.h: the vote record's wire format, voter keys and partitioning. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "log/record.h"
#include "unit_helpers.h"

static void fill(char *s, size_t n, char c) {
    memset(s, c, n);
    s[n] = '\0';
}

/* Decodes from a heap buffer of exactly len bytes, so that a read past the
 * end is caught by ASan instead of landing in a neighbouring variable. */
static int decode_exact(const uint8_t *src, size_t len, vote_record_t *v, uint8_t **keep) {
    uint8_t *copy = xmalloc(len);
    if (len)
        memcpy(copy, src, len);
    int rc = record_decode(copy, len, v);
    if (keep)
        *keep = copy;
    else
        free(copy);
    return rc;
}

static void check_roundtrip(uint64_t ts, const char *poll, const char *option, const char *voter) {
    vote_record_t in = {ts,          poll, strlen(poll), option, strlen(option), voter,
                        voter ? strlen(voter) : 0};
    uint8_t buf[RECORD_MAX_LEN];
    size_t n = record_encode(&in, buf);
    cr_assert_eq(n, RECORD_HDR_LEN + in.poll_len + in.option_len + in.voter_len);
    cr_assert_leq(n, RECORD_MAX_LEN);
    vote_record_t out;
    uint8_t *copy;
    cr_assert_eq(decode_exact(buf, n, &out, &copy), 0);
    cr_assert_eq(out.ts_ms, ts);
    cr_assert_eq(out.poll_len, in.poll_len);
    cr_assert_eq(memcmp(out.poll, poll, in.poll_len), 0);
    cr_assert_eq(out.option_len, in.option_len);
    cr_assert_eq(memcmp(out.option, option, in.option_len), 0);
    cr_assert_eq(out.voter_len, in.voter_len);
    if (in.voter_len) {
        cr_assert_eq(memcmp(out.voter, voter, in.voter_len), 0);
        /* Decoding is in place: pointers point into the buffer. */
        cr_assert(out.voter >= (const char *)copy && out.voter < (const char *)copy + n);
    } else {
        cr_assert_null(out.voter);
    }
    cr_assert(out.poll >= (const char *)copy && out.poll < (const char *)copy + n);
    free(copy);
}

Test(record, roundtrip_simple) {
    check_roundtrip(1700000000123ull, "demo", "red", "alice");
    check_roundtrip(0, "p", "o", "v");
    check_roundtrip(UINT64_MAX, "demo", "red", "voter with spaces and ünïcödé");
}

Test(record, roundtrip_without_voter) { check_roundtrip(42, "applause", "clap", NULL); }

Test(record, roundtrip_max_lengths) {
    char poll[65], option[65], voter[257];
    fill(poll, 64, 'p');
    fill(option, 64, 'o');
    fill(voter, 256, 'v');
    check_roundtrip(123456789, poll, option, voter);
    uint8_t buf[RECORD_MAX_LEN];
    vote_record_t v = {1, poll, 64, option, 64, voter, 256};
    cr_assert_eq(record_encode(&v, buf), (size_t)RECORD_MAX_LEN);
}

Test(record, wire_layout_is_little_endian_v1) {
    uint8_t buf[RECORD_MAX_LEN];
    vote_record_t v = {0x0102030405060708ull, "ab", 2, "xyz", 3, "V", 1};
    size_t n = record_encode(&v, buf);
    const uint8_t want[] = {1,   0,   0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 2,
                            'a', 'b', 3,    'x',  'y',  'z',  1,    0,    'V'};
    cr_assert_eq(n, sizeof want);
    cr_assert_arr_eq(buf, want, sizeof want);
}

Test(record, encode_rejects_bad_lengths) {
    char poll[66], option[66], voter[258];
    fill(poll, 65, 'p');
    fill(option, 65, 'o');
    fill(voter, 257, 'v');
    uint8_t buf[RECORD_MAX_LEN + 64];
    vote_record_t ok = {1, poll, 64, option, 64, voter, 256};
    cr_assert_gt(record_encode(&ok, buf), 0);

    vote_record_t v = ok;
    v.poll_len = 0;
    cr_assert_eq(record_encode(&v, buf), 0);
    v = ok;
    v.poll_len = 65;
    cr_assert_eq(record_encode(&v, buf), 0);
    v = ok;
    v.option_len = 0;
    cr_assert_eq(record_encode(&v, buf), 0);
    v = ok;
    v.option_len = 65;
    cr_assert_eq(record_encode(&v, buf), 0);
    v = ok;
    v.voter_len = 257;
    cr_assert_eq(record_encode(&v, buf), 0);
}

Test(record, decode_rejects_unknown_versions) {
    uint8_t buf[RECORD_MAX_LEN];
    size_t n = rec_make(buf, "demo", "red", "alice", 5);
    vote_record_t v;
    const uint8_t bad[] = {0, 2, 3, 0x7f, 0x81, 0xff};
    for (size_t i = 0; i < sizeof bad; i++) {
        buf[0] = bad[i];
        cr_assert_eq(decode_exact(buf, n, &v, NULL), -1, "version %u accepted", bad[i]);
    }
    buf[0] = RECORD_VERSION;
    cr_assert_eq(decode_exact(buf, n, &v, NULL), 0);
}

Test(record, decode_rejects_every_truncation) {
    char voter[257];
    fill(voter, 256, 'w');
    const char *voters[] = {"alice", NULL, voter};
    for (size_t k = 0; k < 3; k++) {
        uint8_t buf[RECORD_MAX_LEN];
        size_t n = rec_make(buf, "demo", "green", voters[k], 77);
        vote_record_t v;
        for (size_t len = 0; len < n; len++)
            cr_assert_eq(decode_exact(buf, len, &v, NULL), -1, "truncated to %zu of %zu accepted",
                         len, n);
        cr_assert_eq(decode_exact(buf, n, &v, NULL), 0);
    }
}

Test(record, decode_rejects_trailing_bytes) {
    uint8_t buf[RECORD_MAX_LEN + 8];
    size_t n = rec_make(buf, "demo", "red", "alice", 5);
    vote_record_t v;
    for (size_t extra = 1; extra <= 8; extra++) {
        memset(buf + n, 'x', extra);
        cr_assert_eq(decode_exact(buf, n + extra, &v, NULL), -1, "%zu trailing bytes accepted",
                     extra);
    }
}

Test(record, decode_rejects_bad_length_fields) {
    uint8_t buf[RECORD_MAX_LEN + 300];
    size_t n = rec_make(buf, "demo", "red", "alice", 5);
    size_t poll_at = 10, opt_at = 10 + 1 + 4, voter_at = opt_at + 1 + 3;
    vote_record_t v;
    uint8_t save;

    /* poll_len 0, larger than the data, over 64 */
    const uint8_t poll_lens[] = {0, 5, 65, 200, 255};
    save = buf[poll_at];
    for (size_t i = 0; i < sizeof poll_lens; i++) {
        buf[poll_at] = poll_lens[i];
        cr_assert_eq(decode_exact(buf, n, &v, NULL), -1, "poll_len %u accepted", poll_lens[i]);
    }
    buf[poll_at] = save;

    const uint8_t opt_lens[] = {0, 2, 4, 65, 255};
    save = buf[opt_at];
    for (size_t i = 0; i < sizeof opt_lens; i++) {
        buf[opt_at] = opt_lens[i];
        cr_assert_eq(decode_exact(buf, n, &v, NULL), -1, "option_len %u accepted", opt_lens[i]);
    }
    buf[opt_at] = save;

    const uint16_t voter_lens[] = {0, 4, 6, 257, 0xffff};
    for (size_t i = 0; i < sizeof voter_lens / sizeof voter_lens[0]; i++) {
        buf[voter_at] = (uint8_t)voter_lens[i];
        buf[voter_at + 1] = (uint8_t)(voter_lens[i] >> 8);
        cr_assert_eq(decode_exact(buf, n, &v, NULL), -1, "voter_len %u accepted", voter_lens[i]);
    }
    buf[voter_at] = 5;
    buf[voter_at + 1] = 0;
    cr_assert_eq(decode_exact(buf, n, &v, NULL), 0);

    /* A voter length over 256 is refused even when the bytes are there. */
    uint8_t big[RECORD_HDR_LEN + 2 + 257];
    memset(big, 'z', sizeof big);
    big[0] = RECORD_VERSION;
    big[1] = 0;
    big[10] = 1;
    big[12] = 1;
    big[14] = (uint8_t)257;
    big[15] = (uint8_t)(257 >> 8);
    cr_assert_eq(decode_exact(big, sizeof big, &v, NULL), -1);
    big[14] = 0;
    big[15] = 1; /* 256: fine, with one byte too many */
    cr_assert_eq(decode_exact(big, sizeof big, &v, NULL), -1);
    cr_assert_eq(decode_exact(big, sizeof big - 1, &v, NULL), 0);
    cr_assert_eq(v.voter_len, 256);
}

Test(record, decode_random_bytes_never_crashes) {
    /* Whatever the bytes, decode either refuses or returns fields that lie
     * inside the buffer and add up to its length. */
    uint64_t seed = 12345;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = rng_next(&seed) % (RECORD_MAX_LEN + 8);
        uint8_t *b = xmalloc(len ? len : 1);
        for (size_t i = 0; i < len; i++)
            b[i] = (uint8_t)rng_next(&seed);
        /* Make plausible headers common enough to reach the later checks. */
        if (len > 0 && iter % 2 == 0)
            b[0] = RECORD_VERSION;
        if (len > 10 && iter % 4 == 0)
            b[10] = (uint8_t)(rng_next(&seed) % 8);
        vote_record_t v;
        if (record_decode(b, len, &v) == 0) {
            cr_assert_eq(RECORD_HDR_LEN + v.poll_len + v.option_len + v.voter_len, len);
            cr_assert(v.poll_len >= 1 && v.poll_len <= 64);
            cr_assert(v.option_len >= 1 && v.option_len <= 64);
            cr_assert(v.voter_len <= 256);
            cr_assert(v.poll >= (const char *)b && v.poll + v.poll_len <= (const char *)b + len);
            cr_assert(v.option >= (const char *)b &&
                      v.option + v.option_len <= (const char *)b + len);
        }
        free(b);
    }
}

Test(record, voter_key_is_deterministic) {
    voter_key_t a = record_voter_key("demo", 4, "alice", 5);
    voter_key_t b = record_voter_key("demo", 4, "alice", 5);
    cr_assert_eq(a.lo, b.lo);
    cr_assert_eq(a.hi, b.hi);
}

Test(record, voter_key_separates_poll_and_voter) {
    voter_key_t a = record_voter_key("ab", 2, "c", 1);
    voter_key_t b = record_voter_key("a", 1, "bc", 2);
    cr_assert(a.lo != b.lo || a.hi != b.hi, "(\"ab\",\"c\") and (\"a\",\"bc\") share a key");
    cr_assert_neq(a.lo, b.lo);
    cr_assert_neq(a.hi, b.hi);

    voter_key_t c = record_voter_key("abc", 3, "", 0);
    voter_key_t d = record_voter_key("", 0, "abc", 3);
    cr_assert(c.lo != d.lo || c.hi != d.hi);
    cr_assert(c.lo != a.lo || c.hi != a.hi);
}

Test(record, voter_key_depends_on_poll_and_voter) {
    voter_key_t a = record_voter_key("demo", 4, "alice", 5);
    voter_key_t other_poll = record_voter_key("mood", 4, "alice", 5);
    voter_key_t other_voter = record_voter_key("demo", 4, "alicf", 5);
    cr_assert(a.lo != other_poll.lo || a.hi != other_poll.hi);
    cr_assert(a.lo != other_voter.lo || a.hi != other_voter.hi);
}

Test(record, voter_key_long_voter_lengths_differ) {
    /* Lengths >= 256 must not alias through a one-byte length. */
    char v[600];
    memset(v, 'q', sizeof v);
    voter_key_t a = record_voter_key("p", 1, v, 300);
    voter_key_t b = record_voter_key("p", 1, v, 44);
    cr_assert(a.lo != b.lo || a.hi != b.hi);
}

Test(record, partition_in_range_and_stable) {
    const int counts[] = {1, 2, 3, 4, 7, 16, 1024};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        int np = counts[k];
        for (int i = 0; i < 2000; i++) {
            char voter[32];
            snprintf(voter, sizeof voter, "voter-%d", i);
            int p1 = rec_partition("demo", "red", voter, np, (uint64_t)i);
            int p2 = rec_partition("demo", "blue", voter, np, (uint64_t)i * 7 + 3);
            cr_assert(p1 >= 0 && p1 < np, "partition %d of %d", p1, np);
            /* The option and spread do not move a voter. */
            cr_assert_eq(p1, p2);
            voter_key_t key = record_voter_key("demo", 4, voter, strlen(voter));
            if (np > 1)
                cr_assert_eq(p1, (int)(key.hi % (uint64_t)np));
        }
    }
}

Test(record, partition_single_partition_is_zero) {
    cr_assert_eq(rec_partition("demo", "red", "alice", 1, 99), 0);
    cr_assert_eq(rec_partition("demo", "red", NULL, 1, 99), 0);
    cr_assert_eq(rec_partition("demo", "red", "alice", 0, 99), 0);
}

Test(record, partition_without_voter_uses_spread) {
    for (uint64_t s = 0; s < 100; s++) {
        cr_assert_eq(rec_partition("applause", "clap", NULL, 4, s), (int)(s % 4));
        cr_assert_eq(rec_partition("applause", "clap", NULL, 7, s), (int)(s % 7));
    }
    cr_assert_eq(rec_partition("applause", "clap", NULL, 4, UINT64_MAX), (int)(UINT64_MAX % 4));
}

Test(record, partition_spreads_voters) {
    int hits[8] = {0};
    for (int i = 0; i < 8000; i++) {
        char voter[32];
        snprintf(voter, sizeof voter, "v%d", i);
        hits[rec_partition("demo", "red", voter, 8, 0)]++;
    }
    for (int p = 0; p < 8; p++)
        cr_assert(hits[p] > 700 && hits[p] < 1300, "partition %d got %d of 8000", p, hits[p]);
}

Test(record, partition_same_voter_other_poll_may_differ_but_is_stable) {
    int a = rec_partition("demo", "red", "alice", 16, 0);
    int b = rec_partition("mood", "love", "alice", 16, 0);
    cr_assert_eq(a, rec_partition("demo", "green", "alice", 16, 5));
    cr_assert_eq(b, rec_partition("mood", "meh", "alice", 16, 5));
}
