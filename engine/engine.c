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

static void idmap_put(idmap_t *m, const char *id, int index) {
    size_t len = strlen(id);
    uint64_t packed = len <= ID_SHORT ? id_pack(id, len) : 0;
    size_t j = id_hash(id, len, packed) & m->mask;
    while (m->slots[j].id)
        j = (j + 1) & m->mask;
    m->slots[j] = (idmap_slot_t){id, len, packed, index};
}

static void idmap_build(idmap_t *m, int n, const char *(*id_at)(const void *, int),
                        const void *ctx) {
    size_t cap = 8;
    while (cap < (size_t)n * 2)
        cap *= 2;
    m->slots = xcalloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    for (int i = 0; i < n; i++)
        idmap_put(m, id_at(ctx, i), i);
}

/* Adds id -> index to a growing map holding *count ids (kept at most half
 * full). The id must outlive the map. */
static void idmap_add(idmap_t *m, size_t *count, const char *id, int index) {
    if (!m->slots || (*count + 1) * 2 > m->mask + 1) {
        idmap_t old = *m;
        size_t cap = old.slots ? (old.mask + 1) * 2 : 16;
        m->slots = xcalloc(cap, sizeof *m->slots);
        m->mask = cap - 1;
        for (size_t j = 0; old.slots && j <= old.mask; j++)
            if (old.slots[j].id)
                idmap_put(m, old.slots[j].id, old.slots[j].index);
        free(old.slots);
    }
    idmap_put(m, id, index);
    (*count)++;
}

static inline int idmap_find(const idmap_t *m, const char *id, size_t len) {
    if (!m->slots)
        return -1;
    uint64_t packed = len <= ID_SHORT ? id_pack(id, len) : 0;
    size_t j = id_hash(id, len, packed) & m->mask;
    for (const idmap_slot_t *s = &m->slots[j]; s->id; s = &m->slots[j]) {
        if (s->len == len && (len <= ID_SHORT ? s->packed == packed : id_equal(s->id, id, len)))
            return s->index;
        j = (j + 1) & m->mask;
    }
    return -1;
}

static const char *def_opt_id_at(const void *ctx, int i) {
    return ((const poll_def_t *)ctx)->options[i].id;
}

/* ---- polls of a partition ---- */

static inline ppoll_t *ppoll_get(const partition_t *pt, int gi) {
    ppoll_t *chunk = atomic_load_explicit(&pt->chunks[gi / POLL_CHUNK], memory_order_acquire);
    return chunk ? &chunk[gi % POLL_CHUNK] : NULL;
}

static counts_t *counts_new(uint32_t n) {
    counts_t *c = xcalloc(1, sizeof *c + sizeof(uint64_t) * (n ? n : 1));
    c->n = n;
    return c;
}

/* Makes room for n options, keeping the counts; the series follows (it has
 * as many options as the counts array). @locality the writer */
static void ppoll_grow(partition_t *pt, ppoll_t *pp, uint32_t n) {
    series_grow(&pp->series, (int)n);
    counts_t *old = atomic_load_explicit(&pp->counts, memory_order_relaxed);
    if (old && old->n >= n)
        return;
    counts_t *c = counts_new(n);
    for (uint32_t k = 0; old && k < old->n; k++)
        atomic_init(&c->c[k], atomic_load_explicit(&old->c[k], memory_order_relaxed));
    atomic_store_explicit(&pp->counts, c, memory_order_release);
    if (old) {
        pt->retired = xrealloc(pt->retired, sizeof *pt->retired * (size_t)(pt->nretired + 1));
        pt->retired[pt->nretired++] = old;
    }
}

/* The options and mode a partition judges votes of pp by: its view, else
 * the config's. */
static void ppoll_set_eff(partition_t *pt, ppoll_t *pp) {
    const catalog_entry_t *en = pp->view ? pp->view : pp->conf;
    const poll_def_t *d = en ? en->def : NULL;
    if (d == pp->eff)
        return;
    pp->seed = en ? en->seed : 0;
    free(pp->opts.slots);
    pp->opts = (idmap_t){0};
    pp->eff = d;
    if (d) {
        idmap_build(&pp->opts, d->noptions, def_opt_id_at, d);
        ppoll_grow(pt, pp, (uint32_t)d->noptions);
    }
}

