/* Little-endian loads and stores for every on-disk and on-wire format
 * (log frames, records, snapshots). One home, so the formats agree. */
#ifndef TALLY_ENDIAN_H
#define TALLY_ENDIAN_H

#include <stdint.h>

static inline void le_put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void le_put32(uint8_t *p, uint32_t v) {
    le_put16(p, (uint16_t)v);
    le_put16(p + 2, (uint16_t)(v >> 16));
}
static inline void le_put64(uint8_t *p, uint64_t v) {
    le_put32(p, (uint32_t)v);
    le_put32(p + 4, (uint32_t)(v >> 32));
}
static inline uint16_t le_get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le_get32(const uint8_t *p) {
    return (uint32_t)le_get16(p) | (uint32_t)le_get16(p + 2) << 16;
}
/* One load, not a chain of shifts: decoding is on the engine's hot path. */
static inline uint64_t le_get64(const uint8_t *p) {
    uint64_t v;
    __builtin_memcpy(&v, p, sizeof v);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#endif
