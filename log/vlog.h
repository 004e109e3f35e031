/* The vote log: the durable, ordered, partitioned record of every accepted
 * vote. ingest appends to it, the engine reads it, replay re-reads it.
 *
 * Two backends behind one interface: the embedded file log (vlog_file.c, the
 * default) and Apache Kafka (vlog_kafka.c, when kafka.brokers is set).
 *
 * A position is backend-defined and opaque to callers: the byte offset of the
 * next frame in a partition file, or the next Kafka offset. Positions only
 * grow; the engine stores them in its snapshots to resume exactly. */
#ifndef TALLY_VLOG_H
#define TALLY_VLOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"

typedef struct vlog_s vlog_t;
typedef struct vlog_reader_s vlog_reader_t;

typedef enum {
    VLOG_OK = 0,
    VLOG_FULL,    /* too much in flight: try again shortly (HTTP 503) */
    VLOG_UNAVAIL, /* the log cannot take writes now (HTTP 503) */
    VLOG_ERR,     /* anything else */
} vlog_err_t;
const char *vlog_err2str(vlog_err_t err);

/* Called exactly once for every append that vlog_append() accepted, with
 * VLOG_OK only once the record is durable in the log.
 * @locality the log's own thread (never the caller's). */
typedef void(vlog_ack_cb)(void *opaque, vlog_err_t err);

enum { VLOG_F_WRITE = 1, VLOG_F_READ = 2 };

/* Opens the backend the config selects. The embedded log: with VLOG_F_WRITE
 * it is locked exclusively and recovered (only a provable torn tail is cut,
 * see vlog_scan_t); without it, it is opened O_RDONLY under a shared lock and
 * nothing in log.dir is written or cut (a torn tail is left and not read).
 * Damage refuses to open. On failure returns NULL with errstr set and *err
 * (if err is not NULL) the class: TALLY_ERR_CONFIG for configuration (a
 * partition count that does not match the log, a kafka.* key librdkafka
 * rejects), TALLY_ERR_CORRUPT for damage, TALLY_ERR_STATE for a log that is
 * in use, missing or shorter than its CHECKPOINT, TALLY_ERR_IO... */
vlog_t *vlog_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, tally_err_t *err,
                  char *errstr, size_t errstr_size);
int vlog_partitions(const vlog_t *l);
/* The backend's name ("file", "kafka"): for messages and stats only; what
 * a caller may rely on is in vlog_caps(). */
const char *vlog_name(const vlog_t *l);
/* What a backend can do (flags), for callers that would otherwise go by its
 * name. VLOG_CAP_LOCAL_ENDS: vlog_end_positions() is a read of this
 * process's own state (no network round trip: fine on an event loop) and
 * exact (a start position past it means the log lost records: snapshots
 * are checked against it at start-up). The file log has it; Kafka, whose
 * ends are a broker round trip per partition, does not. VLOG_CAP_KEYS:
 * the backend files records under vlog_meta_t's key (Kafka); without it a
 * caller need not build one. */
enum { VLOG_CAP_LOCAL_ENDS = 1, VLOG_CAP_KEYS = 2 };
int vlog_caps(const vlog_t *l);

/* The log's identity, which snapshots and CHECKPOINT record so that a
 * position is only ever used in the byte layout it was taken from. Two logs
 * with the same id hold the same bytes up to the shorter one's end (an older
 * copy of a log is a prefix of it); any other log has another id.
 *   file log: "file:<32 hex>", 128 random bits in META, drawn when the log
 *     is created (and by `tally log salvage`, whose output is a new layout);
 *   file log whose META predates ids: "legacy:<16 hex>", the XXH3 of its
 *     first frame header with the partition count (META is not rewritten,
 *     unless the log is empty: then it gets a real id);
 *   Kafka: "kafka:<topic>:<partitions>" (librdkafka 2.0.2 does not expose
 *     topic ids).
 * vlog_id_legacy(): 1 when snapshots written before ids existed (which
 * carry none) may be used: a legacy file log, or Kafka (whose old snapshots
 * were tied to the topic by the config alone, as new ones are). */
