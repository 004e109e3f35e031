#include "engine/engine.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "common/util.h"
#include "engine/engine_int.h"
#include "log/record.h"

#define BATCH_MAX 4096
#define POLL_WAIT_MS 100

/* ---- id maps ---- */

static void idmap_build(idmap_t *m, int n, const char *(*id_at)(const void *, int),
                        const void *ctx) {
    size_t cap = 8;
    while (cap < (size_t)n * 2)
        cap *= 2;
    m->slots = xcalloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    for (int i = 0; i < n; i++) {
        const char *id = id_at(ctx, i);
        size_t j = (size_t)XXH3_64bits(id, strlen(id)) & m->mask;
        while (m->slots[j])
            j = (j + 1) & m->mask;
        m->slots[j] = i + 1;
    }
}

static int idmap_find(const idmap_t *m, const char *id, size_t len,
                      const char *(*id_at)(const void *, int), const void *ctx) {
    size_t j = (size_t)XXH3_64bits(id, len) & m->mask;
    while (m->slots[j]) {
        const char *cand = id_at(ctx, m->slots[j] - 1);
        if (strlen(cand) == len && memcmp(cand, id, len) == 0)
            return m->slots[j] - 1;
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
    e->parts = xcalloc((size_t)npartitions, sizeof *e->parts);
    for (int p = 0; p < npartitions; p++) {
        partition_t *pt = &e->parts[p];
        pt->polls = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *pt->polls);
        pt->touched = xcalloc((size_t)(c->npolls ? c->npolls : 1), 1);
        for (int i = 0; i < c->npolls; i++) {
            pt->polls[i].counts = xcalloc((size_t)c->polls[i].noptions, sizeof(uint64_t));
            voters_init(&pt->polls[i].voters);
        }
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
        }
        free(e->parts[p].polls);
        free(e->parts[p].touched);
    }
    for (int i = 0; i < e->npolls; i++)
        free(e->opt_maps[i].slots);
    free(e->opt_maps);
    free(e->poll_map.slots);
    free(e->gens);
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
    uint64_t voters = 0, bytes = 0;
    for (int i = 0; i < e->npolls; i++) {
        voters += pt->polls[i].voters.count;
        bytes += voters_bytes(&pt->polls[i].voters);
    }
    atomic_store_explicit(&pt->voters_pub, voters, memory_order_relaxed);
    atomic_store_explicit(&pt->bytes_pub, bytes, memory_order_relaxed);
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

int engine_apply(engine_t *e, int partition, const uint8_t *rec, size_t len, uint64_t next_pos,
                 int64_t ts_ms) {
    partition_t *pt = &e->parts[partition];
    pt->position = next_pos;
    vote_record_t v;
    int pi, oi;
    if (record_decode(rec, len, &v) != 0 ||
        (pi = idmap_find(&e->poll_map, v.poll, v.poll_len, poll_id_at, e->conf)) < 0 ||
        (oi = idmap_find(&e->opt_maps[pi], v.option, v.option_len, opt_id_at,
                         &e->conf->polls[pi])) < 0) {
        count_add((_Atomic uint64_t *)&pt->skipped, 1);
        note_skipped(partition, next_pos, rec, len);
        return -1;
    }
    uint64_t ts = ts_ms >= 0 ? (uint64_t)ts_ms : v.ts_ms;
    if (e->until_ms && ts > e->until_ms) {
        count_add((_Atomic uint64_t *)&pt->after_cutoff, 1);
        return -1;
    }
    const poll_conf_t *pc = &e->conf->polls[pi];
    ppoll_t *pp = &pt->polls[pi];
    if (pc->mode != MODE_UNLIMITED && v.voter_len == 0) {
        /* A voter-less vote in a voter mode never passes ingest; a log
         * written under another config may hold one. */
        count_add((_Atomic uint64_t *)&pt->skipped, 1);
        return -1;
    }
    count_add((_Atomic uint64_t *)&pt->applied, 1);
    if (pc->mode == MODE_UNLIMITED) {
        count_add(&pp->counts[oi], 1);
        pt->touched[pi] = 1;
        return pi;
    }
    voter_key_t k = record_voter_key(v.poll, v.poll_len, v.voter, v.voter_len);
    voter_slot_t *slot;
    int prev = voters_get_or_insert(&pp->voters, k, oi, &slot);
    if (prev < 0) {
        count_add(&pp->counts[oi], 1);
        pt->touched[pi] = 1;
    } else if (pc->mode == MODE_CHANGEABLE && prev != oi) {
        count_add(&pp->counts[prev], -1);
        count_add(&pp->counts[oi], 1);
        voters_set_option(slot, oi);
        pt->touched[pi] = 1;
    }
    return pi;
}

