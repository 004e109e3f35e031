/* log/record.c: record_decode() of arbitrary bytes.
 *
 * Every input is also decoded by the reader below, written from the format
 * in record.h and sharing no code with record.c, and both must agree on
 * whether the bytes are a record and on every field. A decoded record must
 * lie inside the input, re-encode to the same bytes (a v1 record: to the
 * same fields in the v2 layout), and hash to the key the streaming XXH3
 * gives, on which every log's partitioning depends. Control records are
 * checked the same way against a reader of their own. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "fuzz.h"
#include "log/record.h"

typedef struct {
    int version;
    unsigned flags;
    uint64_t ts_ms;
    size_t poll_off, poll_len, option_off, option_len, voter_off, voter_len, key_off, key_len;
} ref_record_t;

static uint64_t ref_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The vote formats of record.h, byte by byte. 0 when data is a v1 or v2
 * vote. */
static int ref_decode(const uint8_t *d, size_t n, ref_record_t *r) {
    size_t off;
    if (n >= 2 && d[0] == 1) {
        r->version = 1;
        r->flags = 0;
        off = 2;
    } else if (n >= 3 && d[0] == 2 && d[1] == 1) {
        r->version = 2;
        r->flags = d[2];
        if (r->flags & ~3u)
            return -1;
        off = 3;
    } else {
        return -1;
    }
    if (off + 8 > n)
        return -1;
    r->ts_ms = ref_u64(d + off);
    off += 8;
    if (off + 1 > n)
        return -1;
    r->poll_len = d[off++];
    r->poll_off = off;
    off += r->poll_len;
    if (off + 1 > n)
        return -1;
    r->option_len = d[off++];
    r->option_off = off;
    off += r->option_len;
    if (off + 2 > n)
        return -1;
    r->voter_len = (size_t)d[off] | (size_t)d[off + 1] << 8;
    off += 2;
    r->voter_off = off;
    off += r->voter_len;
    r->key_len = 0;
    if (r->flags & 2) {
        if (off + 1 > n)
            return -1;
        r->key_len = d[off++];
        r->key_off = off;
        off += r->key_len;
        if (r->key_len < 1 || r->key_len > 64)
            return -1;
    }
    /* Ids: poll and option 1-64 bytes, voter 0-256 (16 when hashed); nothing
     * after the voter or the key. */
    if (r->poll_len < 1 || r->poll_len > 64 || r->option_len < 1 || r->option_len > 64 ||
        r->voter_len > 256 || ((r->flags & 1) && r->voter_len != 16) || off != n)
        return -1;
    return 0;
}

/* The control format: 0 when data is one of a known kind (1, 2). */
static int ref_control(const uint8_t *d, size_t n, uint64_t *seq, size_t *body_len) {
    if (n < 28 || d[0] != 2 || d[1] != 2 || (d[2] != 1 && d[2] != 2))
        return -1;
    *seq = ref_u64(d + 11);
    size_t plen = d[27], off = 28 + plen;
    if (plen < 1 || plen > 64 || off + 4 > n)
        return -1;
    *body_len = (size_t)d[off] | (size_t)d[off + 1] << 8 | (size_t)d[off + 2] << 16 |
                (size_t)d[off + 3] << 24;
    return *body_len <= 60000 && off + 4 + *body_len == n ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vote_record_t v = {0};
    ref_record_t r = {0};
    control_record_t c;
    uint64_t seq = 0;
    size_t blen = 0;
    int cgot = control_decode(data, size, &c);
    FUZZ_CHECK(cgot == ref_control(data, size, &seq, &blen));
    if (cgot == 0) {
        FUZZ_CHECK(c.seq == seq && c.body_len == blen);
        FUZZ_CHECK(record_type(data, size) == RECORD_CONTROL);
        FUZZ_CHECK(record_decode(data, size, &v) == -1);
        uint8_t *out = malloc(size);
        FUZZ_CHECK(out != NULL);
        FUZZ_CHECK(control_encode(&c, out) == size && memcmp(out, data, size) == 0);
        free(out);
        return 0;
    }
    int got = record_decode(data, size, &v);
    int want = ref_decode(data, size, &r);
    FUZZ_CHECK(got == 0 || got == -1);
    FUZZ_CHECK(got == want);
    if (got != 0)
        return 0;

    FUZZ_CHECK(record_type(data, size) == RECORD_VOTE);
    FUZZ_CHECK(v.version == r.version && v.flags == r.flags);
    FUZZ_CHECK(v.ts_ms == r.ts_ms);
    FUZZ_CHECK(v.poll == (const char *)data + r.poll_off && v.poll_len == r.poll_len);
    FUZZ_CHECK(v.option == (const char *)data + r.option_off && v.option_len == r.option_len);
    FUZZ_CHECK(v.voter_len == r.voter_len);
    FUZZ_CHECK(v.voter_len == 0 ? v.voter == NULL : v.voter == (const char *)data + r.voter_off);
    FUZZ_CHECK(v.key_len == r.key_len);
    FUZZ_CHECK(v.key_len == 0 ? v.key == NULL : v.key == (const char *)data + r.key_off);
    FUZZ_CHECK(size <= RECORD_MAX_LEN);

    /* Re-encoding writes v2: the same bytes for a v2 input; for a v1 input
     * the same fields after the 3-byte v2 head (v1's flags byte is never
     * read). */
    uint8_t out[RECORD_MAX_LEN];
    size_t n = record_encode(&v, out);
    if (v.version == 2) {
        FUZZ_CHECK(n == size && memcmp(out, data, size) == 0);
    } else {
        FUZZ_CHECK(n == size + 1 && out[0] == 2 && out[1] == 1 && out[2] == 0);
        FUZZ_CHECK(memcmp(out + 3, data + 2, size - 2) == 0);
    }

    /* The partition key is defined as streaming XXH3-128 over the lengths,
     * the poll id and the voter id. */
    uint8_t lens[3] = {(uint8_t)v.poll_len, (uint8_t)v.voter_len, (uint8_t)(v.voter_len >> 8)};
    XXH3_state_t *st = XXH3_createState();
    FUZZ_CHECK(st != NULL);
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, lens, sizeof lens);
    XXH3_128bits_update(st, v.poll, v.poll_len);
    XXH3_128bits_update(st, v.voter, v.voter_len);
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    voter_key_t k = record_voter_key(v.poll, v.poll_len, v.voter, v.voter_len);
    FUZZ_CHECK(k.lo == h.low64 && k.hi == h.high64);

    static const int nparts[] = {1, 2, 3, 16, 1000};
    for (size_t i = 0; i < sizeof nparts / sizeof nparts[0]; i++) {
        int p = record_partition(&v, nparts[i], v.ts_ms);
        FUZZ_CHECK(p >= 0 && p < nparts[i]);
        /* A voter's votes for a poll share a partition, whatever the
         * option, time or spread. */
        if (v.voter_len > 0) {
            vote_record_t w = v;
            w.option = "x";
            w.option_len = 1;
            w.ts_ms = ~v.ts_ms;
            FUZZ_CHECK(record_partition(&w, nparts[i], v.ts_ms + 1) == p);
        }
    }
    return 0;
}
