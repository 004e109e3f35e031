/* Idempotency keys of one partition: which (poll, voter, Idempotency-Key)
 * the partition has counted, so that a client's retry of a vote is
 * recognised and not counted again, in every mode.
 *
 * The rule, decided by the log alone (live == replay):
 *   - hwm is the highest timestamp of any vote the partition has read (keyed
 *     or not, counted or not), in log order;
 *   - a keyed vote whose key is held, and whose hold has not lapsed
 *     (hwm <= until, until = the first vote's ts + the poll's window), is a
 *     retry: not counted;
 *   - otherwise it is a first vote: counted as its mode says, and its key is
 *     held until ts + window (a lapsed key starts a new hold).
 * "Lapsed" is checked on every lookup, so when entries are pruned does not
 * change any decision: pruning only frees memory. It is incremental, in
 * insertion order: every vote that raises hwm pops the oldest entries whose
 * hold has lapsed (O(1) amortised; an entry whose hold outlasts an older
 * one's waits behind it, bounded by the longest window).
 *
 * Layout: a FIFO ring of 24-byte entries {128-bit key, until} in insertion
 * order, and an open-addressing index of 4-byte ring positions (twice the
 * ring's capacity, so at most half full). Both are rebuilt when the ring
 * grows or shrinks (by powers of two). Memory per held key: 24 / ring
 * occupancy + 8 / ring occupancy bytes, 32..64 (README, "Idempotency").
 * @locality the partition's worker thread only (and snapshot load before
 * any worker starts). */
#ifndef TALLY_IDEM_H
#define TALLY_IDEM_H

#include <stddef.h>
#include <stdint.h>

#include "log/record.h"

typedef struct {
    uint64_t a;     /* key.lo | 1; 0: dead (its key was held again later) */
    uint64_t b;     /* key.hi */
    uint64_t until; /* the hold lapses once hwm > until */
} idem_entry_t;

typedef struct {
    idem_entry_t *ring; /* [ring_mask + 1] */
    size_t ring_mask;
    uint64_t head, tail; /* sequence numbers: entries head..tail-1 are queued */
    uint32_t *index;     /* [index_mask + 1]: ring position + 1, 0 empty */
    size_t index_mask;
    unsigned index_shift;
    size_t live;  /* queued entries that are not dead */
    uint64_t hwm; /* highest vote ts seen */
} idem_t;

void idem_init(idem_t *d);
void idem_free(idem_t *d);

/* The key of a vote: 128-bit XXH3 of the voter's and the key's lengths and
 * bytes, seeded from the poll's seed (record_poll_seed), so keys of
 * different polls or voters never meet. voter may be empty (anonymous). */
voter_key_t idem_key(uint64_t poll_seed, const char *voter, size_t voter_len, const char *key,
                     size_t key_len);

/* Every vote the partition reads, in log order, before any idem_check of
 * it: raises hwm and prunes lapsed entries. */
void idem_observe(idem_t *d, uint64_t ts_ms);

/* A keyed vote at ts_ms (already observed) of a poll whose window is
 * window_ms: 1 if it is a retry (not to be counted), else 0 and its key is
 * now held until ts_ms + window_ms. */
int idem_check(idem_t *d, voter_key_t k, uint64_t ts_ms, uint64_t window_ms);

/* A hint only: fetches the index line where k's probe starts, for an
 * idem_check that follows a little later (the engine's pass 2). */
static inline void idem_prefetch(const idem_t *d, voter_key_t k) {
    if (d->index)
        __builtin_prefetch(
            &d->index[(size_t)(((k.lo | 1) * 0x9E3779B97F4A7C15ull) >> d->index_shift)], 0 /*read*/,
            3);
}

/* Held keys, and bytes of the ring and index. */
size_t idem_count(const idem_t *d);
size_t idem_bytes(const idem_t *d);

/* Snapshots: the state as a self-contained section body,
 *   u64 hwm  u64 n  then n entries {u64 a, u64 b, u64 until}
 * (live entries in insertion order), little-endian. write hands the bytes
 * to emit in pieces (of at most some KiB). read replaces d's state with the
 * n entries at p[0..len), which must be exactly one such body: 0, or -1
 * with errstr (truncated, trailing bytes, a malformed entry), d then
 * empty. */
typedef void (*idem_emit_fn)(void *arg, const void *p, size_t n);
size_t idem_snapshot_size(const idem_t *d); /* bytes write will emit */
void idem_snapshot_write(const idem_t *d, idem_emit_fn emit, void *arg);
int idem_snapshot_read(idem_t *d, const uint8_t *p, size_t len, char *errstr, size_t esz);

#endif
