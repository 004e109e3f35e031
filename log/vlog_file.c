/* The embedded vote log: one append-only file, log.dir/votes.log, holding
 * the frames of every partition interleaved in commit order.
 *
 * Frame, little-endian: u32 len | u32 checksum | u16 partition | u16 0 |
 * payload. The checksum is the low 32 bits of XXH3-64 of the payload seeded
 * with the length and the partition.
 *
 * One writer thread does group commit: it takes every append queued since its
 * last round, writes them with one write(), fdatasyncs once, and only then
 * publishes the new durable end to readers and acknowledges the appends. One
 * file means one fsync per round however many partitions the round touched
 * (one file per partition cost an fsync each). Readers never see past the
 * durable end, so nothing the engine counts can vanish in a crash.
 *
 * Partitions stay what the engine shards by: each reader scans the file and
 * delivers the frames of its own partitions. A position is a byte offset in
 * the file: "every frame of this partition before it has been delivered".
 *
 * Recovery at open scans from the last checkpointed durable end (CHECKPOINT,
 * see ckpt_write); a torn tail (crash mid-write, never acknowledged) fails its
 * checksum and is truncated. Bad bytes longer than one write could have left
 * are corruption, not a torn tail: the log refuses to open rather than drop
 * acknowledged votes. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/util.h"
#include "log/record.h"
#include "log/vlog_int.h"

#define LOG_FORMAT 2
#define FRAME_HDR 12
#define FRAME_MAX_PAYLOAD 65536
#define MAX_WRITE (16u << 20) /* bytes one group commit may write */
#define READ_CHUNK (1u << 20)
#define CKPT_INTERVAL_MS 1000

typedef struct {
    vlog_t base;
    char *dir;
    char *path;
    int fd;
    int lockfd;
    int flags;
    int fsync;
    int group_us;
    size_t max_pending;
    uint64_t end;             /* writer: durable end of the file */
    _Atomic uint64_t durable; /* readers: never read past this */

    pthread_mutex_t mu; /* guards pending, acks, inflight, stopping */
    pthread_cond_t wake;
    pthread_cond_t drained;
    buf_t pending; /* frames waiting for the writer */
    buf_t writing; /* the writer's own */
    void **acks;
    size_t nacks, capacks;
    size_t inflight;
    int stopping;
    int writer_started;
    pthread_t writer;

    pthread_mutex_t rmu; /* readers wait here for new durable data */
    pthread_cond_t rcond;
    uint64_t rgen;
} flog_t;

typedef struct {
    vlog_reader_t base;
    int n;
    int *parts;
    uint64_t *pos;  /* [n] */
    uint8_t *done;  /* [n]: the callback declined a record: deliver no more */
    int *mine;      /* [npartitions]: index into parts, or -1 */
    uint64_t scan;  /* file offset the next poll reads from */
    uint8_t *buf;
} freader_t;

static uint32_t frame_sum(const uint8_t *p, uint32_t len, uint16_t partition) {
    return (uint32_t)XXH3_64bits_withSeed(p, len, (uint64_t)len | (uint64_t)partition << 32);
}

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    put_u16(p, (uint16_t)v);
    put_u16(p + 2, (uint16_t)(v >> 16));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)get_u16(p) | (uint32_t)get_u16(p + 2) << 16;
}

/* Checks the frame at p (avail bytes there). Returns its total length, 0 when
 * it needs more bytes than avail, or -1 with *why when it is bad. */
static int64_t frame_check(const uint8_t *p, size_t avail, int npartitions, const char **why) {
    if (avail < FRAME_HDR)
        return 0;
    uint32_t len = get_u32(p);
    uint16_t part = get_u16(p + 8);
    if (len == 0 || len > FRAME_MAX_PAYLOAD) {
        *why = "bad frame length";
        return -1;
    }
    if (part >= npartitions || get_u16(p + 10) != 0) {
        *why = "bad frame header";
        return -1;
    }
    if (avail < FRAME_HDR + len)
        return 0;
    if (frame_sum(p + FRAME_HDR, len, part) != get_u32(p + 4)) {
        *why = "checksum mismatch";
        return -1;
    }
    return FRAME_HDR + len;
}

