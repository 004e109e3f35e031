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
    vote_record_t in = {.ts_ms = ts,
                        .poll = poll,
                        .poll_len = strlen(poll),
                        .option = option,
                        .option_len = strlen(option),
                        .voter = voter,
                        .voter_len = voter ? strlen(voter) : 0};
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
    char key[65];
    fill(key, 64, 'k');
    uint8_t buf[RECORD_MAX_LEN];
    vote_record_t v = {.ts_ms = 1, .poll = poll, .poll_len = 64, .option = option, .option_len = 64, .voter = voter, .voter_len = 256, .key = key, .key_len = 64};
    cr_assert_eq(record_encode(&v, buf), (size_t)RECORD_MAX_LEN);
    vote_record_t out;
    cr_assert_eq(decode_exact(buf, RECORD_MAX_LEN, &out, NULL), 0);
    cr_assert_eq(out.key_len, 64);
    cr_assert_eq(out.flags, RECORD_F_IDEM);
}

Test(record, wire_layout_is_little_endian_v2) {
    uint8_t buf[RECORD_MAX_LEN];
    vote_record_t v = {.ts_ms = 0x0102030405060708ull, .poll = "ab", .poll_len = 2, .option = "xyz", .option_len = 3, .voter = "V", .voter_len = 1};
    size_t n = record_encode(&v, buf);
    const uint8_t want[] = {2,   1,   0,   0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                            2,   'a', 'b', 3,    'x',  'y',  'z',  1,    0,    'V'};
    cr_assert_eq(n, sizeof want);
    cr_assert_arr_eq(buf, want, sizeof want);
    /* With a key: flag 2 and u8 length + key after the voter. */
    v.key = "k-1";
    v.key_len = 3;
    n = record_encode(&v, buf);
    cr_assert_eq(n, sizeof want + 4);
    cr_assert_eq(buf[2], RECORD_F_IDEM);
    cr_assert_arr_eq(buf + sizeof want, ((const uint8_t[]){3, 'k', '-', '1'}), 4);
}

/* Logs written before v2 stay readable: the bytes older tally wrote, built
 * here by hand from the v1 layout. */
Test(record, decodes_v1_records) {
    const uint8_t v1[] = {1,   0,   0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                          2,   'a', 'b',  3,    'x',  'y',  'z',  1,    0,    'V'};
    vote_record_t v;
    cr_assert_eq(record_type(v1, sizeof v1), RECORD_VOTE);
    cr_assert_eq(decode_exact(v1, sizeof v1, &v, NULL), 0);
    cr_assert_eq(v.version, 1);
    cr_assert_eq(v.ts_ms, 0x0102030405060708ull);
    cr_assert_eq(v.poll_len, 2);
    cr_assert_eq(v.option_len, 3);
    cr_assert_eq(v.voter_len, 1);
    cr_assert_eq(v.flags, 0);
    cr_assert_eq(v.key_len, 0);
    const uint8_t anon[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'p', 1, 'o', 0, 0};
    cr_assert_eq(decode_exact(anon, sizeof anon, &v, NULL), 0);
    cr_assert_null(v.voter);
    for (size_t len = 0; len < sizeof v1; len++)
        cr_assert_eq(decode_exact(v1, len, &v, NULL), -1, "v1 cut to %zu accepted", len);
    uint8_t longer[sizeof v1 + 1];
    memcpy(longer, v1, sizeof v1);
    longer[sizeof v1] = 'x';
    cr_assert_eq(decode_exact(longer, sizeof longer, &v, NULL), -1);
}

Test(record, hashed_voter_and_flags) {
    uint8_t h[RECORD_VOTER_HMAC_LEN];
    for (size_t i = 0; i < sizeof h; i++)
        h[i] = (uint8_t)(i * 37); /* binary, with a NUL */
    uint8_t buf[RECORD_MAX_LEN];
    vote_record_t v = {.ts_ms = 5, .poll = "p", .poll_len = 1, .option = "o", .option_len = 1, .voter = (const char *)h, .voter_len = sizeof h, .flags = RECORD_F_VOTER_HMAC};
    size_t n = record_encode(&v, buf);
    cr_assert_gt(n, 0);
    vote_record_t out;
    cr_assert_eq(decode_exact(buf, n, &out, NULL), 0);
    cr_assert_eq(out.flags, RECORD_F_VOTER_HMAC);
    cr_assert_eq(out.voter_len, sizeof h);
    cr_assert_eq(memcmp(out.voter, h, sizeof h), 0);
    /* A hashed voter has exactly the hash's length. */
    v.voter_len = sizeof h - 1;
    cr_assert_eq(record_encode(&v, buf), 0);
    /* Unknown flags are refused both ways: they would carry a meaning this
     * reader lacks. */
    v.voter_len = sizeof h;
    v.flags = 0x80;
    cr_assert_eq(record_encode(&v, buf), 0);
    buf[2] = 0x80 | RECORD_F_VOTER_HMAC;
    cr_assert_eq(decode_exact(buf, n, &out, NULL), -1);
    /* A key flag without a key. */
    buf[2] = RECORD_F_VOTER_HMAC | RECORD_F_IDEM;
    cr_assert_eq(decode_exact(buf, n, &out, NULL), -1);
}

