/* The embedded vote log: one append-only file per partition in log.dir.
 *
 * Frame: u32 len | u32 checksum | payload, little-endian; the checksum is the
 * low 32 bits of XXH3-64 of the payload seeded with its length. One writer
 * thread does group commit: it takes every append queued since its last
 * round, writes each partition's share with one write(), fdatasyncs the
 * files it touched, and only then publishes the new durable end to readers
 * and acknowledges the appends. Readers never see past the durable end, so
 * nothing the engine counts can vanish in a crash.
 *
 * Recovery at open: every partition is scanned from its last checkpointed
 * durable end (CHECKPOINT, see ckpt_write); a torn tail (crash mid-write,
 * never acknowledged) fails its checksum and is truncated. Bad bytes longer
 * than one write could have left are corruption, not a torn tail: the log
 * refuses to open rather than drop acknowledged votes. */
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

#define FRAME_HDR 8
#define FRAME_MAX_PAYLOAD 65536
#define MAX_WRITE (16u << 20) /* bytes one partition may take in one write */
#define READ_CHUNK (1u << 20)

typedef struct {
    int fd;
    uint64_t end;              /* writer: durable end of the file */
    _Atomic uint64_t durable;  /* readers: never read past this */
    buf_t pending;             /* frames waiting for the writer, under mu */
    buf_t writing;             /* the writer's own */
} fpart_t;

typedef struct {
    vlog_t base;
    char *dir;
    int lockfd;
    int flags;
    fpart_t *parts;
    int fsync;
    int group_us;
    size_t max_pending;

    pthread_mutex_t mu; /* guards pending buffers, acks, inflight, stopping */
    pthread_cond_t wake;
    pthread_cond_t drained;
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
    uint64_t *pos;
    int next; /* partition to start the next poll at, for fairness */
    uint8_t *done; /* the callback declined a record: deliver no more */
    uint8_t *buf;
} freader_t;

static uint32_t frame_sum(const uint8_t *p, uint32_t len) {
    return (uint32_t)XXH3_64bits_withSeed(p, len, len);
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
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

/* Scans a partition file; truncates a torn tail. Returns the valid end, or
 * -1 with errstr set. */
static int64_t recover_partition(int fd, int partition, const char *path, uint64_t from,
                                 char *errstr, size_t esz) {
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(errstr, esz, "%s: %s", path, strerror(errno));
        return -1;
    }
    uint64_t size = (uint64_t)st.st_size, pos = from <= (uint64_t)st.st_size ? from : 0;
    size_t bufsize = READ_CHUNK + FRAME_HDR + FRAME_MAX_PAYLOAD; /* always holds a whole frame */
    uint8_t *buf = xmalloc(bufsize);
    const char *why = NULL;
    while (pos < size && !why) {
        size_t want = (size_t)(size - pos < bufsize ? size - pos : bufsize);
        ssize_t got = pread_full(fd, buf, want, pos);
        if (got < 0) {
            snprintf(errstr, esz, "%s: read: %s", path, strerror(errno));
            free(buf);
            return -1;
        }
        size_t off = 0;
        for (;;) {
            if (off + FRAME_HDR > (size_t)got) {
                if (pos + off + FRAME_HDR > size && pos + off < size)
                    why = "incomplete frame header";
                break;
            }
            uint32_t len = get_u32(buf + off);
            if (len == 0 || len > FRAME_MAX_PAYLOAD) {
                why = "bad frame length";
                break;
            }
            if (off + FRAME_HDR + len > (size_t)got) {
                if (pos + off + FRAME_HDR + len > size)
                    why = "incomplete frame";
                break; /* else the frame straddles this read: read again from it */
            }
            if (frame_sum(buf + off + FRAME_HDR, len) != get_u32(buf + off + 4)) {
                why = "checksum mismatch";
                break;
            }
            off += FRAME_HDR + len;
        }
        if (off == 0 && !why)
            why = "unreadable frame";
        pos += off;
    }
    free(buf);
    if (pos < size) {
        uint64_t tail = size - pos;
        if (tail > MAX_WRITE) {
            snprintf(errstr, esz,
                     "%s: %s at offset %llu with %llu bytes after it: this is corruption, not a "
                     "torn tail; refusing to drop data (restore the log or move the file away)",
                     path, why ? why : "bad data", (unsigned long long)pos,
                     (unsigned long long)tail);
            return -1;
        }
        log_warn("log partition %d: dropping torn tail of %llu bytes at offset %llu (%s); it was "
                 "never acknowledged",
                 partition, (unsigned long long)tail, (unsigned long long)pos,
                 why ? why : "bad data");
        if (ftruncate(fd, (off_t)pos) != 0 || fsync(fd) != 0) {
            snprintf(errstr, esz, "%s: truncate: %s", path, strerror(errno));
            return -1;
        }
    }
    return (int64_t)pos;
}

