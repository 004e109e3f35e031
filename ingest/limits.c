#include "ingest/limits.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/util.h"
#include "log/record.h"

#define NBUCKETS 65536
#define NSTRIPES 64
#define MAX_ENTRIES (1 << 20) /* past this, new clients go untracked (fail open) */

/* ---- addresses ---- */

int limits_addr_parse(const char *s, size_t n, uint8_t out[16]) {
    char tmp[INET6_ADDRSTRLEN + 1];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    struct in_addr a4;
    if (inet_pton(AF_INET, tmp, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        return 0;
    }
    return inet_pton(AF_INET6, tmp, out) == 1 ? 0 : -1;
}

int limits_addr_from_sockaddr(const struct sockaddr *sa, uint8_t out[16]) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &s4->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

static int is_v4mapped(const uint8_t a[16]) {
    static const uint8_t pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return !memcmp(a, pfx, 12);
}

void limits_addr_str(const uint8_t a[16], char *buf, size_t cap) {
    if (is_v4mapped(a))
        inet_ntop(AF_INET, a + 12, buf, (socklen_t)cap);
    else
        inet_ntop(AF_INET6, a, buf, (socklen_t)cap);
}

int limits_cidrs_parse(const char *list, limits_cidr_t **out, int *n, char *errstr, size_t esz) {
    *out = NULL;
    *n = 0;
    const char *s = list;
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        if (!*s)
            break;
        const char *e = s;
        while (*e && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        const char *slash = memchr(s, '/', (size_t)(e - s));
        limits_cidr_t c;
        size_t alen = slash ? (size_t)(slash - s) : (size_t)(e - s);
        int ok = limits_addr_parse(s, alen, c.addr) == 0;
        int maxbits = is_v4mapped(c.addr) && memchr(s, ':', alen) == NULL ? 32 : 128;
        int bits = maxbits;
        if (ok && slash) {
            char *end;
            long b = strtol(slash + 1, &end, 10);
            ok = end == e && slash + 1 < e && b >= 0 && b <= maxbits;
            bits = (int)b;
        }
        if (!ok) {
            snprintf(errstr, esz, "server.trusted_proxies: '%.*s' is not an address or CIDR",
                     (int)(e - s > 64 ? 64 : e - s), s);
            free(*out);
            *out = NULL;
            *n = 0;
            return -1;
        }
        c.bits = maxbits == 32 ? 96 + bits : bits;
        *out = xrealloc(*out, sizeof **out * (size_t)(*n + 1));
        (*out)[(*n)++] = c;
        s = e;
    }
    return 0;
}

int limits_cidrs_match(const limits_cidr_t *v, int n, const uint8_t a[16]) {
    for (int i = 0; i < n; i++) {
        int full = v[i].bits / 8, rest = v[i].bits % 8;
        if (memcmp(v[i].addr, a, (size_t)full) != 0)
            continue;
        if (rest) {
            uint8_t mask = (uint8_t)(0xff << (8 - rest));
            if ((v[i].addr[full] & mask) != (a[full] & mask))
                continue;
        }
        return 1;
    }
    return 0;
}

void limits_client_addr(const limits_cidr_t *trusted, int ntrusted, const uint8_t peer[16],
                        const char *xff, size_t len, uint8_t out[16]) {
    memcpy(out, peer, 16);
    if (!xff || !limits_cidrs_match(trusted, ntrusted, peer))
        return;
    size_t end = len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && (xff[a] == ' ' || xff[a] == '\t'))
            a++;
        while (b > a && (xff[b - 1] == ' ' || xff[b - 1] == '\t'))
            b--;
        uint8_t hop[16];
        if (limits_addr_parse(xff + a, b - a, hop) != 0)
            return; /* garbage: trust nothing further left */
        memcpy(out, hop, 16);
        if (!limits_cidrs_match(trusted, ntrusted, hop))
            return;
        end = start > 0 ? start - 1 : 0;
    }
}

/* ---- the client table ---- */

/* ---- token buckets ---- */

void limits_bucket_init(limits_bucket_t *b, int burst) {
    b->tokens_milli = (int64_t)burst * 1000;
    b->refilled_ms = 0;
}

/* Refills b up to now: rate requests per second = rate milli-tokens per ms.
 * A bucket never taken from (refilled_ms 0) starts full at its first take. */
static int64_t bucket_level(const limits_bucket_t *b, int rate, int burst, uint64_t now) {
    int64_t cap = (int64_t)burst * 1000, t = b->tokens_milli;
    if (b->refilled_ms && now > b->refilled_ms) {
        int64_t add = (int64_t)(now - b->refilled_ms) * rate;
        t = t + add > cap ? cap : t + add;
    }
    return t;
}

