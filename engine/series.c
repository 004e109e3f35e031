#include "engine/series.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/endian.h"
#include "common/util.h"

void series_init(series_t *s, int noptions) {
    atomic_init(&s->ring, NULL);
    atomic_init(&s->newest, 0);
    atomic_init(&s->oldest, 0);
    s->noptions = noptions;
    s->retired = NULL;
    s->nretired = 0;
}

void series_free(series_t *s) {
    free(atomic_load_explicit(&s->ring, memory_order_relaxed));
    for (int i = 0; i < s->nretired; i++)
        free(s->retired[i]);
    free(s->retired);
    series_init(s, s->noptions);
}

static series_ring_t *ring_new(uint32_t stride) {
    series_ring_t *r =
        xcalloc(1, sizeof *r + (size_t)SERIES_MINUTES * (stride ? stride : 1) * sizeof(uint64_t));
    r->stride = stride;
    return r;
}

static inline _Atomic uint64_t *cell(series_ring_t *r, uint64_t minute, int o) {
    return &r->c[(size_t)(minute % SERIES_MINUTES) * r->stride + (size_t)o];
}

/* Single writer: plain load and release store, as the engine's counts. */
static inline void cell_add(_Atomic uint64_t *c, int64_t d) {
    uint64_t v = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, v + (uint64_t)d, memory_order_release);
}

static inline uint64_t ring_low(uint64_t newest) {
    return newest >= SERIES_MINUTES - 1 ? newest - (SERIES_MINUTES - 1) : 0;
}

void series_grow(series_t *s, int n) {
    if (n <= s->noptions)
        return;
    s->noptions = n;
    series_ring_t *old = atomic_load_explicit(&s->ring, memory_order_relaxed);
    if (!old || old->stride >= (uint32_t)n)
        return; /* the new options' cells are zero already */
    uint32_t stride = old->stride + old->stride / 2;
    if (stride < (uint32_t)n)
        stride = (uint32_t)n;
    series_ring_t *r = ring_new(stride);
    uint64_t newest = atomic_load_explicit(&s->newest, memory_order_relaxed);
    uint64_t oldest = atomic_load_explicit(&s->oldest, memory_order_relaxed);
    /* Only the minutes held have non-zero cells. */
    for (uint64_t x = oldest; x <= newest; x++)
        for (uint32_t o = 0; o < old->stride; o++)
            atomic_init(cell(r, x, (int)o),
                        atomic_load_explicit(cell(old, x, (int)o), memory_order_relaxed));
    /* A reader that loads the new pointer sees its cells. */
    atomic_store_explicit(&s->ring, r, memory_order_release);
    s->retired = xrealloc(s->retired, sizeof *s->retired * (size_t)(s->nretired + 1));
    s->retired[s->nretired++] = old;
}

/* Moves the ring's newest minute on to m: the minutes that drop out are
 * added into the new oldest one. Slots outside [oldest, newest] are zero,
 * and the slots of the minutes (newest, m] are exactly those of the minutes
 * that drop out, so they end up zero too. */
static void advance(series_t *s, series_ring_t *r, uint64_t m) {
    int nopt = s->noptions;
    uint64_t newest = atomic_load_explicit(&s->newest, memory_order_relaxed);
    uint64_t oldest = atomic_load_explicit(&s->oldest, memory_order_relaxed);
    uint64_t new_low = ring_low(m);
    if (new_low > oldest) {
        int64_t *acc = xcalloc((size_t)(nopt ? nopt : 1), sizeof *acc);
        int any = 0;
        uint64_t end = new_low - 1 < newest ? new_low - 1 : newest;
        for (uint64_t x = oldest; x <= end; x++)
            for (int o = 0; o < nopt; o++) {
                _Atomic uint64_t *c = cell(r, x, o);
                int64_t v = (int64_t)atomic_load_explicit(c, memory_order_relaxed);
                if (v) {
                    acc[o] += v;
                    any = 1;
                    atomic_store_explicit(c, 0, memory_order_release);
                }
            }
        for (int o = 0; any && o < nopt; o++)
            if (acc[o])
                cell_add(cell(r, new_low, o), acc[o]);
        free(acc);
        atomic_store_explicit(&s->oldest, new_low, memory_order_release);
    }
    atomic_store_explicit(&s->newest, m, memory_order_release);
}

