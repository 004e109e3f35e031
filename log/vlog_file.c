/* The embedded vote log: one append-only file, log.dir/votes.log, holding
 * the frames of every partition interleaved in commit order.
 *
 * Frame, little-endian: u32 len | u32 checksum | u16 partition | u16 kind |
 * payload. The checksum is the low 32 bits of XXH3-64 of the payload seeded
 * with the length, the partition and the kind. Kind 0 is a record of the
 * partition (a vote, a poll's history); kind 1 (FRAME_COMMIT, partition 0,
 * an 8-byte payload: the round's record count) ends every group-commit
 * write. Readers skip commit frames. They make a damaged last record of an
 * acknowledged round visible: its bad bytes are followed by an intact
 * commit frame, so they are damage (refused), not a torn tail (cut), which
 * they looked like before (a bit flip in the last frame of the file). Logs
 * of format 2, written before commit frames, have none and read as they
 * did; the commit frames a format 3 tally appends to one are not needed
 * for what came before them (see LOG_FORMAT).
 *
 * One writer thread does group commit: it takes every append queued since its
 * last round, writes them with one write(), fdatasyncs once, checks that
 * votes.log is still the file it writes (one stat()), and only then
 * publishes the new durable end to readers and acknowledges the appends. One
 * file means one fsync per round however many partitions the round touched.
 * Readers never see past the durable end, so nothing the engine counts can
 * vanish in a crash.
 *
 * Partitions stay what the engine shards by: each reader scans the file and
 * delivers the frames of its own partitions. A position is a byte offset in
 * the file: "every frame of this partition before it has been delivered".
 *
 * Recovery at open scans (vlog_scan_fd) from the last checkpointed durable
 * end (CHECKPOINT, see ckpt_write), or from 0 without a trusted one. Only a
 * provable torn tail is cut: bad bytes after the last intact frame, with no
 * intact frame after them, no longer than one write. Anything else is
 * damage and the log refuses to open, naming where and how many intact
 * frames lie beyond (`tally log verify` / `tally log salvage`).
 *
 * Failed state: a failed write, fdatasync or truncate, or votes.log deleted
 * or replaced under the writer, stops the log taking writes: every append is
 * answered VLOG_UNAVAIL (503), the round that failed is never acknowledged,
 * vlog_health() says why, readers go on. After an I/O failure the writer
 * cuts the file back to the durable end and fdatasyncs, and retries that
 * every FAIL_RETRY_MS until it works; only then does it take writes again.
 * A vanished or replaced file stays failed until a restart (which refuses a
 * META without votes.log). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/endian.h"
#include "common/metrics.h"
#include "common/util.h"
#include "log/record.h"
#include "log/vlog_int.h"

/* 3: group-commit writes end with a commit frame (kind 1); 2: none. A
 * format 2 log is read as it is, and its META says 3 once this tally
 * opens it for writing (an older tally then refuses it by META, not by
 * the first commit frame it would call damage). */
#define LOG_FORMAT 3
#define LOG_FORMAT_OLDEST 2
#define FRAME_HDR 12
#define FRAME_MAX_PAYLOAD 65536
#define FRAME_MAX (FRAME_HDR + FRAME_MAX_PAYLOAD)
#define FRAME_COMMIT 1 /* kind: the end of one group-commit write */
#define COMMIT_PAYLOAD 8
#define COMMIT_FRAME (FRAME_HDR + COMMIT_PAYLOAD)
#define MAX_WRITE VLOG_MAX_WRITE
#define READ_CHUNK (1u << 20)
#define CKPT_INTERVAL_MS 1000
/* A writer idle this long after a round writes CHECKPOINT at once if it is
 * behind: the last votes of a burst are then under it too, so that a bit
 * flip in them is damage (refused), not a torn tail (cut, see recover()),
 * for a restart and for replay. */
#define CKPT_IDLE_MS 100
#define IDENT_INTERVAL_MS 500 /* an idle writer checks votes.log this often */
#define FAIL_RETRY_MS 250     /* a failed log retries its repair this often */
/* Readers (the engine's workers) are woken at most this often: under load a
 * commit every millisecond or two would otherwise wake every worker for each
 * (two context switches apiece on a busy core), for a freshness nobody sees
 * (the publisher renders every publisher.min_interval_ms at most). */
#define READER_WAKE_MS 5

typedef struct {
    vlog_t base;
    char *dir;
    char *path;
    int fd;
    int lockfd;
    int flags;
    int fsync;
    int group_us;     /* first gather step (log.group_commit_us) */
    int group_max_us; /* gather while votes arrive, up to this (log.group_commit_max_us) */
    size_t max_pending;
    uint64_t head; /* writer: file_head() of votes.log (0 while shorter than a header) */
    dev_t dev;     /* votes.log's identity at open */
    ino_t ino;
    uint64_t end;             /* writer: durable end of the file */
    uint64_t ckpt_end;        /* writer: the end CHECKPOINT holds (or open found) */
    _Atomic uint64_t durable; /* readers: never read past this */

    /* The failed state: 0 or the tally_err_t that caused it. Appends read
     * it without a lock; the writer thread alone sets and clears it. */
    _Atomic int failed;
    int fail_logged;     /* writer: this failure was logged */
    uint64_t fail_at_ms; /* writer: when the last repair was tried */
    pthread_mutex_t hmu; /* guards health */
    char health[512];

    pthread_mutex_t mu; /* guards pending, acks, inflight, stopping */
    pthread_cond_t wake;
    pthread_cond_t drained;
    /* A gather ends early once the round holds a vote of every client
     * (vlog_set_clients): appends signal `gathered` when nacks reaches
     * gather_target (0: no gather is waiting). */
    pthread_cond_t gathered; /* CLOCK_MONOTONIC */
    size_t gather_target;
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
    _Atomic uint64_t rgen; /* bumped (under rmu) when readers are woken */
} flog_t;

typedef struct {
    vlog_reader_t base;
    int n;
    int *parts;
    uint64_t *pos; /* [n] */
    uint8_t *done; /* [n]: the callback declined a record: deliver no more */
    int *mine;     /* [npartitions]: index into parts, or -1 */
    uint64_t scan; /* file offset the next poll reads from */
    uint8_t *buf;
} freader_t;

static uint32_t frame_sum(const uint8_t *p, uint32_t len, uint16_t partition, uint16_t kind) {
    return (uint32_t)XXH3_64bits_withSeed(
        p, len, (uint64_t)len | (uint64_t)partition << 32 | (uint64_t)kind << 48);
}

static int frame_is_commit(const uint8_t *p) {
    return le_get16(p + 10) == FRAME_COMMIT;
}

/* Checks the frame at p (avail bytes there). Returns its total length, 0 when
 * it needs more bytes than avail, or -1 with *why when it is bad. */
