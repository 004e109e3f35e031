/* A set of voters of one poll in one partition, with the option each one's
 * counted vote went to. Open addressing, linear probing, 16 bytes a slot:
 * 111 bits of the voter's 128-bit key and a 16-bit option index.
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
} voters_t;

void voters_init(voters_t *v);
void voters_free(voters_t *v);

/* Looks the voter up; when absent inserts it with option and returns -1,
 * else returns its option index. *slot is where the voter lives, for
 * voters_set_option(). */
int voters_get_or_insert(voters_t *v, voter_key_t k, int option, voter_slot_t **slot);
static inline void voters_set_option(voter_slot_t *s, int option) {
    s->b = (s->b & ~(uint64_t)0xffff) | (uint64_t)(uint16_t)option;
}
static inline int voters_slot_option(const voter_slot_t *s) { return (int)(s->b & 0xffff); }

/* Inserts a raw slot (snapshot load). */
void voters_insert_slot(voters_t *v, voter_slot_t s);
size_t voters_bytes(const voters_t *v);

#endif
