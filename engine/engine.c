#include "engine/engine.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#define XXH_INLINE_ALL /* ids are short: hash them without a call */
#include <xxhash.h>

#include "common/util.h"
#include "engine/engine_int.h"
#include "log/record.h"

#define BATCH_MAX 4096
#define POLL_WAIT_MS 100
/* Records decoded, hashed and prefetched together before any is counted
 * (apply_run): enough voter-table misses in flight to cover memory latency.
 * 16..256 measure the same. */
#define CHUNK 64

/* ---- id maps ---- */

/* Ids are a few bytes: an inline compare beats a call to memcmp. */
static inline int id_equal(const char *a, const char *b, size_t len) {
    for (; len >= 8; a += 8, b += 8, len -= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y)
            return 0;
    }
    for (; len; a++, b++, len--)
        if (*a != *b)
            return 0;
    return 1;
}

#define ID_SHORT 8

/* An id of up to ID_SHORT bytes as one word; with the length it identifies
 * the id: for 4..8 bytes the two 4-byte windows cover every byte, for 1..3
 * bytes the three picked bytes are all of them. Reads only id[0..len). */
static inline uint64_t id_pack(const char *id, size_t len) {
    const uint8_t *p = (const uint8_t *)id;
    if (len >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + len - 4, 4);
        return (uint64_t)lo | (uint64_t)hi << 32;
    }
    if (len == 0)
        return 0;
    return (uint64_t)p[0] | (uint64_t)p[len >> 1] << 8 | (uint64_t)p[len - 1] << 16;
}

static inline size_t id_hash(const char *id, size_t len, uint64_t packed) {
    if (len <= ID_SHORT)
        return (size_t)(((packed ^ (uint64_t)len << 59) * 0x9E3779B97F4A7C15ull) >> 32);
    return (size_t)XXH3_64bits(id, len);
}

static void idmap_build(idmap_t *m, int n, const char *(*id_at)(const void *, int),
                        const void *ctx) {
    size_t cap = 8;
    while (cap < (size_t)n * 2)
        cap *= 2;
    m->slots = xcalloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    for (int i = 0; i < n; i++) {
        const char *id = id_at(ctx, i);
        size_t len = strlen(id);
        uint64_t packed = len <= ID_SHORT ? id_pack(id, len) : 0;
        size_t j = id_hash(id, len, packed) & m->mask;
        while (m->slots[j].id)
            j = (j + 1) & m->mask;
        m->slots[j] = (idmap_slot_t){id, len, packed, i};
    }
}

static inline int idmap_find(const idmap_t *m, const char *id, size_t len) {
    uint64_t packed = len <= ID_SHORT ? id_pack(id, len) : 0;
    size_t j = id_hash(id, len, packed) & m->mask;
    for (const idmap_slot_t *s = &m->slots[j]; s->id; s = &m->slots[j]) {
        if (s->len == len && (len <= ID_SHORT ? s->packed == packed : id_equal(s->id, id, len)))
            return s->index;
        j = (j + 1) & m->mask;
    }
    return -1;
}

static const char *poll_id_at(const void *ctx, int i) {
    return ((const tally_config_t *)ctx)->polls[i].id;
}
static const char *opt_id_at(const void *ctx, int i) {
    return ((const poll_conf_t *)ctx)->options[i].id;
}

/* ---- lifecycle ---- */

engine_t *engine_new(const tally_config_t *c, int npartitions) {
    engine_t *e = xcalloc(1, sizeof *e);
    e->conf = c;
    e->npolls = c->npolls;
    e->npartitions = npartitions;
    idmap_build(&e->poll_map, c->npolls, poll_id_at, c);
    e->opt_maps = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *e->opt_maps);
    for (int i = 0; i < c->npolls; i++)
        idmap_build(&e->opt_maps[i], c->polls[i].noptions, opt_id_at, &c->polls[i]);
    e->gens = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *e->gens);
    e->poll_seeds = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *e->poll_seeds);
    for (int i = 0; i < c->npolls; i++)
        e->poll_seeds[i] = record_poll_seed(c->polls[i].id, strlen(c->polls[i].id));
    e->parts = xcalloc((size_t)npartitions, sizeof *e->parts);
    for (int p = 0; p < npartitions; p++) {
        partition_t *pt = &e->parts[p];
        pt->polls = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *pt->polls);
        pt->touched = xcalloc((size_t)(c->npolls ? c->npolls : 1), 1);
        for (int i = 0; i < c->npolls; i++) {
            pt->polls[i].counts = xcalloc((size_t)c->polls[i].noptions, sizeof(uint64_t));
            voters_init(&pt->polls[i].voters);
            series_init(&pt->polls[i].series, c->polls[i].noptions);
        }
        idem_init(&pt->idem);
    }
    pthread_mutex_init(&e->err_mu, NULL);
    return e;
}