/* Partition p's slot of global poll gi, made present. @locality the writer */
static ppoll_t *ppoll_add(engine_t *e, int p, int gi) {
    partition_t *pt = &e->parts[p];
    ppoll_t *chunk = atomic_load_explicit(&pt->chunks[gi / POLL_CHUNK], memory_order_relaxed);
    if (!chunk) {
        chunk = xcalloc(POLL_CHUNK, sizeof *chunk);
        atomic_store_explicit(&pt->chunks[gi / POLL_CHUNK], chunk, memory_order_release);
    }
    ppoll_t *pp = &chunk[gi % POLL_CHUNK];
    if (!pp->present) {
        pp->present = 1;
        voters_init(&pp->voters);
        series_init(&pp->series, 0);
        atomic_store_explicit(&pp->counts, counts_new(0), memory_order_release);
        if (pt->nknown == pt->known_cap) {
            pt->known_cap = pt->known_cap ? pt->known_cap * 2 : 16;
            pt->known = xrealloc(pt->known, sizeof *pt->known * (size_t)pt->known_cap);
        }
        pt->known[pt->nknown++] = gi;
        idmap_add(&pt->pmap, &pt->pmap_count, e->gids[gi], gi);
        if (gi < e->conf->npolls) {
            pp->conf = e->conf_entries[gi];
            catalog_entry_ref(pp->conf);
        }
        ppoll_set_eff(pt, pp);
    }
    return pp;
}

static void ppoll_free(ppoll_t *pp) {
    free(atomic_load(&pp->counts));
    voters_free(&pp->voters);
    series_free(&pp->series);
    free(pp->opts.slots);
    catalog_entry_unref(pp->view);
    catalog_entry_unref(pp->conf);
    memset(pp, 0, sizeof *pp);
}

/* Frees all of partition p's polls. */
static void partition_clear(engine_t *e, int p) {
    partition_t *pt = &e->parts[p];
    for (int c = 0; c < POLL_CHUNKS; c++) {
        ppoll_t *chunk = atomic_load(&pt->chunks[c]);
        for (int i = 0; chunk && i < POLL_CHUNK; i++)
            if (chunk[i].present)
                ppoll_free(&chunk[i]);
    }
    for (int i = 0; i < pt->nretired; i++)
        free(pt->retired[i]);
    free(pt->retired);
    pt->retired = NULL;
    pt->nretired = 0;
    free(pt->pmap.slots);
    pt->pmap = (idmap_t){0};
    pt->pmap_count = 0;
    pt->nknown = 0;
    pt->position = 0;
    atomic_store(&pt->applied_seq, 0);
    idem_free(&pt->idem);
    atomic_store(&pt->retried, 0);
}

/* Empties partition p (a failed snapshot load). @locality the writer, or
 * before any worker runs */
void engine_partition_reset_int(engine_t *e, int p) {
    partition_clear(e, p);
    /* The config's polls are always present: v1 votes count against them. */
    for (int i = 0; i < e->conf->npolls; i++)
        ppoll_add(e, p, i);
}

/* ---- the global index and the engine's catalog ---- */

/* The global index of a poll id, assigned on first sight. @locks cat_mu */
static int global_index_locked(engine_t *e, const char *id, size_t len) {
    int gi = idmap_find(&e->poll_map, id, len);
    if (gi >= 0)
        return gi;
    int n = atomic_load(&e->npolls);
    if (n >= ENGINE_MAX_POLLS)
        return -1;
    e->gids[n] = xstrndup(id, len);
    idmap_add(&e->poll_map, &e->poll_map_count, e->gids[n], n);
    atomic_store_explicit(&e->npolls, n + 1, memory_order_release);
    return n;
}

/* Puts en into the engine's catalog if it is newer than what it holds for
 * the poll; the catalog's seq becomes at least seq. @locks cat_mu */
static void catalog_merge_locked(engine_t *e, catalog_entry_t *en, uint64_t seq) {
    const catalog_t *cur = catalog_live_get(e->catalog);
    const catalog_entry_t *old = catalog_find(cur, en->def->id, strlen(en->def->id));
    uint64_t en_v = en->final ? en->final_seq : en->def_seq;
    uint64_t old_v = old ? (old->final ? old->final_seq : old->def_seq) : 0;
    if (old && (old_v > en_v || (old_v == en_v && old->final >= en->final))) {
        if (seq > catalog_seq(cur)) {
            catalog_entry_t *same = (catalog_entry_t *)old;
            catalog_live_swap(e->catalog, catalog_with(cur, same, seq));
        }
        return;
    }
    catalog_live_swap(e->catalog, catalog_with(cur, en, seq));
}