static int pwrite_all(int fd, const char *p, size_t n, uint64_t off) {
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static ssize_t pread_full(int fd, uint8_t *p, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Scans the file from `from` (a known frame boundary); truncates a torn
 * tail. Returns the valid end, or -1 with errstr set. */
static int64_t recover(flog_t *l, uint64_t from, char *errstr, size_t esz) {
    struct stat st;
    if (fstat(l->fd, &st) != 0) {
        snprintf(errstr, esz, "%s: %s", l->path, strerror(errno));
        return -1;
    }
    uint64_t size = (uint64_t)st.st_size, pos = from <= size ? from : 0;
    size_t bufsize = READ_CHUNK + FRAME_HDR + FRAME_MAX_PAYLOAD; /* holds a whole frame */
    uint8_t *buf = xmalloc(bufsize);
    const char *why = NULL;
    while (pos < size && !why) {
        size_t want = (size_t)(size - pos < bufsize ? size - pos : bufsize);
        ssize_t got = pread_full(l->fd, buf, want, pos);
        if (got < 0) {
            snprintf(errstr, esz, "%s: read: %s", l->path, strerror(errno));
            free(buf);
            return -1;
        }
        size_t off = 0;
        int64_t n;
        while ((n = frame_check(buf + off, (size_t)got - off, l->base.npartitions, &why)) > 0)
            off += (size_t)n;
        if (n == 0 && off == 0)
            why = "incomplete frame"; /* a whole frame always fits the buffer */
        pos += off;
        if (why && pos == from && from > 0) {
            /* The checkpoint does not point at a frame of this file: do not
             * trust it, scan everything. */
            log_warn("log: CHECKPOINT offset %llu is not a frame boundary (%s); scanning the "
                     "whole log",
                     (unsigned long long)from, why);
            pos = from = 0;
            why = NULL;
        }
    }
    free(buf);
    if (pos < size) {
        uint64_t tail = size - pos;
        if (tail > MAX_WRITE) {
            snprintf(errstr, esz,
                     "%s: %s at offset %llu with %llu bytes after it: this is corruption, not a "
                     "torn tail; refusing to drop data (restore the log or move the file away)",
                     l->path, why, (unsigned long long)pos, (unsigned long long)tail);
            return -1;
        }
        log_warn("log: dropping torn tail of %llu bytes at offset %llu (%s); it was never "
                 "acknowledged",
                 (unsigned long long)tail, (unsigned long long)pos, why);
        if (ftruncate(l->fd, (off_t)pos) != 0 || fsync(l->fd) != 0) {
            snprintf(errstr, esz, "%s: truncate: %s", l->path, strerror(errno));
            return -1;
        }
    }
    return (int64_t)pos;
}

/* CHECKPOINT: the durable end, rewritten about once a second after a group
 * commit. Recovery scans from there instead of from the start of a possibly
 * huge file: everything before it was fsynced before the checkpoint was
 * written. Checksummed; a missing, damaged or implausible one means a full
 * scan, never a wrong answer. */
static void ckpt_write(flog_t *l) {
    char text[128], path[4200];
    struct stat st;
    if (fstat(l->fd, &st) != 0)
        return;
    /* The inode ties the checkpoint to this very file: a votes.log moved
     * away or restored from a backup does not inherit it. */
    int n = snprintf(text, sizeof text, "tally-ckpt %d %llu %llu", LOG_FORMAT,
                     (unsigned long long)st.st_ino, (unsigned long long)l->end);
    n += snprintf(text + n, sizeof text - (size_t)n, " %016llx\n",
                  (unsigned long long)XXH3_64bits(text, (size_t)n));
    snprintf(path, sizeof path, "%s/CHECKPOINT", l->dir);
    if (write_file_atomic(path, text, (size_t)n, 0) != 0)
        log_warn("log: cannot write %s: %s (recovery will scan the whole log)", path,
                 strerror(errno));
}

static uint64_t ckpt_read(const char *dir, int fd) {
    char path[4200], text[160];
    snprintf(path, sizeof path, "%s/CHECKPOINT", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *sum = strrchr(text, ' ');
    int fmt = 0;
    unsigned long long ino = 0, end = 0;
    struct stat st;
    if (!sum || sscanf(text, "tally-ckpt %d %llu %llu", &fmt, &ino, &end) != 3 ||
        fmt != LOG_FORMAT || fstat(fd, &st) != 0 || ino != (unsigned long long)st.st_ino ||
        strtoull(sum + 1, NULL, 16) != XXH3_64bits(text, (size_t)(sum - text)))
        return 0;
    return end;
}

static void *writer_main(void *arg) {
    flog_t *l = arg;
    uint64_t last_ckpt = mono_ms();
    void **acks = NULL;
    size_t capacks = 0;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (l->nacks == 0 && !l->stopping)
            pthread_cond_wait(&l->wake, &l->mu);
        if (l->nacks == 0)
            break; /* stopping and drained */
        if (l->group_us > 0 && !l->stopping) {
            /* Let a few more votes join this fsync. */
            pthread_mutex_unlock(&l->mu);
            struct timespec ts = {0, (long)l->group_us * 1000};
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&l->mu);
        }
        /* Take the batch: swap the pending buffer and the ack list. */
        buf_t t = l->writing;
        t.len = 0;
        l->writing = l->pending;
        l->pending = t;
        void **tmp = acks;
        size_t tcap = capacks, n = l->nacks;
        acks = l->acks;
        capacks = l->capacks;
        l->acks = tmp;
        l->capacks = tcap;
        l->nacks = 0;
        pthread_mutex_unlock(&l->mu);

        vlog_err_t err = VLOG_OK;
        if (pwrite_all(l->fd, l->writing.data, l->writing.len, l->end) != 0 ||
            (l->fsync && fdatasync(l->fd) != 0)) {
            log_error("log: write failed: %s; %zu votes not acknowledged", strerror(errno), n);
            err = VLOG_UNAVAIL;
            /* Cut what this round may have left so the next round does not
             * append after garbage. */
            if (ftruncate(l->fd, (off_t)l->end) != 0)
                tally_assert(!"cannot truncate the log after a failed write");
        } else {
            l->end += l->writing.len;
            atomic_store_explicit(&l->durable, l->end, memory_order_release);
            pthread_mutex_lock(&l->rmu);
            l->rgen++;
            pthread_cond_broadcast(&l->rcond);
            pthread_mutex_unlock(&l->rmu);
            if (l->fsync && mono_ms() - last_ckpt >= CKPT_INTERVAL_MS) {
                ckpt_write(l);
                last_ckpt = mono_ms();
            }
        }
        for (size_t i = 0; i < n; i++)
            l->base.ack(acks[i], err);

        pthread_mutex_lock(&l->mu);
        l->inflight -= n;
        pthread_cond_broadcast(&l->drained);
    }
    pthread_mutex_unlock(&l->mu);
    free(acks);
    return NULL;
}

static vlog_err_t flog_append(vlog_t *base, int partition, const uint8_t *rec, size_t len,
                              void *opaque) {
    flog_t *l = (flog_t *)base;
    if (len == 0 || len > FRAME_MAX_PAYLOAD || !(l->flags & VLOG_F_WRITE))
        return VLOG_ERR;
    uint8_t hdr[FRAME_HDR];
    put_u32(hdr, (uint32_t)len);
    put_u32(hdr + 4, frame_sum(rec, (uint32_t)len, (uint16_t)partition));
    put_u16(hdr + 8, (uint16_t)partition);
    put_u16(hdr + 10, 0);
    pthread_mutex_lock(&l->mu);
    if (l->stopping) {
        pthread_mutex_unlock(&l->mu);
        return VLOG_UNAVAIL;
    }
    if (l->inflight >= l->max_pending || l->pending.len + FRAME_HDR + len > MAX_WRITE) {
        pthread_mutex_unlock(&l->mu);
        return VLOG_FULL;
    }
    buf_append(&l->pending, hdr, FRAME_HDR);
    buf_append(&l->pending, rec, len);
    if (l->nacks == l->capacks) {
        l->capacks = l->capacks ? l->capacks * 2 : 1024;
        l->acks = xrealloc(l->acks, l->capacks * sizeof *l->acks);
    }
    l->acks[l->nacks++] = opaque;
    l->inflight++;
    if (l->nacks == 1)
        pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->mu);
    return VLOG_OK;
}

