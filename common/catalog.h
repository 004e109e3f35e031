/* The catalog of polls: what a poll is (its definition), what state it is in
 * at a time, the immutable catalog versions that ingest reads without a
 * lock, and the history writer that makes a change durable.
 *
 * A poll's history lives in the vote log as control records (log/record.h):
 * CONTROL_DEFINE carries the poll's whole definition after a change as the
 * canonical JSON of poll_def_to_json(), CONTROL_FINAL the cut. Every control
 * record goes to every partition; the engine applies them per partition in
 * log order (engine.c), so live counting and replay judge each vote against
 * the same view. See docs/ARCHITECTURE.md, "Polls as live objects".
 *
 * Times are wall-clock ms since the epoch; 0 means "unset" (no opening, no
 * closing time). */
#ifndef TALLY_CATALOG_H
#define TALLY_CATALOG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "log/vlog.h"

/* ---- the definition ---- */

typedef enum { VIS_LIVE = 0, VIS_ON_CLOSE = 1 } poll_visibility_t;
typedef enum { VOTER_AUTH_NONE = 0, VOTER_AUTH_JWT = 1 } poll_voter_auth_t;
typedef enum { POLL_SRC_ADMIN = 0, POLL_SRC_CONFIG = 1 } poll_source_t;

/* A voter slot keeps 16 bits for the option (or, in capped mode, the number
 * of votes counted): max_votes and noptions are bounded by that. */
#define POLL_MAX_VOTES 65535
#define POLL_MAX_OPTIONS 65535
#define POLL_TITLE_MAX 256 /* bytes */
#define POLL_LABEL_MAX 256 /* bytes */

typedef struct {
    char *id, *title;
    poll_mode_t mode;       /* config.h; MODE_CAPPED counts a voter's first max_votes */
    uint32_t max_votes;     /* MODE_CAPPED only (1..POLL_MAX_VOTES), else 0 */
    poll_option_t *options; /* config.h {id, label}; labels never NULL */
    int noptions;
    poll_visibility_t visibility;
    poll_voter_auth_t voter_auth;
    uint64_t opens_at, closes_at; /* ms, 0 = unset */
    uint32_t idempotency_window_s;
    uint64_t created_ms;
    poll_source_t source;
} poll_def_t;

const char *poll_visibility_name(poll_visibility_t v);
const char *poll_voter_auth_name(poll_voter_auth_t a);
const char *poll_source_name(poll_source_t s);

void poll_def_free(poll_def_t *d);
poll_def_t *poll_def_dup(const poll_def_t *d);
/* 1 when a and b are the same definition (every field). */
int poll_def_equal(const poll_def_t *a, const poll_def_t *b);
int poll_def_option_index(const poll_def_t *d, const char *id, size_t len);

/* What a failed catalog operation says to its caller: the HTTP status and
 * error code the admin API answers with, the field at fault (for a 400 or
 * 409 naming it; "" when none), and a message naming it. */
typedef struct {
    int http_status; /* 400, 404, 409, 503, 500 */
    char code[32];   /* "bad_field", "poll_exists", "no_such_poll", "incompatible",
                      * "poll_final", "unavailable", "internal" */
    char field[64];  /* e.g. "options[1].id", "closes_at" */
    char message[256];
} catalog_error_t;

/* Defaults for what a JSON or config definition leaves out. */
typedef struct {
    uint32_t idempotency_window_s; /* ingest.idempotency_window_s (600 if unknown) */
    uint64_t now_ms;               /* created_ms when absent */
    poll_source_t source;          /* when absent */
} poll_def_defaults_t;

/* Parses a definition from JSON, strictly: an unknown key, a wrong type, an
 * id or option id not 1-64 chars of [A-Za-z0-9_-], a repeated option, a
 * mode name unknown, max_votes given outside capped mode or missing in it,
 * closes_at <= opens_at, invalid UTF-8, text longer than its bound: each is
 * TALLY_ERR_CONFIG with *err naming the field (http_status 400, code
 * "bad_field"). Accepts both what the log holds (poll_def_to_json) and what
 * an admin writes: "options" as a list of ids or of {"id","label"};
 * opens_at/closes_at as integer ms, RFC3339 strings or null; mode,
 * visibility, voter_auth, title, labels, idempotency_window_s, created_ms,
 * source optional (defaults: one-per-voter, live, none, the id, the option
 * id, d's). With require_id 0 a missing "id" is allowed (PATCH bodies are
 * parsed by the admin API itself). *out: a new definition (poll_def_free). */
