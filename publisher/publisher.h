/* The publisher: turns the engine's totals into static results files in
 * publisher.dir, each written atomically (temp file + rename):
 *   polls/ID.json   machine-readable totals and the per-minute series
 *   polls/ID.html   the results page, kept live by its script (SSE)
 *   vote/ID.html    the page to vote from (written with index.html)
 *   index.html      the list of polls
 * A poll's files are rewritten only when its totals changed, and at most once
 * per publisher.min_interval_ms, so a burst of votes costs one write.
 * With publisher.s3_endpoint set, every file written is also handed to the
 * S3 uploader (s3.h), which mirrors publisher.dir into the bucket without
 * ever making the publisher wait. */
#ifndef TALLY_PUBLISHER_H
#define TALLY_PUBLISHER_H

#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "common/util.h"
#include "engine/engine.h"

typedef struct publisher_s publisher_t;

publisher_t *pub_new(const tally_config_t *c, engine_t *e);
void pub_free(publisher_t *p);

/* Writes index.html and every poll's files now. TALLY_OK, or TALLY_ERR_IO
 * with errstr, which the caller reports (not logged here); what was not
 * written the thread retries once started (pub_start). */
tally_err_t pub_publish_all(publisher_t *p, char *errstr, size_t esz);

/* The background thread: republishes changed polls, and whatever could not
 * be written, with backoff (100 ms doubling to 5 s) and a rate-limited log:
 * results are derived data, so a full or unwritable publisher.dir never
 * stops counting. */
tally_err_t pub_start(publisher_t *p, char *errstr, size_t esz);
/* Held (on), the thread writes nothing, not even in pub_stop's last round:
 * while the engine catches up with the log its totals are a snapshot's or
 * partial, older than what an earlier run published (results went back,
 * then forward, and live streams got the old totals). Released (off), it
 * publishes every poll. @locality any thread */
void pub_hold(publisher_t *p, int on);
/* Wakes the thread: totals may have changed. @locality any thread */
void pub_notify(void *p);
/* Stops the thread after a last round for anything still unpublished. */
void pub_stop(publisher_t *p);
/* Called by the publisher after each poll rendering with its results JSON
 * (valid during the call), its definition and version. Set before pub_publish_all.
 * @locality the publisher's thread (or pub_publish_all's caller) */
void pub_set_on_publish(publisher_t *p,
                        void (*fn)(void *arg, const poll_def_t *def, uint64_t version,
                                   const char *json, size_t len),
                        void *arg);
/* How many times poll files were written (for tests and stats). */
uint64_t pub_writes(const publisher_t *p);

/* Rendering, no I/O (render.c). */
typedef struct {
    const poll_def_t *def;
    const uint64_t *counts;      /* [def->noptions]; NULL: withheld (visibility on_close,
                                  * not final yet): no "votes", no "total", no "series" */
    const series_view_t *series; /* def->noptions deltas a row, as engine_poll_read
                                  * gives it; NULL: no "series" field */
    poll_state_t state;
    uint64_t version; /* "version" and the SSE event id: see publisher.c next_version */
    uint64_t late;    /* votes refused by the engine as after the close */
    const uint64_t *final_positions; /* [npartitions] once final, else NULL */
    int npartitions;
} pub_poll_t;
void pub_render_poll_json(const pub_poll_t *v, uint64_t updated_ms, buf_t *out);
void pub_render_poll_html(const pub_poll_t *v, uint64_t updated_ms, buf_t *out);
/* vote/ID.html: a button per option posting to the API. */
void pub_render_poll_vote(const poll_def_t *def, buf_t *out);
void pub_render_index_polls(const pub_poll_t *polls, int n, uint64_t updated_ms, buf_t *out);
/* The same for a config poll, open (tests and tools). counts has
 * poll->noptions entries. */
void pub_render_json(const poll_conf_t *poll, const uint64_t *counts, uint64_t updated_ms,
                     uint64_t version, buf_t *out);
/* The same with the per-minute series (series NULL: no "series" field);
 * series has poll->noptions deltas a row, as engine_poll_read gives it. */
void pub_render_json_series(const poll_conf_t *poll, const uint64_t *counts,
                            const series_view_t *series, uint64_t updated_ms, uint64_t version,
                            buf_t *out);
void pub_render_html(const poll_conf_t *poll, const uint64_t *counts, uint64_t updated_ms,
                     uint64_t version, buf_t *out);
/* vote/ID.html: a button per option posting to the API. */
void pub_render_vote(const poll_conf_t *poll, buf_t *out);
void pub_render_index(const tally_config_t *c, uint64_t updated_ms, buf_t *out);
void html_escape(buf_t *out, const char *s);

#endif