/* ---- lifecycle ---- */

engine_t *engine_new(const tally_config_t *c, int npartitions) {
    engine_t *e = xcalloc(1, sizeof *e);
    e->conf = c;
    e->npartitions = npartitions;
    pthread_mutex_init(&e->cat_mu, NULL);
    e->gids = xcalloc(ENGINE_MAX_POLLS, sizeof *e->gids);
    e->gens = xcalloc(ENGINE_MAX_POLLS, sizeof *e->gens);
    e->conf_entries = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *e->conf_entries);
    catalog_t *cat = catalog_new_empty();
    poll_def_defaults_t d = {(uint32_t)c->ingest_idempotency_window_s, 0, POLL_SRC_CONFIG};
    for (int i = 0; i < c->npolls; i++) {
        tally_assert(global_index_locked(e, c->polls[i].id, strlen(c->polls[i].id)) == i);
        e->conf_entries[i] = catalog_entry_new(poll_def_from_conf(&c->polls[i], &d), 0);
        catalog_t *next = catalog_with(cat, e->conf_entries[i], 0);
        catalog_free(cat);
        cat = next;
    }
    e->catalog = catalog_live_new(cat);
    e->parts = xcalloc((size_t)npartitions, sizeof *e->parts);
    for (int p = 0; p < npartitions; p++)
        engine_partition_reset_int(e, p);
    pthread_mutex_init(&e->err_mu, NULL);
    return e;
}

void engine_free(engine_t *e) {
    if (!e)
        return;
    for (int p = 0; p < e->npartitions; p++) {
        partition_t *pt = &e->parts[p];
        partition_clear(e, p);
        for (int c = 0; c < POLL_CHUNKS; c++)
            free(atomic_load(&pt->chunks[c]));
        free(pt->known);
    }
    int n = atomic_load(&e->npolls);
    for (int i = 0; i < n; i++)
        free(e->gids[i]);
    free(e->gids);
    for (int i = 0; i < e->conf->npolls; i++)
        catalog_entry_unref(e->conf_entries[i]);
    free(e->conf_entries);
    catalog_live_free(e->catalog);
    free(e->poll_map.slots);
    free(e->gens);
    free(e->parts);
    free(e->workers);
    pthread_mutex_destroy(&e->err_mu);
    pthread_mutex_destroy(&e->cat_mu);
    free(e);
}

void engine_set_cutoff(engine_t *e, uint64_t until_ms) {
    e->until_ms = until_ms;
}

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
    for (int k = 0; k < pt->nknown; k++) {
        ppoll_t *pp = ppoll_get(pt, pt->known[k]);
        voters += pp->voters.count;
        bytes += voters_bytes(&pp->voters);
        sbytes += series_bytes(&pp->series);
        if (pp->touched) {
            pp->touched = 0;
            atomic_fetch_add_explicit(&e->gens[pt->known[k]], 1, memory_order_release);
        }
    }
    atomic_store_explicit(&pt->voters_pub, voters, memory_order_relaxed);
    atomic_store_explicit(&pt->bytes_pub, bytes, memory_order_relaxed);
    atomic_store_explicit(&pt->idem_pub, idem_count(&pt->idem), memory_order_relaxed);
    atomic_store_explicit(&pt->idem_bytes_pub, idem_bytes(&pt->idem), memory_order_relaxed);
    atomic_store_explicit(&pt->series_bytes_pub, sbytes, memory_order_relaxed);
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
        log_warn("engine: partition %d: vote for %.*s/%.*s is not a poll or option defined "
                 "here: skipped",
                 partition, (int)v.poll_len, v.poll, (int)v.option_len, v.option);
}

/* What pass 1 found out about a record, for pass 3 (apply_run). */
enum { PREP_VOTE = 0, PREP_PROGRESS, PREP_SKIP, PREP_CUTOFF, PREP_CONTROL, PREP_LATE, PREP_EARLY };

typedef struct {
    int what; /* PREP_* */
    int pi, oi;
    int voter;  /* the poll keeps voters: key is set */
    int has_ts; /* a vote was decoded: ts is its timestamp */
    int keyed;  /* it carries an Idempotency-Key: ikey is set */
    uint64_t ts;
    voter_key_t key, ikey;
} prep_t;