/* ---- reading ---- */

int engine_npolls(const engine_t *e) { return e->npolls; }
const poll_conf_t *engine_poll(const engine_t *e, int i) { return &e->conf->polls[i]; }
int engine_poll_index(const engine_t *e, const char *id, size_t len) {
    return idmap_find(&e->poll_map, id, len, poll_id_at, e->conf);
}

uint64_t engine_poll_generation(const engine_t *e, int i) {
    return atomic_load_explicit(&e->gens[i], memory_order_acquire);
}

void engine_poll_totals(const engine_t *e, int i, uint64_t *counts) {
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
            for (int k = 0; k < n; k++)
                tmp[k] = atomic_load_explicit(&src[k], memory_order_acquire);
            if (atomic_load_explicit(&pt->seq, memory_order_relaxed) == s1)
                break;
        }
        for (int k = 0; k < n; k++)
            counts[k] += tmp[k];
    }
    if (tmp != stack)
        free(tmp);
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

typedef struct {
    engine_t *e;
    uint8_t *open; /* [npartitions]: batch begun in this poll */
    int changed;
} apply_ctx_t;

static int on_msg(void *arg, const vlog_msg_t *m) {
    apply_ctx_t *ctx = arg;
    engine_t *e = ctx->e;
    if (e->run.stop_at && m->next_pos > e->run.stop_at[m->partition]) {
        /* Past replay's end. Readers deliver in log order, so nothing of
         * this partition lies before stop_at any more: it is reached. */
        partition_t *pt = &e->parts[m->partition];
        if (pt->position < e->run.stop_at[m->partition]) {
            if (!ctx->open[m->partition]) {
                engine_batch_begin(e, m->partition);
                ctx->open[m->partition] = 1;
            }
            pt->position = e->run.stop_at[m->partition];
        }
        return m->rec ? 1 : 0; /* leave the record for later */
    }
    if (!ctx->open[m->partition]) {
        /* Begin lazily: a reader that waits for data must not hold the
         * partition's sequence odd meanwhile. */
        engine_batch_begin(e, m->partition);
        ctx->open[m->partition] = 1;
    }
    if (!m->rec) {
        /* Progress without a record: nothing of this partition before
         * next_pos (the file log's partitions share one file). */
        if (m->next_pos > e->parts[m->partition].position)
            e->parts[m->partition].position = m->next_pos;
        return 0;
    }
    if (engine_apply(e, m->partition, m->rec, m->len, m->next_pos, m->ts_ms) >= 0)
        ctx->changed = 1;
    return 0;
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
        if (engine_snapshot_save(e, p, e->run.snapshot_dir, err, sizeof err) != 0)
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
    uint8_t *open = xcalloc((size_t)e->npartitions, 1);
    while (!atomic_load_explicit(&e->stopping, memory_order_acquire) && !reached_stop(e, w)) {
        apply_ctx_t ctx = {e, open, 0};
        int n = vlog_reader_poll(r, on_msg, &ctx, BATCH_MAX, POLL_WAIT_MS, err, sizeof err);
        for (int i = 0; i < w->nparts; i++) {
            if (open[w->parts[i]]) {
                engine_batch_end(e, w->parts[i]);
                open[w->parts[i]] = 0;
            }
        }
        if (n < 0) {
            set_failed(e, err);
            break;
        }
        if (ctx.changed && e->run.on_change)
            e->run.on_change(e->run.on_change_arg);
        if (e->run.snapshot_dir && mono_ms() - last_snap >= (uint64_t)e->run.snapshot_interval_ms) {
            snapshot_changed(w);
            last_snap = mono_ms();
        }
    }
    free(open);
    vlog_reader_free(r);
    if (!atomic_load(&e->failed))
        snapshot_changed(w);
    return NULL;
}

int engine_start(engine_t *e, const engine_run_opts_t *o, char *errstr, size_t esz) {
    e->run = *o;
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
            e->nworkers = 0;
            return -1;
        }
    }
    return 0;
}

int engine_join(engine_t *e, char *errstr, size_t esz) {
    for (int i = 0; i < e->nworkers; i++) {
        pthread_join(e->workers[i].thread, NULL);
        free(e->workers[i].parts);
    }
    e->nworkers = 0;
    if (atomic_load(&e->failed)) {
        pthread_mutex_lock(&e->err_mu);
        snprintf(errstr, esz, "%s", e->err);
        pthread_mutex_unlock(&e->err_mu);
        return -1;
    }
    return 0;
}

void engine_stop(engine_t *e) { atomic_store_explicit(&e->stopping, 1, memory_order_release); }

int engine_failed(const engine_t *e) { return atomic_load(&e->failed); }