static int64_t frame_check(const uint8_t *p, size_t avail, int npartitions, const char **why) {
    if (avail < FRAME_HDR)
        return 0;
    uint32_t len = le_get32(p);
    uint16_t part = le_get16(p + 8), kind = le_get16(p + 10);
    if (len == 0 || len > FRAME_MAX_PAYLOAD) {
        *why = "bad frame length";
        return -1;
    }
    if (part >= npartitions || kind > FRAME_COMMIT ||
        (kind == FRAME_COMMIT && (part != 0 || len != COMMIT_PAYLOAD))) {
        *why = "bad frame header";
        return -1;
    }
    if (avail < FRAME_HDR + len)
        return 0;
    if (frame_sum(p + FRAME_HDR, len, part, kind) != le_get32(p + 4)) {
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
        if (w == 0) {
            errno = ENOSPC;
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

/* ---- the scan (see vlog.h) ----
 * One loop over a source of bytes: a buffer, or a file read through a
 * window that always holds a whole frame's worth past the current offset. */
typedef struct {
    const uint8_t *data; /* the buffer, or the window holding [wstart, wend) */
    uint64_t wstart, wend, size;
    int fd;        /* -1: data is the whole input */
    size_t wcap;   /* window capacity (fd) */
    uint8_t *wbuf; /* fd */
    int err;       /* errno of a failed read */
} scan_src_t;

/* Bytes at off: *avail of them (at most a whole frame's worth is needed). */
static const uint8_t *src_at(scan_src_t *s, uint64_t off, size_t *avail) {
    uint64_t want = s->size - off < FRAME_MAX ? s->size - off : FRAME_MAX;
    if (s->fd >= 0 && (off < s->wstart || off + want > s->wend)) {
        size_t n = (size_t)(s->size - off < s->wcap ? s->size - off : s->wcap);
        ssize_t got = pread_full(s->fd, s->wbuf, n, off);
        if (got < 0) {
            s->err = errno;
            got = 0;
        }
        s->wstart = off;
        s->wend = off + (uint64_t)got;
        if ((size_t)got < n) /* the file shrank (a writer cut a failed round) */
            s->size = s->wend;
        want = s->size - off < FRAME_MAX ? s->size - off : FRAME_MAX;
    }
    *avail = (size_t)want;
    return s->fd >= 0 ? s->wbuf + (off - s->wstart) : s->data + off;
}

static void scan_run(scan_src_t *src, uint64_t from, int np, vlog_scan_t *out) {
    memset(out, 0, sizeof *out);
    out->npartitions = np > 0 ? np : 0;
    out->part_frames = xcalloc((size_t)(np > 0 ? np : 1), sizeof *out->part_frames);
    out->from = out->valid_end = from;
    size_t capdmg = 0;
    uint64_t pos = from, bad_start = 0;
    int in_bad = 0;
    const char *bad_why = NULL;
    uint64_t *frames_before = NULL; /* [ndamage]: frames before each range's end */
    while (pos < src->size && !src->err) {
        size_t avail;
        const uint8_t *p = src_at(src, pos, &avail);
        if (src->err)
            break;
        const char *why = "incomplete frame";
        int64_t n = frame_check(p, avail, np, &why);
        if (n > 0) {
            if (in_bad) {
                if (out->ndamage == capdmg) {
                    capdmg = capdmg ? capdmg * 2 : 4;
                    out->damage = xrealloc(out->damage, capdmg * sizeof *out->damage);
                    frames_before = xrealloc(frames_before, capdmg * sizeof *frames_before);
                }
                frames_before[out->ndamage] = out->frames;
                out->damage[out->ndamage++] = (vlog_range_t){bad_start, pos, 0, bad_why};
                in_bad = 0;
            }
            if (frame_is_commit(p)) {
                out->commits++;
            } else {
                out->frames++;
                out->part_frames[le_get16(p + 8)]++;
            }
            pos += (uint64_t)n;
            out->valid_end = pos;
            continue;
        }
        if (!in_bad) {
            in_bad = 1;
            bad_start = pos;
            bad_why = why;
        }
        pos++; /* resynchronise: the next offset where a whole frame checks */
    }
    out->size = src->size < pos ? pos : src->size;
    if (src->err)
        out->size = pos;
    if (in_bad) {
        out->has_tail = 1;
        out->tail = (vlog_range_t){bad_start, out->size, 0, bad_why};
    }
    for (size_t k = 0; k < out->ndamage; k++)
        out->damage[k].frames_after = out->frames - frames_before[k];
    free(frames_before);
}

void vlog_scan_buf(const uint8_t *data, size_t size, int npartitions, vlog_scan_t *out) {
    scan_src_t src = {.data = data, .size = size, .fd = -1};
    scan_run(&src, 0, npartitions, out);
}

tally_err_t vlog_scan_fd_window(int fd, uint64_t from, int npartitions, size_t window,
                                vlog_scan_t *out, char *errstr, size_t esz) {
    struct stat st;
    memset(out, 0, sizeof *out);
    if (fstat(fd, &st) != 0) {
        snprintf(errstr, esz, "fstat: %s", strerror(errno));
        return TALLY_ERR_IO;
    }
    scan_src_t src = {.fd = fd, .size = (uint64_t)st.st_size, .wcap = window + FRAME_MAX};
    src.wbuf = xmalloc(src.wcap);
    if (from > src.size)
        from = src.size;
    scan_run(&src, from, npartitions, out);
    free(src.wbuf);
    if (src.err) {
        snprintf(errstr, esz, "read at %llu: %s", (unsigned long long)out->size, strerror(src.err));
        vlog_scan_free(out);
        return TALLY_ERR_IO;
    }
    return TALLY_OK;
}

tally_err_t vlog_scan_fd(int fd, uint64_t from, int npartitions, vlog_scan_t *out, char *errstr,
                         size_t esz) {
    return vlog_scan_fd_window(fd, from, npartitions, READ_CHUNK, out, errstr, esz);
}

void vlog_scan_free(vlog_scan_t *s) {
    free(s->part_frames);
    free(s->damage);
    memset(s, 0, sizeof *s);
}

int vlog_scan_clean(const vlog_scan_t *s) {
    return s->ndamage == 0 && (!s->has_tail || s->tail.end - s->tail.start <= MAX_WRITE);
}

/* The refusal for a scan that is not clean, naming the first damage. */
static void scan_refusal(const vlog_scan_t *s, const char *path, char *errstr, size_t esz) {
    if (s->ndamage > 0) {
        const vlog_range_t *d = &s->damage[0];
        char after[96];
        if (d->frames_after)
            snprintf(after, sizeof after, "with %llu intact frames after it",
                     (unsigned long long)d->frames_after);
        else /* only commit frames after it: its write was acknowledged */
            snprintf(after, sizeof after,
                     "with only commit frames after it (its write was "
                     "acknowledged)");
        snprintf(errstr, esz,
                 "%s: %s at offset %llu (%llu bad bytes) %s: this is corruption, not a torn "
                 "tail; refusing to open, nothing was changed (see `tally log verify` and `tally "
                 "log salvage`)",
                 path, d->why, (unsigned long long)d->start,
                 (unsigned long long)(d->end - d->start), after);
        return;
    }
    snprintf(errstr, esz,
             "%s: %s at offset %llu with %llu bytes after it: this is corruption, not a torn "
             "tail (one write is at most %u bytes); refusing to drop data, nothing was changed "
             "(see `tally log verify` and `tally log salvage`)",
             path, s->tail.why, (unsigned long long)s->tail.start,
             (unsigned long long)(s->tail.end - s->tail.start), MAX_WRITE);
}

/* ---- CHECKPOINT ----
 * The durable end, rewritten about once a second after a group commit.
 * Recovery scans from there instead of from the start of a possibly huge
 * file: everything before it was fsynced before the checkpoint was
 * written. "tally-ckpt FMT INODE END HEAD ID SUM": ID is the log id (see
 * vlog_id; it ties the checkpoint to this log, as META names it), INODE and
 * HEAD tie it to this very votes.log file: META is not rewritten when
 * votes.log alone is swapped or restored, so the id cannot tell those
 * apart. HEAD fingerprints the file (XXH3 of its first frame header, which
 * holds frame 0's checksum; 0 while the file is shorter), since inode
 * numbers are reused as soon as a file is deleted. A missing or damaged
 * checkpoint, one of another log or file, or one in the format before ids
 * (no ID field) means a full scan; one of this very file with an end past
 * the file's means the log lost acknowledged bytes: refused. */
static uint64_t file_head(int fd, uint64_t size) {
    uint8_t h[FRAME_HDR];
    if (size < FRAME_HDR || pread_full(fd, h, FRAME_HDR, 0) != FRAME_HDR)
        return 0;
    return XXH3_64bits(h, FRAME_HDR);
}

static void ckpt_write(flog_t *l) {
    char text[160 + VLOG_ID_MAX], path[4200];
    int n = snprintf(text, sizeof text, "tally-ckpt %d %llu %llu %016llx %s", LOG_FORMAT,
                     (unsigned long long)l->ino, (unsigned long long)l->end,
                     (unsigned long long)l->head, l->base.id);
    n += snprintf(text + n, sizeof text - (size_t)n, " %016llx\n",
                  (unsigned long long)XXH3_64bits(text, (size_t)n));
    snprintf(path, sizeof path, "%s/CHECKPOINT", l->dir);
    if (write_file_atomic(path, text, (size_t)n, 0) != 0)
        log_warn("log: cannot write %s: %s (recovery will scan the whole log)", path,
                 strerror(errno));
    else
        l->ckpt_end = l->end;
}

/* 1 with *end when CHECKPOINT is intact and names this log (id) and file
 * (inode, and the head when the file has one); 2 with *end when it names
 * this log and a file with the same head (or one too short to have a
 * head) under another inode: votes.log restored from a copy, whose size
 * still tells whether it lost durable bytes; else 0. */
static int ckpt_read(const char *dir, const char *id, int fd, const struct stat *st,
                     uint64_t *end_out) {
    char path[4200], text[200 + VLOG_ID_MAX], cid[VLOG_ID_MAX];
    snprintf(path, sizeof path, "%s/CHECKPOINT", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *sum = strrchr(text, ' ');
    int fmt = 0;
    unsigned long long ino = 0, end = 0, head = 0;
    int idend = 0;
    /* The format before ids has SUM where ID is: it reads as another log. */
    if (!sum ||
        sscanf(text, "tally-ckpt %d %llu %llu %llx %159s%n", &fmt, &ino, &end, &head, cid,
               &idend) != 5 ||
        text + idend != sum || strcmp(cid, id) != 0 || fmt < LOG_FORMAT_OLDEST ||
        fmt > LOG_FORMAT || strtoull(sum + 1, NULL, 16) != XXH3_64bits(text, (size_t)(sum - text)))
        return 0;
    uint64_t size = (uint64_t)st->st_size;
    if (end >= FRAME_HDR && size >= FRAME_HDR && head != file_head(fd, size))
        return 0; /* another file (that may have got the same inode number) */
    *end_out = end;
    return ino == (unsigned long long)st->st_ino ? 1 : 2;
}

/* Recovery at open: scans from the checkpoint (or 0), cuts a provable torn
 * tail when writing. Returns the valid end, or -1 with *err and errstr. */
static int64_t recover(flog_t *l, tally_err_t *err, char *errstr, size_t esz) {
    struct stat st;
    if (fstat(l->fd, &st) != 0) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", l->path, strerror(errno));
        return -1;
    }
    uint64_t size = (uint64_t)st.st_size, from = 0;
    int have_ckpt = ckpt_read(l->dir, l->base.id, l->fd, &st, &from);
    if (have_ckpt == 2 && from <= size) {
        /* A copy at least as long: its bytes are checked from the start
         * (the offset is not this file's to trust). */
        log_warn("log: %s is another file than CHECKPOINT names (a copy?): scanning all of it",
                 l->path);
    }
    if (have_ckpt && from > size) {
        *err = TALLY_ERR_STATE;
        snprintf(errstr, esz,
                 "%s is %llu bytes but %s/CHECKPOINT says %llu bytes of it were durable: the log "
                 "lost acknowledged votes (truncated, or restored from an older copy); refusing "
                 "to open. If this copy is the one to keep, remove CHECKPOINT",
                 l->path, (unsigned long long)size, l->dir, (unsigned long long)from);
        return -1;
    }
    uint64_t durable = have_ckpt ? from : 0; /* what CHECKPOINT says was synced */
    if (have_ckpt == 2)
        from = 0;
    /* A read-only open (replay) reads the whole log anyway: it checks all
     * of it first, so that damage refuses before anything is counted. */
    if (!(l->flags & VLOG_F_WRITE))
        from = 0;
    vlog_scan_t s;
    if ((*err = vlog_scan_fd(l->fd, from, l->base.npartitions, &s, errstr, esz)) != TALLY_OK)
        return -1;
    int bad_at_from =
        (s.ndamage && s.damage[0].start == from) || (s.has_tail && s.tail.start == from);
    if (from > 0 && bad_at_from) {
        /* The checkpoint does not point at a frame of this file: do not
         * trust it, scan everything. */
        log_warn("log: CHECKPOINT offset %llu is not a frame boundary; scanning the whole log",
                 (unsigned long long)from);
        vlog_scan_free(&s);
        if ((*err = vlog_scan_fd(l->fd, 0, l->base.npartitions, &s, errstr, esz)) != TALLY_OK)
            return -1;
    }
    int64_t end = -1;
    if (!vlog_scan_clean(&s)) {
        *err = TALLY_ERR_CORRUPT;
        scan_refusal(&s, l->path, errstr, esz);
        goto out;
    }
    end = (int64_t)s.valid_end;
    if (s.has_tail && s.tail.start < durable) {
        /* A torn write lies past everything synced before it: bad bytes
         * below the end CHECKPOINT names were acknowledged. */
        *err = TALLY_ERR_CORRUPT;
        snprintf(errstr, esz,
                 "%s: %s at offset %llu, below the end %s/CHECKPOINT says was durable (%llu): "
                 "acknowledged votes are damaged, this is not a torn tail; refusing to open, "
                 "nothing was changed (see `tally log verify` and `tally log salvage`)",
                 l->path, s.tail.why, (unsigned long long)s.tail.start, l->dir,
                 (unsigned long long)durable);
        end = -1;
        goto out;
    }
    if (s.has_tail) {
        uint64_t tail = s.tail.end - s.tail.start;
        if (!(l->flags & VLOG_F_WRITE)) {
            log_warn("log: %s has a torn tail of %llu bytes at offset %llu (%s; never "
                     "acknowledged): not read, left in place (read-only)",
                     l->path, (unsigned long long)tail, (unsigned long long)s.tail.start,
                     s.tail.why);
            goto out;
        }
        log_warn("log: dropping torn tail of %llu bytes at offset %llu (%s); it was never "
                 "acknowledged",
                 (unsigned long long)tail, (unsigned long long)s.tail.start, s.tail.why);
        if (ftruncate(l->fd, (off_t)s.tail.start) != 0 || fdatasync(l->fd) != 0) {
            *err = TALLY_ERR_IO;
            snprintf(errstr, esz, "%s: truncate: %s", l->path, strerror(errno));
            end = -1;
        }
    }
out:
    vlog_scan_free(&s);
    return end;
}

/* ---- the failed state ---- */

static void fail_set(flog_t *l, tally_err_t why, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_set(flog_t *l, tally_err_t why, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&l->hmu);
    snprintf(l->health, sizeof l->health, "%s", msg);
    pthread_mutex_unlock(&l->hmu);
    /* A vanished file stays the cause; an I/O error does not replace it. */
    if (atomic_load(&l->failed) != TALLY_ERR_STATE)
        atomic_store(&l->failed, (int)why);
    l->fail_at_ms = mono_ms();
    if (!l->fail_logged) {
        log_error("log: %s; votes are answered 503 until it is fixed", msg);
        l->fail_logged = 1;
    }
}

/* Does votes.log still hold every durable byte? A file cut under the writer
 * (truncate, a copy over it in place) lost acknowledged votes; the next
 * write would only fill the cut with a hole of zeros. */
static int size_check(flog_t *l, const struct stat *st) {
    if ((uint64_t)st->st_size >= l->end)
        return 0;
    fail_set(l, TALLY_ERR_STATE,
             "%s shrank to %llu bytes under the writer, below the %llu bytes that were durable: "
             "acknowledged votes were cut away; the log cannot take votes; restore it and "
             "restart",
             l->path, (unsigned long long)st->st_size, (unsigned long long)l->end);
    return -1;
}

/* Is votes.log still the file this writer writes, whole? One stat(). */
static int ident_check(flog_t *l) {
    struct stat st;
    int there = stat(l->path, &st) == 0;
    if (there && st.st_dev == l->dev && st.st_ino == l->ino)
        return size_check(l, &st);
    struct stat fst;
    nlink_t links = fstat(l->fd, &fst) == 0 ? fst.st_nlink : 0;
    if (!there)
        fail_set(l, TALLY_ERR_STATE,
                 "%s was deleted or moved while in use (link count %lu): the log cannot take "
                 "votes; restore it and restart",
                 l->path, (unsigned long)links);
    else
        fail_set(l, TALLY_ERR_STATE,
                 "%s was replaced by another file while in use: the log cannot take votes; "
                 "restart",
                 l->path);
    return -1;
}

/* After an I/O failure: cut the file back to the durable end and make that
 * durable, so that the next round does not append after garbage. With
 * may_clear, and FAIL_RETRY_MS after the last failure, the failed state ends
 * when both work (and votes.log is still the file). */
static void fail_repair(flog_t *l, int may_clear) {
    if (atomic_load(&l->failed) == TALLY_ERR_STATE)
        return; /* vanished or replaced: only a restart helps */
    if (may_clear && mono_ms() - l->fail_at_ms < FAIL_RETRY_MS)
        return;
    struct stat st; /* cutting "back" a file shorter than end would grow it */
    if (fstat(l->fd, &st) == 0 && size_check(l, &st) != 0)
        return;
    if (ftruncate(l->fd, (off_t)l->end) != 0) {
        fail_set(l, TALLY_ERR_IO, "%s: cannot cut a failed write back to %llu: %s", l->path,
                 (unsigned long long)l->end, strerror(errno));
        return;
    }
    if (fdatasync(l->fd) != 0) {
        fail_set(l, TALLY_ERR_IO, "%s: fdatasync after cutting a failed write: %s", l->path,
                 strerror(errno));
        return;
    }
    if (!may_clear || ident_check(l) != 0)
        return;
    log_info("log: %s takes writes again (cut back to %llu)", l->path, (unsigned long long)l->end);
    atomic_store(&l->failed, TALLY_OK);
}

/* Metrics of the group commit (common/metrics.h), registered once. */
static metric_t *m_fsync_ns, *m_batch;
static void flog_metrics_init(void) {
    metrics_t *m = metrics_default();
    m_fsync_ns =
        metrics_histogram(m, "tally_log_fsync_seconds", "fdatasync of one group commit (file log)",
                          NULL, METRICS_LATENCY_NS, METRICS_LATENCY_NS_N, 1e9);
    m_batch = metrics_histogram(
        m, "tally_log_group_commit_votes",
        "records (votes, poll history) written and synced by one group commit (file log)", NULL,
        METRICS_BATCH_SIZES, METRICS_BATCH_SIZES_N, 1);
}

/* One group commit round of n appends in l->writing. */
static vlog_err_t writer_round(flog_t *l, size_t n) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, flog_metrics_init);
    metric_observe(m_batch, n);
    if (atomic_load(&l->failed)) {
        fail_repair(l, 1);
        if (atomic_load(&l->failed))
            return VLOG_UNAVAIL; /* appended before the failure: never written */
    }
    struct stat st;
    if (fstat(l->fd, &st) == 0 && size_check(l, &st) != 0)
        return VLOG_UNAVAIL; /* writing at end would leave a hole where votes were */
    if (l->end == 0 && l->writing.len >= FRAME_HDR) /* the file's first frame */
        l->head = XXH3_64bits(l->writing.data, FRAME_HDR);
    if (pwrite_all(l->fd, l->writing.data, l->writing.len, l->end) != 0) {
        fail_set(l, TALLY_ERR_IO, "%s: write failed: %s; %zu votes not acknowledged", l->path,
                 strerror(errno), n);
        fail_repair(l, 0);
        return VLOG_UNAVAIL;
    }
    /* After a failed fdatasync what reached the disk is unknown: the round
     * is not acknowledged and is cut away, and the log stays failed until a
     * cut and a sync both work. */
    uint64_t t0 = metrics_now_ns();
    int synced = l->fsync ? fdatasync(l->fd) : 0;
    if (l->fsync)
        metric_observe(m_fsync_ns, metrics_now_ns() - t0);
    if (synced != 0) {
        fail_set(l, TALLY_ERR_IO, "%s: fdatasync failed: %s; %zu votes not acknowledged", l->path,
                 strerror(errno), n);
        fail_repair(l, 0);
        return VLOG_UNAVAIL;
    }
    /* Durable, but in the file everybody reads? A deleted or replaced
     * votes.log would take votes that no restart can find. */
    if (ident_check(l) != 0)
        return VLOG_UNAVAIL;
    l->fail_logged = 0;
    return VLOG_OK;
}

/* The number of votes after which nobody can join the round: one from each
 * client (vlog_set_clients), or never (SIZE_MAX) when that is unknown.
 * @locks mu */
static size_t round_full_at(const flog_t *l) {
    const _Atomic long *clients = atomic_load(&l->base.clients);
    long n = clients ? atomic_load_explicit(clients, memory_order_relaxed) : 0;
    return n > 0 ? (size_t)n : SIZE_MAX;
}

/* Waits until the monotonic deadline *ts or until the round holds a vote
 * of every client: 1 for the latter. @locks mu (dropped while waiting) */
static int gather_until(flog_t *l, const struct timespec *ts) {
    for (;;) {
        l->gather_target = round_full_at(l);
        if (l->nacks >= l->gather_target || l->stopping)
            break;
        if (pthread_cond_timedwait(&l->gathered, &l->mu, ts) != 0)
            break; /* the deadline */
    }
    int full = l->nacks >= l->gather_target;
    l->gather_target = 0;
    return full;
}

static struct timespec mono_deadline(long ns) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec += ns % 1000000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* Lets more votes join this round's fsync: waits group_us and, if votes
 * came meanwhile, up to the rest of group_max_us more. A lone vote waits
 * group_us, as before; under load a round grows until one fdatasync (whose
 * CPU cost is per round, not per vote) serves every connection that is
 * waiting, instead of them splitting into cohorts that each pay one. Both
 * waits end as soon as the round holds a vote of every client that could
 * send one (closed-loop clients all back): then nobody can join, and a
 * longer wait would only add latency.
 * @locks mu held on entry and on return (dropped while waiting) */
static void gather(flog_t *l) {
    long first = (long)l->group_us * 1000, rest = (long)(l->group_max_us - l->group_us) * 1000;
    size_t seen = l->nacks;
    struct timespec ts = mono_deadline(first);
    if (gather_until(l, &ts))
        return;
    /* Nothing came (no one else is waiting to join), or appends would soon
     * be refused as FULL: go now. */
    if (rest <= 0 || l->stopping || l->nacks == seen || l->inflight >= l->max_pending / 2 ||
        l->pending.len > MAX_WRITE / 2)
        return;
    ts = mono_deadline(rest);
    gather_until(l, &ts);
}

/* Ends a round's write with its commit frame (see the top of the file). */
static void commit_frame(buf_t *w, size_t n) {
    uint8_t f[COMMIT_FRAME];
    le_put64(f + FRAME_HDR, (uint64_t)n);
    le_put32(f, COMMIT_PAYLOAD);
    le_put32(f + 4, frame_sum(f + FRAME_HDR, COMMIT_PAYLOAD, 0, FRAME_COMMIT));
    le_put16(f + 8, 0);
    le_put16(f + 10, FRAME_COMMIT);
    buf_append(w, f, sizeof f);
}

/* Broadcast outside rmu: a woken reader would only block on it again. */
static void wake_readers(flog_t *l) {
    pthread_mutex_lock(&l->rmu);
    atomic_fetch_add(&l->rgen, 1);
    pthread_mutex_unlock(&l->rmu);
    pthread_cond_broadcast(&l->rcond);
}

static void *writer_main(void *arg) {
    flog_t *l = arg;
    thread_name("log");
    uint64_t last_ckpt = mono_ms(), last_ident = mono_ms(), woke_ms = 0, last_round = 0;
    uint64_t idle_ckpt_at = UINT64_MAX; /* l->end an idle checkpoint was tried for */
    long anticipate_ns = 0;             /* wait this long for the next round to fill */
    int wake_owed = 0;                  /* durable data the readers have not been woken for */
    void **acks = NULL;
    size_t capacks = 0;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        int anticipated = 0; /* this round was waited for already */
        if (l->nacks == 0 && !l->stopping && anticipate_ns > 0) {
            /* Busy: wait for the next round right away (see anticipate). */
            struct timespec ts = mono_deadline(anticipate_ns);
            gather_until(l, &ts);
            anticipated = 1;
        }
        anticipate_ns = 0;
        while (l->nacks == 0 && !l->stopping) {
            anticipated = 0; /* nothing came: the next vote gathers as usual */
            int failed = atomic_load(&l->failed) != TALLY_OK;
            int wait_ms = failed ? FAIL_RETRY_MS : IDENT_INTERVAL_MS;
            if (wake_owed) {
                uint64_t since = mono_ms() - woke_ms;
                wait_ms = since >= READER_WAKE_MS ? 0 : READER_WAKE_MS - (int)since;
            }
            /* l->end and ckpt_end are this thread's own. */
            int ckpt_owed = l->fsync && !failed && l->end != l->ckpt_end && l->end != idle_ckpt_at;
            if (ckpt_owed) {
                uint64_t since = mono_ms() - last_round;
                int w = since >= CKPT_IDLE_MS ? 0 : CKPT_IDLE_MS - (int)since;
                if (w < wait_ms)
                    wait_ms = w;
            }
            struct timespec ts = deadline_in_ms(wait_ms);
            if (wait_ms > 0)
                pthread_cond_timedwait(&l->wake, &l->mu, &ts);
            if (wake_owed && mono_ms() - woke_ms >= READER_WAKE_MS) {
                wake_owed = 0;
                woke_ms = mono_ms();
                pthread_mutex_unlock(&l->mu);
                wake_readers(l);
                pthread_mutex_lock(&l->mu);
                continue;
            }
            if (ckpt_owed && l->nacks == 0 && !l->stopping &&
                mono_ms() - last_round >= CKPT_IDLE_MS) {
                idle_ckpt_at = l->end; /* tried once: a failure only warns */
                pthread_mutex_unlock(&l->mu);
                ckpt_write(l);
                last_ckpt = mono_ms();
                pthread_mutex_lock(&l->mu);
                continue;
            }
            if (l->nacks == 0 && !l->stopping &&
                (failed || mono_ms() - last_ident >= IDENT_INTERVAL_MS)) {
                /* Idle: notice a vanished file, or repair a failed one,
                 * without waiting for a vote. */
                pthread_mutex_unlock(&l->mu);
                if (failed)
                    fail_repair(l, 1);
                else
                    ident_check(l);
                last_ident = mono_ms();
                pthread_mutex_lock(&l->mu);
            }
        }
        if (l->nacks == 0) {
            if (wake_owed) {
                pthread_mutex_unlock(&l->mu);
                wake_readers(l);
                pthread_mutex_lock(&l->mu);
            }
            break; /* stopping and drained */
        }
        if (l->group_us > 0 && !l->stopping && !(anticipated && l->nacks > 0))
            gather(l);
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

        commit_frame(&l->writing, n);
        vlog_err_t err = writer_round(l, n);
        last_ident = last_round = mono_ms();
        if (err == VLOG_OK) {
            l->end += l->writing.len;
            atomic_store_explicit(&l->durable, l->end, memory_order_release);
        }
        /* Answers first: a woken reader would run before them. */
        for (size_t i = 0; i < n; i++)
            l->base.ack(acks[i], err);
        if (err == VLOG_OK) {
            uint64_t now = mono_ms();
            wake_owed = 1;
            if (now - woke_ms >= READER_WAKE_MS) {
                wake_owed = 0;
                woke_ms = now;
                wake_readers(l);
            }
            if (l->fsync && now - last_ckpt >= CKPT_INTERVAL_MS) {
                ckpt_write(l);
                last_ckpt = mono_ms();
            }
        }

        pthread_mutex_lock(&l->mu);
        l->inflight -= n;
        pthread_cond_broadcast(&l->drained);
        /* Anticipate: when every client had a vote in this round (closed-
         * loop clients that each wait for their answer), the next round
         * will fill the same way. Waiting for it on `gathered` now, instead
         * of sleeping on `wake` until its first vote and then gathering,
         * saves a wake-up and a sleep of this thread per round on a loaded
         * core. The wait is the gather's own longest (group_max_us), and a
         * round that does not fill by then goes as it is. */
        if (err == VLOG_OK && l->group_us > 0 && n >= 2 && n >= round_full_at(l))
            anticipate_ns = (long)l->group_max_us * 1000;
    }
    pthread_mutex_unlock(&l->mu);
    free(acks);
    return NULL;
}

