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

/* Voter key: 128-bit XXH3 of poll id and voter id. The engine keeps these
 * instead of voter strings; at 2^-128 per pair a collision is not expected in
 * the lifetime of the universe's ballots. */
typedef struct {
    uint64_t lo, hi;
} voter_key_t;
voter_key_t record_voter_key(const char *poll, size_t poll_len, const char *voter,
                             size_t voter_len);

/* The partition a vote belongs to: a voter's votes for a poll always land in
 * the same partition, so one engine thread sees them in log order. Votes
 * without a voter (unlimited mode) spread by `spread`. */
int record_partition(const vote_record_t *v, int npartitions, uint64_t spread);

#endif