Test(record, control_roundtrip_and_bounds) {
    const char *body = "{\"id\":\"p\",\"options\":[\"a\"]}";
    control_record_t c = {CONTROL_DEFINE, 1700000000000ull, 7, 0, "poll", 4, body, strlen(body)};
    uint8_t *buf = xmalloc(CONTROL_MAX_LEN + 1);
    size_t n = control_encode(&c, buf);
    cr_assert_eq(n, CONTROL_HDR_LEN + 4 + strlen(body));
    cr_assert_eq(record_type(buf, n), RECORD_CONTROL);
    vote_record_t v;
    cr_assert_eq(record_decode(buf, n, &v), -1, "a control record is not a vote");
    control_record_t out;
    cr_assert_eq(control_decode(buf, n, &out), 0);
    cr_assert_eq(out.kind, CONTROL_DEFINE);
    cr_assert_eq(out.ts_ms, c.ts_ms);
    cr_assert_eq(out.seq, 7);
    cr_assert_eq(out.body_len, strlen(body));
    cr_assert_eq(memcmp(out.body, body, out.body_len), 0);
    for (size_t len = 0; len < n; len++) {
        uint8_t *cut = xmalloc(len ? len : 1);
        memcpy(cut, buf, len);
        cr_assert_eq(control_decode(cut, len, &out), -1, "cut to %zu accepted", len);
        free(cut);
    }
    buf[n] = 0;
    cr_assert_eq(control_decode(buf, n + 1, &out), -1, "trailing byte accepted");
    /* A final without a body; unknown kinds; oversized bodies. */
    control_record_t f = {CONTROL_FINAL, 1, 8, 1234, "poll", 4, NULL, 0};
    n = control_encode(&f, buf);
    cr_assert_eq(control_decode(buf, n, &out), 0);
    cr_assert_eq(out.at_ms, 1234);
    cr_assert_null(out.body);
    buf[2] = 9;
    cr_assert_eq(control_decode(buf, n, &out), -1);
    f.kind = 9;
    cr_assert_eq(control_encode(&f, buf), 0);
    char *big = xmalloc(CONTROL_MAX_BODY + 1);
    memset(big, 'x', CONTROL_MAX_BODY + 1);
    control_record_t b = {CONTROL_DEFINE, 1, 9, 0, "poll", 4, big, CONTROL_MAX_BODY};
    cr_assert_eq(control_encode(&b, buf), CONTROL_MAX_LEN - 60);
    b.body_len++;
    cr_assert_eq(control_encode(&b, buf), 0);
    free(big);
    free(buf);
}

Test(record, partition_by_key_without_voter) {
    vote_record_t v = {.ts_ms = 1, .poll = "p", .poll_len = 1, .option = "o", .option_len = 1, .voter = NULL, .voter_len = 0, .key = "abc", .key_len = 3};
    int first = record_partition(&v, 16, 1);
    for (uint64_t spread = 0; spread < 64; spread++)
        cr_assert_eq(record_partition(&v, 16, spread), first, "retries meet in one partition");
}

Test(record, encode_rejects_bad_lengths) {
    char poll[66], option[66], voter[258];
    fill(poll, 65, 'p');
    fill(option, 65, 'o');
    fill(voter, 257, 'v');
    uint8_t buf[RECORD_MAX_LEN + 64];
    vote_record_t ok = {.ts_ms = 1, .poll = poll, .poll_len = 64, .option = option, .option_len = 64, .voter = voter, .voter_len = 256};
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
    const uint8_t bad[] = {0, 3, 0x7f, 0x81, 0xff};
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
    size_t poll_at = 11, opt_at = 11 + 1 + 4, voter_at = opt_at + 1 + 3;
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
    big[1] = RECORD_VOTE;
    big[2] = 0;
    big[11] = 1;
    big[13] = 1;
    big[15] = (uint8_t)257;
    big[16] = (uint8_t)(257 >> 8);
    cr_assert_eq(decode_exact(big, sizeof big, &v, NULL), -1);
    big[15] = 0;
    big[16] = 1; /* 256: fine, with one byte too many */
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
            b[0] = iter % 6 == 0 ? RECORD_VERSION_V1 : RECORD_VERSION;
        if (len > 2 && iter % 2 == 0 && iter % 6 != 0) {
            b[1] = RECORD_VOTE;
            b[2] = (uint8_t)(rng_next(&seed) % 4);
        }
        if (len > 11 && iter % 4 == 0)
            b[iter % 6 == 0 ? 10 : 11] = (uint8_t)(rng_next(&seed) % 8);
        vote_record_t v;
        if (record_decode(b, len, &v) == 0) {
            size_t fixed = v.version == 1 ? RECORD_V1_HDR_LEN : RECORD_HDR_LEN;
            cr_assert_eq(fixed + v.poll_len + v.option_len + v.voter_len +
                             (v.key_len ? 1 + v.key_len : 0),
                         len);
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