void series_add(series_t *s, uint64_t ts_ms, int option, int64_t delta) {
    tally_assert(option >= 0 && option < s->noptions);
    uint64_t m = ts_ms / SERIES_BUCKET_MS;
    series_ring_t *r = atomic_load_explicit(&s->ring, memory_order_relaxed);
    if (!r) {
        r = ring_new((uint32_t)s->noptions);
        atomic_store_explicit(&s->newest, m, memory_order_relaxed);
        atomic_store_explicit(&s->oldest, m, memory_order_relaxed);
        /* Readers that see the pointer see the zeroed ring and the bounds. */
        atomic_store_explicit(&s->ring, r, memory_order_release);
    }
    uint64_t newest = atomic_load_explicit(&s->newest, memory_order_relaxed);
    if (m > newest)
        advance(s, r, m);
    uint64_t low = ring_low(atomic_load_explicit(&s->newest, memory_order_relaxed));
    if (m < low)
        m = low; /* older than the ring: into its oldest minute */
    if (m < atomic_load_explicit(&s->oldest, memory_order_relaxed))
        atomic_store_explicit(&s->oldest, m, memory_order_release);
    cell_add(cell(r, m, option), delta);
}

static size_t ring_bytes(const series_ring_t *r) {
    return r ? sizeof *r + (size_t)SERIES_MINUTES * r->stride * sizeof(uint64_t) : 0;
}

size_t series_bytes(const series_t *s) {
    size_t n = ring_bytes(atomic_load_explicit(&((series_t *)s)->ring, memory_order_relaxed));
    for (int i = 0; i < s->nretired; i++)
        n += ring_bytes(s->retired[i]);
    return n;
}

/* ---- reading ---- */

void series_view_init(series_view_t *v, int noptions) {
    memset(v, 0, sizeof *v);
    v->noptions = noptions;
}

void series_view_free(series_view_t *v) {
    free(v->t_ms);
    free(v->counts);
    series_view_init(v, v->noptions);
}

static int64_t *view_row(series_view_t *v, uint64_t t_ms) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->t_ms = xrealloc(v->t_ms, v->cap * sizeof *v->t_ms);
        v->counts = xrealloc(v->counts, v->cap * (size_t)v->noptions * sizeof *v->counts);
    }
    v->t_ms[v->n] = t_ms;
    return &v->counts[v->n++ * (size_t)v->noptions];
}

void series_read_into(const series_t *s, series_view_t *v) {
    /* The ring, not s->noptions (the writer's), says how many options a
     * row holds: a ring replaced meanwhile stays allocated. */
    series_ring_t *r = atomic_load_explicit(&((series_t *)s)->ring, memory_order_acquire);
    if (!r)
        return;
    int have = (int)r->stride < v->noptions ? (int)r->stride : v->noptions;
    uint64_t newest = atomic_load_explicit(&s->newest, memory_order_acquire);
    uint64_t oldest = atomic_load_explicit(&s->oldest, memory_order_acquire);
    /* A torn pair (a batch in progress) is caught by the caller's seq
     * check; the bounds only keep the copy inside the ring. */
    if (oldest > newest || newest - oldest >= SERIES_MINUTES)
        oldest = newest;
    for (uint64_t x = oldest; x <= newest; x++) {
        int64_t *row = view_row(v, x * SERIES_BUCKET_MS);
        for (int o = 0; o < have; o++)
            row[o] = (int64_t)atomic_load_explicit(cell(r, x, o), memory_order_acquire);
        for (int o = have; o < v->noptions; o++)
            row[o] = 0;
    }
}

