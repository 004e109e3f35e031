/* The counter engine: every poll's totals, in memory, built from the vote
 * log.
 *
 * State is sharded by log partition. Each partition has exactly one writer,
 * the worker thread that owns it (partition p belongs to worker p % threads),
 * so counting takes no locks. Readers (the publisher) sum the partitions with
 * atomic loads under a per-partition sequence counter, so they see each
 * partition as of a whole batch, never half of a vote change. */
#ifndef TALLY_ENGINE_H
#define TALLY_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "common/catalog.h"
#include "common/config.h"
#include "common/err.h"
#include "log/vlog.h"

typedef struct engine_s engine_t;

typedef struct {
    uint64_t applied;      /* records read and counted (or found repeated) */
    uint64_t skipped;      /* undecodable, unknown poll or unknown option */
    uint64_t after_cutoff; /* replay --until: records newer than the cut-off */
    uint64_t late;         /* votes stamped at or after their poll's close (or final) */
    uint64_t early;        /* votes stamped before their poll's opens_at */
    uint64_t voters;       /* distinct (poll, voter) pairs held */
    uint64_t state_bytes;  /* bytes of voter tables */
} engine_stats_t;

/* The engine keeps a pointer to c: it must outlive the engine. */
engine_t *engine_new(const tally_config_t *c, int npartitions);
void engine_free(engine_t *e);

/* Records with a timestamp after until_ms are not counted (replay --until). */
void engine_set_cutoff(engine_t *e, uint64_t until_ms);

/* Counting, @locality the partition's single writer. A batch brackets a run
 * of engine_apply() calls so readers never see a partial batch. */
void engine_batch_begin(engine_t *e, int partition);
/* Counts one encoded record and moves the partition to next_pos. ts_ms >= 0
 * overrides the record's own timestamp. Returns the poll index it touched,
 * or -1 when the record was skipped. */
int engine_apply(engine_t *e, int partition, const uint8_t *rec, size_t len, uint64_t next_pos,
                 int64_t ts_ms);
/* Counts msgs[0..n) of the partition, in order, as engine_apply() would one
 * by one (each msgs[i].partition is ignored), but faster: records are decoded
 * and hashed some dozens at a time and their voter slots prefetched before
 * any is counted, so the voter table's cache misses overlap. A message with
 * rec NULL is progress only (see vlog_msg_t). The records must stay valid
 * during the call. Returns how many records were counted (not skipped, not
 * after the cut-off). */
int engine_apply_batch(engine_t *e, int partition, const vlog_msg_t *msgs, int n);
void engine_batch_end(engine_t *e, int partition);

/* Reading, @locality any thread.
 *
 * Polls have a global index, 0..engine_npolls()-1: the config's polls
 * first (in config order), then the polls of the log's history in the
 * order a partition first applied their DEFINE. Indexes never change while
 * the engine lives and grow as polls are defined. */
int engine_npolls(const engine_t *e);
int engine_npartitions(const engine_t *e);
/* The poll's current entry in the engine's catalog (NULL for an index
 * whose DEFINE was unreadable), or its definition. Valid for
 * CATALOG_GRACE_MS (see catalog_live_get). */
const catalog_entry_t *engine_poll_entry(const engine_t *e, int i);
const poll_def_t *engine_poll(const engine_t *e, int i);
int engine_poll_index(const engine_t *e, const char *id, size_t len);
/* The engine's catalog: the config's polls (def_seq 0) overlaid with the
 * view of the partition that applied the highest seq; it is what ingest
 * reads once the engine caught up. Valid for CATALOG_GRACE_MS. */
const catalog_t *engine_catalog(const engine_t *e);
/* The highest control seq partition p applied. */
uint64_t engine_partition_seq(const engine_t *e, int partition);
typedef struct {
    uint64_t late, early;
    int final; /* every partition applied the poll's FINAL */
} engine_poll_status_t;
/* final_positions (may be NULL) [npartitions]: per partition the position
 * just after its FINAL record, 0 where not applied. */
engine_poll_status_t engine_poll_status(const engine_t *e, int i, uint64_t *final_positions);
/* Bumped after every batch that changed poll i. */
uint64_t engine_poll_generation(const engine_t *e, int i);
/* counts must hold engine_poll(e,i)->noptions entries. */
void engine_poll_totals(const engine_t *e, int i, uint64_t *counts);
/* The first n options' totals (options a partition does not know yet: 0). */
void engine_poll_totals_n(const engine_t *e, int i, uint64_t *counts, int n);
uint64_t engine_position(const engine_t *e, int partition);
engine_stats_t engine_stats(const engine_t *e);