int limits_bucket_take(limits_bucket_t *b, int rate, int burst, uint64_t now, int *retry_after_s) {
    b->tokens_milli = bucket_level(b, rate, burst, now);
    b->refilled_ms = now;
    if (b->tokens_milli >= 1000) {
        b->tokens_milli -= 1000;
        return 1;
    }
    int64_t need_ms = (1000 - b->tokens_milli + rate - 1) / rate;
    *retry_after_s = (int)((need_ms + 999) / 1000); /* rounded up */
    if (*retry_after_s < 1)
        *retry_after_s = 1;
    return 0;
}

int limits_bucket_full(const limits_bucket_t *b, int rate, int burst, uint64_t now) {
    return rate <= 0 || b->refilled_ms == 0 ||
           (now > b->refilled_ms && bucket_level(b, rate, burst, now) >= (int64_t)burst * 1000);
}

typedef struct entry_s {
    uint8_t addr[16];
    int conns;
    limits_bucket_t bucket;
    struct entry_s *next;
} entry_t;

struct limits_table_s {
    int max_per_ip, rate, burst;
    _Atomic long nentries;
    pthread_mutex_t mu[NSTRIPES];
    entry_t *buckets[NBUCKETS];
};

limits_table_t *limits_table_new(int max_per_ip, int rate, int burst) {
    limits_table_t *t = xcalloc(1, sizeof *t);
    t->max_per_ip = max_per_ip;
    t->rate = rate;
    t->burst = burst > 0 ? burst : 1;
    for (int i = 0; i < NSTRIPES; i++)
        pthread_mutex_init(&t->mu[i], NULL);
    return t;
}

int limits_rate_on(const limits_table_t *t) {
    return t->rate > 0;
}

static size_t bucket_of(const uint8_t a[16]) {
    return (size_t)(XXH3_64bits(a, 16) % NBUCKETS);
}

/* @locks the stripe of b */
static entry_t *lookup(limits_table_t *t, size_t b, const uint8_t a[16], int create) {
    for (entry_t *e = t->buckets[b]; e; e = e->next)
        if (!memcmp(e->addr, a, 16))
            return e;
    if (!create || atomic_load(&t->nentries) >= MAX_ENTRIES)
        return NULL;
    entry_t *e = xcalloc(1, sizeof *e);
    memcpy(e->addr, a, 16);
    limits_bucket_init(&e->bucket, t->burst);
    e->next = t->buckets[b];
    t->buckets[b] = e;
    atomic_fetch_add(&t->nentries, 1);
    return e;
}

/* @locks the stripe of b. Drops e once it holds nothing worth keeping. */
static void maybe_drop(limits_table_t *t, size_t b, entry_t *e) {
    if (e->conns > 0 || e->bucket.tokens_milli < (int64_t)t->burst * 1000)
        return;
    for (entry_t **pp = &t->buckets[b]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            free(e);
            atomic_fetch_sub(&t->nentries, 1);
            return;
        }
}

int limits_conn_add(limits_table_t *t, const uint8_t a[16]) {
    if (t->max_per_ip <= 0)
        return 0;
    size_t b = bucket_of(a);
    pthread_mutex_t *mu = &t->mu[b % NSTRIPES];
    int rc = 0;
    pthread_mutex_lock(mu);
    entry_t *e = lookup(t, b, a, 1);
    if (e && e->conns >= t->max_per_ip)
        rc = -1;
    else if (e)
        e->conns++;
    pthread_mutex_unlock(mu);
    return rc;
}

void limits_conn_del(limits_table_t *t, const uint8_t a[16]) {
    if (t->max_per_ip <= 0)
        return;
    size_t b = bucket_of(a);
    pthread_mutex_t *mu = &t->mu[b % NSTRIPES];
    pthread_mutex_lock(mu);
    entry_t *e = lookup(t, b, a, 0);
    if (e && e->conns > 0) {
        e->conns--;
        maybe_drop(t, b, e);
    }
    pthread_mutex_unlock(mu);
}

int limits_take(limits_table_t *t, const uint8_t a[16], uint64_t now, int *retry_after_s) {
    if (t->rate <= 0)
        return 1;
    size_t b = bucket_of(a);
    pthread_mutex_t *mu = &t->mu[b % NSTRIPES];
    int ok = 1;
    pthread_mutex_lock(mu);
    entry_t *e = lookup(t, b, a, 1);
    if (e)
        ok = limits_bucket_take(&e->bucket, t->rate, t->burst, now, retry_after_s);
    pthread_mutex_unlock(mu);
    return ok;
}

