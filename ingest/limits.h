/* Per-client limits: who the client is (the peer, or the X-Forwarded-For hop
 * a trusted proxy names), how many connections it holds, and its request
 * token bucket. Addresses are 16 bytes, IPv4 as v4-mapped IPv6. */
#ifndef TALLY_LIMITS_H
#define TALLY_LIMITS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
    uint8_t addr[16];
    int bits; /* prefix length over the 16 bytes */
} limits_cidr_t;

/* "10.0.0.0/8, ::1, 192.168.1.7" into a new array (*out, free()d by the
 * caller; NULL when empty). 0, or -1 with errstr naming the bad entry. */
int limits_cidrs_parse(const char *list, limits_cidr_t **out, int *n, char *errstr, size_t esz);
int limits_cidrs_match(const limits_cidr_t *v, int n, const uint8_t addr[16]);
/* 0, or -1 when sa is not IPv4/IPv6. */
int limits_addr_from_sockaddr(const struct sockaddr *sa, uint8_t out[16]);
/* A textual address (no port, no brackets). 0 or -1. */
int limits_addr_parse(const char *s, size_t n, uint8_t out[16]);
/* The client: the peer unless it is a trusted proxy; then X-Forwarded-For
 * read right to left, skipping trusted hops, the first untrusted one (or the
 * leftmost when all are trusted). A malformed hop stops the walk at the last
 * good address. */
void limits_client_addr(const limits_cidr_t *trusted, int ntrusted, const uint8_t peer[16],
                        const char *xff, size_t xff_len, uint8_t out[16]);
/* Text for logs: "1.2.3.4" or "::1". */
void limits_addr_str(const uint8_t a[16], char *buf, size_t cap);

/* A token bucket in thousandths of a request, so integer rates refill
 * smoothly. Used by the client table and the voter table below. */
typedef struct {
    int64_t tokens_milli;
    uint64_t refilled_ms; /* 0: never taken from (full) */
} limits_bucket_t;

void limits_bucket_init(limits_bucket_t *b, int burst);
/* Refills b to now (rate per second, at most burst), then takes one request:
 * 1, or 0 with *retry_after_s the whole seconds (rounded up, >= 1) until one
 * request's worth has refilled. now is monotonic ms, never decreasing. */
int limits_bucket_take(limits_bucket_t *b, int rate, int burst, uint64_t now, int *retry_after_s);
/* 1 when b would be full at now: forgetting it changes nothing. */
int limits_bucket_full(const limits_bucket_t *b, int rate, int burst, uint64_t now);

/* The shared table of clients. @locality any thread (striped locks). */
typedef struct limits_table_s limits_table_t;
/* max_per_ip 0: no connection cap; rate 0: no token bucket. */
limits_table_t *limits_table_new(int max_per_ip, int rate_per_s, int burst);
/* 0, or -1 when the client already holds max_per_ip connections. */
int limits_conn_add(limits_table_t *t, const uint8_t a[16]);
void limits_conn_del(limits_table_t *t, const uint8_t a[16]);
/* 1 when a request may proceed; 0 with *retry_after_s (>= 1) otherwise. */
int limits_take(limits_table_t *t, const uint8_t a[16], uint64_t now_ms, int *retry_after_s);
int limits_rate_on(const limits_table_t *t);
/* Forgets clients that hold no connection and whose bucket has refilled.
 * Run now and then (ingest: every 10 s). */
void limits_sweep(limits_table_t *t, uint64_t now_ms);
long limits_entries(const limits_table_t *t);
void limits_table_free(limits_table_t *t);

/* Per-voter buckets (limits.voter_rate / voter_burst): one per (poll,
 * voter), per ingest process. A fixed table of LIMITS_VOTER_ENTRIES entries
 * (32 bytes each: 32 MiB of address space, touched as voters arrive), in
 * sets of LIMITS_VOTER_WAYS chosen by a 128-bit hash of (poll, voter). A new
 * voter takes a free or idle way of its set (a bucket that has refilled
 * holds nothing worth keeping); when all are busy, the way used longest ago
 * is evicted and its voter starts again from a full bucket: memory stays
 * fixed, and the limit then fails open for that voter (counted in
 * limits_voters_evicted). Each set has its own spinlock held for a few
 * dozen instructions: threads meet only on the same set.
 * @locality any thread */
#define LIMITS_VOTER_ENTRIES (1u << 20)
#define LIMITS_VOTER_WAYS 4
typedef struct limits_voters_s limits_voters_t;
/* entries: a power of two >= LIMITS_VOTER_WAYS, or 0 for
 * LIMITS_VOTER_ENTRIES. */
limits_voters_t *limits_voters_new(int rate, int burst, size_t entries);
/* As limits_take, for the voter of a poll. */
int limits_voter_take(limits_voters_t *t, const char *poll, size_t poll_len, const char *voter,
                      size_t voter_len, uint64_t now_ms, int *retry_after_s);
/* Busy buckets evicted to make room so far. */
uint64_t limits_voters_evicted(const limits_voters_t *t);
void limits_voters_free(limits_voters_t *t);

#endif
