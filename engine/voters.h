/* A set of voters of one poll in one partition, with the option each one's
 * counted vote went to. Open addressing, linear probing, 16 bytes a slot:
 * 111 bits of the voter's 128-bit key and a 16-bit option index.
 *
 * The home slot is the top bits of the mixed key, so the order of slots
 * follows the order of hashes: doubling sends slot i to 2i or 2i+1, and
 * growing is a sequential pass over both tables instead of random writes.
 * Tables of 2 MiB and more are mapped on their own and asked for huge pages:
 * every vote is a random access, and at 10M voters 4 KiB pages would make
 * most of them a TLB miss too.
 * @locality the partition's worker thread only */
#ifndef TALLY_VOTERS_H
#define TALLY_VOTERS_H

#include <stddef.h>
#include <stdint.h>

#include "log/record.h"

typedef struct {
    uint64_t a; /* key.lo | 1; 0 marks an empty slot */
    uint64_t b; /* key.hi with the low 16 bits holding the option index */
} voter_slot_t;

typedef struct {
    voter_slot_t *slots;
    size_t mask; /* capacity - 1; capacity is a power of two */
    size_t count;
    unsigned shift; /* 64 - log2(capacity) */
} voters_t;

#define VOTERS_OPT_MASK ((uint64_t)0xffff)

void voters_init(voters_t *v);
void voters_free(voters_t *v);
/* Doubles the table (or creates it). Pointers to slots become invalid. */
void voters_grow(voters_t *v);

static inline size_t voters_home(const voters_t *v, uint64_t a) {
    /* a is already a high-quality hash; the multiply spreads keys that are
     * biased in their top bits too (tests, snapshots of other tables). */
    return (size_t)((a * 0x9E3779B97F4A7C15ull) >> v->shift);
}

/* A hint only: fetches the cache line where k's probe starts, for a lookup
 * that follows a little later. Never reads the slot. */
static inline void voters_prefetch(const voters_t *v, voter_key_t k) {
    if (v->slots)
        __builtin_prefetch(&v->slots[voters_home(v, k.lo | 1)], 1 /*for write*/, 3);
}

/* Looks the voter up; when absent inserts it with option and returns -1,
 * else returns its option index. *slot (may be NULL) is where the voter
 * lives, for voters_set_option(), valid until the next insert. */
static inline int voters_get_or_insert(voters_t *v, voter_key_t k, int option,
                                       voter_slot_t **slot) {
    /* Grow at 3/4 load. */
    if (__builtin_expect(!v->slots || (v->count + 1) * 4 > (v->mask + 1) * 3, 0))
        voters_grow(v);
    uint64_t a = k.lo | 1, b = k.hi & ~VOTERS_OPT_MASK;
    size_t i = voters_home(v, a);
    for (;;) {
        voter_slot_t *s = &v->slots[i];
        if (s->a == a && (s->b & ~VOTERS_OPT_MASK) == b) {
            if (slot)
                *slot = s;
            return (int)(s->b & VOTERS_OPT_MASK);
        }
        if (!s->a) {
            s->a = a;
            s->b = b | (uint16_t)option;
            v->count++;
            if (slot)
                *slot = s;
            return -1;
        }
        i = (i + 1) & v->mask;
    }
}

static inline void voters_set_option(voter_slot_t *s, int option) {
    s->b = (s->b & ~VOTERS_OPT_MASK) | (uint64_t)(uint16_t)option;
}
static inline int voters_slot_option(const voter_slot_t *s) {
    return (int)(s->b & VOTERS_OPT_MASK);
}

/* Makes room for n voters in all (at most 3/4 load) in one step, so that
 * n inserts grow nothing. A snapshot load reserves its voter count before
 * inserting: its slots come in the order of the saved table, i.e. sorted by
 * home, and sorted keys poured into a smaller table that doubles as it fills
 * all pile up in its first slots (each insert then walks the whole pile:
 * quadratic). Into a table of the final size the same order is a sequential
 * pass. Pointers to slots become invalid. */
void voters_reserve(voters_t *v, size_t n);
/* Inserts a raw slot (snapshot load); a known voter's slot is replaced. */
void voters_insert_slot(voters_t *v, voter_slot_t s);
/* Inserts n raw slots stored at p as little-endian pairs of words (a
 * snapshot's), as voters_insert_slot would one by one; reserves room for
 * them first. A slot that cannot be one (its a even, or an option index of
 * noptions or more) stops the insert: returns its index, else n. */
size_t voters_insert_slots(voters_t *v, const uint8_t *p, size_t n, int noptions);
size_t voters_bytes(const voters_t *v);

/* How long lookups probe, for tests and benches: a voter's probe length is
 * the slots read to find it (1 at its home). A full scan of the table. */
typedef struct {
    size_t count;     /* voters */
    size_t capacity;  /* slots */
    size_t max_probe; /* 0 for an empty table */
    double mean_probe;
} voters_probe_stats_t;
voters_probe_stats_t voters_probe_stats(const voters_t *v);

#endif