/* CHECKPOINT: the durable end of every partition, rewritten about once a
 * second after a group commit. Recovery scans from there instead of from the
 * start of a possibly huge file: everything before it was fsynced before the
 * checkpoint was written. The file is checksummed; a missing, damaged or
 * implausible one means a full scan, never a wrong answer. */
#define CKPT_INTERVAL_MS 1000

static void ckpt_write(flog_t *l) {
    buf_t b = {0};
    buf_printf(&b, "tally-ckpt 1 %d", l->base.npartitions);
    for (int p = 0; p < l->base.npartitions; p++)
        buf_printf(&b, " %llu", (unsigned long long)l->parts[p].end);
    buf_printf(&b, " %016llx\n", (unsigned long long)XXH3_64bits(b.data, b.len));
    char path[4200];
    snprintf(path, sizeof path, "%s/CHECKPOINT", l->dir);
    if (write_file_atomic(path, b.data, b.len, 0) != 0)
        log_warn("log: cannot write %s: %s (recovery will scan whole files)", path,
                 strerror(errno));
    buf_free(&b);
}

/* Fills hints[] (zeros when there is no usable checkpoint). */
static void ckpt_read(const char *dir, int np, uint64_t *hints) {
    memset(hints, 0, sizeof *hints * (size_t)np);
    char path[4200], text[64 * 1024];
    snprintf(path, sizeof path, "%s/CHECKPOINT", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *sum = strrchr(text, ' ');
    int have_np = 0;
    if (!sum || sscanf(text, "tally-ckpt 1 %d", &have_np) != 1 || have_np != np ||
        strtoull(sum + 1, NULL, 16) != XXH3_64bits(text, (size_t)(sum - text)))
        return;
    uint64_t *tmp = xcalloc((size_t)np, sizeof *tmp);
    char *p = text + strlen("tally-ckpt 1 ");
    strtol(p, &p, 10);
    for (int i = 0; i < np; i++) {
        char *end;
        tmp[i] = strtoull(p, &end, 10);
        if (end == p || end > sum) {
            free(tmp);
            return;
        }
        p = end;
    }
    memcpy(hints, tmp, sizeof *hints * (size_t)np);
    free(tmp);
}

static void *writer_main(void *arg) {
    flog_t *l = arg;
    int np = l->base.npartitions;
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
        /* Take the batch: swap pending buffers and the ack list. */
        for (int p = 0; p < np; p++) {
            buf_t t = l->parts[p].writing;
            t.len = 0;
            l->parts[p].writing = l->parts[p].pending;
            l->parts[p].pending = t;
        }
        void **tmp = acks;
        size_t tcap = capacks, n = l->nacks;
        acks = l->acks;
        capacks = l->capacks;
        l->acks = tmp;
        l->capacks = tcap;
        l->nacks = 0;
        pthread_mutex_unlock(&l->mu);

        vlog_err_t err = VLOG_OK;
        for (int p = 0; p < np && err == VLOG_OK; p++) {
            fpart_t *fp = &l->parts[p];
            if (fp->writing.len == 0)
                continue;
            if (pwrite_all(fp->fd, fp->writing.data, fp->writing.len, fp->end) != 0 ||
                (l->fsync && fdatasync(fp->fd) != 0)) {
                log_error("log partition %d: write failed: %s; %zu votes not acknowledged", p,
                          strerror(errno), n);
                err = VLOG_UNAVAIL;
            }
        }
        if (err != VLOG_OK) {
            /* Cut what this round may have left so the next round does not
             * append after garbage. */
            for (int p = 0; p < np; p++) {
                fpart_t *fp = &l->parts[p];
                if (fp->writing.len && ftruncate(fp->fd, (off_t)fp->end) != 0)
                    tally_assert(!"cannot truncate the log after a failed write");
            }
        } else {
            for (int p = 0; p < np; p++) {
                fpart_t *fp = &l->parts[p];
                if (fp->writing.len == 0)
                    continue;
                fp->end += fp->writing.len;
                atomic_store_explicit(&fp->durable, fp->end, memory_order_release);
            }
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
    if (len == 0 || len > FRAME_MAX_PAYLOAD)
        return VLOG_ERR;
    if (!(l->flags & VLOG_F_WRITE))
        return VLOG_ERR;
    uint8_t hdr[FRAME_HDR];
    put_u32(hdr, (uint32_t)len);
    put_u32(hdr + 4, frame_sum(rec, (uint32_t)len));
    pthread_mutex_lock(&l->mu);
    fpart_t *fp = &l->parts[partition];
    if (l->stopping) {
        pthread_mutex_unlock(&l->mu);
        return VLOG_UNAVAIL;
    }
    if (l->inflight >= l->max_pending || fp->pending.len + FRAME_HDR + len > MAX_WRITE) {
        pthread_mutex_unlock(&l->mu);
        return VLOG_FULL;
    }
    buf_append(&fp->pending, hdr, FRAME_HDR);
    buf_append(&fp->pending, rec, len);
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

static int flog_flush(vlog_t *base, int timeout_ms) {
    flog_t *l = (flog_t *)base;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
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
    }
    for (int p = 0; p < l->base.npartitions; p++) {
        if (l->parts[p].fd >= 0)
            close(l->parts[p].fd);
        buf_free(&l->parts[p].pending);
        buf_free(&l->parts[p].writing);
    }
    if (l->lockfd >= 0)
        close(l->lockfd); /* releases the flock */
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->wake);
    pthread_cond_destroy(&l->drained);
    pthread_mutex_destroy(&l->rmu);
    pthread_cond_destroy(&l->rcond);
    free(l->acks);
    free(l->parts);
    free(l->dir);
    free(l);
}

static int flog_end_positions(vlog_t *base, uint64_t *ends, char *errstr, size_t esz) {
    (void)errstr;
    (void)esz;
    flog_t *l = (flog_t *)base;
    for (int p = 0; p < l->base.npartitions; p++)
        ends[p] = atomic_load_explicit(&l->parts[p].durable, memory_order_acquire);
    return 0;
}

static uint64_t flog_begin_position(vlog_t *base, int partition) {
    (void)base;
    (void)partition;
    return 0;
}

static void flog_reader_free(vlog_reader_t *rb);

static vlog_reader_t *flog_reader_new(vlog_t *base, const int *parts, const uint64_t *pos, int n,
                                      char *errstr, size_t esz) {
    flog_t *l = (flog_t *)base;
    freader_t *r = xcalloc(1, sizeof *r);
    r->base.log = base;
    r->n = n;
    r->parts = xmalloc(sizeof(int) * (size_t)(n ? n : 1));
    r->pos = xmalloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    r->buf = xmalloc(READ_CHUNK);
    r->done = xcalloc((size_t)(n ? n : 1), 1);
    for (int i = 0; i < n; i++) {
        r->parts[i] = parts[i];
        r->pos[i] = pos[i];
        uint64_t end = atomic_load(&l->parts[parts[i]].durable);
        if (pos[i] > end) {
            snprintf(errstr, esz,
                     "partition %d: start position %llu is past the end of the log (%llu): the "
                     "snapshot is newer than the log",
                     parts[i], (unsigned long long)pos[i], (unsigned long long)end);
            flog_reader_free(&r->base);
            return NULL;
        }
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
    for (int k = 0; k < r->n && delivered < max; k++) {
        int i = (r->next + k) % r->n;
        int p = r->parts[i];
        fpart_t *fp = &l->parts[p];
        if (r->done[i])
            continue;
        uint64_t end = atomic_load_explicit(&fp->durable, memory_order_acquire);
        while (r->pos[i] < end && delivered < max) {
            uint64_t want = end - r->pos[i];
            if (want > READ_CHUNK)
                want = READ_CHUNK;
            ssize_t got = pread_full(fp->fd, r->buf, (size_t)want, r->pos[i]);
            if (got < (ssize_t)FRAME_HDR) {
                snprintf(errstr, esz, "log partition %d: read at %llu: %s", p,
                         (unsigned long long)r->pos[i], got < 0 ? strerror(errno) : "short read");
                return -1;
            }
            size_t off = 0;
            while (off + FRAME_HDR <= (size_t)got && delivered < max) {
                uint32_t len = get_u32(r->buf + off);
                if (len == 0 || len > FRAME_MAX_PAYLOAD) {
                    snprintf(errstr, esz, "log partition %d: bad frame length at %llu", p,
                             (unsigned long long)(r->pos[i] + off));
                    return -1;
                }
                if (off + FRAME_HDR + len > (size_t)got)
                    break;
                const uint8_t *payload = r->buf + off + FRAME_HDR;
                if (frame_sum(payload, len) != get_u32(r->buf + off + 4)) {
                    snprintf(errstr, esz, "log partition %d: checksum mismatch at %llu", p,
                             (unsigned long long)(r->pos[i] + off));
                    return -1;
                }
                vlog_msg_t m = {p, r->pos[i] + off + FRAME_HDR + len, -1, payload, len};
                if (cb(arg, &m) != 0) {
                    r->done[i] = 1;
                    break;
                }
                off += FRAME_HDR + len;
                delivered++;
            }
            if (r->done[i]) {
                r->pos[i] += off;
                break;
            }
            if (off == 0) {
                snprintf(errstr, esz, "log partition %d: frame larger than the read buffer at %llu",
                         p, (unsigned long long)r->pos[i]);
                return -1;
            }
            r->pos[i] += off;
        }
    }
    r->next = (r->next + 1) % (r->n ? r->n : 1);
    if (delivered == 0 && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)timeout_ms * 1000000;
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_mutex_lock(&l->rmu);
        while (l->rgen == gen)
            if (pthread_cond_timedwait(&l->rcond, &l->rmu, &ts) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&l->rmu);
    }
    return delivered;
}

static void flog_reader_free(vlog_reader_t *rb) {
    freader_t *r = (freader_t *)rb;
    free(r->done);
    free(r->parts);
    free(r->pos);
    free(r->buf);
    free(r);
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

/* The META file pins the partition count: changing it would move voters to
 * other partitions and break one-vote-per-voter. */
static int check_meta(const char *dir, int partitions, char *errstr, size_t esz) {
    char path[4200], want[64];
    snprintf(path, sizeof path, "%s/META", dir);
    snprintf(want, sizeof want, "tally-log 1 partitions=%d\n", partitions);
    FILE *f = fopen(path, "r");
    if (!f) {
        char p0[4200];
        snprintf(p0, sizeof p0, "%s/p000.log", dir);
        if (errno == ENOENT && access(p0, F_OK) == 0) {
            snprintf(errstr, esz,
                     "%s is missing but the log has partition files: the partition count is "
                     "unknown (log.partitions may not match it); restore META (\"tally-log 1 partitions=N\")",
                     path);
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
    int n = 0;
    if (sscanf(have, "tally-log 1 partitions=%d", &n) != 1) {
        snprintf(errstr, esz, "%s: not a tally log (unreadable META)", path);
        return -1;
    }
    if (n != partitions) {
        snprintf(errstr, esz,
                 "log.partitions: the log in %s has %d partitions, config says %d; the partition "
                 "count of an existing log cannot change",
                 dir, n, partitions);
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
    l->lockfd = -1;
    l->fsync = c->log_fsync;
    l->group_us = c->log_group_commit_us;
    l->max_pending = (size_t)c->max_pending;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->wake, NULL);
    pthread_cond_init(&l->drained, NULL);
    pthread_mutex_init(&l->rmu, NULL);
    pthread_cond_init(&l->rcond, NULL);
    l->parts = xcalloc((size_t)l->base.npartitions, sizeof *l->parts);
    for (int p = 0; p < l->base.npartitions; p++)
        l->parts[p].fd = -1;

    char path[4200];
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
    if (check_meta(l->dir, l->base.npartitions, errstr, esz) != 0)
        goto fail;
    uint64_t *hints = xcalloc((size_t)l->base.npartitions, sizeof *hints);
    ckpt_read(l->dir, l->base.npartitions, hints);
    for (int p = 0; p < l->base.npartitions; p++) {
        snprintf(path, sizeof path, "%s/p%03d.log", l->dir, p);
        l->parts[p].fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (l->parts[p].fd < 0) {
            snprintf(errstr, esz, "%s: %s", path, strerror(errno));
            goto fail;
        }
        int64_t end = recover_partition(l->parts[p].fd, p, path, hints[p], errstr, esz);
        if (end < 0) {
            free(hints);
            goto fail;
        }
        l->parts[p].end = (uint64_t)end;
        atomic_store(&l->parts[p].durable, (uint64_t)end);
    }
    free(hints);
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