void engine_free(engine_t *e) {
    if (!e)
        return;
    for (int p = 0; p < e->npartitions; p++) {
        for (int i = 0; i < e->npolls; i++) {
            free(e->parts[p].polls[i].counts);
            voters_free(&e->parts[p].polls[i].voters);
            series_free(&e->parts[p].polls[i].series);
        }
        idem_free(&e->parts[p].idem);
        free(e->parts[p].polls);
        free(e->parts[p].touched);
    }
    for (int i = 0; i < e->npolls; i++)
        free(e->opt_maps[i].slots);
    free(e->opt_maps);
    free(e->poll_map.slots);
    free(e->gens);
    free(e->poll_seeds);
    free(e->parts);
    free(e->workers);
    pthread_mutex_destroy(&e->err_mu);
    free(e);
}

void engine_set_cutoff(engine_t *e, uint64_t until_ms) { e->until_ms = until_ms; }

/* ---- counting ---- */

/* Single writer: a plain load and store (no lock prefix). The release store
 * orders it after the batch's odd sequence number, for readers that load it
 * with acquire; on x86 both are plain moves. */
static inline void count_add(_Atomic uint64_t *c, int64_t d) {
    uint64_t v = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, v + (uint64_t)d, memory_order_release);
}

void engine_batch_begin(engine_t *e, int partition) {
    partition_t *pt = &e->parts[partition];
    uint64_t s = atomic_load_explicit(&pt->seq, memory_order_relaxed);
    atomic_store_explicit(&pt->seq, s + 1, memory_order_relaxed);
}

void engine_batch_end(engine_t *e, int partition) {
    partition_t *pt = &e->parts[partition];
    uint64_t s = atomic_load_explicit(&pt->seq, memory_order_relaxed);
    atomic_store_explicit(&pt->seq, s + 1, memory_order_release);
    atomic_store_explicit(&pt->pos_pub, pt->position, memory_order_release);
    uint64_t voters = 0, bytes = 0, sbytes = 0;
    for (int i = 0; i < e->npolls; i++) {
        voters += pt->polls[i].voters.count;
        bytes += voters_bytes(&pt->polls[i].voters);
        sbytes += series_bytes(&pt->polls[i].series);
    }
    atomic_store_explicit(&pt->voters_pub, voters, memory_order_relaxed);
    atomic_store_explicit(&pt->bytes_pub, bytes, memory_order_relaxed);
    atomic_store_explicit(&pt->idem_pub, idem_count(&pt->idem), memory_order_relaxed);
    atomic_store_explicit(&pt->idem_bytes_pub, idem_bytes(&pt->idem), memory_order_relaxed);
    atomic_store_explicit(&pt->series_bytes_pub, sbytes, memory_order_relaxed);
    for (int i = 0; i < e->npolls; i++) {
        if (pt->touched[i]) {
            pt->touched[i] = 0;
            atomic_fetch_add_explicit(&e->gens[i], 1, memory_order_release);
        }
    }
}

/* Skipped records are counted (engine_stats) and the first few logged, so
 * that a log written by a newer version or another config is noticed. */
static void note_skipped(int partition, uint64_t next_pos, const uint8_t *rec, size_t len) {
    static _Atomic int logged;
    if (atomic_fetch_add_explicit(&logged, 1, memory_order_relaxed) >= 10)
        return;
    vote_record_t v;
    if (record_decode(rec, len, &v) != 0)
        log_warn("engine: partition %d: record before position %llu is unreadable (version %d, "
                 "%zu bytes): skipped",
                 partition, (unsigned long long)next_pos, len ? rec[0] : -1, len);
    else
        log_warn("engine: partition %d: vote for %.*s/%.*s is not in the config: skipped",
                 partition, (int)v.poll_len, v.poll, (int)v.option_len, v.option);
}