static struct timespec deadline_in(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static int flog_flush(vlog_t *base, int timeout_ms) {
    flog_t *l = (flog_t *)base;
    struct timespec ts = deadline_in(timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    while (l->inflight > 0 && rc == 0)
        if (pthread_cond_timedwait(&l->drained, &l->mu, &ts) == ETIMEDOUT)
            rc = -1;
    pthread_mutex_unlock(&l->mu);
    return rc;
}

static void flog_close(vlog_t *base) {
    flog_t *l = (flog_t *)base;
    if (l->writer_started) {
        pthread_mutex_lock(&l->mu);
        l->stopping = 1;
        pthread_cond_signal(&l->wake);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->writer, NULL);
        if (l->fsync)
            ckpt_write(l);
    }
    if (l->fd >= 0)
        close(l->fd);
    if (l->lockfd >= 0)
        close(l->lockfd); /* releases the flock */
    buf_free(&l->pending);
    buf_free(&l->writing);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->wake);
    pthread_cond_destroy(&l->drained);
    pthread_mutex_destroy(&l->rmu);
    pthread_cond_destroy(&l->rcond);
    free(l->acks);
    free(l->path);
    free(l->dir);
    free(l);
}

static int flog_end_positions(vlog_t *base, uint64_t *ends, char *errstr, size_t esz) {
    (void)errstr;
    (void)esz;
    flog_t *l = (flog_t *)base;
    uint64_t end = atomic_load_explicit(&l->durable, memory_order_acquire);
    for (int p = 0; p < l->base.npartitions; p++)
        ends[p] = end;
    return 0;
}

