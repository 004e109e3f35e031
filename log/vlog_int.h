/* Backend interface behind vlog.h. */
#ifndef TALLY_VLOG_INT_H
#define TALLY_VLOG_INT_H

#include "log/vlog.h"

typedef struct {
    const char *name;
    vlog_err_t (*append)(vlog_t *l, int partition, const uint8_t *rec, size_t len,
                         const vlog_meta_t *meta, void *opaque);
    int (*flush)(vlog_t *l, int timeout_ms);
    void (*close)(vlog_t *l);
    int (*end_positions)(vlog_t *l, uint64_t *ends, char *errstr, size_t esz);
    uint64_t (*begin_position)(vlog_t *l, int partition);
    vlog_reader_t *(*reader_new)(vlog_t *l, const int *parts, const uint64_t *pos, int n,
                                 char *errstr, size_t esz);
    int (*reader_poll)(vlog_reader_t *r, vlog_msg_cb *cb, void *arg, int max, int timeout_ms,
                       char *errstr, size_t esz);
    void (*reader_free)(vlog_reader_t *r);
    tally_err_t (*health)(vlog_t *l, char *errstr, size_t esz); /* NULL: always OK */
} vlog_ops_t;

struct vlog_s {
    const vlog_ops_t *ops;
    int npartitions;
    vlog_ack_cb *ack;
    char id[VLOG_ID_MAX]; /* see vlog_id(); "" until the backend sets it */
    int id_legacy;
    int caps;                            /* VLOG_CAP_*, set by the backend at open */
    const _Atomic long *_Atomic clients; /* vlog_set_clients; NULL: unknown */
};

struct vlog_reader_s {
    vlog_t *log;
};

vlog_t *vlog_file_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, tally_err_t *err,
                       char *errstr, size_t esz);
vlog_t *vlog_kafka_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, tally_err_t *err,
                        char *errstr, size_t esz);

/* vlog_kafka.c: a librdkafka configuration with tally's defaults (pairs,
 * NULL-terminated) and then the operator's kafka.* keys. NULL with errstr
 * on a key librdkafka refuses. */
struct rd_kafka_conf_s;
struct rd_kafka_conf_s *vlog_kafka_conf(const tally_config_t *c, const char *const *defaults,
                                        char *errstr, size_t esz);

/* vlog_scan_fd with a given read window (bytes past a whole frame): small
 * ones let the fuzzer cross window edges on small inputs. */
tally_err_t vlog_scan_fd_window(int fd, uint64_t from, int npartitions, size_t window,
                                vlog_scan_t *out, char *errstr, size_t esz);

#endif