tally_err_t poll_def_from_json(const char *json, size_t len, const poll_def_defaults_t *d,
                               poll_def_t **out, catalog_error_t *err);
/* The definition of a config poll ([poll.ID]): source "config". */
poll_def_t *poll_def_from_conf(const poll_conf_t *pc, const poll_def_defaults_t *d);
/* The canonical JSON of a definition (keys in a fixed order, times as
 * integer ms or null, compact): the body of CONTROL_DEFINE. Parsing it back
 * gives an equal definition. Returns a malloc'd NUL-terminated string. */
char *poll_def_to_json(const poll_def_t *d);

/* Whether next may replace cur (PATCH, open, close, a config edit), at now
 * with the admin's close delay. It must keep id, mode, max_votes,
 * voter_auth and the existing options in order (labels may change, options
 * may be appended); opens_at may not move once the poll is open at now;
 * closes_at may move later freely, earlier only to >= now + close_delay_ms
 * (and never once closed at now); a final poll changes not at all.
 * TALLY_OK, or TALLY_ERR_STATE with *err (409, code "incompatible" or
 * "poll_final") naming the field. */
tally_err_t poll_def_check_successor(const poll_def_t *cur, int cur_final, const poll_def_t *next,
                                     uint64_t now_ms, uint64_t close_delay_ms,
                                     catalog_error_t *err);

typedef enum {
    POLL_SCHEDULED = 0, /* opens_at set and t < opens_at */
    POLL_OPEN = 1,
    POLL_CLOSED = 2, /* closes_at set and t >= closes_at, not final */
    POLL_FINAL = 3,  /* a CONTROL_FINAL was applied */
} poll_state_t;
const char *poll_state_name(poll_state_t s);
poll_state_t poll_def_state_at(const poll_def_t *d, int final, uint64_t t_ms);

/* ---- catalog versions ---- */

/* One poll in a catalog version: immutable once published, shared between
 * versions by reference count. */
typedef struct {
    poll_def_t *def;
    uint64_t def_seq;   /* seq of the DEFINE of def; 0: a config poll not yet
                         * in the history (the engine's seed of config polls) */
    int final;          /* CONTROL_FINAL applied */
    uint64_t final_seq; /* its seq */
    uint64_t final_at;  /* its at_ms (the cut) */
    uint64_t seed;      /* record_poll_seed(id) */
    _Atomic int refs;
} catalog_entry_t;

/* A new entry owning def (refs 1), not final. */
catalog_entry_t *catalog_entry_new(poll_def_t *def, uint64_t def_seq);
/* A copy of en made final (shares nothing with en: def duplicated). */
catalog_entry_t *catalog_entry_finalized(const catalog_entry_t *en, uint64_t final_seq,
                                         uint64_t final_at);
void catalog_entry_ref(catalog_entry_t *en);
void catalog_entry_unref(catalog_entry_t *en);

/* An immutable catalog version: every poll, a hash index by id, the
 * highest seq it reflects. @locality any thread (read only). */
typedef struct catalog_s catalog_t;
catalog_t *catalog_new_empty(void);
/* A new version: base's polls with en put in (replacing the poll of the
 * same id, else appended; en is referenced, not taken) and seq. */
catalog_t *catalog_with(const catalog_t *base, catalog_entry_t *en, uint64_t seq);
/* A version with the same polls and seq (entries shared); _seq: with seq
 * instead (not lower than c's). */
catalog_t *catalog_with_seq(const catalog_t *c, uint64_t seq);
catalog_t *catalog_dup(const catalog_t *c);
void catalog_free(catalog_t *c);
uint64_t catalog_seq(const catalog_t *c);
int catalog_npolls(const catalog_t *c);
/* In the order polls were first defined. */
const catalog_entry_t *catalog_at(const catalog_t *c, int i);
const catalog_entry_t *catalog_find(const catalog_t *c, const char *id, size_t len);

/* The live catalog: the current version behind an atomic pointer. Readers
 * (ingest threads) load it with no lock and may use what they load for up
 * to CATALOG_GRACE_MS (a request's handling, never across an await);
 * a swapped-out version is freed by a later swap once that has passed, or
 * by catalog_live_free. */
#define CATALOG_GRACE_MS 10000
typedef struct catalog_live_s catalog_live_t;
catalog_live_t *catalog_live_new(catalog_t *initial); /* takes initial */
void catalog_live_free(catalog_live_t *l);
/* @locality any thread, lock-free */
const catalog_t *catalog_live_get(catalog_live_t *l);
/* Publishes next (taken); seq must not go down. @locality any thread */
void catalog_live_swap(catalog_live_t *l, catalog_t *next);