static vlog_err_t flog_append(vlog_t *base, int partition, const uint8_t *rec, size_t len,
                              const vlog_meta_t *meta, void *opaque) {
    (void)meta; /* one file, no keys: a frame holds the partition */
    flog_t *l = (flog_t *)base;
    if (len == 0 || len > FRAME_MAX_PAYLOAD || !(l->flags & VLOG_F_WRITE))
        return VLOG_ERR;
    if (atomic_load_explicit(&l->failed, memory_order_relaxed))
        return VLOG_UNAVAIL;
    uint8_t hdr[FRAME_HDR];
    le_put32(hdr, (uint32_t)len);
    le_put32(hdr + 4, frame_sum(rec, (uint32_t)len, (uint16_t)partition, 0));
    le_put16(hdr + 8, (uint16_t)partition);
    le_put16(hdr + 10, 0);
    pthread_mutex_lock(&l->mu);
    if (l->stopping) {
        pthread_mutex_unlock(&l->mu);
        return VLOG_UNAVAIL;
    }
    if (l->inflight >= l->max_pending ||
        l->pending.len + FRAME_HDR + len > MAX_WRITE - COMMIT_FRAME) {
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
    else if (l->nacks == l->gather_target) /* every client is in: the round may go */
        pthread_cond_signal(&l->gathered);
    pthread_mutex_unlock(&l->mu);
    return VLOG_OK;
}

static tally_err_t flog_health(vlog_t *base, char *errstr, size_t esz) {
    flog_t *l = (flog_t *)base;
    tally_err_t e = (tally_err_t)atomic_load(&l->failed);
    if (e != TALLY_OK) {
        pthread_mutex_lock(&l->hmu);
        snprintf(errstr, esz, "%s", l->health);
        pthread_mutex_unlock(&l->hmu);
    }
    return e;
}

static int flog_flush(vlog_t *base, int timeout_ms) {
    flog_t *l = (flog_t *)base;
    struct timespec ts = deadline_in_ms(timeout_ms);
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
        pthread_cond_signal(&l->gathered); /* a gather under way ends now */
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->writer, NULL);
        if (l->fsync && !atomic_load(&l->failed) && l->end != l->ckpt_end)
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
    pthread_cond_destroy(&l->gathered);
    pthread_cond_destroy(&l->drained);
    pthread_mutex_destroy(&l->rmu);
    pthread_cond_destroy(&l->rcond);
    pthread_mutex_destroy(&l->hmu);
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
            snprintf(errstr, esz, "reader: partition %d is out of range or listed twice", parts[i]);
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

/* Progress messages: nothing of the reader's partitions lies before to. */
static void progress_to(freader_t *r, vlog_msg_cb *cb, void *arg, uint64_t to) {
    for (int i = 0; i < r->n; i++) {
        if (!r->done[i] && r->pos[i] < to) {
            vlog_msg_t m = {r->parts[i], to, -1, NULL, 0};
            if (cb(arg, &m) != 0)
                r->done[i] = 1;
            else
                r->pos[i] = to;
        }
    }
}

static int flog_reader_poll(vlog_reader_t *rb, vlog_msg_cb *cb, void *arg, int max, int timeout_ms,
                            char *errstr, size_t esz) {
    freader_t *r = (freader_t *)rb;
    flog_t *l = (flog_t *)rb->log;
    /* Before durable: a commit after this load bumps rgen, so the wait
     * below cannot miss it. */
    uint64_t gen = atomic_load(&l->rgen);

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
            uint64_t at = r->scan + off, next = at + (uint64_t)n;
            /* A commit frame is skipped: the progress message at the end of
             * the poll takes every partition past it. (Not one at each: a
             * log of one vote a write made a message per write and
             * partition, each kept by the engine until the poll ended.) A
             * consumer that stops at an end taken between writes gets a
             * message past it, as before, and counts itself there. */
            int i = frame_is_commit(r->buf + off) ? -1 : r->mine[le_get16(r->buf + off + 8)];
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
    progress_to(r, cb, arg, r->scan);
    if (delivered == 0 && timeout_ms > 0 && r->scan >= end) {
        struct timespec ts = deadline_in_ms(timeout_ms);
        pthread_mutex_lock(&l->rmu);
        while (atomic_load(&l->rgen) == gen)
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
    .health = flog_health,
};

/* ---- META, LOCK and open ----
 * META pins the format and the partition count: changing the count would
 * move voters to other partitions and break one-vote-per-voter. It is
 * written once, after votes.log exists, so that a META without votes.log
 * always means a log that was deleted or moved. It also holds the log id
 * (see vlog_id): "tally-log 2 partitions=N id=file:<32 hex>". A META
 * written before ids ("tally-log 2 partitions=N") is read as it is: the log
 * gets a legacy id derived from its first frame (legacy_id), and META is
 * rewritten with a new id only when votes.log is empty, which holds no
 * vote a snapshot could have counted. The frame format is the same, so
 * LOG_FORMAT stays 2 (an older tally reads such a META and ignores the
 * id). */
tally_err_t vlog_file_new_id(char *out, size_t size) {
    uint8_t r[16];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = getrandom(r + got, sizeof r - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return TALLY_ERR_IO;
        got += (size_t)k;
    }
    int n = snprintf(out, size, "file:");
    for (size_t i = 0; i < sizeof r && n > 0 && (size_t)n < size; i++)
        n += snprintf(out + n, size - (size_t)n, "%02x", r[i]);
    return TALLY_OK;
}

int vlog_file_meta_text(int npartitions, const char *id, char *out, size_t size) {
    return snprintf(out, size, "tally-log %d partitions=%d id=%s\n", LOG_FORMAT, npartitions, id);
}

/* The id of a log whose META has none: its first frame header (which holds
 * frame 0's checksum) and the partition count. Only logs of an older tally
 * have one; "legacy:empty" when votes.log has no header yet. */
static void legacy_id(int fd, uint64_t size, int npartitions, char *out, size_t osz) {
    uint8_t h[FRAME_HDR];
    if (size < FRAME_HDR || pread_full(fd, h, FRAME_HDR, 0) != FRAME_HDR)
        snprintf(out, osz, "legacy:empty");
    else
        snprintf(out, osz, "legacy:%016llx",
                 (unsigned long long)XXH3_64bits_withSeed(h, FRAME_HDR, (uint64_t)npartitions));
}

/* Writes META for a log of n partitions with a new id into id. */
static int meta_write_new(const char *dir, int n, char *id, size_t idsz, tally_err_t *err,
                          char *errstr, size_t esz) {
    char meta[4200], text[64 + VLOG_ID_MAX];
    snprintf(meta, sizeof meta, "%s/META", dir);
    if (vlog_file_new_id(id, idsz) != TALLY_OK) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: getrandom: %s", meta, strerror(errno));
        return -1;
    }
    int tn = vlog_file_meta_text(n, id, text, sizeof text);
    if (fsync_dir(dir) != 0 || write_file_atomic(meta, text, (size_t)tn, 1) != 0) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", meta, strerror(errno));
        return -1;
    }
    return 0;
}

