/* The vote body parser: bytes in, a vote record or an error out. A pure
 * function (no I/O, no globals, nothing allocated that outlives the call;
 * jansson's tree lives in the thread's JSON scope, common/json.h, so a
 * vote of up to a few KiB is parsed without a malloc),
 * so it is unit-tested and fuzzed on its own (tests/unit/test_vote.c,
 * tests/fuzz/fuzz_vote.c).
 *
 * A vote body is exactly one JSON object (RFC 8259, parsed by jansson), with
 * nothing around it but JSON whitespace:
 *     {"option": "red", "voter": "alice@example.org"}
 * - strict JSON: well-formed UTF-8 (no overlong forms, no surrogates, no
 *   code point past U+10FFFF), no \u0000 (ids are byte strings of known
 *   length; a NUL would let "red\u0000junk" pass as "red"), no duplicate
 *   keys, no byte order mark, no second value or other text after the
 *   object, numbers that fit, nesting under jansson's depth limit (2048);
 * - "option" (required): a string, 1-64 characters of [A-Za-z0-9_-]
 *   (common/ids.h) naming an option of the poll;
 * - "voter": a string of 1-256 bytes without control characters. Required
 *   unless the poll is in unlimited mode, where a missing or null voter is
 *   an anonymous vote, or has voter_auth = jwt, where the route takes the
 *   voter from the token (rec->voter NULL: none was sent);
 * - any other field is rejected (400 unknown_field): a misspelt "votr" must
 *   not turn into an anonymous vote, nor extra data pass unseen.
 * Bodies over VOTE_BODY_MAX are refused before parsing.
 */
#ifndef TALLY_VOTE_H
#define TALLY_VOTE_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/ids.h"
#include "log/record.h"

#define VOTE_BODY_MAX 4096
/* The caller's scratch space for the voter id. */
#define VOTE_SCRATCH_MIN VOTER_MAX_LEN

/* Why a body was refused. status is the HTTP status (400, 413 or 422);
 * code a stable machine-readable name in static storage:
 *   400 malformed_json   not JSON, or JSON that breaks a rule above
 *   400 invalid_body     JSON, but not an object
 *   400 missing_field    no "option", or no "voter" where one is required
 *   400 invalid_field    a field of the wrong type or outside the id rules
 *   400 unknown_field    a field other than "option" and "voter"
 *   413 body_too_large   over VOTE_BODY_MAX bytes
 *   422 unknown_option   a well-formed option id the poll does not have
 *   400 invalid_header   a malformed Idempotency-Key (vote_parse_idem_key)
 * message is for people: printable ASCII, names the problem and where (byte
 * offset), and never repeats request bytes except an id already checked to
 * be [A-Za-z0-9_-]. It is text, not JSON: escape it (common/json.h). */
typedef struct {
    int status;
    const char *code;
    char message[192];
} vote_error_t;

/* Parses body[0..len) (any bytes, no NUL terminator needed) as a vote for
 * poll p, received at ts_ms. On success fills rec and returns 0: rec->poll
 * and rec->option point into p (the config owns them), rec->voter into
 * scratch (the caller's, >= VOTE_SCRATCH_MIN bytes) or is NULL for an
 * anonymous vote; rec is ready for record_encode(). On refusal returns -1
 * and fills err; rec and scratch are then unspecified.
 * @locality any thread: touches nothing but its arguments (jansson seeds
 * its hash function once per process, atomically, on first use). Costs about
 * 2 us of CPU for a typical body (tests/unit/test_vote.c measures it). */
int vote_parse(const poll_conf_t *p, const char *body, size_t len, uint64_t ts_ms,
               vote_record_t *rec, char *scratch, size_t scratch_size, vote_error_t *err);

/* The Idempotency-Key header's value (s[0..len), NULL: no header) onto a
 * parsed vote: 1-64 characters of [A-Za-z0-9._-], surrounding spaces and
 * tabs ignored. Sets rec->key/key_len (pointing into s) and returns 0; no
 * header leaves rec without a key. Anything else returns -1 with err (400
 * invalid_header, naming the header). @locality any thread */
int vote_parse_idem_key(const char *s, size_t len, vote_record_t *rec, vote_error_t *err);

#endif