static int cmp_rows(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void series_view_finish(series_view_t *v) {
    if (v->n == 0)
        return;
    int nopt = v->noptions;
    /* Sort (minute, row index) pairs, then gather. */
    uint64_t *keys = xmalloc(v->n * 2 * sizeof *keys);
    for (size_t i = 0; i < v->n; i++) {
        keys[2 * i] = v->t_ms[i];
        keys[2 * i + 1] = i;
    }
    qsort(keys, v->n, 2 * sizeof *keys, cmp_rows);
    uint64_t *t = xmalloc(v->n * sizeof *t);
    int64_t *c = xcalloc(v->n * (size_t)nopt, sizeof *c);
    size_t n = 0;
    for (size_t i = 0; i < v->n; i++) {
        uint64_t ti = keys[2 * i];
        const int64_t *src = &v->counts[keys[2 * i + 1] * (size_t)nopt];
        if (n == 0 || t[n - 1] != ti) {
            /* The previous minute is complete: keep it only if it changed. */
            if (n > 0) {
                int any = 0;
                for (int o = 0; o < nopt; o++)
                    any |= c[(n - 1) * (size_t)nopt + (size_t)o] != 0;
                if (!any)
                    n--;
            }
            t[n] = ti;
            memset(&c[n * (size_t)nopt], 0, sizeof *c * (size_t)nopt);
            n++;
        }
        for (int o = 0; o < nopt; o++)
            c[(n - 1) * (size_t)nopt + (size_t)o] += src[o];
    }
    if (n > 0) {
        int any = 0;
        for (int o = 0; o < nopt; o++)
            any |= c[(n - 1) * (size_t)nopt + (size_t)o] != 0;
        if (!any)
            n--;
    }
    free(keys);
    free(v->t_ms);
    free(v->counts);
    v->t_ms = t;
    v->counts = c;
    v->n = n;
    v->cap = v->n ? v->n : 0;
    if (!v->n) {
        free(v->t_ms);
        free(v->counts);
        v->t_ms = NULL;
        v->counts = NULL;
    }
}

/* ---- snapshots ---- */

static int row_changed(series_ring_t *r, int nopt, uint64_t x) {
    for (int o = 0; o < nopt; o++)
        if (atomic_load_explicit(cell(r, x, o), memory_order_relaxed))
            return 1;
    return 0;
}

size_t series_snapshot_size(const series_t *s) {
    series_ring_t *r = atomic_load_explicit(&((series_t *)s)->ring, memory_order_relaxed);
    uint64_t newest = atomic_load_explicit(&s->newest, memory_order_relaxed);
    uint64_t oldest = atomic_load_explicit(&s->oldest, memory_order_relaxed);
    size_t n = 0;
    for (uint64_t x = oldest; r && x <= newest; x++)
        n += (size_t)row_changed(r, s->noptions, x);
    return 24 + n * (8 + 8 * (size_t)s->noptions);
}

void series_snapshot_write(const series_t *s, series_emit_fn emit, void *arg) {
    series_ring_t *r = atomic_load_explicit(&((series_t *)s)->ring, memory_order_relaxed);
    uint64_t newest = atomic_load_explicit(&s->newest, memory_order_relaxed);
    uint64_t oldest = atomic_load_explicit(&s->oldest, memory_order_relaxed);
    int nopt = s->noptions;
    uint64_t n = 0;
    for (uint64_t x = oldest; r && x <= newest; x++)
        n += (uint64_t)row_changed(r, nopt, x);
    uint8_t hdr[24];
    le_put64(hdr, r ? newest + 1 : 0);
    le_put64(hdr + 8, r ? oldest : 0);
    le_put64(hdr + 16, n);
    emit(arg, hdr, 24);
    uint8_t row[8 + 8 * 256];
    for (uint64_t x = oldest; r && x <= newest; x++) {
        if (!row_changed(r, nopt, x))
            continue;
        le_put64(row, x);
        emit(arg, row, 8);
        for (int o = 0; o < nopt; o += 256) {
            int k = nopt - o < 256 ? nopt - o : 256;
            for (int j = 0; j < k; j++)
                le_put64(row + 8 * (size_t)j,
                         atomic_load_explicit(cell(r, x, o + j), memory_order_relaxed));
            emit(arg, row, 8 * (size_t)k);
        }
    }
}

int series_snapshot_read(series_t *s, int width, const uint8_t *p, size_t len, char *errstr,
                         size_t esz) {
    series_free(s);
    int nopt = s->noptions;
    size_t rowlen = 8 + 8 * (size_t)(width > 0 ? width : 0);
    if (width < 0 || width > nopt) {
        snprintf(errstr, esz, "series: %d options, the poll has %d", width, nopt);
        return -1;
    }
    if (len < 24) {
        snprintf(errstr, esz, "series: truncated");
        return -1;
    }
    uint64_t has = le_get64(p), oldest = le_get64(p + 8), n = le_get64(p + 16);
    uint64_t newest = has - 1;
    if (n > SERIES_MINUTES || len - 24 != n * rowlen || (!has && (n || oldest)) ||
        (has && (oldest > newest || oldest < ring_low(newest)))) {
        snprintf(errstr, esz, "series: malformed (%llu rows in %zu bytes)", (unsigned long long)n,
                 len - 24);
        return -1;
    }
    if (!has)
        return 0;
    series_ring_t *r = ring_new((uint32_t)nopt);
    p += 24;
    uint64_t prev = 0;
    for (uint64_t k = 0; k < n; k++, p += rowlen) {
        uint64_t x = le_get64(p);
        if (x > newest || x < oldest || (k > 0 && x <= prev)) {
            snprintf(errstr, esz, "series: row %llu is out of order or outside the ring",
                     (unsigned long long)k);
            free(r);
            return -1;
        }
        prev = x;
        for (int o = 0; o < width; o++)
            atomic_init(cell(r, x, o), le_get64(p + 8 + 8 * (size_t)o));
    }
    atomic_init(&s->newest, newest);
    atomic_init(&s->oldest, oldest);
    atomic_init(&s->ring, r);
    return 0;
}