/* The last poll seen in a batch: votes come in runs of one poll (a live
 * poll's burst), so most records skip the poll map. Local to one call of
 * apply_run and reset at every control record. */
typedef struct {
    int pi;
    const char *id;
    size_t len;
    uint64_t packed;
} poll_cache_t;

static inline int find_poll(const partition_t *pt, poll_cache_t *pc, const char *id, size_t len) {
    uint64_t packed = len <= ID_SHORT ? id_pack(id, len) : 0;
    if (pc->pi >= 0 && pc->len == len &&
        (len <= ID_SHORT ? pc->packed == packed : id_equal(pc->id, id, len)))
        return pc->pi;
    int pi = idmap_find(&pt->pmap, id, len);
    if (pi >= 0)
        *pc = (poll_cache_t){pi, id, len, packed};
    return pi;
}

/* Pass 1 of a record: decode, judge it against the partition's view, find
 * poll and option, hash the voter. Changes no partition state, so it may run
 * ahead of the counting, up to the next control record (which ends the
 * chunk: it changes what the votes after it are judged by).
 *
 * A v1 vote counts against the config's poll (it predates the history). A
 * v2 vote counts against the partition's view of the poll's history: the
 * poll defined, the option one of its options, opens_at <= ts < closes_at
 * and no FINAL applied; before opens_at it is "early", at or after the close
 * "late". A v2 vote for a config poll whose DEFINE this partition has not
 * seen (an ingest that started before the engine wrote it) is judged by the
 * config's definition, as a v1 vote is, times included. */