void limits_sweep(limits_table_t *t, uint64_t now) {
    for (size_t b = 0; b < NBUCKETS; b++) {
        pthread_mutex_t *mu = &t->mu[b % NSTRIPES];
        pthread_mutex_lock(mu);
        for (entry_t **pp = &t->buckets[b]; *pp;) {
            entry_t *e = *pp;
            if (e->conns == 0 && limits_bucket_full(&e->bucket, t->rate, t->burst, now)) {
                *pp = e->next;
                free(e);
                atomic_fetch_sub(&t->nentries, 1);
            } else {
                pp = &e->next;
            }
        }
        pthread_mutex_unlock(mu);
    }
}

long limits_entries(const limits_table_t *t) {
    return atomic_load(&t->nentries);
}

void limits_table_free(limits_table_t *t) {
    if (!t)
        return;
    for (size_t b = 0; b < NBUCKETS; b++) {
        entry_t *e = t->buckets[b];
        while (e) {
            entry_t *n = e->next;
            free(e);
            e = n;
        }
    }
    for (int i = 0; i < NSTRIPES; i++)
        pthread_mutex_destroy(&t->mu[i]);
    free(t);
}

/* ---- per-voter buckets ---- */

typedef struct {
    uint64_t lo, hi; /* (0, 0): free */
    limits_bucket_t bucket;
} voter_entry_t;

typedef struct {
    atomic_flag lock;
    voter_entry_t way[LIMITS_VOTER_WAYS];
} voter_set_t;

struct limits_voters_s {
    int rate, burst;
    size_t nsets; /* a power of two */
    _Atomic uint64_t evicted;
    voter_set_t *sets;
};

limits_voters_t *limits_voters_new(int rate, int burst, size_t entries) {
    if (!entries)
        entries = LIMITS_VOTER_ENTRIES;
    tally_assert(entries >= LIMITS_VOTER_WAYS && (entries & (entries - 1)) == 0);
    limits_voters_t *t = xcalloc(1, sizeof *t);
    t->rate = rate;
    t->burst = burst > 0 ? burst : 1;
    t->nsets = entries / LIMITS_VOTER_WAYS;
    /* calloc: zero pages are free until a voter lands on them, and a zeroed
     * atomic_flag is clear on every platform we build for. */
    t->sets = xcalloc(t->nsets, sizeof *t->sets);
    return t;
}

int limits_voter_take(limits_voters_t *t, const char *poll, size_t poll_len, const char *voter,
                      size_t voter_len, uint64_t now, int *retry_after_s) {
    voter_key_t k = record_voter_key(poll, poll_len, voter, voter_len);
    if (!k.lo && !k.hi)
        k.lo = 1; /* (0, 0) marks a free way */
    voter_set_t *s = &t->sets[k.hi & (t->nsets - 1)];
    while (atomic_flag_test_and_set_explicit(&s->lock, memory_order_acquire))
        ; /* held for a handful of compares */
    voter_entry_t *e = NULL, *victim = NULL;
    int victim_idle = 0;
    for (int i = 0; i < LIMITS_VOTER_WAYS; i++) {
        voter_entry_t *w = &s->way[i];
        if (w->lo == k.lo && w->hi == k.hi) {
            e = w;
            break;
        }
        int idle = (!w->lo && !w->hi) || limits_bucket_full(&w->bucket, t->rate, t->burst, now);
        if (!victim || (idle && !victim_idle) ||
            (idle == victim_idle && w->bucket.refilled_ms < victim->bucket.refilled_ms)) {
            victim = w;
            victim_idle = idle;
        }
    }
    if (!e) {
        if (!victim_idle)
            atomic_fetch_add_explicit(&t->evicted, 1, memory_order_relaxed);
        e = victim;
        e->lo = k.lo;
        e->hi = k.hi;
        limits_bucket_init(&e->bucket, t->burst);
    }
    int ok = limits_bucket_take(&e->bucket, t->rate, t->burst, now, retry_after_s);
    atomic_flag_clear_explicit(&s->lock, memory_order_release);
    return ok;
}

uint64_t limits_voters_evicted(const limits_voters_t *t) {
    return atomic_load_explicit(&((limits_voters_t *)t)->evicted, memory_order_relaxed);
}

void limits_voters_free(limits_voters_t *t) {
    if (!t)
        return;
    free(t->sets);
    free(t);
}
