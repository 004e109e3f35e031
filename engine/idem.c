#include "engine/idem.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "common/endian.h"
#include "common/ids.h"
#include "common/util.h"

#define RING_MIN 64
/* The ring shrinks by half once fewer than a quarter of its slots are
 * queued: after a peak, memory follows the keys held. */
#define SHRINK_BELOW 4
/* Domain separation from record_poll_voter_key, which hashes with the same
 * poll seed. */
#define IDEM_SEED_MIX 0x1de3b07e5a1a9c3dull

void idem_init(idem_t *d) {
    memset(d, 0, sizeof *d);
}

void idem_free(idem_t *d) {
    free(d->ring);
    free(d->index);
    memset(d, 0, sizeof *d);
}

voter_key_t idem_key(uint64_t poll_seed, const char *voter, size_t voter_len, const char *key,
                     size_t key_len) {
    /* Lengths first: ("ab","c") and ("a","bc") must differ. */
    uint8_t buf[3 + VOTER_MAX_LEN + RECORD_MAX_KEY];
    tally_assert(voter_len <= VOTER_MAX_LEN && key_len <= RECORD_MAX_KEY);
    size_t n = 0;
    le_put16(buf, (uint16_t)voter_len);
    buf[2] = (uint8_t)key_len;
    n = 3;
    if (voter_len)
        memcpy(buf + n, voter, voter_len);
    n += voter_len;
    memcpy(buf + n, key, key_len);
    n += key_len;
    XXH128_hash_t h = XXH3_128bits_withSeed(buf, n, poll_seed ^ IDEM_SEED_MIX);
    return (voter_key_t){h.low64, h.high64};
}

static inline size_t home(const idem_t *d, uint64_t a) {
    return (size_t)((a * 0x9E3779B97F4A7C15ull) >> d->index_shift);
}

/* The index slot holding ring position pos + 1 for key a, or of a's key
 * (a, b): the first slot on a's probe whose entry matches. */
static inline size_t find_slot(const idem_t *d, uint64_t a, uint64_t b, int *found) {
    size_t i = home(d, a);
    for (;; i = (i + 1) & d->index_mask) {
        uint32_t v = d->index[i];
        if (!v) {
            *found = 0;
            return i;
        }
        const idem_entry_t *e = &d->ring[v - 1];
        if (e->a == a && e->b == b) {
            *found = 1;
            return i;
        }
    }
}

/* Removes index slot i, shifting back the slots after it on their probe
 * (linear probing without tombstones). */
static void index_delete(idem_t *d, size_t i) {
    size_t j = i;
    for (;;) {
        d->index[i] = 0;
        for (;;) {
            j = (j + 1) & d->index_mask;
            uint32_t v = d->index[j];
            if (!v)
                return;
            size_t h = home(d, d->ring[v - 1].a);
            /* v may move to i when its home is not in (i, j]. */
            if (i <= j ? (h <= i || h > j) : (h <= i && h > j))
                break;
        }
        d->index[i] = d->index[j];
        i = j;
    }
}

/* Lays the queued entries into a ring of cap slots (a power of two) and
 * rebuilds the index, twice as many slots, from the live ones. */
static void resize(idem_t *d, size_t cap) {
    idem_entry_t *ring = xcalloc(cap, sizeof *ring);
    for (uint64_t s = d->head; s < d->tail; s++)
        ring[s & (cap - 1)] = d->ring[s & d->ring_mask];
    free(d->ring);
    free(d->index);
    d->ring = ring;
    d->ring_mask = cap - 1;
    size_t icap = cap * 2;
    d->index = xcalloc(icap, sizeof *d->index);
    d->index_mask = icap - 1;
    d->index_shift = 64 - (unsigned)__builtin_ctzll((unsigned long long)icap);
    for (uint64_t s = d->head; s < d->tail; s++) {
        size_t pos = s & d->ring_mask;
        if (!d->ring[pos].a)
            continue;
        int found;
        size_t i = find_slot(d, d->ring[pos].a, d->ring[pos].b, &found);
        tally_assert(!found); /* a key is live once */
        d->index[i] = (uint32_t)pos + 1;
    }
}

static size_t ring_cap(const idem_t *d) {
    return d->ring ? d->ring_mask + 1 : 0;
}

