#include "log/record.h"

#include <string.h>
#define XXH_INLINE_ALL /* short inputs: no call, no dispatch */
#include <xxhash.h>

#include "common/endian.h"

size_t record_encode(const vote_record_t *v, uint8_t *out) {
    if (v->poll_len == 0 || v->poll_len > 64 || v->option_len == 0 || v->option_len > 64 ||
        v->voter_len > 256)
        return 0;
    uint8_t *p = out;
    *p++ = RECORD_VERSION;
    *p++ = 0;
    le_put64(p, v->ts_ms);
    p += 8;
    *p++ = (uint8_t)v->poll_len;
    memcpy(p, v->poll, v->poll_len);
    p += v->poll_len;
    *p++ = (uint8_t)v->option_len;
    memcpy(p, v->option, v->option_len);
    p += v->option_len;
    le_put16(p, (uint16_t)v->voter_len);
    p += 2;
    if (v->voter_len)
        memcpy(p, v->voter, v->voter_len);
    p += v->voter_len;
    return (size_t)(p - out);
}

int record_decode(const uint8_t *buf, size_t len, vote_record_t *v) {
    const uint8_t *p = buf, *end = buf + len;
    if (len < RECORD_HDR_LEN || p[0] != RECORD_VERSION)
        return -1;
    p += 2;
    v->ts_ms = le_get64(p);
    p += 8;
    v->poll_len = *p++;
    if (v->poll_len == 0 || v->poll_len > 64 || (size_t)(end - p) < v->poll_len + 1)
        return -1;
    v->poll = (const char *)p;
    p += v->poll_len;
    v->option_len = *p++;
    if (v->option_len == 0 || v->option_len > 64 || (size_t)(end - p) < v->option_len + 2)
        return -1;
    v->option = (const char *)p;
    p += v->option_len;
    v->voter_len = le_get16(p);
    p += 2;
    if (v->voter_len > 256 || (size_t)(end - p) != v->voter_len)
        return -1;
    v->voter = v->voter_len ? (const char *)p : NULL;
    return 0;
}

voter_key_t record_voter_key(const char *poll, size_t poll_len, const char *voter,
                             size_t voter_len) {
    /* poll and voter are hashed with their lengths so that ("ab","c") and
     * ("a","bc") differ. */
    uint8_t lens[3] = {(uint8_t)poll_len, (uint8_t)voter_len, (uint8_t)(voter_len >> 8)};
    XXH128_hash_t h;
    uint8_t buf[sizeof lens + 64 + 256]; /* a record's longest poll and voter */
    if (poll_len + voter_len <= sizeof buf - sizeof lens) {
        /* One shot over a contiguous copy: XXH3 streaming equals one-shot
         * over the concatenation, so this is the key streaming gave (the
         * partitions of logs already written depend on it), for less. */
        memcpy(buf, lens, sizeof lens);
        memcpy(buf + sizeof lens, poll, poll_len);
        if (voter_len)
            memcpy(buf + sizeof lens + poll_len, voter, voter_len);
        h = XXH3_128bits(buf, sizeof lens + poll_len + voter_len);
    } else {
        XXH3_state_t st;
        XXH3_128bits_reset(&st);
        XXH3_128bits_update(&st, lens, sizeof lens);
        XXH3_128bits_update(&st, poll, poll_len);
        XXH3_128bits_update(&st, voter, voter_len);
        h = XXH3_128bits_digest(&st);
    }
    voter_key_t k = {h.low64, h.high64};
    return k;
}

uint64_t record_poll_seed(const char *poll, size_t poll_len) {
    return XXH3_64bits(poll, poll_len);
}

voter_key_t record_poll_voter_key(uint64_t poll_seed, const char *voter, size_t voter_len) {
    XXH128_hash_t h = XXH3_128bits_withSeed(voter, voter_len, poll_seed);
    voter_key_t k = {h.low64, h.high64};
    return k;
}

int record_partition(const vote_record_t *v, int npartitions, uint64_t spread) {
    if (npartitions <= 1)
        return 0;
    if (v->voter_len == 0)
        return (int)(spread % (uint64_t)npartitions);
    voter_key_t k = record_voter_key(v->poll, v->poll_len, v->voter, v->voter_len);
    return (int)(k.hi % (uint64_t)npartitions);
}
