#include "engine/voters.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define MIN_CAP 16

void voters_init(voters_t *v) { memset(v, 0, sizeof *v); }

void voters_free(voters_t *v) {
    free(v->slots);
    memset(v, 0, sizeof *v);
}

static inline size_t slot_index(uint64_t a, size_t mask) {
    /* a is already a high-quality hash; mix once more so that low bits
     * spread even if the caller keyed on a biased half. */
    return (size_t)((a * 0x9E3779B97F4A7C15ull) >> 17) & mask;
}

static void grow(voters_t *v) {
    size_t cap = v->slots ? (v->mask + 1) * 2 : MIN_CAP;
    voter_slot_t *old = v->slots;
    size_t oldcap = old ? v->mask + 1 : 0;
    v->slots = xcalloc(cap, sizeof *v->slots);
    v->mask = cap - 1;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].a)
            continue;
        size_t j = slot_index(old[i].a, v->mask);
        while (v->slots[j].a)
            j = (j + 1) & v->mask;
        v->slots[j] = old[i];
    }
    free(old);
}

int voters_get_or_insert(voters_t *v, voter_key_t k, int option, voter_slot_t **slot) {
    /* Grow at 3/4 load. */
    if (!v->slots || (v->count + 1) * 4 > (v->mask + 1) * 3)
        grow(v);
    uint64_t a = k.lo | 1, b = k.hi & ~(uint64_t)0xffff;
    size_t i = slot_index(a, v->mask);
    for (;;) {
        voter_slot_t *s = &v->slots[i];
        if (!s->a) {
            s->a = a;
            s->b = b | (uint16_t)option;
            v->count++;
            if (slot)
                *slot = s;
            return -1;
        }
        if (s->a == a && (s->b & ~(uint64_t)0xffff) == b) {
            if (slot)
                *slot = s;
            return (int)(s->b & 0xffff);
        }
        i = (i + 1) & v->mask;
    }
}

void voters_insert_slot(voters_t *v, voter_slot_t s) {
    if (!v->slots || (v->count + 1) * 4 > (v->mask + 1) * 3)
        grow(v);
    size_t i = slot_index(s.a, v->mask);
    while (v->slots[i].a) {
        if (v->slots[i].a == s.a && (v->slots[i].b & ~(uint64_t)0xffff) == (s.b & ~(uint64_t)0xffff)) {
            v->slots[i] = s;
            return;
        }
        i = (i + 1) & v->mask;
    }
    v->slots[i] = s;
    v->count++;
}

size_t voters_bytes(const voters_t *v) { return v->slots ? (v->mask + 1) * sizeof(voter_slot_t) : 0; }
