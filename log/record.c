#include "log/record.h"

#include <string.h>
#define XXH_INLINE_ALL /* short inputs: no call, no dispatch */
#include <xxhash.h>

#include "common/endian.h"

int record_type(const uint8_t *buf, size_t len) {
    if (len >= RECORD_V1_HDR_LEN && buf[0] == RECORD_VERSION_V1)
        return RECORD_VOTE;
    if (len < 2 || buf[0] != RECORD_VERSION)
        return -1;
    if (buf[1] == RECORD_VOTE && len >= RECORD_HDR_LEN)
        return RECORD_VOTE;
    if (buf[1] == RECORD_CONTROL && len >= CONTROL_HDR_LEN)
        return RECORD_CONTROL;
    return -1;
}

size_t record_encode(const vote_record_t *v, uint8_t *out) {
    unsigned flags = (v->flags & ~(unsigned)RECORD_F_IDEM) | (v->key_len ? RECORD_F_IDEM : 0);
    if (v->poll_len == 0 || v->poll_len > 64 || v->option_len == 0 || v->option_len > 64 ||
        v->voter_len > 256 || v->key_len > RECORD_MAX_KEY || (flags & ~RECORD_F_KNOWN) ||
        ((flags & RECORD_F_VOTER_HMAC) && v->voter_len != RECORD_VOTER_HMAC_LEN))
        return 0;
    uint8_t *p = out;
    *p++ = RECORD_VERSION;
    *p++ = RECORD_VOTE;
    *p++ = (uint8_t)flags;
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
    if (v->key_len) {
        *p++ = (uint8_t)v->key_len;
        memcpy(p, v->key, v->key_len);
        p += v->key_len;
    }
    return (size_t)(p - out);
}

int record_decode(const uint8_t *buf, size_t len, vote_record_t *v) {
    const uint8_t *p = buf, *end = buf + len;
    if (record_type(buf, len) != RECORD_VOTE)
        return -1;
    *v = (vote_record_t){.version = buf[0]};
    if (buf[0] == RECORD_VERSION_V1) {
        p += 2; /* version, flags (always 0 in v1, never looked at) */
    } else {
        v->flags = buf[2];
        if (v->flags & ~RECORD_F_KNOWN)
            return -1;
        p += 3;
    }
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
    if (v->voter_len > 256 || (size_t)(end - p) < v->voter_len)
        return -1;
    if ((v->flags & RECORD_F_VOTER_HMAC) && v->voter_len != RECORD_VOTER_HMAC_LEN)
        return -1;
    v->voter = v->voter_len ? (const char *)p : NULL;
    p += v->voter_len;
    if (v->flags & RECORD_F_IDEM) {
        if (p == end)
            return -1;
        v->key_len = *p++;
        if (v->key_len == 0 || v->key_len > RECORD_MAX_KEY || (size_t)(end - p) < v->key_len)
            return -1;
        v->key = (const char *)p;
        p += v->key_len;
    }
    return p == end ? 0 : -1;
}

static int control_kind_known(unsigned kind) {
    return kind == CONTROL_DEFINE || kind == CONTROL_FINAL;
}

size_t control_encode(const control_record_t *c, uint8_t *out) {
    if (c->poll_len == 0 || c->poll_len > 64 || c->body_len > CONTROL_MAX_BODY ||
        !control_kind_known(c->kind))
        return 0;
    uint8_t *p = out;
    *p++ = RECORD_VERSION;
    *p++ = RECORD_CONTROL;
    *p++ = (uint8_t)c->kind;
    le_put64(p, c->ts_ms);
    le_put64(p + 8, c->seq);
    le_put64(p + 16, c->at_ms);
    p += 24;
    *p++ = (uint8_t)c->poll_len;
    memcpy(p, c->poll, c->poll_len);
    p += c->poll_len;
    le_put32(p, (uint32_t)c->body_len);
    p += 4;
    if (c->body_len)
        memcpy(p, c->body, c->body_len);
    p += c->body_len;
    return (size_t)(p - out);
}

int control_decode(const uint8_t *buf, size_t len, control_record_t *c) {
    const uint8_t *p = buf, *end = buf + len;
    if (record_type(buf, len) != RECORD_CONTROL)
        return -1;
    *c = (control_record_t){.kind = buf[2]};
    if (!control_kind_known(c->kind))
        return -1;
    p += 3;
    c->ts_ms = le_get64(p);
    c->seq = le_get64(p + 8);
    c->at_ms = le_get64(p + 16);
    p += 24;
    c->poll_len = *p++;
    if (c->poll_len == 0 || c->poll_len > 64 || (size_t)(end - p) < c->poll_len + 4)
        return -1;
    c->poll = (const char *)p;
    p += c->poll_len;
    c->body_len = le_get32(p);
    p += 4;
    if (c->body_len > CONTROL_MAX_BODY || (size_t)(end - p) != c->body_len)
        return -1;
    c->body = c->body_len ? (const char *)p : NULL;
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
    voter_key_t k;
    if (v->voter_len)
        k = record_voter_key(v->poll, v->poll_len, v->voter, v->voter_len);
    else if (v->key_len) /* the key in the voter's place: its own key space */
        k = record_voter_key(v->poll, v->poll_len, v->key, v->key_len);
    else
        return (int)(spread % (uint64_t)npartitions);
    return (int)(k.hi % (uint64_t)npartitions);
}

size_t record_log_key(const vote_record_t *v, char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t n = v->poll_len;
    memcpy(out, v->poll, n);
    out[n++] = '/';
    if (v->flags & RECORD_F_VOTER_HMAC) { /* binary: keyed by its hex */
        for (size_t i = 0; i < v->voter_len; i++) {
            out[n++] = hex[(uint8_t)v->voter[i] >> 4];
            out[n++] = hex[(uint8_t)v->voter[i] & 15];
        }
    } else if (v->voter_len) {
        memcpy(out + n, v->voter, v->voter_len);
        n += v->voter_len;
    }
    return n;
}
