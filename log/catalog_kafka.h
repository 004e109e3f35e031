/* The catalog topic: how `tally ingest` processes learn the polls with Kafka.
 *
 * kafka.catalog_topic (default "<kafka.topic>-polls"): one partition,
 * cleanup.policy=compact, created by tally like the votes topic. Key: the
 * poll id. Value: {"seq":S,"final":bool,"final_at":ms,"def":{...}} with the
 * poll's canonical definition (poll_def_to_json) and S the catalog seq of the
 * entry's last change (its DEFINE or FINAL). The poll history itself lives in
 * the votes topic (control records); this topic is a compacted copy that
 * ingest can read whole in a moment.
 *
 * Writer (tally engine, the process that writes the history): after each
 * change of the live catalog it produces the changed entries (acks=all,
 * idempotent) and rewrites all of them at start (idempotent: a reader keeps
 * the entry with the higher seq, or the later of equal seq). A cut is
 * written before its DEFINE is logged (kcat_writer_learn: the entry with
 * its current seq and the new closes_at), so every ingest refuses votes
 * stamped at or after it before the log can hold one behind the DEFINE.
 *
 * Reader (tally ingest): consumes the topic from the beginning before any
 * vote is judged (503 "starting"), then tails it; every 250 ms it asks the
 * partition's high watermark, and its view counts as confirmed fresh as of
 * the time of a query once it has consumed up to that watermark. A view not
 * confirmed within the last 1000 ms answers 503 "catalog_stale". A change
 * the writer had acknowledged by time A is therefore in every ingest's view
 * from A + 1000 ms on: the learn bound the admin's close relies on. */
#ifndef TALLY_CATALOG_KAFKA_H
#define TALLY_CATALOG_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include "common/catalog.h"
#include "common/config.h"
#include "common/err.h"

#define KCAT_CHECK_MS 250  /* watermark queries */
#define KCAT_FRESH_MS 1000 /* the learn bound */

typedef struct kcat_writer_s kcat_writer_t;
/* Creates the topic if missing and starts the writer thread, which writes
 * every entry of live at once (before this returns, up to 10 s) and then
 * each change. NULL with errstr. */
kcat_writer_t *kcat_writer_new(const tally_config_t *c, catalog_live_t *live, char *errstr,
                               size_t esz);
/* Blocks until the topic holds catalog seq (acknowledged), up to 10 s.
 * For admin_ops_t.wait_learnable (arg: the writer). @locality any thread */
void kcat_writer_wait(void *w, uint64_t seq);
/* A history_learn_fn (arg: the writer): produces en, after whatever the
 * writer thread still has to write, and waits for its ack (up to 10 s);
 * *learned_mono = the ack + KCAT_FRESH_MS. With learned_mono NULL (an entry
 * put back) the writer thread rewrites every entry of the live catalog,
 * retrying until the topic holds them. @locality any thread */
int kcat_writer_learn(void *w, const catalog_entry_t *en, uint64_t *learned_mono);
void kcat_writer_free(kcat_writer_t *w);

typedef struct kcat_reader_s kcat_reader_t;
/* Creates the topic if missing and starts consuming it from the beginning.
 * NULL with errstr. */
kcat_reader_t *kcat_reader_new(const tally_config_t *c, char *errstr, size_t esz);
/* An ingest_catalog_fn (arg: the reader): the current view, or NULL with
 * "starting" / "catalog_stale". @locality any thread, lock-free */
const catalog_t *kcat_reader_get(void *r, const char **code, const char **why);
/* Waits up to timeout_ms for the first complete read: 1 when loaded. */
int kcat_reader_wait_ready(kcat_reader_t *r, int timeout_ms);
/* The highest seq in the view (tests, stats). */
uint64_t kcat_reader_seq(kcat_reader_t *r);
void kcat_reader_free(kcat_reader_t *r);

#endif