static uint64_t flog_begin_position(vlog_t *base, int partition) {
    (void)base;
    (void)partition;
    return 0;
}

static void flog_reader_free(vlog_reader_t *rb) {
    freader_t *r = (freader_t *)rb;
    free(r->done);
    free(r->parts);
    free(r->pos);
    free(r->mine);
    free(r->buf);
    free(r);
}

static vlog_reader_t *flog_reader_new(vlog_t *base, const int *parts, const uint64_t *pos, int n,
                                      char *errstr, size_t esz) {
    flog_t *l = (flog_t *)base;
    freader_t *r = xcalloc(1, sizeof *r);
    r->base.log = base;
    r->n = n;
    r->parts = xmalloc(sizeof(int) * (size_t)(n ? n : 1));
    r->pos = xmalloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    r->done = xcalloc((size_t)(n ? n : 1), 1);
    r->mine = xmalloc(sizeof(int) * (size_t)base->npartitions);
    r->buf = xmalloc(READ_CHUNK + FRAME_HDR + FRAME_MAX_PAYLOAD);
    for (int p = 0; p < base->npartitions; p++)
        r->mine[p] = -1;
    uint64_t end = atomic_load(&l->durable);
    r->scan = n ? UINT64_MAX : end;
    for (int i = 0; i < n; i++) {
        if (parts[i] < 0 || parts[i] >= base->npartitions || r->mine[parts[i]] >= 0) {
            snprintf(errstr, esz, "reader: partition %d is out of range or listed twice",
                     parts[i]);
            flog_reader_free(&r->base);
            return NULL;
        }
        r->parts[i] = parts[i];
        r->pos[i] = pos[i];
        r->mine[parts[i]] = i;
        if (pos[i] > end) {
            snprintf(errstr, esz,
                     "partition %d: start position %llu is past the end of the log (%llu): the "
                     "snapshot is newer than the log",
                     parts[i], (unsigned long long)pos[i], (unsigned long long)end);
            flog_reader_free(&r->base);
            return NULL;
        }
        if (pos[i] < r->scan)
            r->scan = pos[i];
    }
    return &r->base;
}

