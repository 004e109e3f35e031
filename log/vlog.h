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

/* Opens the backend the config selects. The embedded log is recovered (a
 * torn tail dropped) and locked against other processes. On failure returns
 * NULL with errstr set, and errno EINVAL when the cause is configuration
 * (e.g. a kafka.* key librdkafka rejects). */
vlog_t *vlog_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, char *errstr,
                  size_t errstr_size);
int vlog_partitions(const vlog_t *l);
const char *vlog_name(const vlog_t *l);

/* Appends one encoded record (copied) to a partition. On VLOG_OK the ack
 * callback will be called for opaque; otherwise it will not.
 * @locality any thread */
vlog_err_t vlog_append(vlog_t *l, int partition, const uint8_t *rec, size_t len, void *opaque);

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

#endif