/* Rewrites the META of an older format's log as this format's, keeping
 * its partition count and id (none: a legacy log keeps none), before the
 * first commit frame is written. */
static int meta_upgrade(const char *dir, int n, const char *id, tally_err_t *err, char *errstr,
                        size_t esz) {
    char meta[4200], text[64 + VLOG_ID_MAX];
    snprintf(meta, sizeof meta, "%s/META", dir);
    int tn = id[0] ? vlog_file_meta_text(n, id, text, sizeof text)
                   : snprintf(text, sizeof text, "tally-log %d partitions=%d\n", LOG_FORMAT, n);
    if (write_file_atomic(meta, text, (size_t)tn, 1) != 0 || fsync_dir(dir) != 0) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", meta, strerror(errno));
        return -1;
    }
    log_info("log: %s: format %d now (group-commit writes end with a commit frame)", meta,
             LOG_FORMAT);
    return 0;
}

/* 1 with *n and *fmt when META is there and of a format this tally reads,
 * 0 when there is none, -1 with *err and errstr. id (may be NULL): the log
 * id, "" for a META without one. */
static int meta_load(const char *dir, int *n, int *fmt_out, char *id, size_t idsz, tally_err_t *err,
                     char *errstr, size_t esz) {
    char path[4200];
    snprintf(path, sizeof path, "%s/META", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", path, strerror(errno));
        return -1;
    }
    char have[64 + VLOG_ID_MAX] = "", mid[VLOG_ID_MAX] = "";
    if (!fgets(have, sizeof have, f))
        have[0] = '\0';
    fclose(f);
    int fmt = 0, at = 0, idend = 0;
    if (sscanf(have, "tally-log %d partitions=%d%n", &fmt, n, &at) != 2 || *n <= 0 ||
        (strncmp(have + at, " id=", 4) == 0 &&
         (sscanf(have + at, " id=file:%32[0-9a-f]%n", mid, &idend) != 1 || strlen(mid) != 32 ||
          (have[at + idend] != '\n' && have[at + idend] != '\0')))) {
        *err = TALLY_ERR_CORRUPT;
        snprintf(errstr, esz, "%s: not a tally log (unreadable META)", path);
        return -1;
    }
    if (fmt < LOG_FORMAT_OLDEST || fmt > LOG_FORMAT) {
        *err = TALLY_ERR_STATE;
        snprintf(errstr, esz, "%s: log format %d, this tally reads formats %d to %d%s", path, fmt,
                 LOG_FORMAT_OLDEST, LOG_FORMAT,
                 fmt > LOG_FORMAT ? " (a newer tally wrote it: run that one)" : "");
        return -1;
    }
    if (fmt_out)
        *fmt_out = fmt;
    if (id)
        snprintf(id, idsz, "%s%s", mid[0] ? "file:" : "", mid);
    return 1;
}