#define VLOG_ID_MAX 160
const char *vlog_id(const vlog_t *l);
int vlog_id_legacy(const vlog_t *l);

/* What a record is filed under, from the caller that made it: the log moves
 * opaque bytes and never decodes them. A backend that keys its messages
 * (Kafka) sends key and ts_ms with the record, so that any Kafka tool sees
 * "poll/voter" (a vote, record_log_key) or the poll id (poll history); the
 * file log ignores both. */
typedef struct {
    const char *key; /* key_len bytes; NULL: no key */
    size_t key_len;
    uint64_t ts_ms; /* the record's time; 0: the backend's now */
} vlog_meta_t;

/* Appends one encoded record (copied) to a partition; meta may be NULL (no
 * key). On VLOG_OK the ack callback will be called for opaque; otherwise it
 * will not.
 * @locality any thread */
vlog_err_t vlog_append(vlog_t *l, int partition, const uint8_t *rec, size_t len,
                       const vlog_meta_t *meta, void *opaque);

/* TALLY_OK while the log takes writes; otherwise the class and, in errstr,
 * why not: the file log is in its failed state after a failed write, fsync
 * or truncate (TALLY_ERR_IO; it retries and leaves the state once the disk
 * works again) or because votes.log vanished or was replaced under it
 * (TALLY_ERR_STATE; until a restart). Every append gets VLOG_UNAVAIL then.
 * @locality any thread; no system call */
tally_err_t vlog_health(vlog_t *l, char *errstr, size_t errstr_size);

/* Refuses start positions (e.g. from snapshots) past the log's end: the log
 * was truncated, replaced or restored from an older copy. TALLY_ERR_STATE
 * with errstr "partition P: start position X is past the end of the log
 * (Y)...". */
tally_err_t vlog_check_positions(vlog_t *l, const uint64_t *positions, char *errstr,
                                 size_t errstr_size);

/* clients: how many clients may append right now, each with at most one
 * append in flight (ingest's open connections: a connection's next vote
 * waits for the answer to the last). The file log's group commit stops
 * gathering a round once it holds that many: nobody else can join, and
 * waiting longer would only add latency. NULL (the default): unknown, the
 * round gathers for its full window. The counter must outlive the log, or
 * be unset (NULL) before it goes. @locality any thread */
void vlog_set_clients(vlog_t *l, const _Atomic long *clients);

/* Waits until every accepted append has been acknowledged, up to timeout. */
int vlog_flush(vlog_t *l, int timeout_ms);
void vlog_close(vlog_t *l);

/* Positions one past the last durable record of every partition, now.
 * For replay: "the end" is fixed when it starts. */
int vlog_end_positions(vlog_t *l, uint64_t *ends, char *errstr, size_t errstr_size);
/* The position of the first record (0 on the file log; Kafka's low watermark). */
uint64_t vlog_begin_position(vlog_t *l, int partition);

/* A record handed to the engine: rec points into the reader's buffer and is
 * valid until the callback returns. rec NULL (len 0) reports progress only:
 * the partition has nothing before next_pos that was not delivered. */
typedef struct {
    int partition;
    uint64_t next_pos; /* position after this record */
    int64_t ts_ms;     /* log timestamp (Kafka) or -1: use the record's own */
    const uint8_t *rec;
    size_t len;
} vlog_msg_t;
/* Returns 0 to take the record, 1 to decline it: the reader then delivers
 * nothing more from that partition (replay's fixed end). */
typedef int(vlog_msg_cb)(void *arg, const vlog_msg_t *m);

/* A reader of some partitions from given positions. One per engine worker.
 * @locality one thread at a time */
vlog_reader_t *vlog_reader_new(vlog_t *l, const int *partitions, const uint64_t *positions, int n,
                               char *errstr, size_t errstr_size);