/* What pass 1 found out about a record, for pass 3 (apply_run). */
enum { PREP_VOTE = 0, PREP_PROGRESS, PREP_SKIP, PREP_CUTOFF };

typedef struct {
    int what; /* PREP_* */
    int pi, oi;
    int voter; /* the poll keeps voters: key is set */
    int has_ts; /* a vote was decoded: ts is its timestamp */
    int keyed;  /* it carries an Idempotency-Key: ikey is set */
    uint64_t ts;
    voter_key_t key, ikey;
} prep_t;

/* The idempotency window of poll pi, in ms. The one place it is read: the
 * poll's definition will hold it (catalog), the config holds it today. */
static inline uint64_t idem_window_ms(const engine_t *e, int pi) {
    (void)pi;
    return (uint64_t)e->conf->ingest_idempotency_window_s * 1000;
}

/* The last poll seen in a batch: votes come in runs of one poll (a live
 * poll's burst), so most records skip the poll map. Local to one call of
 * apply_run, so readers of the shared maps never see it. */
typedef struct {
    int pi;
    const char *id;
    size_t len;
    uint64_t packed;
} poll_cache_t;

static inline int find_poll(const engine_t *e, poll_cache_t *pc, const char *id, size_t len) {
    uint64_t packed = len <= ID_SHORT ? id_pack(id, len) : 0;
    if (pc->pi >= 0 && pc->len == len &&
        (len <= ID_SHORT ? pc->packed == packed : id_equal(pc->id, id, len)))
        return pc->pi;
    int pi = idmap_find(&e->poll_map, id, len);
    if (pi >= 0)
        *pc = (poll_cache_t){pi, e->conf->polls[pi].id, len, packed};
    return pi;
}

/* Pass 1 of a record: decode, find poll and option, hash the voter. Reads
 * no partition state, so it may run ahead of the counting. */
static inline void prepare(const engine_t *e, int partition, poll_cache_t *cache,
                           const vlog_msg_t *m, prep_t *q) {
    q->has_ts = 0;
    q->keyed = 0;
    if (!m->rec) {
        q->what = PREP_PROGRESS;
        return;
    }
    vote_record_t v;
    int pi, oi;
    int decoded = record_decode(m->rec, m->len, &v) == 0;
    if (decoded) {
        /* Every vote read raises the partition's idempotency clock. */
        q->has_ts = 1;
        q->ts = m->ts_ms >= 0 ? (uint64_t)m->ts_ms : v.ts_ms;
    }
    if (!decoded || (pi = find_poll(e, cache, v.poll, v.poll_len)) < 0 ||
        (oi = idmap_find(&e->opt_maps[pi], v.option, v.option_len)) < 0) {
        note_skipped(partition, m->next_pos, m->rec, m->len);
        q->what = PREP_SKIP;
        return;
    }
    uint64_t ts = q->ts;
    if (e->until_ms && ts > e->until_ms) {
        q->what = PREP_CUTOFF;
        return;
    }
    const poll_conf_t *pc = &e->conf->polls[pi];
    q->pi = pi;
    q->oi = oi;
    q->voter = 0;
    if (v.key_len) {
        q->keyed = 1;
        q->ikey = idem_key(e->poll_seeds[pi], v.voter, v.voter_len, v.key, v.key_len);
    }
    if (pc->mode == MODE_UNLIMITED) {
        q->what = PREP_VOTE;
        return;
    }
    if (v.voter_len == 0) {
        /* A voter-less vote in a voter mode never passes ingest; a log
         * written under another config may hold one. */
        q->what = PREP_SKIP;
        return;
    }
    q->what = PREP_VOTE;
    q->voter = 1;
    q->key = record_poll_voter_key(e->poll_seeds[pi], v.voter, v.voter_len);
}

typedef struct {
    uint64_t applied, skipped, after_cutoff, retried;
} run_counts_t;

/* A change of one option's total, and of its minute in the series. */
static inline void count_change(ppoll_t *pp, uint64_t ts, int oi, int64_t d) {
    count_add(&pp->counts[oi], d);
    series_add(&pp->series, ts, oi, d);
}