/* Pops the oldest entries while their hold has lapsed (or they are dead). */
static void prune(idem_t *d) {
    int popped = 0;
    while (d->head < d->tail) {
        idem_entry_t *e = &d->ring[d->head & d->ring_mask];
        if (e->a && d->hwm <= e->until)
            break;
        if (e->a) {
            int found;
            size_t i = find_slot(d, e->a, e->b, &found);
            tally_assert(found && d->index[i] == (uint32_t)(d->head & d->ring_mask) + 1);
            index_delete(d, i);
            d->live--;
        }
        d->head++;
        popped = 1;
    }
    size_t cap = ring_cap(d);
    if (popped && cap > RING_MIN && (d->tail - d->head) * SHRINK_BELOW < cap) {
        size_t to = RING_MIN;
        while (to < (d->tail - d->head) * 2)
            to *= 2;
        resize(d, to);
    }
}

void idem_observe(idem_t *d, uint64_t ts_ms) {
    if (ts_ms <= d->hwm)
        return;
    d->hwm = ts_ms;
    if (d->head < d->tail)
        prune(d);
}

/* Queues a live entry and indexes it at slot i (from find_slot, on a ring
 * with room). */
static void push(idem_t *d, size_t i, uint64_t a, uint64_t b, uint64_t until) {
    size_t pos = d->tail & d->ring_mask;
    d->ring[pos] = (idem_entry_t){a, b, until};
    d->tail++;
    d->index[i] = (uint32_t)pos + 1;
    d->live++;
}

int idem_check(idem_t *d, voter_key_t k, uint64_t ts_ms, uint64_t window_ms) {
    if (d->tail - d->head == ring_cap(d))
        resize(d, d->ring ? ring_cap(d) * 2 : RING_MIN);
    uint64_t a = k.lo | 1, b = k.hi;
    int found;
    size_t i = find_slot(d, a, b, &found);
    uint64_t until = ts_ms + window_ms < ts_ms ? UINT64_MAX : ts_ms + window_ms;
    if (found) {
        idem_entry_t *e = &d->ring[d->index[i] - 1];
        if (d->hwm <= e->until)
            return 1;
        /* Lapsed but not yet popped (an older hold queued before it):
         * a new hold, queued anew; the old entry stays queued, dead. */
        e->a = 0;
        d->live--;
    }
    push(d, i, a, b, until);
    return 0;
}

size_t idem_count(const idem_t *d) {
    return d->live;
}

size_t idem_bytes(const idem_t *d) {
    return ring_cap(d) * sizeof(idem_entry_t) + (d->index ? d->index_mask + 1 : 0) * 4;
}

/* ---- snapshots ---- */

size_t idem_snapshot_size(const idem_t *d) {
    return 16 + 24 * d->live;
}

void idem_snapshot_write(const idem_t *d, idem_emit_fn emit, void *arg) {
    enum { CHUNK = 1024 };
    uint8_t buf[CHUNK * 24];
    le_put64(buf, d->hwm);
    le_put64(buf + 8, d->live);
    emit(arg, buf, 16);
    size_t n = 0;
    for (uint64_t s = d->head; s < d->tail; s++) {
        const idem_entry_t *e = &d->ring[s & d->ring_mask];
        if (!e->a)
            continue;
        le_put64(buf + n * 24, e->a);
        le_put64(buf + n * 24 + 8, e->b);
        le_put64(buf + n * 24 + 16, e->until);
        if (++n == CHUNK) {
            emit(arg, buf, n * 24);
            n = 0;
        }
    }
    if (n)
        emit(arg, buf, n * 24);
}

int idem_snapshot_read(idem_t *d, const uint8_t *p, size_t len, char *errstr, size_t esz) {
    idem_free(d);
    if (len < 16) {
        snprintf(errstr, esz, "idempotency state: truncated");
        return -1;
    }
    uint64_t hwm = le_get64(p), n = le_get64(p + 8);
    if (n > (len - 16) / 24 || (len - 16) != n * 24) {
        snprintf(errstr, esz, "idempotency state: %llu entries do not fill %zu bytes",
                 (unsigned long long)n, len - 16);
        return -1;
    }
    if (n > (uint64_t)1 << 30) {
        snprintf(errstr, esz, "idempotency state: too many entries");
        return -1;
    }
    size_t cap = RING_MIN;
    while (cap < n)
        cap *= 2;
    resize(d, cap);
    d->hwm = hwm;
    p += 16;
    for (uint64_t k = 0; k < n; k++, p += 24) {
        uint64_t a = le_get64(p), b = le_get64(p + 8), until = le_get64(p + 16);
        int found;
        size_t i = a & 1 ? find_slot(d, a, b, &found) : 0;
        if (!(a & 1) || found) {
            snprintf(errstr, esz, "idempotency state: entry %llu is malformed or repeated",
                     (unsigned long long)k);
            idem_free(d);
            return -1;
        }
        push(d, i, a, b, until);
    }
    return 0;
}
