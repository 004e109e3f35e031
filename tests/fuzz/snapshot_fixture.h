/* The engine that fuzz_snapshot.c loads snapshots into, shared with
 * make_seeds.c so that the seed snapshots match its config: three polls,
 * one of each mode, on two partitions, and the voters the harness votes
 * with (the seeds hold their keys, so a mutated slot of theirs is met
 * again when they vote). */
#ifndef TALLY_FUZZ_SNAPSHOT_FIXTURE_H
#define TALLY_FUZZ_SNAPSHOT_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "engine/engine.h"
#include "log/record.h"

#define SNAPFIX_NPART 2
#define SNAPFIX_NVOTERS 4
/* The log id of the harness's engines (a TLYSNAP3 snapshot of another id
 * is refused; TLYSNAP2 ones are accepted, as for a legacy log). */
#define SNAPFIX_LOG_ID "file:0123456789abcdef0123456789abcdef"

/* Control byte, the first of every input: bit 0 set means the rest is a
 * snapshot without its checksum, which the harness appends (so mutations
 * reach the parser instead of the checksum test); bit 1 is the partition;
 * bits 2-7 pick the options the voters vote for afterwards. */
#define SNAPFIX_CTL_CHECKSUM 0x01
#define SNAPFIX_CTL_PART 0x02
#define SNAPFIX_CTL_SHIFT 2

static inline tally_config_t *snapfix_conf(void) {
    static const char *const rows[][3] = {
        {"poll.one", "options", "a, b, c"}, {"poll.one", "mode", "one-per-voter"},
        {"poll.chg", "options", "x, y"},    {"poll.chg", "mode", "changeable"},
        {"poll.unl", "options", "p, q"},    {"poll.unl", "mode", "unlimited"},
    };
    char err[512];
    tally_config_t *c = config_new_defaults();
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (config_set(c, rows[i][0], rows[i][1], rows[i][2], err, sizeof err) != 0)
            goto fail;
    if (config_validate(c, err, sizeof err) != 0)
        goto fail;
    return c;
fail:
    fprintf(stderr, "snapshot fixture config: %s\n", err);
    abort();
}

/* Voter k of the fixture. */
static inline void snapfix_voter(int k, char *buf, size_t size) {
    snprintf(buf, size, "v%d", k);
}

/* Counts one vote of voter k (k < 0: none) for option o of poll i in
 * partition part, as one batch. Returns engine_apply()'s. */
static inline int snapfix_vote(engine_t *e, int part, int i, int o, int k) {
    const poll_def_t *pc = engine_poll(e, i);
    char voter[16];
    snapfix_voter(k, voter, sizeof voter);
    vote_record_t v = {
        .ts_ms = 1700000000000ull,
        .poll = pc->id,
        .poll_len = strlen(pc->id),
        .option = pc->options[o].id,
        .option_len = strlen(pc->options[o].id),
        .voter = k >= 0 ? voter : NULL,
        .voter_len = k >= 0 ? strlen(voter) : 0,
    };
    uint8_t rec[RECORD_MAX_LEN];
    size_t n = record_encode(&v, rec);
    if (n == 0)
        abort();
    engine_batch_begin(e, part);
    int rc = engine_apply(e, part, rec, n, engine_position(e, part) + 12 + n, -1);
    engine_batch_end(e, part);
    return rc;
}

#endif