/* Locks: a writer holds LOCK (created if need be) and votes.log itself
 * exclusively; a reader holds votes.log shared, so that a read-only open
 * writes nothing, not even LOCK, and still cannot race a writer's cut of a
 * torn tail. 0, or -1 with *err and errstr. */
static int lock_fd(int fd, const char *dir, int exclusive, tally_err_t *err, char *errstr,
                   size_t esz) {
    if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
        return 0;
    int e = errno;
    *err = e == EWOULDBLOCK ? TALLY_ERR_STATE : TALLY_ERR_IO;
    snprintf(errstr, esz, "log.dir %s: %s", dir,
             e == EWOULDBLOCK ? "in use by another tally process (stop it first)" : strerror(e));
    return -1;
}

static int lock_take(const char *dir, tally_err_t *err, char *errstr, size_t esz) {
    char path[4200];
    snprintf(path, sizeof path, "%s/LOCK", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (lock_fd(fd, dir, 1, err, errstr, esz) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

vlog_t *vlog_file_open(const tally_config_t *c, int flags, vlog_ack_cb *ack, tally_err_t *err,
                       char *errstr, size_t esz) {
    flog_t *l = xcalloc(1, sizeof *l);
    l->base.ops = &flog_ops;
    l->base.npartitions = c->log_partitions;
    l->base.ack = ack;
    l->base.caps = VLOG_CAP_LOCAL_ENDS;
    l->dir = xstrdup(c->log_dir);
    l->flags = flags;
    l->fd = l->lockfd = -1;
    l->fsync = c->log_fsync;
    l->group_us = c->log_group_commit_us;
    l->group_max_us = c->log_group_commit_max_us;
    l->max_pending = (size_t)c->max_pending;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->wake, NULL);
    pthread_cond_init(&l->drained, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->gathered, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&l->rmu, NULL);
    pthread_cond_init(&l->rcond, NULL);
    pthread_mutex_init(&l->hmu, NULL);
    buf_t pb = {0};
    buf_printf(&pb, "%s/votes.log", l->dir);
    l->path = pb.data;
    int writing = (flags & VLOG_F_WRITE) != 0, n = 0, have_meta;
    struct stat st;
    int64_t end;
    *err = TALLY_ERR_INTERNAL;

    if (writing && mkdir_p(l->dir) != 0) {
        *err = TALLY_ERR_CONFIG;
        snprintf(errstr, esz, "log.dir %s: %s", l->dir, strerror(errno));
        goto fail;
    }
    errno = 0;
    if (!writing && (stat(l->dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
        *err = TALLY_ERR_STATE;
        snprintf(errstr, esz, "log.dir %s: no vote log there (%s)", l->dir,
                 errno ? strerror(errno) : "not a directory");
        goto fail;
    }
    if (writing && (l->lockfd = lock_take(l->dir, err, errstr, esz)) < 0)
        goto fail;
    int fmt = LOG_FORMAT;
    if ((have_meta = meta_load(l->dir, &n, &fmt, l->base.id, sizeof l->base.id, err, errstr, esz)) <
        0)
        goto fail;
    if (have_meta && n != l->base.npartitions) {
        *err = TALLY_ERR_CONFIG;
        snprintf(errstr, esz,
                 "log.partitions: the log in %s has %d partitions, config says %d; the partition "
                 "count of an existing log cannot change",
                 l->dir, n, l->base.npartitions);
        goto fail;
    }
    int have_log = stat(l->path, &st) == 0;
    if (!have_log && errno != ENOENT) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", l->path, strerror(errno));
        goto fail;
    }
    if (have_meta && !have_log) {
        *err = TALLY_ERR_STATE;
        snprintf(errstr, esz,
                 "%s is missing but %s/META says a log was created here: the log was deleted "
                 "or moved; restore it (to start a new, empty log, move the whole log.dir away)",
                 l->path, l->dir);
        goto fail;
    }
    if (!have_meta && have_log && st.st_size > 0) {
        *err = TALLY_ERR_STATE;
        snprintf(errstr, esz,
                 "%s/META is missing but %s exists: the partition count is unknown "
                 "(log.partitions may not match it); restore META from a backup, or write "
                 "\"tally-log %d partitions=%d\" (no log id: snapshots taken with one are "
                 "then not used, and partitions are recounted)",
                 l->dir, l->path, LOG_FORMAT, l->base.npartitions);
        goto fail;
    }
    if (!have_meta && !writing) {
        *err = TALLY_ERR_STATE;
        snprintf(errstr, esz, "log.dir %s holds no vote log (no META)", l->dir);
        goto fail;
    }
    l->fd = open(l->path, writing ? O_RDWR | O_CREAT | O_CLOEXEC : O_RDONLY | O_CLOEXEC, 0644);
    if (l->fd < 0) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", l->path, strerror(errno));
        goto fail;
    }
    if (lock_fd(l->fd, l->dir, writing, err, errstr, esz) != 0)
        goto fail;
    /* A new log: votes.log first, then META. An empty log of an older
     * tally gets an id too: it holds nothing a snapshot could have counted. */
    if (fstat(l->fd, &st) != 0) {
        *err = TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", l->path, strerror(errno));
        goto fail;
    }
    if (writing && (!have_meta || (!l->base.id[0] && st.st_size == 0))) {
        if (have_meta)
            log_info("log: %s/META has no log id and votes.log is empty: writing a new id", l->dir);
        if (meta_write_new(l->dir, l->base.npartitions, l->base.id, sizeof l->base.id, err, errstr,
                           esz) != 0)
            goto fail;
    }
    if (!l->base.id[0]) {
        legacy_id(l->fd, (uint64_t)st.st_size, l->base.npartitions, l->base.id, sizeof l->base.id);
        l->base.id_legacy = 1;
    }
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    if ((end = recover(l, err, errstr, esz)) < 0)
        goto fail;
    l->end = (uint64_t)end;
    atomic_store(&l->durable, (uint64_t)end);
    l->ckpt_end = l->end;
    l->head = file_head(l->fd, l->end); /* once: a checkpoint reads nothing */
    if (writing && have_meta && fmt < LOG_FORMAT &&
        meta_upgrade(l->dir, l->base.npartitions, l->base.id_legacy ? "" : l->base.id, err, errstr,
                     esz) != 0)
        goto fail;
    if (writing) {
        if (fsync_dir(l->dir) != 0) {
            *err = TALLY_ERR_IO;
            snprintf(errstr, esz, "log.dir %s: fsync: %s", l->dir, strerror(errno));
            goto fail;
        }
        if (pthread_create(&l->writer, NULL, writer_main, l) != 0) {
            snprintf(errstr, esz, "log: cannot start the writer thread");
            goto fail;
        }
        l->writer_started = 1;
    }
    *err = TALLY_OK;
    return &l->base;
fail:
    flog_close(&l->base);
    return NULL;
}

/* ---- examining a log without opening it ---- */

tally_err_t vlog_file_examine(const tally_config_t *c, vlog_examine_t *x, char *errstr,
                              size_t esz) {
    memset(x, 0, sizeof *x);
    x->fd = x->lockfd = -1;
    tally_err_t err = TALLY_ERR_INTERNAL;
    struct stat st;
    snprintf(x->path, sizeof x->path, "%s/votes.log", c->log_dir);
    errno = 0;
    if (stat(c->log_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(errstr, esz, "log.dir %s: no vote log there (%s)", c->log_dir,
                 errno ? strerror(errno) : "not a directory");
        return TALLY_ERR_STATE;
    }
    char id[VLOG_ID_MAX] = "";
    int have = meta_load(c->log_dir, &x->npartitions, NULL, id, sizeof id, &err, errstr, esz);
    if (have < 0)
        goto fail;
    if (have == 0) {
        log_warn("%s/META is missing: assuming log.partitions = %d from the config", c->log_dir,
                 c->log_partitions);
        x->npartitions = c->log_partitions;
    } else if (x->npartitions != c->log_partitions) {
        log_warn("%s/META says %d partitions, the config %d: scanning with META's", c->log_dir,
                 x->npartitions, c->log_partitions);
    }
    if ((x->fd = open(x->path, O_RDONLY | O_CLOEXEC)) < 0) {
        err = errno == ENOENT ? TALLY_ERR_STATE : TALLY_ERR_IO;
        snprintf(errstr, esz, "%s: %s", x->path, strerror(errno));
        goto fail;
    }
    if (lock_fd(x->fd, c->log_dir, 0, &err, errstr, esz) != 0) {
        if (err != TALLY_ERR_STATE)
            goto fail;
        x->live = 1; /* a writer holds it */
    }
    if ((err = vlog_scan_fd(x->fd, 0, x->npartitions, &x->scan, errstr, esz)) != TALLY_OK)
        goto fail;
    struct stat fst;
    uint64_t end = 0;
    if (have && id[0] && fstat(x->fd, &fst) == 0 &&
        ckpt_read(c->log_dir, id, x->fd, &fst, &end) != 0)
        x->durable = end;
    return TALLY_OK;
fail:
    vlog_file_examine_close(x);
    return err;
}

void vlog_file_examine_close(vlog_examine_t *x) {
    if (x->fd >= 0)
        close(x->fd);
    if (x->lockfd >= 0)
        close(x->lockfd);
    x->fd = x->lockfd = -1;
    vlog_scan_free(&x->scan);
}
