#include "bench/rate.h"

#include <math.h>

#include "common/util.h"

void rate_init(rate_t *r, double per_sec, uint64_t start_ns) {
    tally_assert(per_sec > 0);
    r->per_sec = per_sec;
    r->start_ns = start_ns;
}

/* k * 1e9 / rate in long double: exact to the ns for any k and rate that a
 * run can reach (64-bit mantissa), and no integer overflow for large k. */
uint64_t rate_intended_ns(const rate_t *r, uint64_t k) {
    long double off = (long double)k * 1e9L / (long double)r->per_sec;
    return r->start_ns + (uint64_t)floorl(off);
}

uint64_t rate_due(const rate_t *r, uint64_t now_ns) {
    if (now_ns < r->start_ns)
        return 0;
    long double n = (long double)(now_ns - r->start_ns) * (long double)r->per_sec / 1e9L;
    uint64_t due = (uint64_t)floorl(n) + 1;
    /* Rounding of the division must not disagree with rate_intended_ns():
     * request due-1 is due, request due is not. */
    while (due > 0 && rate_intended_ns(r, due - 1) > now_ns)
        due--;
    while (rate_intended_ns(r, due) <= now_ns)
        due++;
    return due;
}

uint64_t rate_wait_ns(const rate_t *r, uint64_t k, uint64_t now_ns) {
    uint64_t t = rate_intended_ns(r, k);
    return t > now_ns ? t - now_ns : 0;
}