/* Pass 3 of a record: count it, in log order. */
static inline void apply_one(engine_t *e, partition_t *pt, const vlog_msg_t *m, const prep_t *q,
                             run_counts_t *rc) {
    if (q->what == PREP_PROGRESS) {
        /* Progress without a record: nothing of this partition before
         * next_pos (the file log's partitions share one file). */
        if (m->next_pos > pt->position)
            pt->position = m->next_pos;
        return;
    }
    pt->position = m->next_pos;
    if (q->has_ts)
        idem_observe(&pt->idem, q->ts);
    if (q->what == PREP_SKIP) {
        rc->skipped++;
        return;
    }
    if (q->what == PREP_CUTOFF) {
        rc->after_cutoff++;
        return;
    }
    rc->applied++;
    int pi = q->pi, oi = q->oi;
    /* Before any mode: a retry changes nothing, in every mode. */
    if (q->keyed && idem_check(&pt->idem, q->ikey, q->ts, idem_window_ms(e, pi))) {
        rc->retried++;
        return;
    }
    ppoll_t *pp = &pt->polls[pi];
    poll_mode_t mode = e->conf->polls[pi].mode;
    if (mode == MODE_UNLIMITED) {
        count_change(pp, q->ts, oi, 1);
        pt->touched[pi] = 1;
        return;
    }
    voter_slot_t *slot;
    int prev = voters_get_or_insert(&pp->voters, q->key, oi, &slot);
    if (prev < 0) {
        count_change(pp, q->ts, oi, 1);
        pt->touched[pi] = 1;
    } else if (mode == MODE_CHANGEABLE && prev != oi) {
        count_change(pp, q->ts, prev, -1);
        count_change(pp, q->ts, oi, 1);
        voters_set_option(slot, oi);
        pt->touched[pi] = 1;
    }
}

/* Pass 2 of a chunk: ask for the cache line of every vote's voter slot. */
static void prefetch_chunk(partition_t *pt, const prep_t *prep, int m) {
    for (int i = 0; i < m; i++) {
        if (prep[i].what == PREP_VOTE && prep[i].voter)
            voters_prefetch(&pt->polls[prep[i].pi].voters, prep[i].key);
        if (prep[i].what == PREP_VOTE && prep[i].keyed)
            idem_prefetch(&pt->idem, prep[i].ikey);
    }
}

/* Applies msgs[0..n) of one partition in order, CHUNK records at a time in
 * three passes: decode and hash the chunk (prepare), prefetch its voter
 * slots, count it (apply_one). The prefetches get a tight loop of their own:
 * a prefetch that misses the TLB holds up retirement until its page walk
 * ends, so with a record's decoding and hashing between two of them the
 * reorder buffer fills and the misses hardly overlap. Order is exactly the
 * log's: the first two passes only read. The slot is looked up afresh in
 * pass 3 (the table may grow in between; a stale prefetch is only wasted).
 * Returns how many records were counted; *pi_out (may be NULL) gets the poll
 * index of the last record, -1 if it was not counted. */
static int apply_run(engine_t *e, int partition, const vlog_msg_t *msgs, int n, int *pi_out) {
    partition_t *pt = &e->parts[partition];
    prep_t prep[CHUNK];
    poll_cache_t cache = {-1, NULL, 0, 0};
    run_counts_t rc = {0, 0, 0, 0};
    int last_pi = -1;
    for (int b = 0; b < n; b += CHUNK) {
        int m = n - b < CHUNK ? n - b : CHUNK;
        for (int i = 0; i < m; i++)
            prepare(e, partition, &cache, &msgs[b + i], &prep[i]);
        if (m > 1)
            prefetch_chunk(pt, prep, m);
        for (int i = 0; i < m; i++) {
            uint64_t before = rc.applied;
            apply_one(e, pt, &msgs[b + i], &prep[i], &rc);
            last_pi = rc.applied != before ? prep[i].pi : -1;
        }
    }
    if (rc.applied)
        count_add((_Atomic uint64_t *)&pt->applied, (int64_t)rc.applied);
    if (rc.skipped)
        count_add((_Atomic uint64_t *)&pt->skipped, (int64_t)rc.skipped);
    if (rc.after_cutoff)
        count_add((_Atomic uint64_t *)&pt->after_cutoff, (int64_t)rc.after_cutoff);
    if (rc.retried)
        count_add(&pt->retried, (int64_t)rc.retried);
    if (pi_out)
        *pi_out = last_pi;
    return (int)rc.applied;
}