static int flog_reader_poll(vlog_reader_t *rb, vlog_msg_cb *cb, void *arg, int max,
                            int timeout_ms, char *errstr, size_t esz) {
    freader_t *r = (freader_t *)rb;
    flog_t *l = (flog_t *)rb->log;
    pthread_mutex_lock(&l->rmu);
    uint64_t gen = l->rgen;
    pthread_mutex_unlock(&l->rmu);

    int delivered = 0;
    uint64_t end = atomic_load_explicit(&l->durable, memory_order_acquire);
    while (r->scan < end && delivered < max) {
        uint64_t want = end - r->scan;
        if (want > READ_CHUNK + FRAME_HDR + FRAME_MAX_PAYLOAD)
            want = READ_CHUNK + FRAME_HDR + FRAME_MAX_PAYLOAD;
        ssize_t got = pread_full(l->fd, r->buf, (size_t)want, r->scan);
        if (got < (ssize_t)FRAME_HDR) {
            snprintf(errstr, esz, "log: read at %llu: %s", (unsigned long long)r->scan,
                     got < 0 ? strerror(errno) : "short read");
            return -1;
        }
        size_t off = 0;
        while (delivered < max) {
            const char *why = NULL;
            int64_t n = frame_check(r->buf + off, (size_t)got - off, l->base.npartitions, &why);
            if (n < 0) {
                snprintf(errstr, esz, "log: %s at offset %llu", why,
                         (unsigned long long)(r->scan + off));
                return -1;
            }
            if (n == 0)
                break;
            int i = r->mine[get_u16(r->buf + off + 8)];
            uint64_t at = r->scan + off, next = at + (uint64_t)n;
            if (i >= 0 && !r->done[i] && at >= r->pos[i]) {
                vlog_msg_t m = {r->parts[i], next, -1, r->buf + off + FRAME_HDR,
                                (size_t)n - FRAME_HDR};
                if (cb(arg, &m) != 0) {
                    r->done[i] = 1;
                } else {
                    r->pos[i] = next;
                    delivered++;
                }
            }
            off += (size_t)n;
        }
        if (off == 0) {
            snprintf(errstr, esz, "log: incomplete frame at offset %llu below the durable end",
                     (unsigned long long)r->scan);
            return -1;
        }
        r->scan += off;
    }
    /* Nothing of these partitions lies before scan: say so, so that their
     * positions (and replay's end) advance past other partitions' frames. */
    for (int i = 0; i < r->n; i++) {
        if (!r->done[i] && r->pos[i] < r->scan) {
            vlog_msg_t m = {r->parts[i], r->scan, -1, NULL, 0};
            if (cb(arg, &m) != 0)
                r->done[i] = 1;
            else
                r->pos[i] = r->scan;
        }
    }
    if (delivered == 0 && timeout_ms > 0 && r->scan >= end) {
        struct timespec ts = deadline_in(timeout_ms);
        pthread_mutex_lock(&l->rmu);
        while (l->rgen == gen)
            if (pthread_cond_timedwait(&l->rcond, &l->rmu, &ts) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&l->rmu);
    }
    return delivered;
}

static const vlog_ops_t flog_ops = {
    .name = "file",
    .append = flog_append,
    .flush = flog_flush,
    .close = flog_close,
    .end_positions = flog_end_positions,
    .begin_position = flog_begin_position,
    .reader_new = flog_reader_new,
    .reader_poll = flog_reader_poll,
    .reader_free = flog_reader_free,
};

/* The META file pins the format and the partition count: changing the count
 * would move voters to other partitions and break one-vote-per-voter. */