/* Snapshots, see snapshot.c. Save: @locality the partition's writer.
 * TALLY_ERR_IO when the file could not be written (nothing is left behind). */
tally_err_t engine_snapshot_save(engine_t *e, int partition, const char *dir, char *errstr,
                                 size_t esz);
/* The id of the log the engine counts (vlog_id, vlog_id_legacy): a
 * snapshot is used only if it records this id, or records none (written
 * before ids) and accept_unidentified is 1. Before any load; the default
 * is "" and 0. */
void engine_set_log_id(engine_t *e, const char *log_id, int accept_unidentified);

/* A snapshot's header, read without loading its state. */
typedef struct {
    int version; /* 2: written before log ids (log_id ""), 3 */
    uint32_t partition, npartitions;
    uint64_t position, created_ms;
    char log_id[VLOG_ID_MAX];
} snap_header_t;
/* Reads path's header; with verify, also checks the whole file's checksum,
 * streaming it through a small buffer (memory does not grow with the
 * state). TALLY_ERR_IO: unreadable; TALLY_ERR_CORRUPT: not a snapshot,
 * truncated, or (verify) a checksum mismatch. */
tally_err_t engine_snapshot_read_header(const char *path, int verify, snap_header_t *h,
                                        char *errstr, size_t esz);
/* Whether a snapshot with header h may be used for partition p of e: the
 * partition layout and the log id (see engine_set_log_id). TALLY_OK, or
 * TALLY_ERR_STATE with errstr saying why not. The config is checked only by
 * a load. */
tally_err_t engine_snapshot_header_check(const engine_t *e, int p, const snap_header_t *h,
                                         char *errstr, size_t esz);
/* positions[p]: the position of partition p's newest snapshot in dir that
 * is sound (checksum) and passes engine_snapshot_header_check, else 0:
 * where a load would resume unless the config changed. Headers only: the
 * states are not loaded. */
void engine_snapshot_positions(const engine_t *e, const char *dir, uint64_t *positions);

/* Loads each partition's newest usable snapshot, before any worker starts;
 * an older one and a fresh start are the fall-backs (the log is the truth: a
 * partition without a snapshot is recounted from it), each one not used is
 * logged with its class. First removes the temp files of saves a crash
 * interrupted. *resumed (may be NULL): partitions that resumed from one.
 * TALLY_OK also without any snapshot (dir missing or empty); TALLY_ERR_IO
 * when dir cannot be read; TALLY_ERR_CONFIG when it is not a directory. */
tally_err_t engine_snapshot_load(engine_t *e, const char *dir, int *resumed, char *errstr,
                                 size_t esz);
/* Loads one snapshot file into the partition, before any worker starts (or
 * on an engine that never runs). TALLY_ERR_IO: unreadable;
 * TALLY_ERR_CORRUPT: it fails its checks (checksum, truncated, malformed);
 * TALLY_ERR_STATE: a sound snapshot of another state (another config or
 * partition layout, or another log: see engine_set_log_id). On any error
 * the partition is left empty. */
tally_err_t engine_snapshot_load_file(engine_t *e, int partition, const char *path, char *errstr,
                                      size_t esz);

/* Workers. */
typedef struct {
    vlog_t *log;
    const char *snapshot_dir; /* NULL: no snapshots */
    int snapshot_interval_ms;
    int threads;
    const uint64_t *stop_at;      /* replay: stop once each partition reaches this */
    void (*on_change)(void *arg); /* after a batch changed totals */
    void *on_change_arg;
} engine_run_opts_t;

/* Sets the engine's log id from o->log (engine_set_log_id): the snapshots
 * the workers write record it. TALLY_ERR_IO when a worker thread cannot be
 * started (none runs then). */
tally_err_t engine_start(engine_t *e, const engine_run_opts_t *o, char *errstr, size_t esz);
/* Joins the workers once they reach stop_at (replay) or engine_stop() was
 * called; each writes a final snapshot. TALLY_OK, or TALLY_ERR_IO if a worker
 * hit an error it could not go past (the log unreadable; errstr says which). */
tally_err_t engine_join(engine_t *e, char *errstr, size_t esz);
void engine_stop(engine_t *e);
/* 1 once a worker has failed (the log is unreadable): the process must stop. */
int engine_failed(const engine_t *e);

#endif