int engine_apply_batch(engine_t *e, int partition, const vlog_msg_t *msgs, int n) {
    return apply_run(e, partition, msgs, n, NULL);
}

int engine_apply(engine_t *e, int partition, const uint8_t *rec, size_t len, uint64_t next_pos,
                 int64_t ts_ms) {
    vlog_msg_t m = {partition, next_pos, ts_ms, rec, len};
    int pi;
    apply_run(e, partition, &m, 1, &pi);
    return pi;
}

/* ---- reading ---- */

int engine_npolls(const engine_t *e) { return e->npolls; }
const poll_conf_t *engine_poll(const engine_t *e, int i) { return &e->conf->polls[i]; }
int engine_poll_index(const engine_t *e, const char *id, size_t len) {
    return idmap_find(&e->poll_map, id, len);
}

uint64_t engine_poll_generation(const engine_t *e, int i) {
    return atomic_load_explicit(&e->gens[i], memory_order_acquire);
}

void engine_poll_totals(const engine_t *e, int i, uint64_t *counts) {
    engine_poll_read(e, i, counts, NULL);
}

void engine_poll_read(const engine_t *e, int i, uint64_t *counts, series_view_t *series) {
    int n = e->conf->polls[i].noptions;
    uint64_t stack[64], *tmp = n <= 64 ? stack : xmalloc(sizeof *tmp * (size_t)n);
    memset(counts, 0, sizeof *counts * (size_t)n);
    for (int p = 0; p < e->npartitions; p++) {
        partition_t *pt = &e->parts[p];
        _Atomic uint64_t *src = pt->polls[i].counts;
        for (;;) {
            uint64_t s1 = atomic_load_explicit(&pt->seq, memory_order_acquire);
            if (s1 & 1) {
                sched_yield(); /* a batch is being applied: short */
                continue;
            }
            /* Acquire loads keep the re-check of seq after them. */
            size_t rows = series ? series->n : 0;
            for (int k = 0; k < n; k++)
                tmp[k] = atomic_load_explicit(&src[k], memory_order_acquire);
            if (series)
                series_read_into(&pt->polls[i].series, series);
            if (atomic_load_explicit(&pt->seq, memory_order_relaxed) == s1)
                break;
            if (series)
                series->n = rows; /* torn: read the partition again */
        }
        for (int k = 0; k < n; k++)
            counts[k] += tmp[k];
    }
    if (tmp != stack)
        free(tmp);
    if (series)
        series_view_finish(series);
}

uint64_t engine_position(const engine_t *e, int partition) {
    return atomic_load_explicit(&e->parts[partition].pos_pub, memory_order_acquire);
}

engine_stats_t engine_stats(const engine_t *e) {
    engine_stats_t s = {0};
    for (int p = 0; p < e->npartitions; p++) {
        partition_t *pt = &e->parts[p];
        s.applied += atomic_load_explicit(&pt->applied, memory_order_relaxed);
        s.skipped += atomic_load_explicit(&pt->skipped, memory_order_relaxed);
        s.after_cutoff += atomic_load_explicit(&pt->after_cutoff, memory_order_relaxed);
        s.voters += atomic_load_explicit(&pt->voters_pub, memory_order_relaxed);
        s.state_bytes += atomic_load_explicit(&pt->bytes_pub, memory_order_relaxed);
        s.retried += atomic_load_explicit(&pt->retried, memory_order_relaxed);
        s.idem_keys += atomic_load_explicit(&pt->idem_pub, memory_order_relaxed);
        s.idem_bytes += atomic_load_explicit(&pt->idem_bytes_pub, memory_order_relaxed);
        s.series_bytes += atomic_load_explicit(&pt->series_bytes_pub, memory_order_relaxed);
    }
    return s;
}

/* ---- workers ---- */

static void set_failed(engine_t *e, const char *msg) {
    pthread_mutex_lock(&e->err_mu);
    if (!atomic_load(&e->failed))
        snprintf(e->err, sizeof e->err, "%s", msg);
    atomic_store(&e->failed, 1);
    pthread_mutex_unlock(&e->err_mu);
    log_error("engine: %s", msg);
}