static int check_meta(flog_t *l, char *errstr, size_t esz) {
    char path[4200], want[64];
    int partitions = l->base.npartitions;
    snprintf(path, sizeof path, "%s/META", l->dir);
    snprintf(want, sizeof want, "tally-log %d partitions=%d\n", LOG_FORMAT, partitions);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT && access(l->path, F_OK) == 0) {
            snprintf(errstr, esz,
                     "%s is missing but %s exists: the partition count is unknown "
                     "(log.partitions may not match it); restore META (\"%.*s\")",
                     path, l->path, (int)strlen(want) - 1, want);
            return -1;
        }
        if (errno != ENOENT || write_file_atomic(path, want, strlen(want), 1) != 0) {
            snprintf(errstr, esz, "%s: %s", path, strerror(errno));
            return -1;
        }
        return 0;
    }
    char have[64] = "";
    if (!fgets(have, sizeof have, f))
        have[0] = '\0';
    fclose(f);
    int fmt = 0, n = 0;
    if (sscanf(have, "tally-log %d partitions=%d", &fmt, &n) != 2) {
        snprintf(errstr, esz, "%s: not a tally log (unreadable META)", path);
        return -1;
    }
    if (fmt != LOG_FORMAT) {
        snprintf(errstr, esz, "%s: log format %d, this tally reads format %d", path, fmt,
                 LOG_FORMAT);
        return -1;
    }
    if (n != partitions) {
        snprintf(errstr, esz,
                 "log.partitions: the log in %s has %d partitions, config says %d; the partition "
                 "count of an existing log cannot change",
                 l->dir, n, partitions);
        return -1;
    }
    return 0;
}

vlog_t *vlog_file_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, char *errstr,
                       size_t esz) {
    flog_t *l = xcalloc(1, sizeof *l);
    l->base.ops = &flog_ops;
    l->base.npartitions = c->log_partitions;
    l->base.ack = ack;
    l->dir = xstrdup(c->log_dir);
    l->flags = flags;
    l->fd = l->lockfd = -1;
    l->fsync = c->log_fsync;
    l->group_us = c->log_group_commit_us;
    l->max_pending = (size_t)c->max_pending;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->wake, NULL);
    pthread_cond_init(&l->drained, NULL);
    pthread_mutex_init(&l->rmu, NULL);
    pthread_cond_init(&l->rcond, NULL);
    buf_t pb = {0};
    buf_printf(&pb, "%s/votes.log", l->dir);
    l->path = pb.data;

    char path[4200];
    int64_t end;
    if (mkdir_p(l->dir) != 0) {
        snprintf(errstr, esz, "log.dir %s: %s", l->dir, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof path, "%s/LOCK", l->dir);
    l->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->lockfd < 0 || flock(l->lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(errstr, esz, "log.dir %s: %s", l->dir,
                 errno == EWOULDBLOCK ? "in use by another tally process (stop it first)"
                                      : strerror(errno));
        goto fail;
    }
    if (check_meta(l, errstr, esz) != 0)
        goto fail;
    l->fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->fd < 0) {
        snprintf(errstr, esz, "%s: %s", l->path, strerror(errno));
        goto fail;
    }
    if ((end = recover(l, ckpt_read(l->dir, l->fd), errstr, esz)) < 0)
        goto fail;
    l->end = (uint64_t)end;
    if (l->fsync && (flags & VLOG_F_WRITE))
        ckpt_write(l); /* the recovered end, for this file */
    atomic_store(&l->durable, (uint64_t)end);
    if (fsync_dir(l->dir) != 0) {
        snprintf(errstr, esz, "log.dir %s: fsync: %s", l->dir, strerror(errno));
        goto fail;
    }
    if (flags & VLOG_F_WRITE) {
        if (pthread_create(&l->writer, NULL, writer_main, l) != 0) {
            snprintf(errstr, esz, "log: cannot start the writer thread");
            goto fail;
        }
        l->writer_started = 1;
    }
    return &l->base;
fail:
    flog_close(&l->base);
    errno = 0; /* not a configuration error */
    return NULL;
}
