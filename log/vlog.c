#include "log/vlog.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"

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

vlog_t *vlog_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, tally_err_t *err,
                  char *errstr, size_t esz) {
    tally_err_t e = TALLY_ERR_INTERNAL;
    vlog_t *l = c->kafka_brokers && c->kafka_brokers[0]
                    ? vlog_kafka_open(c, flags, ack, &e, errstr, esz)
                    : vlog_file_open(c, flags, ack, &e, errstr, esz);
    if (l && !l->id[0]) { /* Kafka: the topic is the log */
        snprintf(l->id, sizeof l->id, "kafka:%s:%d", c->kafka_topic ? c->kafka_topic : "",
                 l->npartitions);
        l->id_legacy = 1;
    }
    if (err)
        *err = l ? TALLY_OK : e;
    return l;
}

const char *vlog_id(const vlog_t *l) {
    return l->id;
}
int vlog_id_legacy(const vlog_t *l) {
    return l->id_legacy;
}

tally_err_t vlog_health(vlog_t *l, char *errstr, size_t esz) {
    if (!l->ops->health)
        return TALLY_OK;
    return l->ops->health(l, errstr, esz);
}

tally_err_t vlog_check_positions(vlog_t *l, const uint64_t *pos, char *errstr, size_t esz) {
    uint64_t *ends = xcalloc((size_t)l->npartitions, sizeof *ends);
    tally_err_t rc = TALLY_OK;
    if (l->ops->end_positions(l, ends, errstr, esz) != 0) {
        rc = TALLY_ERR_UNAVAIL;
        goto out;
    }
    for (int p = 0; p < l->npartitions; p++)
        if (pos[p] > ends[p]) {
            snprintf(errstr, esz,
                     "partition %d: start position %llu is past the end of the log (%llu): the "
                     "snapshot is newer than the log (was the log truncated, replaced or restored "
                     "from an older copy?)",
                     p, (unsigned long long)pos[p], (unsigned long long)ends[p]);
            rc = TALLY_ERR_STATE;
            goto out;
        }
out:
    free(ends);
    return rc;
}

int vlog_partitions(const vlog_t *l) {
    return l->npartitions;
}
int vlog_caps(const vlog_t *l) {
    return l->caps;
}

const char *vlog_name(const vlog_t *l) {
    return l->ops->name;
}

vlog_err_t vlog_append(vlog_t *l, int partition, const uint8_t *rec, size_t len,
                       const vlog_meta_t *meta, void *opaque) {
    if (partition < 0 || partition >= l->npartitions)
        return VLOG_ERR;
    return l->ops->append(l, partition, rec, len, meta, opaque);
}

void vlog_set_clients(vlog_t *l, const _Atomic long *clients) {
    atomic_store(&l->clients, clients);
}

int vlog_flush(vlog_t *l, int timeout_ms) {
    return l->ops->flush(l, timeout_ms);
}

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