/* One poll's messages, copied: a record is valid only until on_msg returns,
 * and the batch is applied after the poll. Owned by one worker. */
typedef struct {
    engine_t *e;
    vlog_msg_t *msgs;
    size_t *offs; /* [i]: offset of msgs[i]'s record in arena, SIZE_MAX for none */
    int n, cap;
    buf_t arena;
    vlog_msg_t *grouped; /* [cap]: msgs regrouped by partition */
    int *start;          /* [npartitions + 1]: each partition's range in grouped */
} apply_ctx_t;

static int on_msg(void *arg, const vlog_msg_t *m) {
    apply_ctx_t *ctx = arg;
    engine_t *e = ctx->e;
    vlog_msg_t q = *m;
    int decline = 0;
    if (e->run.stop_at && m->next_pos > e->run.stop_at[m->partition]) {
        /* Past replay's end. Readers deliver in log order, so nothing of
         * this partition lies before stop_at any more: it is reached. Queued
         * as progress to stop_at, after what came before it. */
        q = (vlog_msg_t){m->partition, e->run.stop_at[m->partition], -1, NULL, 0};
        decline = m->rec != NULL; /* leave the record for later */
    }
    if (ctx->n == ctx->cap) {
        ctx->cap = ctx->cap ? ctx->cap * 2 : BATCH_MAX;
        ctx->msgs = xrealloc(ctx->msgs, sizeof *ctx->msgs * (size_t)ctx->cap);
        ctx->offs = xrealloc(ctx->offs, sizeof *ctx->offs * (size_t)ctx->cap);
        ctx->grouped = xrealloc(ctx->grouped, sizeof *ctx->grouped * (size_t)ctx->cap);
    }
    ctx->msgs[ctx->n] = q;
    ctx->msgs[ctx->n].rec = NULL; /* set once the arena stops moving */
    ctx->offs[ctx->n] = SIZE_MAX;
    if (q.rec) {
        ctx->offs[ctx->n] = ctx->arena.len;
        buf_append(&ctx->arena, q.rec, q.len);
    }
    ctx->n++;
    return decline;
}

/* Applies what on_msg collected, each partition's messages as one batch.
 * A reader interleaves partitions (the file log nearly record by record), so
 * the messages are first regrouped by partition, stably: partitions are
 * independent and each one keeps its own order, and apply_run gets runs
 * long enough to prefetch. Returns whether any record was counted. */
static int apply_collected(apply_ctx_t *ctx) {
    engine_t *e = ctx->e;
    int np = e->npartitions;
    if (ctx->n == 0)
        return 0;
    memset(ctx->start, 0, sizeof *ctx->start * (size_t)(np + 1));
    for (int i = 0; i < ctx->n; i++) {
        if (ctx->offs[i] != SIZE_MAX)
            ctx->msgs[i].rec = (const uint8_t *)ctx->arena.data + ctx->offs[i];
        ctx->start[ctx->msgs[i].partition + 1]++;
    }
    for (int p = 0; p < np; p++)
        ctx->start[p + 1] += ctx->start[p];
    for (int i = 0; i < ctx->n; i++)
        ctx->grouped[ctx->start[ctx->msgs[i].partition]++] = ctx->msgs[i];
    /* start[p] is now the end of p's range: p's messages are
     * grouped[end(p-1) .. end(p)). */
    int changed = 0;
    for (int p = 0, begin = 0; p < np; begin = ctx->start[p++]) {
        int end = ctx->start[p];
        if (end == begin)
            continue;
        engine_batch_begin(e, p);
        if (apply_run(e, p, &ctx->grouped[begin], end - begin, NULL) > 0)
            changed = 1;
        engine_batch_end(e, p);
    }
    ctx->n = 0;
    ctx->arena.len = 0;
    return changed;
}

static int reached_stop(const engine_t *e, const worker_t *w) {
    if (!e->run.stop_at)
        return 0;
    for (int i = 0; i < w->nparts; i++)
        if (e->parts[w->parts[i]].position < e->run.stop_at[w->parts[i]])
            return 0;
    return 1;
}

