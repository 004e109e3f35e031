#include "log/vlog.h"

#include <stdio.h>

#include "log/vlog_int.h"

const char *vlog_err2str(vlog_err_t err) {
    switch (err) {
    case VLOG_OK: return "ok";
    case VLOG_FULL: return "log queue full";
    case VLOG_UNAVAIL: return "log unavailable";
    case VLOG_ERR: return "log error";
    }
    return "unknown";
}

vlog_t *vlog_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, char *errstr,
                  size_t esz) {
    if (c->kafka_brokers && c->kafka_brokers[0])
        return vlog_kafka_open(c, flags, ack, errstr, esz);
    return vlog_file_open(c, flags, ack, errstr, esz);
}

int vlog_partitions(const vlog_t *l) { return l->npartitions; }
const char *vlog_name(const vlog_t *l) { return l->ops->name; }

vlog_err_t vlog_append(vlog_t *l, int partition, const uint8_t *rec, size_t len, void *opaque) {
    if (partition < 0 || partition >= l->npartitions)
        return VLOG_ERR;
    return l->ops->append(l, partition, rec, len, opaque);
}

int vlog_flush(vlog_t *l, int timeout_ms) { return l->ops->flush(l, timeout_ms); }

void vlog_close(vlog_t *l) {
    if (l)
        l->ops->close(l);
}

int vlog_end_positions(vlog_t *l, uint64_t *ends, char *errstr, size_t esz) {
    return l->ops->end_positions(l, ends, errstr, esz);
}

uint64_t vlog_begin_position(vlog_t *l, int partition) {
    return l->ops->begin_position(l, partition);
}

vlog_reader_t *vlog_reader_new(vlog_t *l, const int *partitions, const uint64_t *positions, int n,
                               char *errstr, size_t esz) {
    return l->ops->reader_new(l, partitions, positions, n, errstr, esz);
}

int vlog_reader_poll(vlog_reader_t *r, vlog_msg_cb *cb, void *arg, int max, int timeout_ms,
                     char *errstr, size_t esz) {
    return r->log->ops->reader_poll(r, cb, arg, max, timeout_ms, errstr, esz);
}

void vlog_reader_free(vlog_reader_t *r) {
    if (r)
        r->log->ops->reader_free(r);
}
