/* The per-minute series of one poll in one partition: the net change of
 * each option's total within each minute of the counted votes' timestamps
 * (bucket = ts_ms / SERIES_BUCKET_MS). Every change to a total goes through
 * series_add with the same delta, so the buckets always sum to the totals:
 * a changeable vote that moves is -1 on the old option and +1 on the new one
 * in the minute of the change.
 *
 * Bounded: a ring of the SERIES_MINUTES newest minutes (24 h, 8 bytes per
 * option per minute, allocated at the first change). A change older than the
 * ring, and the buckets the ring drops as it moves on, are added into its
 * oldest minute, so the sum stays exact and that bucket reads "this minute
 * and everything before". A 3-hour show uses 180 minutes of it.
 *
 * Writer: the partition's worker, inside engine_batch_begin/end. Readers
 * (the publisher) copy a series with atomic loads under the partition's seq
 * (engine_poll_read) and never take a lock.
 *
 * Options may be appended at run time (a poll's successor definition):
 * series_grow. The ring is laid out for `stride` options a minute; growing
 * past the stride lays the rows out again in a new ring (stride grown by
 * half at least, so appending options one by one copies O(log n) times),
 * published with a release store; the old ring is kept until series_free
 * because a reader may still be copying it (its seq check then fails and it
 * reads again). Rings never move otherwise (freed only with the engine, or
 * by a snapshot load before any worker starts). */
#ifndef TALLY_SERIES_H
#define TALLY_SERIES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SERIES_BUCKET_MS 60000
#define SERIES_MINUTES 1440

/* [SERIES_MINUTES * stride]: minute m's cell of option o at
 * (m % SERIES_MINUTES) * stride + o, a signed delta stored as two's
 * complement. Cells of options >= the series' noptions are zero. */
typedef struct {
    uint32_t stride;
    _Atomic uint64_t c[];
} series_ring_t;

typedef struct {
    _Atomic(series_ring_t *) ring;   /* NULL until the first change */
    _Atomic uint64_t newest, oldest; /* minutes held: [oldest, newest] */
    int noptions;                    /* writer only: the options counted */
    series_ring_t **retired;         /* rings replaced by series_grow */
    int nretired;
} series_t;

void series_init(series_t *s, int noptions);
void series_free(series_t *s);

/* Options appended: the series now has n options (no-op if n <= noptions).
 * @locality writer, inside a batch (or before any reader) */
void series_grow(series_t *s, int n);

/* Option's total changed by delta with a vote at ts_ms. @locality writer */
void series_add(series_t *s, uint64_t ts_ms, int option, int64_t delta);

/* Bytes held (retired rings included). @locality writer */
size_t series_bytes(const series_t *s);

/* A series read out: rows of (minute start in ms, a delta per option),
 * appended by series_read_into, then put in order by series_view_finish. */
typedef struct {
    int noptions;
    size_t n, cap;
    uint64_t *t_ms;  /* [n] */
    int64_t *counts; /* [n * noptions] */
} series_view_t;

void series_view_init(series_view_t *v, int noptions);
void series_view_free(series_view_t *v);
/* Appends s's minutes to v's rows (one per minute held, zeros included),
 * with atomic loads: v->noptions options a row (options the series does not
 * have yet read 0, options past v->noptions are left out). A reader whose
 * seq check fails drops them (v->n back to what it was) and copies again.
 * @locality any thread, under the partition's seq */
void series_read_into(const series_t *s, series_view_t *v);
/* Sorts the rows by minute, adds up rows of one minute (from several
 * partitions), drops the minutes without a net change. */
void series_view_finish(series_view_t *v);

/* Snapshots: the series as a self-contained section body,
 *   u64 newest+1 (0: never changed)  u64 oldest  u64 n
 *   then n rows {u64 minute, noptions x u64 delta}
 * (the minutes with a change, oldest first), little-endian; write emits
 * rows of s->noptions. read replaces s's state with a body whose rows have
 * width options (width <= s->noptions; the other options read 0): 0, or -1
 * with errstr (malformed: wrong length, a minute outside the ring, out of
 * order), s then empty (its noptions kept). @locality writer */
typedef void (*series_emit_fn)(void *arg, const void *p, size_t n);
size_t series_snapshot_size(const series_t *s); /* bytes write will emit */
void series_snapshot_write(const series_t *s, series_emit_fn emit, void *arg);
int series_snapshot_read(series_t *s, int width, const uint8_t *p, size_t len, char *errstr,
                         size_t esz);

#endif
