#include "engine/voters.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/endian.h"
#include "common/util.h"

#define MIN_CAP 16
#define HUGE_PAGE ((size_t)2 << 20)

void voters_init(voters_t *v) {
    memset(v, 0, sizeof *v);
}

/* Zeroed slots. Big tables get a mapping of their own, 2 MiB aligned, with
 * MADV_HUGEPAGE (the kernel may decline: then they are ordinary pages). */
static voter_slot_t *table_alloc(size_t cap) {
    size_t bytes = cap * sizeof(voter_slot_t);
    if (bytes < HUGE_PAGE)
        return xcalloc(cap, sizeof(voter_slot_t));
    /* Over-map by 2 MiB and trim both ends to align. */
    size_t len = bytes + HUGE_PAGE;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        tally_panic(__FILE__, __LINE__, "out of memory (voter table)");
    uint8_t *start = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (start > p)
        munmap(p, (size_t)(start - p));
    if (start + bytes < p + len)
        munmap(start + bytes, (size_t)(p + len - (start + bytes)));
#ifdef MADV_HUGEPAGE
    (void)madvise(start, bytes, MADV_HUGEPAGE);
#endif
    return (voter_slot_t *)start;
}

static void table_free(voter_slot_t *slots, size_t cap) {
    if (!slots)
        return;
    size_t bytes = cap * sizeof(voter_slot_t);
    if (bytes < HUGE_PAGE)
        free(slots);
    else
        munmap(slots, bytes);
}

void voters_free(voters_t *v) {
    table_free(v->slots, v->slots ? v->mask + 1 : 0);
    memset(v, 0, sizeof *v);
}

static unsigned log2_pow2(size_t cap) {
    return (unsigned)__builtin_ctzll((unsigned long long)cap);
}

/* Moves every voter into a new table of cap slots (a power of two, at
 * least the old capacity). */
static void table_resize(voters_t *v, size_t cap) {
    size_t oldcap = v->slots ? v->mask + 1 : 0;
    voter_slot_t *old = v->slots;
    v->slots = table_alloc(cap);
    v->mask = cap - 1;
    v->shift = 64 - log2_pow2(cap);
    /* Homes keep their order when the table grows, so walking the old
     * table in order writes the new one (nearly) in order too. */
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].a)
            continue;
        size_t j = voters_home(v, old[i].a);
        while (v->slots[j].a)
            j = (j + 1) & v->mask;
        v->slots[j] = old[i];
    }
    table_free(old, oldcap);
}

void voters_grow(voters_t *v) {
    size_t oldcap = v->slots ? v->mask + 1 : 0;
    table_resize(v, oldcap ? oldcap * 2 : MIN_CAP);
}

void voters_reserve(voters_t *v, size_t n) {
    size_t cap = v->slots ? v->mask + 1 : MIN_CAP;
    /* The grow rule of voters_get_or_insert: n * 4 <= cap * 3. */
    while ((uint64_t)n * 4 > (uint64_t)cap * 3)
        cap *= 2;
    if (!v->slots || cap > v->mask + 1)
        table_resize(v, cap);
}

void voters_insert_slot(voters_t *v, voter_slot_t s) {
    if (!v->slots || (v->count + 1) * 4 > (v->mask + 1) * 3)
        voters_grow(v);
    size_t i = voters_home(v, s.a);
    while (v->slots[i].a) {
        if (v->slots[i].a == s.a &&
            (v->slots[i].b & ~VOTERS_OPT_MASK) == (s.b & ~VOTERS_OPT_MASK)) {
            v->slots[i] = s;
            return;
        }
        i = (i + 1) & v->mask;
    }
    v->slots[i] = s;
    v->count++;
}

size_t voters_insert_slots(voters_t *v, const uint8_t *p, size_t n, int noptions) {
    voters_reserve(v, v->count + n);
    voter_slot_t *slots = v->slots;
    size_t mask = v->mask;
    for (size_t k = 0; k < n; k++, p += 16) {
        voter_slot_t s = {le_get64(p), le_get64(p + 8)};
        if (!(s.a & 1) || (s.b & VOTERS_OPT_MASK) >= (uint64_t)noptions)
            return k;
        size_t i = voters_home(v, s.a);
        for (;; i = (i + 1) & mask) {
            if (!slots[i].a) {
                slots[i] = s;
                v->count++;
                break;
            }
            if (slots[i].a == s.a && (slots[i].b & ~VOTERS_OPT_MASK) == (s.b & ~VOTERS_OPT_MASK)) {
                slots[i] = s;
                break;
            }
        }
    }
    return n;
}

size_t voters_bytes(const voters_t *v) {
    return v->slots ? (v->mask + 1) * sizeof(voter_slot_t) : 0;
}

voters_probe_stats_t voters_probe_stats(const voters_t *v) {
    voters_probe_stats_t st = {v->count, v->slots ? v->mask + 1 : 0, 0, 0.0};
    if (!v->slots)
        return st;
    uint64_t sum = 0;
    size_t n = 0;
    for (size_t j = 0; j <= v->mask; j++) {
        if (!v->slots[j].a)
            continue;
        size_t probe = ((j - voters_home(v, v->slots[j].a)) & v->mask) + 1;
        sum += probe;
        n++;
        if (probe > st.max_probe)
            st.max_probe = probe;
    }
    st.mean_probe = n ? (double)sum / (double)n : 0.0;
    return st;
}
