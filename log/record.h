/* The vote record: what ingest appends to the log and the engine counts.
 *
 * Wire format v1, little-endian, self-describing so that a log outlives any
 * config change and replay needs nothing but the log:
 *   u8  version (1)
 *   u8  flags (0)
 *   u64 ts_ms        wall-clock ms when ingest accepted the vote
 *   u8  poll_len     then poll id bytes
 *   u8  option_len   then option id bytes
 *   u16 voter_len    then voter id bytes (0 in unlimited mode without voter)
 */
#ifndef TALLY_RECORD_H
#define TALLY_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define RECORD_VERSION 1
#define RECORD_HDR_LEN 14
#define RECORD_MAX_LEN (RECORD_HDR_LEN + 64 + 64 + 256)

typedef struct {
    uint64_t ts_ms;
    const char *poll;
    size_t poll_len;
    const char *option;
    size_t option_len;
    const char *voter; /* may be NULL with voter_len 0 */
    size_t voter_len;
} vote_record_t;

/* Encodes into out (>= RECORD_MAX_LEN bytes). Returns the length, or 0 when a
 * field is too long. */
size_t record_encode(const vote_record_t *v, uint8_t *out);
/* Decodes in place: the string pointers point into buf. 0 on success, -1 for
 * a record this version cannot read (unknown version, bad lengths). */
int record_decode(const uint8_t *buf, size_t len, vote_record_t *v);

typedef struct {
    uint64_t lo, hi;
} voter_key_t;

/* Partition key: 128-bit XXH3 of the lengths, poll id and voter id.
 * record_partition() places votes by it, so it must never change: the
 * partitions of every log already written depend on it. */
voter_key_t record_voter_key(const char *poll, size_t poll_len, const char *voter,
                             size_t voter_len);

/* The engine's key of a voter within one poll: 128-bit XXH3 of the voter id
 * seeded with record_poll_seed() of the poll id. Voter tables are per poll,
 * so only voters of one poll are ever compared: at 2^-128 per pair (2^-111
 * for the bits a table keeps) a collision is not expected in the lifetime of
 * the universe's ballots. A poll's seed is computed once, so a vote hashes
 * only its voter id, with no copy. Snapshots hold these keys: changing them
 * means a new snapshot format. */
uint64_t record_poll_seed(const char *poll, size_t poll_len);
voter_key_t record_poll_voter_key(uint64_t poll_seed, const char *voter, size_t voter_len);

/* The partition a vote belongs to: a voter's votes for a poll always land in
 * the same partition, so one engine thread sees them in log order. Votes
 * without a voter (unlimited mode) spread by `spread`. */
int record_partition(const vote_record_t *v, int npartitions, uint64_t spread);

#endif
