/* The log's records: what ingest and the admin API append to the log and the
 * engine counts. Self-describing, so that a log outlives any config change
 * and replay needs nothing but the log. Little-endian.
 *
 * Version 2 (written since the poll lifecycle and vote integrity work): a
 * type byte after the version, so that a partition's history holds both the
 * votes and the changes to the polls they are for, in one order.
 *
 *   vote (type 1):
 *     u8  version (2)  u8 type (1)  u8 flags
 *     u64 ts_ms        wall-clock ms when ingest accepted the vote
 *     u8  poll_len     then poll id bytes
 *     u8  option_len   then option id bytes
 *     u16 voter_len    then voter bytes (0: anonymous, unlimited mode)
 *     [flags & RECORD_F_IDEM] u8 key_len (1..64) then idempotency key bytes
 *   flags: RECORD_F_VOTER_HMAC: the voter bytes are RECORD_VOTER_HMAC_LEN
 *     bytes of a keyed hash of the voter id (auth.voter_id_key_file), not
 *     the id; RECORD_F_IDEM: an Idempotency-Key follows. Other bits: the
 *     record is refused (a newer writer's meaning this reader lacks).
 *
 *   control (type 2), a change to one poll, appended to every partition:
 *     u8  version (2)  u8 type (2)  u8 kind
 *     u64 ts_ms        wall-clock ms when the change was decided
 *     u64 seq          catalog sequence number: 1, 2, ... over all polls
 *     u64 at_ms        the time the change takes effect (kind-defined)
 *     u8  poll_len     then poll id bytes
 *     u32 body_len     then body bytes (JSON, kind-defined)
 *
 * Version 1 (tally before the lifecycle; still read, never written):
 *   u8 version (1)  u8 flags (0)  u64 ts_ms  u8 poll_len poll
 *   u8 option_len option  u16 voter_len voter
 * A v1 vote decodes to a vote_record_t with flags 0 and no key. */
#ifndef TALLY_RECORD_H
#define TALLY_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "common/ids.h"

#define RECORD_VERSION 2    /* written */
#define RECORD_VERSION_V1 1 /* read */
#define RECORD_V1_HDR_LEN 14
/* A v2 vote's fixed bytes: version, type, flags, ts, poll_len, option_len,
 * voter_len. */
#define RECORD_HDR_LEN 15
#define RECORD_MAX_KEY 64
#define RECORD_MAX_LEN (RECORD_HDR_LEN + 64 + 64 + 256 + 1 + RECORD_MAX_KEY)

typedef enum { RECORD_VOTE = 1, RECORD_CONTROL = 2 } record_type_t;

enum {
    RECORD_F_VOTER_HMAC = 0x01,
    RECORD_F_IDEM = 0x02,
};
#define RECORD_F_KNOWN (RECORD_F_VOTER_HMAC | RECORD_F_IDEM)
#define RECORD_VOTER_HMAC_LEN 16

typedef struct {
    uint64_t ts_ms;
    const char *poll;
    size_t poll_len;
    const char *option;
    size_t option_len;
    const char *voter; /* may be NULL with voter_len 0 */
    size_t voter_len;
    unsigned flags;  /* RECORD_F_*; RECORD_F_IDEM is set by key_len > 0 */
    const char *key; /* idempotency key, NULL with key_len 0 */
    size_t key_len;
    int version; /* set by record_decode: 1 or 2 */
} vote_record_t;

/* The type of an encoded record: RECORD_VOTE (v1 or v2), RECORD_CONTROL, or
 * -1 when it is neither (unknown version or type, too short). Cheap: the
 * first two bytes. */
int record_type(const uint8_t *buf, size_t len);

/* Encodes a v2 vote into out (>= RECORD_MAX_LEN bytes). Returns the length,
 * or 0 when a field is out of bounds (poll or option empty or over 64 bytes,
 * voter over 256, key over RECORD_MAX_KEY, a hashed voter not
 * RECORD_VOTER_HMAC_LEN bytes, unknown flags). */
size_t record_encode(const vote_record_t *v, uint8_t *out);
/* Decodes a vote (v1 or v2) in place: the string pointers point into buf.
 * 0 on success, -1 for anything else: a control record, an unknown version,
 * type or flag, bad lengths, trailing bytes. */
int record_decode(const uint8_t *buf, size_t len, vote_record_t *v);

/* Control records: the durable history of the polls (see
 * docs/ARCHITECTURE.md, "Polls as live objects"). */
typedef enum {
    CONTROL_DEFINE = 1, /* body: the poll's whole definition after the change
                         * (JSON); at_ms: 0 */
    CONTROL_FINAL = 2,  /* the poll's close is complete: at_ms is the cut
                         * (closes_at); body: empty or JSON detail */
} control_kind_t;

#define CONTROL_HDR_LEN (3 + 8 + 8 + 8 + 1 + 4)
/* A control record fits one file-log frame (64 KiB) with room to spare. */
#define CONTROL_MAX_BODY 60000
#define CONTROL_MAX_LEN (CONTROL_HDR_LEN + 64 + CONTROL_MAX_BODY)

typedef struct {
    unsigned kind; /* control_kind_t */
    uint64_t ts_ms, seq, at_ms;
    const char *poll;
    size_t poll_len;
    const char *body; /* may be NULL with body_len 0 */
    size_t body_len;
} control_record_t;

/* Encodes into out (>= CONTROL_MAX_LEN bytes, or at least CONTROL_HDR_LEN +
 * poll_len + body_len). Returns the length, or 0 when a field is out of
 * bounds (poll empty or over 64 bytes, body over CONTROL_MAX_BODY, kind
 * unknown). */
size_t control_encode(const control_record_t *c, uint8_t *out);
/* Decodes in place. 0, or -1 for anything but a well-formed control record
 * of a known kind. */
int control_decode(const uint8_t *buf, size_t len, control_record_t *c);

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
 * the same partition, so one engine thread sees them in log order. A vote
 * without a voter but with an idempotency key goes by (poll, key), so that
 * its retries meet in one partition too; the rest (unlimited mode) spread by
 * `spread`. */
int record_partition(const vote_record_t *v, int npartitions, uint64_t spread);

/* The key a keyed log (Kafka) files a vote under: "poll/voter", a hashed
 * voter (RECORD_F_VOTER_HMAC) in hex, "poll/" without a voter. Writes at
 * most RECORD_LOG_KEY_MAX bytes to out (no NUL); returns the length. */
#define RECORD_LOG_KEY_MAX (ID_MAX_LEN + 1 + 2 * VOTER_MAX_LEN)
size_t record_log_key(const vote_record_t *v, char *out);

#endif
