/* Keyed hashes of voter ids (auth.voter_id_key_file): with a key set,
 * ingest writes HMAC-SHA256(key, voter id) truncated to
 * RECORD_VOTER_HMAC_LEN (16) bytes into the log, flagged
 * RECORD_F_VOTER_HMAC, instead of the id. The engine counts those bytes as
 * the voter (they are as stable as the id for one key), the snapshots hold
 * only their hashes, and a copied log names nobody without the key.
 *
 * Collisions: two different voters of one poll merge when their 128-bit
 * tags are equal; for n voters the chance is about n^2 / 2^129 (10^10
 * voters: ~1.5e-19). Changing the key mid-poll makes every voter new.
 * @locality any thread (read-only once loaded). */
#ifndef TALLY_VOTER_HMAC_H
#define TALLY_VOTER_HMAC_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "log/record.h"

/* Shorter keys are refused: the key must be at least as wide as the tag. */
#define VOTER_HMAC_MIN_KEY 16

typedef struct voter_hmac_s voter_hmac_t;

/* Reads the key file (raw bytes). TALLY_OK (*out NULL when path is NULL or
 * ""), or TALLY_ERR_CONFIG with errstr (unreadable, under 16 bytes). */
tally_err_t voter_hmac_load(const char *path, voter_hmac_t **out, char *errstr, size_t esz);
voter_hmac_t *voter_hmac_new(const uint8_t *key, size_t len); /* NULL: key too short */
void voter_hmac_free(voter_hmac_t *h);
/* out = first RECORD_VOTER_HMAC_LEN bytes of HMAC-SHA256(key, voter). */
void voter_hmac(const voter_hmac_t *h, const char *voter, size_t len,
                uint8_t out[RECORD_VOTER_HMAC_LEN]);

#endif