/* Delivers up to max available records through cb, waiting up to timeout_ms
 * when none is available. Returns how many were delivered, or -1 on an error
 * that the reader cannot go past (errstr says what). */
int vlog_reader_poll(vlog_reader_t *r, vlog_msg_cb *cb, void *arg, int max, int timeout_ms,
                     char *errstr, size_t errstr_size);
void vlog_reader_free(vlog_reader_t *r);

/* ---- The embedded log on disk: scanning, for open, `tally log verify`,
 * `tally log salvage` and the fuzzer ----
 *
 * A scan walks frames from a frame boundary. A frame that does not check
 * (bad header, bad checksum, or cut short by the end of the file) starts a
 * bad range; the scan then resynchronises byte by byte: the range ends at
 * the first offset where a complete frame checks (header plausible,
 * checksum over payload, length and partition), and parsing goes on from
 * there. A bad range with a valid frame after it is damage; a bad range
 * that runs to the end of the file is the tail. Only a tail of at most one
 * group-commit write (VLOG_MAX_WRITE) can be a torn write; a longer one is
 * damage too. */
#define VLOG_MAX_WRITE (16u << 20) /* bytes one group commit writes at most */

typedef struct {
    uint64_t start, end;   /* the bad bytes [start, end) */
    uint64_t frames_after; /* intact record frames between end and the end of the scan */
    const char *why;       /* what the first bad frame failed (static text) */
} vlog_range_t;

typedef struct {
    uint64_t from, size;   /* scanned [from, size) */
    uint64_t frames;       /* intact frames of records (commit frames apart) */
    uint64_t commits;      /* intact commit frames (one ends each group-commit write) */
    uint64_t *part_frames; /* [npartitions]: intact frames per partition */
    int npartitions;
    uint64_t valid_end;   /* end of the last intact frame (from when none) */
    vlog_range_t *damage; /* bad ranges followed by an intact frame, in order */
    size_t ndamage;
    int has_tail; /* bad bytes [tail.start, size) with no intact frame after */
    vlog_range_t tail;
} vlog_scan_t;

/* Scans data[0..size) (size may be anything). Pure: no I/O, never fails. */
void vlog_scan_buf(const uint8_t *data, size_t size, int npartitions, vlog_scan_t *out);
/* Scans the file behind fd from offset from to its end, with preads. */
tally_err_t vlog_scan_fd(int fd, uint64_t from, int npartitions, vlog_scan_t *out, char *errstr,
                         size_t errstr_size);
void vlog_scan_free(vlog_scan_t *s);
/* 1 when the scan leaves only a torn tail to cut (or nothing): no damage and
 * a tail no longer than one write. */
int vlog_scan_clean(const vlog_scan_t *s);

/* A log directory examined without opening the log: META read, votes.log
 * opened O_RDONLY, locked shared when it can be (else live = 1: a writer is
 * running), and scanned whole. Nothing in the directory is written. */
typedef struct {
    int fd, lockfd;   /* votes.log (holding the shared lock); lockfd unused (-1) */
    int live;         /* a writer holds the log: bytes past the last frame may
                       * be a commit in flight */
    int npartitions;  /* from META */
    uint64_t durable; /* the end CHECKPOINT names for this log's file, else 0:
                       * bad bytes below it were acknowledged (damage) */
    char path[4200];  /* votes.log */
    vlog_scan_t scan;
} vlog_examine_t;
tally_err_t vlog_file_examine(const tally_config_t *c, vlog_examine_t *x, char *errstr,
                              size_t errstr_size);
void vlog_file_examine_close(vlog_examine_t *x);
/* A new file log id, "file:<32 hex>" from getrandom(2) (for create and
 * salvage). TALLY_ERR_IO when the kernel gives no randomness. */
tally_err_t vlog_file_new_id(char *out, size_t size);
/* The META text of a log of n partitions with log id id ("file:..."). */
int vlog_file_meta_text(int npartitions, const char *id, char *out, size_t size);

#endif
