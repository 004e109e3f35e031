/* log/record.c: record_decode() of arbitrary bytes.
 *
 * Every input is also decoded by the reader below, written from the format
 * in record.h and sharing no code with record.c, and both must agree on
 * whether the bytes are a record and on every field. A decoded record must
 * lie inside the input, re-encode to the same bytes (but the flags byte,
 * which v1 writes as 0 and does not read), and hash to the key the streaming
 * XXH3 gives, on which every log's partitioning depends. */
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

#include "fuzz.h"
#include "log/record.h"

typedef struct {
    uint64_t ts_ms;
    size_t poll_off, poll_len, option_off, option_len, voter_off, voter_len;
} ref_record_t;

/* The format of record.h, byte by byte. 0 when data is a v1 record. */
static int ref_decode(const uint8_t *d, size_t n, ref_record_t *r) {
    size_t off = 0;
    if (n < 1 + 1 + 8 || d[0] != 1)
        return -1;
    r->ts_ms = 0;
    for (int i = 0; i < 8; i++)
        r->ts_ms |= (uint64_t)d[2 + i] << (8 * i);
    off = 10;
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
    /* Ids: poll and option 1-64 bytes, voter 0-256; nothing after the voter. */
    if (r->poll_len < 1 || r->poll_len > 64 || r->option_len < 1 || r->option_len > 64 ||
        r->voter_len > 256 || off != n)
        return -1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vote_record_t v = {0};
    ref_record_t r = {0};
    int got = record_decode(data, size, &v);
    int want = ref_decode(data, size, &r);
    FUZZ_CHECK(got == 0 || got == -1);
    FUZZ_CHECK(got == want);
    if (got != 0)
        return 0;

    FUZZ_CHECK(v.ts_ms == r.ts_ms);
    FUZZ_CHECK(v.poll == (const char *)data + r.poll_off && v.poll_len == r.poll_len);
    FUZZ_CHECK(v.option == (const char *)data + r.option_off && v.option_len == r.option_len);
    FUZZ_CHECK(v.voter_len == r.voter_len);
    FUZZ_CHECK(v.voter_len == 0 ? v.voter == NULL : v.voter == (const char *)data + r.voter_off);
    FUZZ_CHECK(RECORD_HDR_LEN + v.poll_len + v.option_len + v.voter_len == size);
    FUZZ_CHECK(size <= RECORD_MAX_LEN);

    uint8_t out[RECORD_MAX_LEN];
    size_t n = record_encode(&v, out);
    FUZZ_CHECK(n == size);
    FUZZ_CHECK(out[0] == data[0] && out[1] == 0);
    FUZZ_CHECK(memcmp(out + 2, data + 2, size - 2) == 0);

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
