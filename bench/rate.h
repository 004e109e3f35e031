/* Open-loop rate control: request k (0-based) is due at
 *     start + k / rate  seconds,
 * whatever happened to the requests before it. Its latency is measured from
 * that intended time, not from when it could actually be sent, so a server
 * that stalls is charged for every request that the stall delayed (no
 * coordinated omission, as in wrk2). Pure arithmetic, no clock reads. */
#ifndef BENCH_RATE_H
#define BENCH_RATE_H

#include <stdint.h>

typedef struct {
    double per_sec;    /* > 0 */
    uint64_t start_ns; /* monotonic ns of request 0 */
} rate_t;

void rate_init(rate_t *r, double per_sec, uint64_t start_ns);
/* When request k is due. */
uint64_t rate_intended_ns(const rate_t *r, uint64_t k);
/* How many requests are due at now_ns: requests 0 .. n-1 (0 before start). */
uint64_t rate_due(const rate_t *r, uint64_t now_ns);
/* ns from now until request k is due; 0 if it is already due. */
uint64_t rate_wait_ns(const rate_t *r, uint64_t k, uint64_t now_ns);
/* Latency from the intended send time; 0 for a clock that ran backwards. */
static inline uint64_t rate_latency_ns(uint64_t intended_ns, uint64_t done_ns) {
    return done_ns > intended_ns ? done_ns - intended_ns : 0;
}

#endif