static void snapshot_changed(worker_t *w) {
    engine_t *e = w->e;
    if (!e->run.snapshot_dir)
        return;
    for (int i = 0; i < w->nparts; i++) {
        int p = w->parts[i];
        if (e->parts[p].position == e->parts[p].snap_position)
            continue;
        char err[512];
        if (engine_snapshot_save(e, p, e->run.snapshot_dir, err, sizeof err) != TALLY_OK)
            log_error("engine: snapshot of partition %d failed: %s (will retry)", p, err);
    }
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    engine_t *e = w->e;
    char err[512];
    uint64_t *pos = xmalloc(sizeof(uint64_t) * (size_t)(w->nparts ? w->nparts : 1));
    for (int i = 0; i < w->nparts; i++)
        pos[i] = e->parts[w->parts[i]].position;
    vlog_reader_t *r = vlog_reader_new(e->run.log, w->parts, pos, w->nparts, err, sizeof err);
    free(pos);
    if (!r) {
        set_failed(e, err);
        return NULL;
    }
    uint64_t last_snap = mono_ms();
    apply_ctx_t ctx = {.e = e, .start = xcalloc((size_t)e->npartitions + 1, sizeof(int))};
    while (!atomic_load_explicit(&e->stopping, memory_order_acquire) && !reached_stop(e, w)) {
        int n = vlog_reader_poll(r, on_msg, &ctx, BATCH_MAX, POLL_WAIT_MS, err, sizeof err);
        /* What was delivered before an error was taken: count it. */
        int changed = apply_collected(&ctx);
        if (n < 0) {
            set_failed(e, err);
            break;
        }
        if (changed && e->run.on_change)
            e->run.on_change(e->run.on_change_arg);
        if (e->run.snapshot_dir && mono_ms() - last_snap >= (uint64_t)e->run.snapshot_interval_ms) {
            snapshot_changed(w);
            last_snap = mono_ms();
        }
    }
    free(ctx.msgs);
    free(ctx.offs);
    free(ctx.grouped);
    free(ctx.start);
    buf_free(&ctx.arena);
    vlog_reader_free(r);
    if (!atomic_load(&e->failed))
        snapshot_changed(w);
    return NULL;
}

tally_err_t engine_start(engine_t *e, const engine_run_opts_t *o, char *errstr, size_t esz) {
    e->run = *o;
    /* Snapshots the workers write name the log they counted. */
    engine_set_log_id(e, vlog_id(o->log), vlog_id_legacy(o->log));
    int t = o->threads < 1 ? 1 : o->threads;
    if (t > e->npartitions)
        t = e->npartitions; /* a worker without partitions would only idle */
    e->workers = xcalloc((size_t)t, sizeof *e->workers);
    e->nworkers = t;
    for (int i = 0; i < t; i++) {
        worker_t *w = &e->workers[i];
        w->e = e;
        w->id = i;
        w->parts = xmalloc(sizeof(int) * (size_t)e->npartitions);
        for (int p = i; p < e->npartitions; p += t)
            w->parts[w->nparts++] = p;
    }
    for (int i = 0; i < t; i++) {
        if (pthread_create(&e->workers[i].thread, NULL, worker_main, &e->workers[i]) != 0) {
            snprintf(errstr, esz, "engine: cannot start worker thread %d", i);
            atomic_store(&e->stopping, 1);
            for (int j = 0; j < i; j++)
                pthread_join(e->workers[j].thread, NULL);
            for (int j = 0; j < t; j++)
                free(e->workers[j].parts);
            e->nworkers = 0;
            return TALLY_ERR_IO;
        }
    }
    return TALLY_OK;
}

tally_err_t engine_join(engine_t *e, char *errstr, size_t esz) {
    for (int i = 0; i < e->nworkers; i++) {
        pthread_join(e->workers[i].thread, NULL);
        free(e->workers[i].parts);
    }
    e->nworkers = 0;
    if (atomic_load(&e->failed)) {
        pthread_mutex_lock(&e->err_mu);
        snprintf(errstr, esz, "%s", e->err);
        pthread_mutex_unlock(&e->err_mu);
        return TALLY_ERR_IO;
    }
    return TALLY_OK;
}

void engine_stop(engine_t *e) { atomic_store_explicit(&e->stopping, 1, memory_order_release); }

int engine_failed(const engine_t *e) { return atomic_load(&e->failed); }