static inline void prepare(const engine_t *e, int partition, poll_cache_t *cache,
                           const vlog_msg_t *m, prep_t *q) {
    const partition_t *pt = &e->parts[partition];
    q->has_ts = 0;
    q->keyed = 0;
    if (!m->rec) {
        q->what = PREP_PROGRESS;
        return;
    }
    if (m->len >= 2 && m->rec[0] == RECORD_VERSION && m->rec[1] == RECORD_CONTROL) {
        q->what = PREP_CONTROL;
        return;
    }
    vote_record_t v;
    int pi, oi = -1;
    ppoll_t *pp = NULL;
    int decoded = record_decode(m->rec, m->len, &v) == 0;
    if (decoded) {
        /* Every vote read raises the partition's idempotency clock, also
         * one that is skipped, late or early. */
        q->has_ts = 1;
        q->ts = m->ts_ms >= 0 ? (uint64_t)m->ts_ms : v.ts_ms;
    }
    if (!decoded || (pi = find_poll(pt, cache, v.poll, v.poll_len)) < 0 ||
        !(pp = ppoll_get(pt, pi))->eff || (v.version == 1 && !pp->conf) ||
        (oi = idmap_find(&pp->opts, v.option, v.option_len)) < 0 ||
        (v.version == 1 && oi >= pp->conf->def->noptions)) {
        note_skipped(partition, m->next_pos, m->rec, m->len);
        q->what = PREP_SKIP;
        return;
    }
    uint64_t ts = q->ts;
    if (e->until_ms && ts > e->until_ms) {
        q->what = PREP_CUTOFF;
        return;
    }
    const poll_def_t *d = pp->eff;
    q->pi = pi;
    q->oi = oi;
    q->voter = 0;
    if (v.key_len) {
        q->keyed = 1;
        q->ikey = idem_key(pp->seed, v.voter, v.voter_len, v.key, v.key_len);
    }
    if (v.version >= 2) {
        /* The close is judged by the time ingest stamped, never the log's. */
        if (atomic_load_explicit(&pp->final, memory_order_relaxed) ||
            (d->closes_at && v.ts_ms >= d->closes_at)) {
            q->what = PREP_LATE;
            return;
        }
        if (d->opens_at && v.ts_ms < d->opens_at) {
            q->what = PREP_EARLY;
            return;
        }
    }
    if (d->mode == MODE_UNLIMITED) {
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
    q->key = record_poll_voter_key(pp->seed, v.voter, v.voter_len);
}

typedef struct {
    uint64_t applied, skipped, after_cutoff, late, early, retried;
} run_counts_t;

/* The idempotency window of a poll, in ms: the one place it is read. It is
 * the definition's (the view's, else the config's), so a replay applies
 * the window the poll had when its votes were counted. */
static inline uint64_t idem_window_ms(const ppoll_t *pp) {
    return (uint64_t)pp->eff->idempotency_window_s * 1000;
}

/* A change of one option's total, and of its minute in the series. */
static inline void count_change(ppoll_t *pp, counts_t *cnt, uint64_t ts, int oi, int64_t d) {
    count_add(&cnt->c[oi], d);
    series_add(&pp->series, ts, oi, d);
}

/* Whether next may follow cur in one partition's history: what counted
 * votes depend on stays (the admin checks more, see
 * poll_def_check_successor; this guards the counts against a log written by
 * hand). */
static int define_compatible(const poll_def_t *cur, const poll_def_t *next) {
    if (cur->mode != next->mode || cur->max_votes != next->max_votes ||
        next->noptions < cur->noptions)
        return 0;
    for (int i = 0; i < cur->noptions; i++)
        if (strcmp(cur->options[i].id, next->options[i].id))
            return 0;
    return 1;
}

/* Applies a control record to the partition's view, in log order.
 * Returns 1 when the view changed. @locality the writer, inside a batch */
static int apply_control(engine_t *e, int p, const vlog_msg_t *m, run_counts_t *rc) {
    partition_t *pt = &e->parts[p];
    control_record_t c;
    if (control_decode(m->rec, m->len, &c) != 0) {
        note_skipped(p, m->next_pos, m->rec, m->len);
        rc->skipped++;
        return 0;
    }
    uint64_t applied = atomic_load_explicit(&pt->applied_seq, memory_order_relaxed);
    if (c.seq <= applied)
        return 0; /* a re-broadcast after a crash: this partition has it */
    catalog_entry_t *en = NULL;
    int changed = 0;
    pthread_mutex_lock(&e->cat_mu);
    int gi = global_index_locked(e, c.poll, c.poll_len);
    pthread_mutex_unlock(&e->cat_mu);
    if (gi < 0) {
        log_error("engine: partition %d: more than %d polls: control record for %.*s ignored", p,
                  ENGINE_MAX_POLLS, (int)c.poll_len, c.poll);
        goto out;
    }
    ppoll_t *pp = ppoll_get(pt, gi);
    if (c.kind == CONTROL_DEFINE) {
        /* Another partition may have parsed this very record: share it. */
        const catalog_t *cat = catalog_live_get(e->catalog);
        const catalog_entry_t *have = catalog_find(cat, c.poll, c.poll_len);
        if (have && have->def_seq == c.seq && !have->final) {
            en = (catalog_entry_t *)have;
            catalog_entry_ref(en);
        } else {
            poll_def_t *d;
            catalog_error_t err;
            if (poll_def_from_json(c.body, c.body_len, NULL, &d, &err) != TALLY_OK ||
                strlen(d->id) != c.poll_len || memcmp(d->id, c.poll, c.poll_len)) {
                log_warn("engine: partition %d: DEFINE seq %llu of %.*s unreadable (%s): "
                         "ignored",
                         p, (unsigned long long)c.seq, (int)c.poll_len, c.poll, err.message);
                poll_def_free(d);
                goto out;
            }
            en = catalog_entry_new(d, c.seq);
        }
        if (!pp || !pp->present)
            pp = ppoll_add(e, p, gi);
        if (pp->final || (pp->view && !define_compatible(pp->view->def, en->def))) {
            log_warn("engine: partition %d: DEFINE seq %llu of %s %s: ignored", p,
                     (unsigned long long)c.seq, en->def->id,
                     pp->final ? "after its FINAL" : "changes what counted votes depend on");
            goto out;
        }
        catalog_entry_t *old = pp->view;
        pp->view = en;
        catalog_entry_ref(en);
        ppoll_set_eff(pt, pp);
        catalog_entry_unref(old);
        pthread_mutex_lock(&e->cat_mu);
        catalog_merge_locked(e, en, c.seq);
        pthread_mutex_unlock(&e->cat_mu);
        changed = 1;
    } else if (c.kind == CONTROL_FINAL) {
        if (!pp || !pp->present || !pp->view || pp->final) {
            log_warn("engine: partition %d: FINAL seq %llu of %.*s without its DEFINE: ignored", p,
                     (unsigned long long)c.seq, (int)c.poll_len, c.poll);
            goto out;
        }
        pp->final_seq = c.seq;
        pp->final_at = c.at_ms;
        atomic_store_explicit(&pp->final_pos, m->next_pos, memory_order_relaxed);
        atomic_store_explicit(&pp->final, 1, memory_order_release);
        en = catalog_entry_finalized(pp->view, c.seq, c.at_ms);
        pthread_mutex_lock(&e->cat_mu);
        catalog_merge_locked(e, en, c.seq);
        pthread_mutex_unlock(&e->cat_mu);
        changed = 1;
    }
    if (changed)
        pp->touched = 1;
out:
    atomic_store_explicit(&pt->applied_seq, c.seq, memory_order_release);
    catalog_entry_unref(en);
    return changed;
}

/* Pass 3 of a record: count it, in log order. */
static inline void apply_one(engine_t *e, int p, const vlog_msg_t *m, const prep_t *q,
                             run_counts_t *rc) {
    partition_t *pt = &e->parts[p];
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
    switch (q->what) {
    case PREP_SKIP: rc->skipped++; return;
    case PREP_CUTOFF: rc->after_cutoff++; return;
    case PREP_CONTROL: apply_control(e, p, m, rc); return;
    case PREP_LATE:
    case PREP_EARLY: {
        ppoll_t *pp = ppoll_get(pt, q->pi);
        count_add(q->what == PREP_LATE ? &pp->late : &pp->early, 1);
        if (q->what == PREP_LATE)
            rc->late++;
        else
            rc->early++;
        pp->touched = 1;
        return;
    }
    default: break;
    }
    rc->applied++;
    int oi = q->oi;
    ppoll_t *pp = ppoll_get(pt, q->pi);
    /* Before any mode (capped included): a retry changes nothing. Only votes
     * that would count hold their key: a late or early vote's retry is
     * late or early again by its own stamp. */
    if (q->keyed && idem_check(&pt->idem, q->ikey, q->ts, idem_window_ms(pp))) {
        rc->retried++;
        return;
    }
    counts_t *cnt = atomic_load_explicit(&pp->counts, memory_order_relaxed);
    poll_mode_t mode = pp->eff->mode;
    if (mode == MODE_UNLIMITED) {
        count_change(pp, cnt, q->ts, oi, 1);
        pp->touched = 1;
        return;
    }
    voter_slot_t *slot;
    /* Capped mode keeps the voter's number of counted votes in the slot's
     * option bits; the other modes the option the counted vote went to. */
    int prev = voters_get_or_insert(&pp->voters, q->key, mode == MODE_CAPPED ? 1 : oi, &slot);
    if (prev < 0) {
        count_change(pp, cnt, q->ts, oi, 1);
        pp->touched = 1;
    } else if (mode == MODE_CHANGEABLE && prev != oi) {
        count_change(pp, cnt, q->ts, prev, -1);
        count_change(pp, cnt, q->ts, oi, 1);
        voters_set_option(slot, oi);
        pp->touched = 1;
    } else if (mode == MODE_CAPPED && (uint32_t)prev < pp->eff->max_votes) {
        count_change(pp, cnt, q->ts, oi, 1);
        voters_set_option(slot, prev + 1);
        pp->touched = 1;
    }
}

/* Pass 2 of a chunk: ask for the cache line of every vote's voter slot. */
static void prefetch_chunk(partition_t *pt, const prep_t *prep, int m) {
    for (int i = 0; i < m; i++) {
        if (prep[i].what == PREP_VOTE && prep[i].voter)
            voters_prefetch(&ppoll_get(pt, prep[i].pi)->voters, prep[i].key);
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
 * log's: the first two passes only read, and a chunk ends at a control
 * record. The slot is looked up afresh in pass 3 (the table may grow in
 * between; a stale prefetch is only wasted). Returns how many records were
 * counted; *pi_out (may be NULL) gets the poll index of the last record, -1
 * if it was not counted. */
static int apply_run(engine_t *e, int partition, const vlog_msg_t *msgs, int n, int *pi_out,
                     int *other_out) {
    partition_t *pt = &e->parts[partition];
    prep_t prep[CHUNK];
    poll_cache_t cache = {-1, NULL, 0, 0};
    run_counts_t rc = {0, 0, 0, 0, 0, 0};
    int last_pi = -1, changed = 0;
    for (int b = 0; b < n;) {
        int m = n - b < CHUNK ? n - b : CHUNK;
        for (int i = 0; i < m; i++) {
            prepare(e, partition, &cache, &msgs[b + i], &prep[i]);
            if (prep[i].what == PREP_CONTROL) {
                m = i + 1;
                cache.pi = -1;
            }
        }
        if (m > 1)
            prefetch_chunk(pt, prep, m);
        for (int i = 0; i < m; i++) {
            uint64_t before = rc.applied;
            apply_one(e, partition, &msgs[b + i], &prep[i], &rc);
            last_pi = rc.applied != before ? prep[i].pi : -1;
            if (prep[i].what == PREP_CONTROL)
                changed = 1;
        }
        b += m;
    }
    if (rc.applied)
        count_add((_Atomic uint64_t *)&pt->applied, (int64_t)rc.applied);
    if (rc.skipped)
        count_add((_Atomic uint64_t *)&pt->skipped, (int64_t)rc.skipped);
    if (rc.after_cutoff)
        count_add((_Atomic uint64_t *)&pt->after_cutoff, (int64_t)rc.after_cutoff);
    if (rc.late)
        count_add(&pt->late, (int64_t)rc.late);
    if (rc.early)
        count_add(&pt->early, (int64_t)rc.early);
    if (rc.retried)
        count_add(&pt->retried, (int64_t)rc.retried);
    if (pi_out)
        *pi_out = last_pi;
    /* A control record or a late vote changes what is published too. */
    if (other_out)
        *other_out = changed || rc.late || rc.early;
    return (int)rc.applied;
}

int engine_apply_batch(engine_t *e, int partition, const vlog_msg_t *msgs, int n) {
    return apply_run(e, partition, msgs, n, NULL, NULL);
}

int engine_apply(engine_t *e, int partition, const uint8_t *rec, size_t len, uint64_t next_pos,
                 int64_t ts_ms) {
    vlog_msg_t m = {partition, next_pos, ts_ms, rec, len};
    int pi;
    apply_run(e, partition, &m, 1, &pi, NULL);
    return pi;
}

/* ---- reading ---- */

int engine_npolls(const engine_t *e) {
    return atomic_load_explicit(&((engine_t *)e)->npolls, memory_order_acquire);
}

const catalog_entry_t *engine_poll_entry(const engine_t *e, int i) {
    const catalog_t *cat = catalog_live_get(e->catalog);
    return catalog_find(cat, e->gids[i], strlen(e->gids[i]));
}

const poll_def_t *engine_poll(const engine_t *e, int i) {
    const catalog_entry_t *en = engine_poll_entry(e, i);
    return en ? en->def : NULL;
}

int engine_poll_index(const engine_t *e, const char *id, size_t len) {
    engine_t *m = (engine_t *)e;
    pthread_mutex_lock(&m->cat_mu);
    int gi = idmap_find(&m->poll_map, id, len);
    pthread_mutex_unlock(&m->cat_mu);
    return gi;
}

const catalog_t *engine_catalog(const engine_t *e) {
    return catalog_live_get(e->catalog);
}

uint64_t engine_poll_generation(const engine_t *e, int i) {
    return atomic_load_explicit(&e->gens[i], memory_order_acquire);
}

void engine_poll_totals(const engine_t *e, int i, uint64_t *counts) {
    const poll_def_t *d = engine_poll(e, i);
    engine_poll_read(e, i, counts, d ? d->noptions : 0, NULL);
}

void engine_poll_totals_n(const engine_t *e, int i, uint64_t *counts, int n) {
    engine_poll_read(e, i, counts, n, NULL);
}

void engine_poll_read(const engine_t *e, int i, uint64_t *counts, int n, series_view_t *series) {
    uint64_t stack[64], *tmp = n <= 64 ? stack : xmalloc(sizeof *tmp * (size_t)n);
    memset(counts, 0, sizeof *counts * (size_t)n);
    for (int p = 0; p < e->npartitions; p++) {
        partition_t *pt = &e->parts[p];
        for (;;) {
            uint64_t s1 = atomic_load_explicit(&pt->seq, memory_order_acquire);
            if (s1 & 1) {
                sched_yield(); /* a batch is being applied: short */
                continue;
            }
            ppoll_t *pp = ppoll_get(pt, i);
            counts_t *src = pp ? atomic_load_explicit(&pp->counts, memory_order_acquire) : NULL;
            int m = src ? ((int)src->n < n ? (int)src->n : n) : 0;
            size_t rows = series ? series->n : 0;
            /* Acquire loads keep the re-check of seq after them. */
            for (int k = 0; k < m; k++)
                tmp[k] = atomic_load_explicit(&src->c[k], memory_order_acquire);
            for (int k = m; k < n; k++)
                tmp[k] = 0;
            if (series && src)
                series_read_into(&pp->series, series);
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

engine_poll_status_t engine_poll_status(const engine_t *e, int i, uint64_t *final_positions) {
    engine_poll_status_t s = {0, 0, 1};
    for (int p = 0; p < e->npartitions; p++) {
        ppoll_t *pp = ppoll_get(&e->parts[p], i);
        int fin = pp && atomic_load_explicit(&pp->final, memory_order_acquire);
        if (pp) {
            s.late += atomic_load_explicit(&pp->late, memory_order_relaxed);
            s.early += atomic_load_explicit(&pp->early, memory_order_relaxed);
        }
        if (final_positions)
            final_positions[p] =
                fin ? atomic_load_explicit(&pp->final_pos, memory_order_relaxed) : 0;
        if (!fin)
            s.final = 0;
    }
    return s;
}

uint64_t engine_partition_seq(const engine_t *e, int partition) {
    return atomic_load_explicit(&e->parts[partition].applied_seq, memory_order_acquire);
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
        s.late += atomic_load_explicit(&pt->late, memory_order_relaxed);
        s.early += atomic_load_explicit(&pt->early, memory_order_relaxed);
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
        int other = 0;
        if (apply_run(e, p, &ctx->grouped[begin], end - begin, NULL, &other) > 0 || other)
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
    char name[16];
    snprintf(name, sizeof name, "engine%d", (int)(w - e->workers));
    thread_name(name);
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

void engine_stop(engine_t *e) {
    atomic_store_explicit(&e->stopping, 1, memory_order_release);
}

int engine_failed(const engine_t *e) {
    return atomic_load(&e->failed);
}

/* ---- for snapshot.c ---- */

ppoll_t *engine_ppoll_add_int(engine_t *e, int p, int gi) {
    return ppoll_add(e, p, gi);
}
ppoll_t *engine_ppoll_get_int(const partition_t *pt, int gi) {
    return ppoll_get(pt, gi);
}

/* Sets a loaded view (taken); engine_partition_merge_int publishes it. */
void engine_ppoll_set_view_int(engine_t *e, int p, ppoll_t *pp, catalog_entry_t *view) {
    catalog_entry_t *old = pp->view;
    pp->view = view;
    ppoll_set_eff(&e->parts[p], pp);
    catalog_entry_unref(old);
}

/* Merges partition p's views into the engine's catalog (a snapshot that
 * loaded whole: a refused one leaves the catalog as it was). */
void engine_partition_merge_int(engine_t *e, int p) {
    partition_t *pt = &e->parts[p];
    uint64_t seq = atomic_load(&pt->applied_seq);
    for (int k = 0; k < pt->nknown; k++) {
        ppoll_t *pp = ppoll_get(pt, pt->known[k]);
        if (!pp->view)
            continue;
        catalog_entry_t *en = pp->view;
        if (pp->final)
            en = catalog_entry_finalized(pp->view, pp->final_seq, pp->final_at);
        else
            catalog_entry_ref(en);
        pthread_mutex_lock(&e->cat_mu);
        catalog_merge_locked(e, en, seq);
        pthread_mutex_unlock(&e->cat_mu);
        catalog_entry_unref(en);
    }
    if (seq) {
        pthread_mutex_lock(&e->cat_mu);
        const catalog_t *cur = catalog_live_get(e->catalog);
        if (seq > catalog_seq(cur))
            catalog_live_swap(e->catalog, catalog_with_seq(cur, seq));
        pthread_mutex_unlock(&e->cat_mu);
    }
}

int engine_global_index_int(engine_t *e, const char *id, size_t len) {
    pthread_mutex_lock(&e->cat_mu);
    int gi = global_index_locked(e, id, len);
    pthread_mutex_unlock(&e->cat_mu);
    return gi;
}

int engine_npartitions(const engine_t *e) {
    return e->npartitions;
}