/* ---- the history writer ---- */

/* The log has one ack callback. Control appends pass opaques tagged in
 * their low bit; history_log_ack sends those to the history writer and
 * every other ack to `next` (ingest_ack, or NULL). Open the log with
 * history_log_ack after history_ack_init(next). */
void history_ack_init(vlog_ack_cb *next);
vlog_ack_cb history_log_ack;

/* Writes changes of the catalog: one at a time (a mutex), each one with the
 * next seq, encoded as a control record, appended to every partition, and
 * only once every partition acknowledged it durable, swapped into live.
 * A failed append leaves the catalog's polls as they were (or a narrowing's
 * stricter view) and is kept: some partitions may hold it, so every later
 * change first appends it again and makes it live (history_settle), or
 * answers 503 while the log refuses it. A crash meanwhile: the next start
 * re-appends it to the partitions that lack it (history_repair).
 * @locality any thread; blocks up to timeout_ms. */
typedef struct history_s history_t;
history_t *history_new(vlog_t *log, catalog_live_t *live, int timeout_ms);
void history_free(history_t *h);

/* How the ingests of other processes (tally ingest, with Kafka: the catalog
 * topic) learn a narrowing (an earlier close, a later opening) before it is
 * logged. Called under the history's lock with the pending entry (the
 * current definition and seq with the narrowed times). With learned_mono:
 * returns 0 once they will all judge by it from *learned_mono
 * (CLOCK_MONOTONIC ms) on, or -1 when that is unknown; with NULL: en (the
 * previous entry, put back) is to reach them again, without waiting. */
typedef int history_learn_fn(void *arg, const catalog_entry_t *en, uint64_t *learned_mono);
/* @locality the start-up thread, before changes */
void history_set_learner(history_t *h, history_learn_fn *fn, void *arg);

/* Completes a change whose append failed, if any: 503 "unavailable" while
 * the log refuses it. Callers that build a change from the live catalog
 * settle first (history_update refuses with 409 "poll_changed" a change of
 * a poll whose failed change it had to complete itself). */
tally_err_t history_settle(history_t *h, catalog_error_t *err);

/* Defines a new poll (*def taken, whatever the result). 409 "poll_exists"
 * when the id is in the catalog. On TALLY_OK *out (may be NULL) is the new
 * entry, referenced (catalog_entry_unref it). */
tally_err_t history_create(history_t *h, poll_def_t *def, catalog_entry_t **out,
                           catalog_error_t *err);
/* Replaces a poll's definition (*def taken): 404 "no_such_poll", 409 per
 * poll_def_check_successor at now_ms with close_delay_ms. A narrowing (an
 * earlier close, a later opening) is in the live catalog (and the
 * learner's) before the log holds it; a cut moves later when that came at
 * or after it (*out tells the cut), a later opening is 409 then; 503
 * "unavailable" when the learner failed. */
tally_err_t history_update(history_t *h, poll_def_t *def, uint64_t now_ms, uint64_t close_delay_ms,
                           catalog_entry_t **out, catalog_error_t *err);
/* Appends CONTROL_FINAL (at = closes_at) for a poll closed grace_ms before
 * now: 404, 409 "poll_final" when already final, 409 "incompatible" when it
 * has no closes_at, 409 "not_due" before its logged cut + grace_ms (judged
 * under the lock, after a failed change is settled). */
tally_err_t history_final(history_t *h, const char *id, uint64_t now, uint64_t grace_ms,
                          catalog_entry_t **out, catalog_error_t *err);
/* The control record of entry en at seq: a DEFINE of its definition, or
 * its FINAL (at its final_at). Malloc'd, *len its length; NULL when the
 * definition is over CONTROL_MAX_BODY. *meta: what the log files it under
 * (the poll id; valid while en is). */
uint8_t *catalog_entry_encode(const catalog_entry_t *en, unsigned kind, uint64_t seq, size_t *len,
                              vlog_meta_t *meta);
/* Startup: appends an already-sequenced control record (bytes) to the
 * listed partitions only (re-broadcast after a crash), waiting for acks.
 * Does not touch the catalog. */
tally_err_t history_append_raw(history_t *h, const uint8_t *rec, size_t len,
                               const vlog_meta_t *meta, const int *partitions, int n,
                               catalog_error_t *err);

#endif
