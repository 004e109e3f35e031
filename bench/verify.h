/* Reading the published results (publisher.dir/polls/ID.json) and waiting
 * for them to reach the expected totals. */
#ifndef BENCH_VERIFY_H
#define BENCH_VERIFY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/config.h"

/* Parses one poll's JSON (as pub_render_json writes it) into counts[] in the
 * order of p's options. 0, or -1 with errstr (not JSON, another poll, an
 * option missing or unknown). */
int verify_parse_poll(const char *json, size_t len, const poll_conf_t *p, uint64_t *counts,
                      char *errstr, size_t esz);
/* Reads dir/polls/ID.json. 0; 1 when the file does not exist yet (counts are
 * zeros); -1 with errstr. */
int verify_read_poll(const char *dir, const poll_conf_t *p, uint64_t *counts, char *errstr,
                     size_t esz);

typedef struct {
    const poll_conf_t *poll;
    const uint64_t *expected; /* [poll->noptions] */
} verify_item_t;

/* Re-reads the published files every 20 ms until every poll equals its
 * expected totals, or timeout_ms passes. Returns 0 when they match; else -1
 * after printing the difference (expected, published, published-expected per
 * option) to diff_out. *waited_ms: time until the match (or the timeout).
 * Sleeps: call it outside any event loop. */
int verify_wait(const char *dir, const verify_item_t *items, int n, int timeout_ms, FILE *diff_out,
                uint64_t *waited_ms);

#endif
