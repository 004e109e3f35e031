/* tsan: the file log's writer thread, concurrent appenders and readers. */
/* log/vlog.h over log/vlog_file.c, the embedded log: one file, votes.log,
 * with every partition's frames interleaved in commit order. Appends and
 * acks, reading back (positions are offsets in the shared file, progress
 * messages), durability across reopen, torn-tail recovery, CHECKPOINT,
 * corruption, the META and LOCK files, back-pressure. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <xxhash.h>

#include "log/vlog.h"
#include "log/vlog_int.h"
#include "unit_helpers.h"

#define NPARTS 3 /* setup's log.partitions */
#define FRAME_HDR 12
#define LOG_FORMAT 3 /* what META and CHECKPOINT say now; 2: before commit frames */
#define MAX_PAYLOAD 65536
#define MAX_WRITE (16u << 20)

static char *dir;
static tally_config_t *conf;

static atomic_ulong acks_ok, acks_bad;

/* ---- fdatasync, counted, held or made to fail on demand ----
 * The log is linked into this binary, so its calls land here. The writer
 * thread is the only caller. While the sync gate is closed, fdatasync waits:
 * the round is in the file but not yet durable. */
static atomic_int fdatasync_calls, fdatasync_fail;
static pthread_mutex_t sync_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sync_cv = PTHREAD_COND_INITIALIZER;
static int sync_closed, sync_entered;

int fdatasync(int fd) {
    atomic_fetch_add(&fdatasync_calls, 1);
    pthread_mutex_lock(&sync_mu);
    sync_entered++;
    pthread_cond_broadcast(&sync_cv);
    while (sync_closed)
        pthread_cond_wait(&sync_cv, &sync_mu);
    pthread_mutex_unlock(&sync_mu);
    if (atomic_load(&fdatasync_fail)) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}

/* ---- pwrite and ftruncate, failing on demand ----
 * Only the log's writer calls them on votes.log (the test's own file
 * helpers use stdio). 0: pass through; else fail with that errno. */
static atomic_int pwrite_fail, ftruncate_fail;
static atomic_int pwrite_calls, ftruncate_calls;

static atomic_int pwrite_partial; /* > 0: the next failing call writes this much first */

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    atomic_fetch_add(&pwrite_calls, 1);
    int e = atomic_load(&pwrite_fail);
    int part = atomic_exchange(&pwrite_partial, 0);
    if (e && part > 0 && (size_t)part < n)
        return (ssize_t)syscall(SYS_pwrite64, fd, buf, (size_t)part, off);
    if (e) {
        errno = e;
        return -1;
    }
    return (ssize_t)syscall(SYS_pwrite64, fd, buf, n, off);
}

int ftruncate(int fd, off_t len) {
    atomic_fetch_add(&ftruncate_calls, 1);
    int e = atomic_load(&ftruncate_fail);
    if (e) {
        errno = e;
        return -1;
    }
    return (int)syscall(SYS_ftruncate, fd, len);
}

static void sync_gate(int closed) {
    pthread_mutex_lock(&sync_mu);
    sync_closed = closed;
    sync_entered = 0;
    pthread_cond_broadcast(&sync_cv);
    pthread_mutex_unlock(&sync_mu);
}

/* The ack gate: while closed, the writer thread blocks in its first ack,
 * which holds the log's state still (nothing is acknowledged, nothing
 * leaves `inflight`, the next round is not taken). */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_closed, gate_entered;

static void on_ack(void *opaque, vlog_err_t err) {
    (void)opaque;
    pthread_mutex_lock(&gate_mu);
    gate_entered++;
    pthread_cond_broadcast(&gate_cv);
    while (gate_closed)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    if (err == VLOG_OK)
        atomic_fetch_add(&acks_ok, 1);
    else
        atomic_fetch_add(&acks_bad, 1);
}

static void gate_close(void) {
    pthread_mutex_lock(&gate_mu);
    gate_closed = 1;
    gate_entered = 0;
    pthread_mutex_unlock(&gate_mu);
}

static void gate_open(void) {
    pthread_mutex_lock(&gate_mu);
    gate_closed = 0;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static void wait_entered(pthread_mutex_t *mu, pthread_cond_t *cv, const int *entered,
                         const char *what) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10 * TMOUT_MULT;
    pthread_mutex_lock(mu);
    int rc = 0;
    while (*entered == 0 && rc == 0)
        rc = pthread_cond_timedwait(cv, mu, &ts);
    int n = *entered;
    pthread_mutex_unlock(mu);
    cr_assert_gt(n, 0, "the writer never got to %s", what);
}

/* Waits until the writer is inside an ack. */
static void gate_wait_entered(void) {
    wait_entered(&gate_mu, &gate_cv, &gate_entered, "an ack");
}

/* Waits until the writer is inside fdatasync. */
static void sync_wait_entered(void) {
    wait_entered(&sync_mu, &sync_cv, &sync_entered, "fdatasync");
}

/* ---- the model: what votes.log should hold, frame by frame ----
 * Appends from one thread are committed in the order they were made, so the
 * file is the model's frames in order. Each group-commit write ends with a
 * commit frame (kind 1, COMMIT_FRAME bytes), and where the rounds fall is
 * the writer's to choose: model_sync reads the file (with this file's own
 * parsing) and puts each model frame where it lies; frames not written yet
 * follow the last one end to end. */
#define COMMIT_FRAME (FRAME_HDR + 8)
typedef struct {
    int p, i; /* payload(p, i) */
    uint64_t start, end;
} mframe_t;

static mframe_t *model;
static int nmodel, capmodel;
static uint64_t model_tail; /* the end of the commit frames after the last frame synced */
static int model_synced;    /* model frames [0, model_synced) are where the file has them */

static void setup(void) {
    dir = tmpdir_new();
    conf = config_new_defaults();
    char *ld = path_join(dir, "log");
    conf_set_str(&conf->log_dir, ld);
    free(ld);
    conf->log_partitions = NPARTS;
    conf->log_group_commit_us = 0;
    conf->log_fsync = 0;
    atomic_store(&acks_ok, 0);
    atomic_store(&acks_bad, 0);
    atomic_store(&fdatasync_calls, 0);
    atomic_store(&fdatasync_fail, 0);
    atomic_store(&pwrite_fail, 0);
    atomic_store(&pwrite_partial, 0);
    atomic_store(&ftruncate_fail, 0);
    nmodel = model_synced = 0;
    model_tail = 0;
    gate_open();
    sync_gate(0);
    tally_log_quiet = 1;
}

static void teardown(void) {
    gate_open();
    sync_gate(0);
    config_free(conf);
    conf = NULL;
    tmpdir_free(dir);
    dir = NULL;
    free(model);
    model = NULL;
    nmodel = capmodel = 0;
}

TestSuite(vlog, .init = setup, .fini = teardown);

static vlog_t *open_log(int flags) {
    char err[1024];
    vlog_t *l = vlog_open(conf, flags, on_ack, NULL, err, sizeof err);
    cr_assert_not_null(l, "vlog_open: %s", err);
    return l;
}

static vlog_t *open_rw(void) {
    return open_log(VLOG_F_WRITE | VLOG_F_READ);
}

/* Caller frees. */
static char *log_file(const char *name) {
    char rel[64];
    snprintf(rel, sizeof rel, "log/%s", name);
    return path_join(dir, rel);
}
static char *votes_path(void) {
    return log_file("votes.log");
}

static long long votes_size(void) {
    char *f = votes_path();
    long long n = file_size(f);
    free(f);
    return n;
}

/* Record i of partition p: a recognizable payload of varying length. */
static size_t payload(int p, int i, uint8_t *out) {
    size_t n = (size_t)snprintf((char *)out, 64, "p%d-r%d-", p, i);
    size_t pad = (size_t)((i * 37 + p * 11) % 150);
    memset(out + n, 'a' + (i % 26), pad);
    return n + pad;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void model_sync(void) {
    char *path = votes_path();
    size_t len = 0;
    uint8_t *f = (uint8_t *)file_read(path, &len);
    free(path);
    if (!f)
        return;
    uint64_t off = 0;
    int j = 0;
    uint8_t want[256];
    while (off + FRAME_HDR <= len) {
        uint32_t n = get32(f + off);
        int part = f[off + 8] | f[off + 9] << 8, kind = f[off + 10] | f[off + 11] << 8;
        if (off + FRAME_HDR + n > len)
            break;
        if (kind == 1) {
            off += FRAME_HDR + n;
            if (j == model_synced && j > 0)
                model_tail = off;
            continue;
        }
        /* By partition and length: a test's flipped payload bit moves nothing. */
        if (j >= nmodel || part != model[j].p || n != payload(model[j].p, model[j].i, want))
            break; /* not the model's (a damaged header, or frames a test wrote) */
        model[j].start = off;
        model[j].end = off += FRAME_HDR + n;
        if (++j > model_synced) {
            model_synced = j;
            model_tail = off;
        }
    }
    free(f);
    for (int k = model_synced; k < nmodel; k++) {
        model[k].start = k ? model[k - 1].end : 0;
        if (k == model_synced && k > 0)
            model[k].start = model_tail;
        model[k].end = model[k].start + FRAME_HDR + payload(model[k].p, model[k].i, want);
    }
}

/* The commit frames in votes.log, walked with this file's own parsing;
 * every frame must parse, and the last one be a commit frame. */
static int votes_commits(void) {
    char *path = votes_path();
    size_t len = 0;
    uint8_t *f = (uint8_t *)file_read(path, &len);
    free(path);
    int n = 0, last_kind = -1;
    uint64_t off = 0;
    while (f && off + FRAME_HDR <= len) {
        uint32_t plen = get32(f + off);
        last_kind = f[off + 10] | f[off + 11] << 8;
        if (last_kind == 1) {
            cr_assert_eq(plen, 8, "a commit frame of %u bytes", plen);
            n++;
        }
        off += FRAME_HDR + plen;
    }
    cr_assert_eq(off, len, "frames do not fill votes.log");
    cr_assert(len == 0 || last_kind == 1, "votes.log does not end with a commit frame");
    free(f);
    return n;
}

/* Where the model's frames end in the file: the last one's end, and the
 * commit frame after it once written. */
static uint64_t model_end(void) {
    model_sync();
    if (!nmodel)
        return 0;
    return model_synced == nmodel ? model_tail : model[nmodel - 1].end;
}

static void model_add(int p, int i) {
    uint8_t b[256];
    if (nmodel == capmodel) {
        capmodel = capmodel ? capmodel * 2 : 256;
        model = xrealloc(model, sizeof *model * (size_t)capmodel);
    }
    /* Where it would go after the frames known so far: model_sync knows. */
    uint64_t start = nmodel ? model[nmodel - 1].end : 0;
    if (nmodel && nmodel == model_synced)
        start = model_tail;
    model[nmodel++] = (mframe_t){p, i, start, start + FRAME_HDR + payload(p, i, b)};
}

/* The first k frames of the model that belong to partition p end here
 * (0 for k == 0). */
static uint64_t model_part_end(int p, int k) {
    model_sync();
    uint64_t end = 0;
    for (int j = 0; j < nmodel && k > 0; j++)
        if (model[j].p == p) {
            end = model[j].end;
            k--;
        }
    cr_assert_eq(k, 0, "the model has fewer frames of partition %d", p);
    return end;
}

/* Index of the model frame that starts at off. */
static int model_at(uint64_t off) {
    model_sync();
    for (int j = 0; j < nmodel; j++)
        if (model[j].start == off)
            return j;
    cr_assert_fail("no frame starts at %llu", (unsigned long long)off);
    return -1;
}

/* Waits (up to 10 s) for vlog_health to be want; returns its message. */
static const char *wait_health(vlog_t *l, tally_err_t want) {
    static char msg[512];
    uint64_t deadline = mono_ms() + 10000 * TMOUT_MULT;
    tally_err_t e;
    while ((e = vlog_health(l, msg, sizeof msg)) != want) {
        cr_assert_lt(mono_ms(), deadline, "health %s, want %s", tally_err2str(e),
                     tally_err2str(want));
        tiny_pause();
    }
    if (want == TALLY_OK)
        msg[0] = '\0';
    return msg;
}

static void append_ok(vlog_t *l, int p, const uint8_t *rec, size_t n) {
    vlog_err_t err = vlog_append(l, p, rec, n, NULL, NULL);
    cr_assert_eq(err, VLOG_OK, "append: %s", vlog_err2str(err));
}

/* Appends payload(p, from..to-1) and adds them to the model. */
static void append_n(vlog_t *l, int p, int from, int to) {
    uint8_t buf[256];
    for (int i = from; i < to; i++) {
        append_ok(l, p, buf, payload(p, i, buf));
        model_add(p, i);
    }
}

/* Appends `rounds` records to each of partitions [0, np) taking turns:
 * p0 r0, p1 r0, p2 r0, p0 r1, ... */
static void append_interleaved(vlog_t *l, int np, int rounds) {
    for (int i = 0; i < rounds; i++)
        for (int p = 0; p < np; p++)
            append_n(l, p, i, i + 1);
}

static void flush_ok(vlog_t *l) {
    cr_assert_eq(vlog_flush(l, 10000 * TMOUT_MULT), 0, "flush timed out");
    model_sync();
}

static uint64_t durable_end(vlog_t *l) {
    uint64_t ends[64];
    char err[256];
    int np = vlog_partitions(l);
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0, "%s", err);
    for (int p = 1; p < np; p++)
        cr_assert_eq(ends[p], ends[0], "partitions of one file end at different positions");
    return ends[0];
}

/* ---- reading ---- */

typedef struct {
    int partition;
    uint64_t next_pos;
    size_t len;
    uint8_t *data;
} msg_t;

typedef struct {
    msg_t *msgs;
    int n, cap;
    int decline_at; /* decline the record with this index, -1: never */
    int decline_part;
    int progress;         /* progress-only messages seen */
    uint64_t pos[64];     /* per partition: the last next_pos seen (or the start) */
    uint8_t declined[64]; /* per partition: a record was declined */
    uint64_t last;        /* next_pos of the last record, any partition */
} sink_t;

/* Readers hand messages in file order, each partition's positions only
 * grow, and nothing comes for a partition after it declined. */
static int sink_cb(void *arg, const vlog_msg_t *m) {
    sink_t *s = arg;
    int p = m->partition;
    cr_assert(p >= 0 && p < 64, "partition %d", p);
    cr_assert_not(s->declined[p], "partition %d: a message after a decline", p);
    cr_assert_gt(m->next_pos, s->pos[p], "partition %d: position %llu after %llu", p,
                 (unsigned long long)m->next_pos, (unsigned long long)s->pos[p]);
    cr_assert_eq(m->ts_ms, -1, "the file log has no timestamps of its own");
    if (!m->rec) {
        cr_assert_eq(m->len, 0);
        s->progress++;
        s->pos[p] = m->next_pos;
        return 0; /* progress only */
    }
    if (s->decline_at >= 0 && p == s->decline_part && s->n == s->decline_at) {
        s->declined[p] = 1;
        return 1;
    }
    cr_assert_gt(m->next_pos, s->last, "records out of file order");
    s->last = m->next_pos;
    s->pos[p] = m->next_pos;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->msgs = xrealloc(s->msgs, sizeof *s->msgs * (size_t)s->cap);
    }
    msg_t *d = &s->msgs[s->n++];
    d->partition = p;
    d->next_pos = m->next_pos;
    cr_assert(m->len > 0 && m->len <= MAX_PAYLOAD);
    d->len = m->len;
    d->data = xmalloc(m->len);
    memcpy(d->data, m->rec, m->len);
    return 0;
}

/* Forgets the messages, keeps the settings. */
static void sink_clear(sink_t *s) {
    for (int i = 0; i < s->n; i++)
        free(s->msgs[i].data);
    s->n = 0;
}

static void sink_free(sink_t *s) {
    sink_clear(s);
    free(s->msgs);
    s->msgs = NULL;
    s->cap = 0;
}

/* Gets the sink ready for a new reader of partitions [0, 64) from pos
 * (NULL: 0). */
static void sink_begin(sink_t *s, const uint64_t *pos) {
    for (int p = 0; p < 64; p++) {
        s->pos[p] = pos ? pos[p] : 0;
        s->declined[p] = 0;
    }
    s->last = 0;
}

/* A reader of parts[0..n) from pos[0..n) (NULL: 0). */
static vlog_reader_t *reader_new(vlog_t *l, const int *parts, const uint64_t *pos, int n,
                                 sink_t *s) {
    uint64_t zero[64] = {0}, all[64] = {0};
    char err[512];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos ? pos : zero, n, err, sizeof err);
    cr_assert_not_null(r, "reader: %s", err);
    for (int i = 0; i < n; i++)
        all[parts[i]] = pos ? pos[i] : 0;
    sink_begin(s, all);
    return r;
}

/* Polls until a poll delivers nothing. Returns how many were delivered. */
static int drain(vlog_reader_t *r, sink_t *s, int max) {
    char err[512];
    int got, total = 0;
    while ((got = vlog_reader_poll(r, sink_cb, s, max, 0, err, sizeof err)) > 0) {
        cr_assert_leq(got, max);
        total += got;
    }
    cr_assert_eq(got, 0, "poll: %s", err);
    return total;
}

/* Reads partitions [0, np) from pos (NULL: 0) until nothing is left; then
 * every partition has reached the durable end, records or not. */
static void read_all(vlog_t *l, const uint64_t *pos, sink_t *s) {
    int np = vlog_partitions(l);
    int parts[64];
    for (int p = 0; p < np; p++)
        parts[p] = p;
    vlog_reader_t *r = reader_new(l, parts, pos, np, s);
    drain(r, s, 1000);
    uint64_t end = durable_end(l);
    for (int p = 0; p < np; p++)
        cr_assert_eq(s->pos[p], end, "partition %d stopped at %llu, the end is %llu", p,
                     (unsigned long long)s->pos[p], (unsigned long long)end);
    vlog_reader_free(r);
}

/* The sink's records of partition p are exactly the model's frames of p that
 * start at or after from, in order, with next_pos the offset after each
 * frame in the shared file. Returns how many. */
static int expect_part_from(const sink_t *s, int p, uint64_t from) {
    model_sync();
    uint8_t want[256];
    int k = 0, n = 0;
    for (int j = 0; j < nmodel; j++) {
        const mframe_t *f = &model[j];
        if (f->p != p || f->start < from)
            continue;
        while (k < s->n && s->msgs[k].partition != p)
            k++;
        cr_assert_lt(k, s->n, "partition %d: record %d (frame at %llu) was not read", p, f->i,
                     (unsigned long long)f->start);
        const msg_t *m = &s->msgs[k++];
        size_t wl = payload(p, f->i, want);
        cr_assert_eq(m->len, wl, "partition %d record %d: length %zu, want %zu", p, f->i, m->len,
                     wl);
        cr_assert_eq(memcmp(m->data, want, wl), 0, "partition %d record %d differs", p, f->i);
        cr_assert_eq(m->next_pos, f->end, "partition %d record %d: next_pos %llu, want %llu", p,
                     f->i, (unsigned long long)m->next_pos, (unsigned long long)f->end);
        n++;
    }
    while (k < s->n && s->msgs[k].partition != p)
        k++;
    cr_assert_eq(k, s->n, "partition %d: a record that was never appended (next_pos %llu)", p,
                 k < s->n ? (unsigned long long)s->msgs[k].next_pos : 0ull);
    return n;
}

/* The sink holds partition p's first n records of the model, no more. */
static void expect_partition(const sink_t *s, int p, int n) {
    int got = expect_part_from(s, p, 0);
    cr_assert_eq(got, n, "partition %d: %d records, want %d", p, got, n);
}

/* The sink holds exactly the model, every partition. */
static void expect_model(const sink_t *s) {
    int total = 0;
    for (int p = 0; p < 64; p++)
        total += expect_part_from(s, p, 0);
    cr_assert_eq(total, nmodel);
    cr_assert_eq(s->n, nmodel);
}

static int sink_count(const sink_t *s, int p) {
    int n = 0;
    for (int k = 0; k < s->n; k++)
        n += s->msgs[k].partition == p;
    return n;
}

/* ---- CHECKPOINT ---- */

/* The text vlog_file.c writes: "tally-ckpt FMT INODE END HEAD SUM\n",
 * INODE being votes.log's and HEAD the XXH3 of its first 12 bytes (0 when
 * shorter). */
static unsigned long long votes_ino(void) {
    char *f = path_join(dir, "log/votes.log");
    struct stat st;
    unsigned long long ino = stat(f, &st) == 0 ? (unsigned long long)st.st_ino : 0;
    free(f);
    return ino;
}

static unsigned long long votes_head(void) {
    char *f = path_join(dir, "log/votes.log");
    size_t len = 0;
    char *text = file_read(f, &len);
    unsigned long long h = text && len >= FRAME_HDR ? XXH3_64bits(text, FRAME_HDR) : 0;
    free(text);
    free(f);
    return h;
}

/* The log id META holds ("file:<32 hex>"), read here from the file. */
static void meta_id(char *out, size_t size) {
    char *f = log_file("META");
    char *text = file_read(f, NULL);
    free(f);
    cr_assert_not_null(text, "no META");
    const char *at = strstr(text, " id=");
    cr_assert_not_null(at, "META without an id: '%s'", text);
    cr_assert_eq(sscanf(at, " id=%159s", out), 1);
    cr_assert_eq(strlen(out), 5 + 32, "id '%s'", out);
    (void)size;
    free(text);
}

static void ckpt_text(char *out, size_t size, int fmt, unsigned long long end) {
    char id[160];
    meta_id(id, sizeof id);
    int n = snprintf(out, size, "tally-ckpt %d %llu %llu %016llx %s", fmt, votes_ino(), end,
                     end >= FRAME_HDR ? votes_head() : 0ull, id);
    snprintf(out + n, size - (size_t)n, " %016llx\n",
             (unsigned long long)XXH3_64bits(out, (size_t)n));
}

static void ckpt_put(const char *text) {
    char *f = log_file("CHECKPOINT");
    file_write_str(f, text);
    free(f);
}

/* The END of the CHECKPOINT file, checked; -1 when there is none. */
static long long ckpt_get(void) {
    char *f = log_file("CHECKPOINT");
    char *text = file_read(f, NULL);
    free(f);
    if (!text)
        return -1;
    unsigned long long ino, end;
    cr_assert_eq(sscanf(text, "tally-ckpt 3 %llu %llu", &ino, &end), 2, "CHECKPOINT: '%s'", text);
    cr_assert_eq(ino, votes_ino(), "CHECKPOINT of another inode");
    char want[320];
    ckpt_text(want, sizeof want, LOG_FORMAT, end);
    cr_assert_str_eq(text, want);
    free(text);
    return (long long)end;
}

/* ---- basics ---- */

Test(vlog, names_and_errors) {
    cr_assert_str_eq(vlog_err2str(VLOG_OK), "ok");
    cr_assert_str_eq(vlog_err2str(VLOG_FULL), "log queue full");
    cr_assert_str_eq(vlog_err2str(VLOG_UNAVAIL), "log unavailable");
    cr_assert_str_eq(vlog_err2str(VLOG_ERR), "log error");
    cr_assert_str_eq(vlog_err2str((vlog_err_t)42), "unknown");
    vlog_t *l = open_rw();
    cr_assert_str_eq(vlog_name(l), "file");
    cr_assert_eq(vlog_partitions(l), NPARTS);
    for (int p = 0; p < NPARTS; p++)
        cr_assert_eq(vlog_begin_position(l, p), 0);
    vlog_close(l);
    vlog_close(NULL);
    /* One file for every partition, and no per-partition files. */
    char *ld = log_file("");
    cr_assert_eq(dir_count(ld, "votes.log"), 1);
    cr_assert_eq(dir_count(ld, ".log"), 1);
    free(ld);
}

Test(vlog, append_ack_and_read_back_in_order) {
    vlog_t *l = open_rw();
    const int n[NPARTS] = {300, 1, 77};
    /* Interleave the partitions. */
    for (int i = 0; i < 300; i++)
        for (int p = 0; p < NPARTS; p++)
            if (i < n[p])
                append_n(l, p, i, i + 1);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 378);
    cr_assert_eq(atomic_load(&acks_bad), 0);

    /* Every partition ends where the one file ends. */
    uint64_t ends[NPARTS];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    for (int p = 0; p < NPARTS; p++)
        cr_assert_eq(ends[p], model_end(), "partition %d", p);
    cr_assert_eq((uint64_t)votes_size(), model_end());
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 378);
    for (int p = 0; p < NPARTS; p++)
        expect_partition(&s, p, n[p]);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq(atomic_load(&acks_ok), 378, "acks after close");
}

Test(vlog, empty_log_reads_nothing) {
    vlog_t *l = open_rw();
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 0);
    cr_assert_eq(s.progress, 0, "progress reported on an empty log");
    uint64_t ends[NPARTS] = {9, 9, 9};
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    cr_assert(ends[0] == 0 && ends[1] == 0 && ends[2] == 0);
    cr_assert_eq(vlog_flush(l, 0), 0, "nothing in flight");
    vlog_close(l);
    cr_assert_eq(votes_size(), 0);
}

Test(vlog, durable_across_reopen) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 30);
    append_n(l, 2, 0, 20);
    append_n(l, 0, 30, 50);
    flush_ok(l);
    vlog_close(l);

    for (int round = 0; round < 2; round++) {
        l = open_log(round == 0 ? VLOG_F_READ : VLOG_F_WRITE | VLOG_F_READ);
        cr_assert_eq(durable_end(l), model_end());
        sink_t s = {.decline_at = -1};
        read_all(l, NULL, &s);
        expect_partition(&s, 0, 50);
        expect_partition(&s, 1, 0);
        expect_partition(&s, 2, 20);
        sink_free(&s);
        vlog_close(l);
    }

    /* Appends after a reopen go after the old records. */
    l = open_rw();
    append_n(l, 1, 0, 5);
    append_n(l, 0, 50, 60);
    flush_ok(l);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 60);
    expect_partition(&s, 1, 5);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq((uint64_t)votes_size(), model_end());
}

Test(vlog, close_drains_pending_appends) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 1000);
    append_n(l, 1, 0, 500);
    vlog_close(l); /* no flush */
    cr_assert_eq(atomic_load(&acks_ok), 1500, "every accepted append is acknowledged once");
    l = open_log(VLOG_F_READ);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 1000);
    expect_partition(&s, 1, 500);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, group_commit_path) {
    conf->log_group_commit_us = 500;
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 70);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 210);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, one_fsync_per_group_commit_whatever_the_partitions) {
    /* The point of the one file: a round that touches every partition
     * costs one fdatasync, not one per partition. */
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    gate_close();
    append_n(l, 0, 0, 1);
    gate_wait_entered(); /* round 1 is written; the writer waits in its ack */
    atomic_store(&fdatasync_calls, 0);
    append_interleaved(l, NPARTS, 1); /* round 2: one record per partition... */
    append_n(l, 0, 1, 3);
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 6);
    cr_assert_eq(atomic_load(&fdatasync_calls), 1, "%d fdatasyncs for one round",
                 atomic_load(&fdatasync_calls));
    /* and with fsync off, none. */
    vlog_close(l);
    conf->log_fsync = 0;
    l = open_rw();
    atomic_store(&fdatasync_calls, 0);
    append_interleaved(l, NPARTS, 3);
    flush_ok(l);
    cr_assert_eq(atomic_load(&fdatasync_calls), 0);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

Test(vlog, votes_that_keep_arriving_during_the_gather_share_one_fdatasync) {
    /* The first step is 40 ms; votes come at 0, 20, 100 and 200 ms, all
     * within group_commit_max_us: one round, one fdatasync. A fixed 40 ms
     * window (the old writer) made three rounds of them. */
    conf->log_fsync = 1;
    conf->log_group_commit_us = 40000;
    conf->log_group_commit_max_us = 400000;
    vlog_t *l = open_rw();
    atomic_store(&fdatasync_calls, 0);
    append_n(l, 0, 0, 1);
    sleep_ms(20);
    append_n(l, 1, 0, 1);
    sleep_ms(80);
    append_n(l, 2, 0, 1);
    sleep_ms(100);
    append_n(l, 0, 1, 2);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 4);
    cr_assert_eq(atomic_load(&fdatasync_calls), 1, "%d fdatasyncs for votes of one gather",
                 atomic_load(&fdatasync_calls));
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, close_ends_a_gather_under_way_and_still_writes_its_round) {
    /* A 20 s gather: close must not wait it out, and the vote it holds is
     * written and acknowledged before close returns. */
    conf->log_fsync = 1;
    conf->log_group_commit_us = 20000000;
    conf->log_group_commit_max_us = 40000000;
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 1);
    sleep_ms(50); /* the writer is in the gather by now */
    uint64_t t0 = mono_ms();
    vlog_close(l);
    cr_assert_lt(mono_ms() - t0, 5000 * TMOUT_MULT, "close waited %llu ms",
                 (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(atomic_load(&acks_ok), 1, "the gathered vote was not acknowledged");
    l = open_rw();
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, a_lone_vote_waits_only_the_first_gather_step) {
    /* Nothing joins it: it is written after group_commit_us (20 ms), not
     * after group_commit_max_us (20 s). */
    conf->log_fsync = 1;
    conf->log_group_commit_us = 20000;
    conf->log_group_commit_max_us = 20000000;
    vlog_t *l = open_rw();
    uint64_t t0 = mono_ms();
    append_n(l, 0, 0, 1);
    flush_ok(l);
    cr_assert_lt(mono_ms() - t0, 5000 * TMOUT_MULT, "a lone vote waited %llu ms",
                 (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(atomic_load(&acks_ok), 1);
    vlog_close(l);
}

Test(vlog, a_round_with_a_vote_from_every_client_goes_without_waiting_out_the_gather) {
    /* Three clients (vlog_set_clients), each with one vote in flight:
     * nobody else can join, so the round is written at once, not after the
     * 20 s gather; with a fourth client that has not voted, it waits. */
    conf->log_fsync = 1;
    conf->log_group_commit_us = 20000000;
    conf->log_group_commit_max_us = 40000000;
    _Atomic long clients = 3;
    vlog_t *l = open_rw();
    vlog_set_clients(l, &clients);
    atomic_store(&fdatasync_calls, 0);
    uint64_t t0 = mono_ms();
    append_n(l, 0, 0, 2);
    append_n(l, 1, 0, 1);
    flush_ok(l);
    cr_assert_lt(mono_ms() - t0, 5000 * TMOUT_MULT, "three votes of three clients waited %llu ms",
                 (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(atomic_load(&acks_ok), 3);
    cr_assert_eq(atomic_load(&fdatasync_calls), 1, "%d fdatasyncs for one round",
                 atomic_load(&fdatasync_calls));
    /* Four clients, three votes: the gather's first step (20 s) runs, so
     * nothing is acknowledged for a while... */
    atomic_store(&clients, 4);
    append_n(l, 0, 2, 4);
    append_n(l, 1, 1, 2);
    sleep_ms(300);
    cr_assert_eq(atomic_load(&acks_ok), 3, "acknowledged before the round was full or due");
    /* ...until the fourth votes: then at once. */
    t0 = mono_ms();
    append_n(l, 2, 0, 1);
    flush_ok(l);
    cr_assert_lt(mono_ms() - t0, 5000 * TMOUT_MULT, "the full round waited %llu ms",
                 (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(atomic_load(&acks_ok), 7);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_set_clients(l, NULL);
    vlog_close(l);
}

Test(vlog, a_round_after_a_full_one_waits_at_most_the_longest_gather) {
    /* After a round that held a vote of every client the writer waits for
     * the next one at once (anticipation); a round that does not fill must
     * still go by group_commit_max_us (3 s) after that, not after that
     * wait and a whole gather more (3 + 2 s). */
    conf->log_fsync = 1;
    conf->log_group_commit_us = 2000000;
    conf->log_group_commit_max_us = 3000000;
    _Atomic long clients = 3;
    vlog_t *l = open_rw();
    vlog_set_clients(l, &clients);
    append_n(l, 0, 0, 2);
    append_n(l, 1, 0, 1);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 3);
    uint64_t t0 = mono_ms();
    append_n(l, 0, 2, 4); /* two of three clients: the round never fills */
    flush_ok(l);
    uint64_t waited = mono_ms() - t0;
    cr_assert_eq(atomic_load(&acks_ok), 5);
    cr_assert_lt(waited, 4500, "a round after a full one waited %llu ms (the bound is 3000)",
                 (unsigned long long)waited);
    vlog_set_clients(l, NULL);
    vlog_close(l);
}

typedef struct {
    vlog_reader_t *r;
    sink_t *s;
    int got;
    uint64_t at_ms; /* when the record was delivered */
} waiter_t;

/* Polls with a 20 s wait (a poll may return 0 after a wake) until a record
 * comes, for 30 s at most. */
static void *reader_waits(void *arg) {
    waiter_t *w = arg;
    char err[256];
    uint64_t t0 = mono_ms();
    while (w->got == 0 && mono_ms() - t0 < 30000) {
        int n = vlog_reader_poll(w->r, sink_cb, w->s, 10, 20000, err, sizeof err);
        if (n < 0)
            break;
        w->got += n;
    }
    w->at_ms = mono_ms();
    return NULL;
}

Test(vlog, a_waiting_reader_is_woken_for_a_commit_with_none_after_it) {
    /* Readers are woken at most every few ms: commit B, right after commit
     * A woke them, only owes its wake. With no commit after B, the writer's
     * idle wait must still deliver it to a reader waiting for B. */
    vlog_t *l = open_rw();
    append_n(l, 1, 0, 1);
    flush_ok(l);
    int parts[1] = {1};
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, NULL, 1, &s);
    drain(r, &s, 1000);
    waiter_t w = {r, &s, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, reader_waits, &w);
    sleep_ms(50);         /* the reader is waiting */
    append_n(l, 0, 0, 1); /* A: nothing for this reader, which waits again */
    flush_ok(l);
    append_n(l, 1, 1, 2); /* B */
    flush_ok(l);
    uint64_t acked = mono_ms();
    pthread_join(t, NULL);
    cr_assert_eq(w.got, 1, "the reader got %d records", w.got);
    cr_assert_lt(w.at_ms - acked, 3000 * TMOUT_MULT,
                 "the reader slept through the commit (%llu ms after its ack)",
                 (unsigned long long)(w.at_ms - acked));
    expect_partition(&s, 1, 2);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

Test(vlog, append_rejects_bad_arguments) {
    vlog_t *l = open_rw();
    static uint8_t big[MAX_PAYLOAD + 1];
    cr_assert_eq(vlog_append(l, 0, big, 0, NULL, NULL), VLOG_ERR);
    cr_assert_eq(vlog_append(l, 0, big, MAX_PAYLOAD + 1, NULL, NULL), VLOG_ERR);
    cr_assert_eq(vlog_append(l, -1, big, 10, NULL, NULL), VLOG_ERR);
    cr_assert_eq(vlog_append(l, NPARTS, big, 10, NULL, NULL), VLOG_ERR);
    /* The largest frame is fine and reads back, in the last partition. */
    for (size_t i = 0; i < MAX_PAYLOAD; i++)
        big[i] = (uint8_t)(i * 13);
    cr_assert_eq(vlog_append(l, NPARTS - 1, big, MAX_PAYLOAD, NULL, NULL), VLOG_OK);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 1, "rejected appends were acknowledged");
    cr_assert_eq(votes_size(), FRAME_HDR + MAX_PAYLOAD + COMMIT_FRAME,
                 "rejected appends left bytes");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 1);
    cr_assert_eq(s.msgs[0].partition, NPARTS - 1);
    cr_assert_eq(s.msgs[0].len, (size_t)MAX_PAYLOAD);
    cr_assert_eq(s.msgs[0].next_pos, FRAME_HDR + MAX_PAYLOAD);
    cr_assert_eq(memcmp(s.msgs[0].data, big, MAX_PAYLOAD), 0);
    sink_free(&s);
    vlog_close(l);

    /* A read-only log takes no appends. */
    l = open_log(VLOG_F_READ);
    cr_assert_eq(vlog_append(l, 0, big, 10, NULL, NULL), VLOG_ERR);
    vlog_close(l);
}

/* Lets the file grow by at most `room` bytes past size (the writer's
 * pwrite then fails with EFBIG). Returns the old limit. */
static struct rlimit fsize_limit(uint64_t size, uint64_t room) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(size + room);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    return old;
}

Test(vlog, failed_write_is_not_acknowledged_and_leaves_no_garbage) {
    vlog_t *l = open_rw();
    append_interleaved(l, 2, 5);
    flush_ok(l);
    uint64_t end = model_end();
    /* The next write fails half-way: the file may grow by 10 bytes only. */
    struct rlimit old = fsize_limit(end, 10);
    uint8_t buf[256];
    append_ok(l, 0, buf, payload(0, 5, buf));
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_bad), 1, "the failed append was not answered with an error");
    cr_assert_eq(atomic_load(&acks_ok), 10);
    cr_assert_eq((uint64_t)votes_size(), end, "a failed write left bytes behind");
    cr_assert_eq(durable_end(l), end, "the durable end moved over a failed write");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);

    /* Once the disk has room again (and the log has left its failed
     * state: it retries every 250 ms), appends go on right after the last
     * good record. */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    wait_health(l, TALLY_OK);
    append_n(l, 1, 5, 6);
    append_n(l, 0, 5, 6);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 12);
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 6);
    expect_partition(&s, 1, 6);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq((uint64_t)votes_size(), model_end());
}

Test(vlog, a_batch_fails_as_a_whole) {
    /* One round holds a record of partition 0 then one of partition 1; the
     * write of the first succeeds, the second is cut short. Neither is
     * acknowledged as written, and neither becomes readable. */
    vlog_t *l = open_rw();
    append_n(l, 1, 0, 50);
    append_n(l, 0, 0, 2);
    flush_ok(l);

    gate_close();
    append_n(l, 2, 0, 1);
    gate_wait_entered(); /* the writer is held in this record's ack */
    uint64_t end = model_end();
    uint8_t buf[256];
    size_t n0 = payload(0, 2, buf);
    append_ok(l, 0, buf, n0);
    append_ok(l, 1, buf, payload(1, 50, buf));
    struct rlimit old = fsize_limit(end, FRAME_HDR + n0 + 5);
    gate_open();
    flush_ok(l);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_assert_eq(atomic_load(&acks_ok), 53, "ok acks");
    cr_assert_eq(atomic_load(&acks_bad), 2, "both records of the failed batch get an error");
    cr_assert_eq((uint64_t)votes_size(), end, "the log kept part of a failed batch");
    cr_assert_eq(durable_end(l), end);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 2);
    expect_partition(&s, 1, 50);
    expect_partition(&s, 2, 1);
    sink_free(&s);

    /* The next batch lands right after the last good one. */
    wait_health(l, TALLY_OK);
    append_n(l, 1, 50, 51);
    append_n(l, 0, 2, 3);
    flush_ok(l);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, failed_fsync_fails_the_batch_and_leaves_no_garbage) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 4);
    flush_ok(l);
    /* Hold the writer in the ack of a good round so that both records
     * below make one round. */
    gate_close();
    append_n(l, 1, 4, 5);
    gate_wait_entered();
    uint64_t end = model_end();
    atomic_store(&fdatasync_fail, 1);
    uint8_t buf[256];
    append_ok(l, 0, buf, payload(0, 4, buf));
    append_ok(l, 2, buf, payload(2, 4, buf));
    gate_open();
    flush_ok(l);
    /* Still failing: the repair (cut back, fdatasync) fails too; the log
     * stays failed and takes nothing. */
    cr_assert_not_null(strstr(wait_health(l, TALLY_ERR_IO), "fdatasync"));
    cr_assert_eq(vlog_append(l, 0, buf, 10, NULL, NULL), VLOG_UNAVAIL);
    atomic_store(&fdatasync_fail, 0);
    wait_health(l, TALLY_OK);
    cr_assert_eq(atomic_load(&acks_ok), 13);
    cr_assert_eq(atomic_load(&acks_bad), 2, "an unsynced batch was acknowledged");
    cr_assert_eq((uint64_t)votes_size(), end, "the unsynced batch stayed in the file");
    cr_assert_eq(durable_end(l), end);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    append_n(l, 2, 4, 5);
    flush_ok(l);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

/* ---- readers ---- */

Test(vlog, reader_from_a_position) {
    vlog_t *l = open_rw();
    append_interleaved(l, 2, 10);
    flush_ok(l);
    /* Partition 0 from after its 4th record (p1 r3 follows it), partition 1
     * from the end, partition 2 (empty) from 0. */
    uint64_t pos[NPARTS] = {model_part_end(0, 4), model_end(), 0};
    sink_t s = {.decline_at = -1};
    read_all(l, pos, &s);
    cr_assert_eq(s.n, 6);
    cr_assert_eq(expect_part_from(&s, 0, pos[0]), 6);
    cr_assert_eq(s.msgs[0].next_pos, model_part_end(0, 5));
    cr_assert_eq(sink_count(&s, 1), 0);
    cr_assert_eq(sink_count(&s, 2), 0);
    sink_free(&s);

    /* Every position a reader was handed is a place to start again: from
     * each, the rest of the partition and nothing before. */
    for (int k = 0; k <= 10; k++) {
        uint64_t from[NPARTS] = {model_part_end(0, k), model_part_end(1, 10 - k), 0};
        read_all(l, from, &s);
        cr_assert_eq(expect_part_from(&s, 0, from[0]), 10 - k);
        cr_assert_eq(expect_part_from(&s, 1, from[1]), k);
        sink_free(&s);
    }
    vlog_close(l);
}

Test(vlog, reader_past_the_end_is_refused) {
    vlog_t *l = open_rw();
    append_n(l, 1, 0, 3);
    flush_ok(l);
    int parts[2] = {0, 1};
    uint64_t pos[2] = {0, model_end() + 1};
    char err[512] = "";
    cr_assert_null(vlog_reader_new(l, parts, pos, 2, err, sizeof err));
    cr_assert_not_null(strstr(err, "past the end"), "%s", err);
    cr_assert_not_null(strstr(err, "partition 1"), "%s", err);
    /* Past the end of the file, even if not of any partition's records. */
    parts[1] = 2;
    err[0] = '\0';
    cr_assert_null(vlog_reader_new(l, parts, pos, 2, err, sizeof err));
    cr_assert_not_null(strstr(err, "partition 2"), "%s", err);
    pos[1] = model_end(); /* exactly the end is fine, for any partition */
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 2, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    vlog_reader_free(r);
    vlog_reader_free(NULL);
    vlog_close(l);
}

Test(vlog, reader_max_and_fairness) {
    vlog_t *l = open_rw();
    /* Partitions 0 and 2 take turns; 1 has a burst at the start. */
    append_n(l, 1, 0, 5);
    for (int i = 0; i < 10; i++) {
        append_n(l, 0, i, i + 1);
        append_n(l, 2, i, i + 1);
    }
    flush_ok(l);
    int parts[2] = {0, 2};
    char err[256];
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, NULL, 2, &s);
    /* max counts records delivered, not frames skipped. */
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 3, 0, err, sizeof err), 3);
    cr_assert_eq(s.n, 3);
    int total = 3 + drain(r, &s, 3);
    cr_assert_eq(total, 20);
    cr_assert_eq(s.n, 20);
    expect_partition(&s, 0, 10);
    expect_partition(&s, 2, 10);
    /* Records come in commit order: partition 2 is not starved until 0 is
     * done; they alternate as they were appended. */
    for (int k = 0; k < s.n; k++)
        cr_assert_eq(s.msgs[k].partition, k % 2 ? 2 : 0, "record %d", k);
    cr_assert_eq(s.pos[0], model_end());
    cr_assert_eq(s.pos[2], model_end());
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

Test(vlog, reader_decline_stops_that_partition) {
    vlog_t *l = open_rw();
    append_interleaved(l, 2, 5);
    flush_ok(l);
    append_n(l, 0, 5, 10);
    flush_ok(l);
    int parts[2] = {0, 1};
    /* Decline the 4th record of partition 0: it comes after 3 records of
     * each partition (p0 r0, p1 r0, p0 r1, ...), so it is the 7th. */
    sink_t s = {.decline_at = 6, .decline_part = 0};
    vlog_reader_t *r = reader_new(l, parts, NULL, 2, &s);
    drain(r, &s, 1000);
    cr_assert_eq(sink_count(&s, 0), 3, "partition 0 delivered after a decline");
    cr_assert_eq(sink_count(&s, 1), 5, "other partitions go on");
    cr_assert(s.declined[0]);
    /* Partition 1 read past p0's declined record, to the end. */
    cr_assert_eq(s.pos[1], model_end());
    cr_assert_lt(s.pos[0], model_end());
    /* More data in the declined partition is not delivered either (the
     * sink fails on any message for it); the other one goes on. */
    append_n(l, 0, 10, 12);
    append_n(l, 1, 5, 7);
    flush_ok(l);
    drain(r, &s, 1000);
    cr_assert_eq(sink_count(&s, 0), 3);
    cr_assert_eq(sink_count(&s, 1), 7);
    cr_assert_eq(expect_part_from(&s, 1, 0), 7);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

Test(vlog, reader_waits_for_data_with_a_timeout) {
    vlog_t *l = open_rw();
    int parts[1] = {0};
    char err[256];
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, NULL, 1, &s);
    uint64_t t0 = mono_ms();
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 10, 40, err, sizeof err), 0);
    cr_assert_geq(mono_ms() - t0, 30, "returned before the timeout with nothing to read");
    append_n(l, 0, 0, 1);
    flush_ok(l);
    t0 = mono_ms();
    int got = 0;
    WAIT_UNTIL((got += vlog_reader_poll(r, sink_cb, &s, 10, 5000, err, sizeof err)) > 0, 10000);
    cr_assert_lt(mono_ms() - t0, 4000, "data was there but the poll waited");
    /* Another partition's records are no data for this reader: the poll
     * reads past them, reports progress and waits. */
    append_n(l, 1, 0, 3);
    flush_ok(l);
    t0 = mono_ms();
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 10, 40, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.pos[0], model_end());
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 10, 40, err, sizeof err), 0, "%s", err);
    cr_assert_geq(mono_ms() - t0, 30);
    expect_partition(&s, 0, 1);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

typedef struct {
    vlog_t *l;
    atomic_int *go;
} late_append_t;

static void *late_append(void *arg) {
    late_append_t *a = arg;
    while (!atomic_load(a->go))
        sched_yield();
    uint8_t buf[256];
    vlog_append(a->l, 0, buf, payload(0, 0, buf), NULL, NULL);
    return NULL;
}

Test(vlog, reader_wakes_up_when_data_arrives) {
    vlog_t *l = open_rw();
    int parts[1] = {0};
    char err[256];
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, NULL, 1, &s);
    atomic_int go = 0;
    late_append_t a = {l, &go};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, late_append, &a), 0);
    uint64_t t0 = mono_ms();
    atomic_store(&go, 1);
    int got = 0;
    /* The first poll may wait; it must return as soon as the record lands
     * (long before its 20 s timeout), and the next one delivers it. */
    while (got == 0 && mono_ms() - t0 < 20000)
        got += vlog_reader_poll(r, sink_cb, &s, 10, 20000, err, sizeof err);
    cr_assert_eq(got, 1);
    cr_assert_lt(mono_ms() - t0, 5000 * TMOUT_MULT);
    pthread_join(th, NULL);
    model_add(0, 0);
    flush_ok(l);
    expect_model(&s);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

/* ---- progress and readers of some partitions ---- */

Test(vlog, progress_lets_a_reader_reach_the_end) {
    vlog_t *l = open_rw();
    append_n(l, 1, 0, 5);
    append_n(l, 0, 0, 10); /* the file ends with partition 0's frames */
    flush_ok(l);
    uint64_t stop = durable_end(l);
    cr_assert_eq(stop, model_end());
    cr_assert_gt(stop, model_part_end(1, 5));

    /* A partition with no record at all gets there on progress alone. */
    int empty[1] = {2};
    char err[256];
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, empty, NULL, 1, &s);
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 2, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.pos[2], stop);
    /* One, at the end of the poll: not one per write (commit frame). */
    cr_assert_gt(votes_commits(), 0);
    cr_assert_eq(s.progress, 1);
    cr_assert_eq(s.n, 0);
    vlog_reader_free(r);
    s.progress = 0;

    /* Replay of partition 1 up to the end: its last record ends well
     * before it, a progress message closes the gap. */
    int parts[1] = {1};
    r = reader_new(l, parts, NULL, 1, &s);
    int polls = 0;
    while (s.pos[1] < stop) {
        cr_assert_lt(++polls, 100, "partition 1 never reached the end (at %llu of %llu)",
                     (unsigned long long)s.pos[1], (unsigned long long)stop);
        cr_assert_geq(vlog_reader_poll(r, sink_cb, &s, 2, 0, err, sizeof err), 0, "%s", err);
    }
    cr_assert_eq(s.pos[1], stop);
    cr_assert_geq(s.progress, 1);
    expect_partition(&s, 1, 5);
    cr_assert_eq(sink_count(&s, 0), 0, "another partition's records were delivered");

    /* At the end, polls report nothing more. */
    int progress = s.progress;
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 2, 0, err, sizeof err), 0);
    cr_assert_eq(s.progress, progress, "progress without progress");

    /* New records of other partitions move it on too. */
    append_n(l, 2, 0, 3);
    flush_ok(l);
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 2, 0, err, sizeof err), 0);
    cr_assert_eq(s.pos[1], model_end());
    cr_assert_eq(s.progress, progress + 1);
    vlog_reader_free(r);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, readers_of_some_partitions_skip_the_others) {
    conf->log_partitions = 4;
    vlog_t *l = open_rw();
    uint64_t seed = 5;
    int cnt[4] = {0};
    for (int k = 0; k < 600; k++) {
        int p = (int)(rng_next(&seed) % 7); /* partition 3 gets most */
        p = p > 3 ? 3 : p;
        append_n(l, p, cnt[p], cnt[p] + 1);
        cnt[p]++;
        if (k % 97 == 0)
            flush_ok(l);
    }
    flush_ok(l);
    cr_assert(cnt[0] > 0 && cnt[1] > 0 && cnt[2] > 0 && cnt[3] > cnt[0]);
    uint64_t end = durable_end(l);

    /* Three readers share the partitions out and poll in turns, a few
     * records at a time. */
    const int own[3][2] = {{2, -1}, {0, 3}, {1, -1}};
    const int nown[3] = {1, 2, 1};
    sink_t s[3] = {{.decline_at = -1}, {.decline_at = -1}, {.decline_at = -1}};
    vlog_reader_t *r[3];
    for (int k = 0; k < 3; k++)
        r[k] = reader_new(l, own[k], NULL, nown[k], &s[k]);
    char err[256];
    for (int busy = 1; busy;) {
        busy = 0;
        for (int k = 0; k < 3; k++) {
            int got = vlog_reader_poll(r[k], sink_cb, &s[k], 7, 0, err, sizeof err);
            cr_assert_geq(got, 0, "%s", err);
            cr_assert_leq(got, 7);
            busy |= got > 0;
        }
    }
    for (int k = 0; k < 3; k++) {
        int mine = 0;
        for (int i = 0; i < nown[k]; i++) {
            int p = own[k][i];
            cr_assert_eq(expect_part_from(&s[k], p, 0), cnt[p], "reader %d partition %d", k, p);
            cr_assert_eq(s[k].pos[p], end, "reader %d partition %d", k, p);
            mine += cnt[p];
        }
        cr_assert_eq(s[k].n, mine, "reader %d got another reader's records", k);
        vlog_reader_free(r[k]);
        sink_free(&s[k]);
    }

    /* One of them again, its partitions from different places. */
    int two[2] = {3, 0};
    uint64_t from[2] = {model_part_end(3, cnt[3] / 2), model_part_end(0, 1)};
    vlog_reader_t *r2 = reader_new(l, two, from, 2, &s[0]);
    drain(r2, &s[0], 5);
    cr_assert_eq(expect_part_from(&s[0], 3, from[0]), cnt[3] - cnt[3] / 2);
    cr_assert_eq(expect_part_from(&s[0], 0, from[1]), cnt[0] - 1);
    cr_assert_eq(s[0].n, cnt[3] - cnt[3] / 2 + cnt[0] - 1);
    cr_assert_eq(s[0].pos[3], end);
    cr_assert_eq(s[0].pos[0], end);
    vlog_reader_free(r2);
    sink_free(&s[0]);
    vlog_close(l);
}

/* Replay to a fixed end while the log holds more: declines whatever lies
 * past the end. */
typedef struct {
    const uint64_t *stop;
    uint64_t pos[NPARTS];
    int nrec[NPARTS];
    uint8_t past[NPARTS]; /* a message past the end was declined */
} replay_t;

static int replay_cb(void *arg, const vlog_msg_t *m) {
    replay_t *r = arg;
    int p = m->partition;
    cr_assert_not(r->past[p], "partition %d: a message after the decline", p);
    if (m->next_pos > r->stop[p]) {
        r->past[p] = 1;
        return 1;
    }
    r->pos[p] = m->next_pos;
    r->nrec[p] += m->rec != NULL;
    return 0;
}

Test(vlog, replay_to_a_fixed_end_with_more_in_the_log) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 3);
    append_n(l, 1, 0, 4);
    append_n(l, 0, 3, 5); /* the end to replay to follows partition 0's records */
    flush_ok(l);
    uint64_t stop[NPARTS];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, stop, err, sizeof err), 0);
    append_n(l, 2, 0, 2);
    append_n(l, 0, 5, 7);
    append_n(l, 1, 4, 5);
    flush_ok(l);

    int parts[NPARTS] = {0, 1, 2};
    uint64_t zero[NPARTS] = {0};
    replay_t rp = {.stop = stop};
    vlog_reader_t *r = vlog_reader_new(l, parts, zero, NPARTS, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    int got, polls = 0;
    while ((got = vlog_reader_poll(r, replay_cb, &rp, 2, 0, err, sizeof err)) > 0)
        cr_assert_lt(++polls, 100);
    cr_assert_eq(got, 0, "%s", err);
    /* Exactly the records before the end were taken; every partition was
     * then handed a message past the end, which only comes once all of its
     * records before the end were: the consumer may count itself there. */
    const int want[NPARTS] = {5, 4, 0};
    for (int p = 0; p < NPARTS; p++) {
        cr_assert_eq(rp.nrec[p], want[p], "partition %d", p);
        cr_assert(rp.past[p], "partition %d never got past the end", p);
        cr_assert_leq(rp.pos[p], stop[p]);
    }
    /* Partition 0's last record ends where its write's commit frame
     * begins, the end right after it: the message past the end (above)
     * says nothing of it lies between. */
    cr_assert_geq(rp.pos[0], stop[0] - COMMIT_FRAME);
    /* Partitions 1 and 2 may be handed no message ending exactly at the
     * end (here their last accepted progress stops short of it): a consumer
     * that only counts what it takes never sees them arrive there. */
    vlog_reader_free(r);
    vlog_close(l);
}

/* ---- durability and back-pressure (ack gate) ---- */

Test(vlog, readers_never_see_unacknowledged_records) {
    vlog_t *l = open_rw();
    gate_close();
    append_n(l, 0, 0, 1);
    gate_wait_entered(); /* the writer holds record 0 in its ack */
    uint64_t end1 = model_end();
    append_n(l, 1, 0, 1); /* queued behind it, not written */
    append_n(l, 0, 1, 3);
    uint64_t ends[NPARTS];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    for (int p = 0; p < NPARTS; p++)
        cr_assert_eq(ends[p], end1, "partition %d", p);
    cr_assert_eq(votes_size(), (long long)end1, "written before the round was taken");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 1, "a reader saw records not yet durable");
    cr_assert_eq(s.pos[1], end1, "progress past the durable end");
    sink_free(&s);
    cr_assert_neq(vlog_flush(l, 50), 0, "flush returned with acks outstanding");
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 4);
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 3);
    expect_partition(&s, 1, 1);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, readers_never_see_written_but_unsynced_records) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, 2, 2);
    flush_ok(l);
    uint64_t end = model_end();
    sync_gate(1);
    append_n(l, 1, 2, 3);
    append_n(l, 0, 2, 4);
    sync_wait_entered(); /* a round is in the file, its fdatasync held */
    WAIT_UNTIL(votes_size() > (long long)end, 10000);
    cr_assert_eq(durable_end(l), end);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s); /* every partition stops at the durable end */
    cr_assert_eq(s.n, 4, "a reader saw records not yet durable");
    cr_assert_eq(atomic_load(&acks_ok), 4, "acknowledged before fdatasync returned");
    sink_free(&s);
    sync_gate(0);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 7);
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, full_when_max_pending_exceeded) {
    conf->max_pending = 3;
    vlog_t *l = open_rw();
    gate_close();
    append_n(l, 0, 0, 1);
    gate_wait_entered();
    append_n(l, 1, 0, 1);
    append_n(l, 2, 0, 1);
    uint8_t buf[256];
    size_t n = payload(0, 1, buf);
    cr_assert_eq(vlog_append(l, 0, buf, n, NULL, NULL), VLOG_FULL);
    cr_assert_eq(vlog_append(l, 1, buf, n, NULL, NULL), VLOG_FULL);
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 3, "a VLOG_FULL append was acknowledged");
    cr_assert_eq((uint64_t)votes_size(), model_end(), "a VLOG_FULL append was written");
    /* Room again. */
    append_n(l, 0, 1, 2);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 4);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 2);
    expect_partition(&s, 1, 1);
    expect_partition(&s, 2, 1);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, full_when_16mib_queued_in_total) {
    vlog_t *l = open_rw();
    gate_close();
    uint8_t small[4] = "tiny";
    append_ok(l, 0, small, 4);
    gate_wait_entered(); /* the next round starts empty */
    static uint8_t big[MAX_PAYLOAD];
    memset(big, 'B', sizeof big);
    int ok = 0;
    vlog_err_t err;
    while ((err = vlog_append(l, 0, big, sizeof big, NULL, NULL)) == VLOG_OK)
        ok++;
    cr_assert_eq(err, VLOG_FULL);
    /* 16 MiB, less the round's commit frame, / (12 + 64 KiB) frames */
    const uint32_t frame = FRAME_HDR + MAX_PAYLOAD;
    cr_assert_eq(ok, (int)((MAX_WRITE - COMMIT_FRAME) / frame));
    /* The bound is on the whole round, not per partition: another
     * partition is full too... */
    cr_assert_eq(vlog_append(l, 1, big, sizeof big, NULL, NULL), VLOG_FULL);
    /* ...but what still fits, fits, exactly up to 16 MiB... */
    size_t rest = MAX_WRITE - COMMIT_FRAME - (size_t)ok * frame - FRAME_HDR;
    cr_assert_eq(vlog_append(l, 2, big, rest + 1, NULL, NULL), VLOG_FULL);
    cr_assert_eq(vlog_append(l, 2, big, rest, NULL, NULL), VLOG_OK);
    /* ...and not one byte more. */
    cr_assert_eq(vlog_append(l, 1, small, 1, NULL, NULL), VLOG_FULL);
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), (unsigned long)ok + 2);
    cr_assert_eq(atomic_load(&acks_bad), 0);
    /* The first round (4 bytes and its commit frame), then exactly 16 MiB. */
    const uint64_t first = FRAME_HDR + 4 + COMMIT_FRAME;
    cr_assert_eq(votes_size(), (long long)(first + MAX_WRITE));

    /* All of it reads back, the round's frames in order. */
    int parts[NPARTS] = {0, 1, 2};
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, NULL, NPARTS, &s);
    cr_assert_eq(drain(r, &s, 50), ok + 2);
    cr_assert_eq(s.msgs[0].len, 4);
    for (int k = 1; k <= ok; k++) {
        cr_assert_eq(s.msgs[k].partition, 0);
        cr_assert_eq(s.msgs[k].len, (size_t)MAX_PAYLOAD);
        cr_assert_eq(s.msgs[k].next_pos, first + (uint64_t)k * frame);
    }
    cr_assert_eq(s.msgs[ok + 1].partition, 2);
    cr_assert_eq(s.msgs[ok + 1].len, rest);
    cr_assert_eq(s.msgs[ok + 1].next_pos, (uint64_t)votes_size() - COMMIT_FRAME);
    cr_assert_eq(s.pos[1], (uint64_t)votes_size());
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

/* ---- many appenders, readers meanwhile ---- */

#define APPENDERS 4
#define PER_APPENDER 2000

typedef struct {
    vlog_t *l;
    int id;
} appender_t;

static void *appender_main(void *arg) {
    appender_t *a = arg;
    for (int i = 0; i < PER_APPENDER; i++) {
        uint8_t rec[16];
        int n = snprintf((char *)rec, sizeof rec, "%d:%d", a->id, i);
        while (vlog_append(a->l, (a->id + i) % NPARTS, rec, (size_t)n, NULL, NULL) == VLOG_FULL)
            sched_yield();
    }
    return NULL;
}

/* How many records appender_main puts in partition p, all appenders. */
static int appended_to(int p) {
    int n = 0;
    for (int id = 0; id < APPENDERS; id++)
        for (int i = 0; i < PER_APPENDER; i++)
            n += (id + i) % NPARTS == p;
    return n;
}

/* Checks what a reader of appender_main's records got: well-formed, in
 * the right partition, each appender's in its own order. Returns NULL or
 * what is wrong (static). */
static const char *check_appended(const sink_t *s) {
    static char why[128];
    int last[NPARTS][APPENDERS];
    memset(last, -1, sizeof last);
    for (int k = 0; k < s->n; k++) {
        char txt[32];
        snprintf(txt, sizeof txt, "%.*s", (int)s->msgs[k].len, (const char *)s->msgs[k].data);
        int id, i, p = s->msgs[k].partition;
        if (sscanf(txt, "%d:%d", &id, &i) != 2 || id < 0 || id >= APPENDERS)
            snprintf(why, sizeof why, "garbled record '%s'", txt);
        else if (p != (id + i) % NPARTS)
            snprintf(why, sizeof why, "record %s in partition %d", txt, p);
        else if (i <= last[p][id])
            snprintf(why, sizeof why, "appender %d out of order in partition %d", id, p);
        else {
            last[p][id] = i;
            continue;
        }
        return why;
    }
    return NULL;
}

Test(vlog, concurrent_appenders) {
    conf->max_pending = 64; /* exercise VLOG_FULL under contention too */
    vlog_t *l = open_rw();
    pthread_t th[APPENDERS];
    appender_t a[APPENDERS];
    for (int i = 0; i < APPENDERS; i++) {
        a[i] = (appender_t){l, i};
        cr_assert_eq(pthread_create(&th[i], NULL, appender_main, &a[i]), 0);
    }
    for (int i = 0; i < APPENDERS; i++)
        pthread_join(th[i], NULL);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), APPENDERS * PER_APPENDER);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, APPENDERS * PER_APPENDER);
    const char *why = check_appended(&s);
    cr_assert_null(why, "%s", why);
    for (int p = 0; p < NPARTS; p++)
        cr_assert_eq(sink_count(&s, p), appended_to(p));
    /* The frames and a commit frame per write fill the file end to end. */
    uint64_t size = 0;
    for (int k = 0; k < s.n; k++)
        size += FRAME_HDR + s.msgs[k].len;
    int commits = votes_commits();
    cr_assert_gt(commits, 0);
    cr_assert_eq(size + (uint64_t)commits * COMMIT_FRAME, (uint64_t)votes_size());
    sink_free(&s);
    vlog_close(l);
}

typedef struct {
    vlog_t *l;
    int parts[NPARTS], n;
    int want; /* records to read before stopping */
    sink_t s;
    char err[256]; /* "" or what went wrong */
} tail_reader_t;

/* No cr_assert here: a reader thread reports through err. */
static int tail_cb(void *arg, const vlog_msg_t *m) {
    tail_reader_t *t = arg;
    sink_t *s = &t->s;
    int p = m->partition;
    if (m->next_pos <= s->pos[p] && !t->err[0])
        snprintf(t->err, sizeof t->err, "partition %d went back to %llu", p,
                 (unsigned long long)m->next_pos);
    s->pos[p] = m->next_pos;
    if (!m->rec) {
        s->progress++;
        return 0;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->msgs = xrealloc(s->msgs, sizeof *s->msgs * (size_t)s->cap);
    }
    msg_t *d = &s->msgs[s->n++];
    *d = (msg_t){p, m->next_pos, m->len, xmalloc(m->len)};
    memcpy(d->data, m->rec, m->len);
    return 0;
}

static void *tail_reader_main(void *arg) {
    tail_reader_t *t = arg;
    uint64_t zero[NPARTS] = {0};
    vlog_reader_t *r = vlog_reader_new(t->l, t->parts, zero, t->n, t->err, sizeof t->err);
    if (!r)
        return NULL;
    uint64_t deadline = mono_ms() + 30000 * TMOUT_MULT;
    while (t->s.n < t->want && !t->err[0]) {
        if (mono_ms() > deadline) {
            snprintf(t->err, sizeof t->err, "read %d of %d records in time", t->s.n, t->want);
            break;
        }
        /* Small max: polls end in the middle of what is there. */
        if (vlog_reader_poll(r, tail_cb, t, 5, 50, t->err, sizeof t->err) < 0 && !t->err[0])
            snprintf(t->err, sizeof t->err, "poll failed");
    }
    vlog_reader_free(r);
    return NULL;
}

Test(vlog, readers_follow_concurrent_appenders, .timeout = 120) {
    conf->max_pending = 256;
    conf->log_group_commit_us = 100;
    vlog_t *l = open_rw();
    static tail_reader_t tr[2];
    memset(tr, 0, sizeof tr);
    tr[0] = (tail_reader_t){.l = l, .parts = {1}, .n = 1, .want = appended_to(1)};
    tr[1] =
        (tail_reader_t){.l = l, .parts = {2, 0}, .n = 2, .want = appended_to(0) + appended_to(2)};
    pthread_t rth[2], ath[APPENDERS];
    for (int k = 0; k < 2; k++)
        cr_assert_eq(pthread_create(&rth[k], NULL, tail_reader_main, &tr[k]), 0);
    appender_t a[APPENDERS];
    for (int i = 0; i < APPENDERS; i++) {
        a[i] = (appender_t){l, i};
        cr_assert_eq(pthread_create(&ath[i], NULL, appender_main, &a[i]), 0);
    }
    for (int i = 0; i < APPENDERS; i++)
        pthread_join(ath[i], NULL);
    flush_ok(l);
    for (int k = 0; k < 2; k++)
        pthread_join(rth[k], NULL);
    uint64_t end = durable_end(l);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(tr[k].err[0], '\0', "reader %d: %s", k, tr[k].err);
        cr_assert_eq(tr[k].s.n, tr[k].want, "reader %d", k);
        const char *why = check_appended(&tr[k].s);
        cr_assert_null(why, "reader %d: %s", k, why);
        for (int i = 0; i < tr[k].n; i++) {
            int p = tr[k].parts[i];
            cr_assert_eq(sink_count(&tr[k].s, p), appended_to(p), "reader %d partition %d", k, p);
            cr_assert_leq(tr[k].s.pos[p], end);
        }
        sink_free(&tr[k].s);
    }
    vlog_close(l);
}

/* ---- recovery: torn tails ---- */

static int model_count(int p) {
    int n = 0;
    for (int j = 0; j < nmodel; j++)
        n += model[j].p == p;
    return n;
}

/* 20 records of partition 0 with 5 of partition 1 among them; the file
 * ends with partition 0's record 19. Closes the log. */
static void prepare_closed_log(void) {
    vlog_t *l = open_rw();
    for (int i = 0; i < 20; i++) {
        append_n(l, 0, i, i + 1);
        if (i % 4 == 1)
            append_n(l, 1, i / 4, i / 4 + 1);
    }
    flush_ok(l);
    vlog_close(l);
    cr_assert_eq(nmodel, 25);
    cr_assert_eq(model[nmodel - 1].p, 0);
}

/* Reopens: the file holds exactly the first `intact` frames of the model;
 * new records land right after them. */
static void expect_recovered(int intact) {
    nmodel = intact;
    vlog_t *l = open_rw();
    cr_assert_eq((uint64_t)votes_size(), model_end(), "torn tail not cut (size %lld, want %llu)",
                 votes_size(), (unsigned long long)model_end());
    cr_assert_eq(durable_end(l), model_end());
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    append_n(l, 0, model_count(0), model_count(0) + 1);
    append_n(l, 1, model_count(1), model_count(1) + 1);
    flush_ok(l);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq((uint64_t)votes_size(), model_end());
}

static void votes_append(const void *data, size_t len) {
    char *f = votes_path();
    file_append(f, data, len);
    free(f);
}

static void votes_flip(long long off) {
    char *f = votes_path();
    file_flip_byte(f, off);
    free(f);
}

Test(vlog, torn_tail_garbage_appended) {
    prepare_closed_log();
    votes_append("\x17garbage! and then some more garbage", 36);
    expect_recovered(25);
}

Test(vlog, torn_tail_short_garbage) {
    prepare_closed_log();
    votes_append("\x17garbage!", 9);
    expect_recovered(25);
}

Test(vlog, torn_tail_partial_header) {
    prepare_closed_log();
    votes_append("\x05\x00\x00\x00\x01\x02\x03\x04\x00", 9); /* up to half the partition */
    expect_recovered(25);
}

Test(vlog, torn_tail_zeros) {
    /* A file system may leave zeros after a crash. */
    prepare_closed_log();
    static const uint8_t zeros[4096];
    votes_append(zeros, sizeof zeros);
    expect_recovered(25);
}

Test(vlog, torn_tail_header_promising_more) {
    prepare_closed_log();
    /* A plausible header (4096 bytes for partition 1) and 100 of them. */
    uint8_t frame[FRAME_HDR + 100] = {0x00, 0x10, 0x00, 0x00, 1, 2, 3, 4, 1, 0, 0, 0};
    memset(frame + FRAME_HDR, 'x', 100);
    votes_append(frame, sizeof frame);
    expect_recovered(25);
}

static void expect_refused(tally_err_t want, const char *n1, const char *n2);

/* Reopens after a cut or a flip: the file ends at `size` and holds the
 * first `records` records of prepare_closed_log (partition 1's five and
 * partition 0's rest). */
static void expect_kept(uint64_t size, int records, const char *what, uint64_t at) {
    int keep = nmodel;
    nmodel = records;
    vlog_t *l = open_rw();
    cr_assert_eq((uint64_t)votes_size(), size, "%s at %llu: size %lld, want %llu", what,
                 (unsigned long long)at, votes_size(), (unsigned long long)size);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, records - 5);
    expect_partition(&s, 1, 5);
    sink_free(&s);
    vlog_close(l);
    nmodel = keep;
}

/* The last write, cut at every length (a torn write): what reached the
 * file intact stays, the rest is cut. The last record cut short is cut
 * away; with it whole and its commit frame cut short, the record stays (a
 * write that had not been acknowledged, as any intact frame past the last
 * commit). */
Test(vlog, torn_tail_last_frame_cut_at_every_length) {
    prepare_closed_log();
    char *f = votes_path();
    size_t len;
    char *orig = file_read(f, &len);
    uint64_t rec = model[nmodel - 1].start, rec_end = model[nmodel - 1].end;
    cr_assert_eq(len, model_end());
    cr_assert_eq(len, rec_end + COMMIT_FRAME, "the file ends with the last write's commit frame");
    for (uint64_t cut = rec; cut < len; cut++) {
        file_write(f, orig, (size_t)cut);
        if (cut < rec_end)
            expect_kept(rec, 24, "cut", cut);
        else
            expect_kept(rec_end, 25, "cut", cut);
    }
    file_write(f, orig, (size_t)rec + 5);
    expect_recovered(24);
    free(orig);
    free(f);
}

/* A bit flipped in the last record of an acknowledged write is damage: the
 * commit frame after it is intact, so it is not a torn write, and the log
 * refuses to open (it used to cut the record: an acknowledged vote gone).
 * A bit flipped in the commit frame that ends the file is a torn tail: the
 * commit frame alone is cut, every record stays. */
Test(vlog, a_flip_in_the_last_record_is_damage_and_in_its_commit_frame_a_torn_tail) {
    prepare_closed_log();
    char *f = votes_path();
    size_t len;
    char *orig = file_read(f, &len);
    uint64_t rec = model[nmodel - 1].start, rec_end = model[nmodel - 1].end;
    cr_assert_eq(len, rec_end + COMMIT_FRAME);
    for (uint64_t at = rec; at < len; at++) {
        file_write(f, orig, len);
        file_flip_byte(f, (long long)at);
        if (at < rec_end)
            expect_refused(TALLY_ERR_CORRUPT, "with only commit frames after it", NULL);
        else
            expect_kept(rec_end, 25, "flip", at);
    }
    free(orig);
    free(f);
}

/* Rewrites the partition field of the frame starting at off. */
static void votes_set_partition(uint64_t off, uint16_t p) {
    char *f = votes_path();
    int fd = open(f, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b[2] = {(uint8_t)p, (uint8_t)(p >> 8)};
    cr_assert_eq(pwrite(fd, b, 2, (off_t)(off + 8)), 2);
    close(fd);
    free(f);
}

Test(vlog, a_frame_moved_to_another_partition_fails_its_checksum) {
    /* The checksum covers the partition: a frame cannot silently change
     * hands (and count votes in another shard). */
    prepare_closed_log();
    votes_set_partition(model[nmodel - 1].start, 1);
    expect_refused(TALLY_ERR_CORRUPT, "checksum mismatch", "commit frame");
}

/* Opening refuses (writer and read-only alike) with class want and an
 * errstr holding every needle; the file is left exactly as it was. */
static void expect_refused(tally_err_t want, const char *n1, const char *n2) {
    char *f = votes_path();
    size_t len0 = 0;
    char *before = file_read(f, &len0);
    const int modes[2] = {VLOG_F_WRITE | VLOG_F_READ, VLOG_F_READ};
    for (int m = 0; m < 2; m++) {
        char err[1024] = "";
        tally_err_t e = TALLY_OK;
        vlog_t *l = vlog_open(conf, modes[m], on_ack, &e, err, sizeof err);
        if (l)
            vlog_close(l);
        cr_assert_null(l, "opened (mode %d)", modes[m]);
        cr_assert_eq(e, want, "class %s, want %s: %s", tally_err2str(e), tally_err2str(want), err);
        cr_assert_not_null(strstr(err, n1), "'%s' not in: %s", n1, err);
        if (n2)
            cr_assert_not_null(strstr(err, n2), "'%s' not in: %s", n2, err);
        size_t len1 = 0;
        char *after = file_read(f, &len1);
        cr_assert_eq(len1, len0, "a refused open changed the file's size");
        cr_assert(before == NULL || memcmp(before, after, len0) == 0, "a refused open wrote");
        free(after);
    }
    free(before);
    free(f);
}

/* The offset of frame k and the intact frames after it, as the refusal
 * names them. */
static void damage_text(char *out, size_t size, int k) {
    snprintf(out, size, "at offset %llu (", (unsigned long long)model[k].start);
}

static void after_text(char *out, size_t size, int after) {
    snprintf(out, size, "with %d intact frames after it", after);
}

/* Was "a_frame_moved_in_the_middle_drops_the_rest": with valid frames after
 * a bad one, it is damage, not a torn tail: nothing is cut. */
Test(vlog, a_frame_moved_in_the_middle_is_damage) {
    prepare_closed_log();
    cr_assert_eq(model[7].p, 1);
    votes_set_partition(model[7].start, 2);
    char at[64], after[64];
    damage_text(at, sizeof at, 7);
    after_text(after, sizeof after, 25 - 8);
    expect_refused(TALLY_ERR_CORRUPT, at, after);
}

/* Was "bad_frame_within_one_write_of_the_end_drops_the_rest" (a trade-off
 * that cut acknowledged frames): now damage anywhere before an intact frame
 * refuses to open, however close to the end. */
Test(vlog, bad_frame_within_one_write_of_the_end_is_damage) {
    prepare_closed_log();
    votes_flip((long long)model[10].start + FRAME_HDR + 1);
    char at[64], after[64];
    damage_text(at, sizeof at, 10);
    after_text(after, sizeof after, 25 - 11);
    expect_refused(TALLY_ERR_CORRUPT, at, after);
    /* The second-to-last frame too: one intact frame after it is enough. */
    votes_flip((long long)model[10].start + FRAME_HDR + 1);
    votes_flip((long long)model[23].start + 3);
    damage_text(at, sizeof at, 23);
    after_text(after, sizeof after, 1);
    expect_refused(TALLY_ERR_CORRUPT, at, after);
}

/* The issue's case: a log copied or restored (no CHECKPOINT for it) with one
 * bit flipped near the start was cut to nothing. */
Test(vlog, restored_log_with_a_bit_flipped_near_the_start_is_refused_not_cut) {
    prepare_closed_log();
    char *ck = log_file("CHECKPOINT");
    cr_assert_eq(file_size(ck), -1, "no checkpoint without fsync");
    free(ck);
    char *f = votes_path();
    int fd = open(f, O_RDWR);
    uint8_t b;
    off_t at = (off_t)model[0].start + FRAME_HDR + 2; /* the first frame's payload */
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x10; /* one bit */
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
    free(f);
    char after[64];
    after_text(after, sizeof after, 24);
    expect_refused(TALLY_ERR_CORRUPT, "at offset 0 (", after);
}

Test(vlog, bad_bytes_longer_than_one_write_are_corruption, .timeout = 60) {
    /* One group commit writes at most 16 MiB: a torn tail is never longer.
     * 16 MiB of bad bytes are dropped, one byte more refuses to open. */
    prepare_closed_log();
    static uint8_t zeros[1 << 20];
    for (int k = 0; k < 16; k++)
        votes_append(zeros, sizeof zeros);
    expect_recovered(25);
    uint64_t good = model_end();
    for (int k = 0; k < 16; k++)
        votes_append(zeros, sizeof zeros);
    votes_append(zeros, 1);
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_READ | VLOG_F_WRITE, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "corruption"), "%s", err);
    char at[64];
    snprintf(at, sizeof at, "offset %llu with %llu bytes", (unsigned long long)good,
             (unsigned long long)MAX_WRITE + 1);
    cr_assert_not_null(strstr(err, at), "%s", err);
    cr_assert_eq((uint64_t)votes_size(), good + MAX_WRITE + 1, "the log was cut after all");
}

/* ---- CHECKPOINT ---- */

Test(vlog, checkpoint_written_at_close) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 10);
    flush_ok(l);
    vlog_close(l);
    cr_assert_eq(ckpt_get(), (long long)model_end());
    /* A read-only open leaves it alone; a writer rewrites it at close. */
    l = open_log(VLOG_F_READ);
    vlog_close(l);
    cr_assert_eq(ckpt_get(), (long long)model_end());
    l = open_rw();
    append_n(l, 1, 10, 12);
    flush_ok(l);
    vlog_close(l);
    cr_assert_eq(ckpt_get(), (long long)model_end());
    char *ld = log_file("");
    cr_assert_eq(dir_count(ld, ".tmp"), 0, "temp files left behind");
    free(ld);
}

Test(vlog, no_checkpoint_without_fsync) {
    /* Without fsync the end is not durable: a checkpoint could point past
     * what a crash leaves. */
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 10);
    flush_ok(l);
    vlog_close(l);
    cr_assert_eq(ckpt_get(), -1);
}

Test(vlog, checkpoint_written_while_running, .timeout = 60) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    /* About once a second after a group commit: keep committing until one
     * shows up. */
    int i = 0;
    long long ck;
    uint64_t deadline = mono_ms() + 10000 * TMOUT_MULT;
    /* Open writes one for the recovered end (0 here): wait for a later one. */
    while ((ck = ckpt_get()) <= 0) {
        cr_assert_lt(mono_ms(), deadline, "no CHECKPOINT while running");
        append_n(l, i % NPARTS, i / NPARTS, i / NPARTS + 1);
        i++;
        flush_ok(l);
        tiny_pause();
    }
    /* It is a frame boundary at or before the durable end. */
    cr_assert_gt(ck, 0);
    cr_assert_leq((uint64_t)ck, durable_end(l));
    if ((uint64_t)ck < model_end())
        model_at((uint64_t)ck);
    vlog_close(l);
    cr_assert_eq(ckpt_get(), (long long)model_end());
}

/* A closed log with a checkpoint at its end and frame 5's payload damaged:
 * a full scan would cut the log there. */
static void prepare_checkpointed_log(void) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 10);
    flush_ok(l);
    vlog_close(l);
    conf->log_fsync = 0; /* reopens do not rewrite it */
    cr_assert_eq(ckpt_get(), (long long)model_end());
    votes_flip((long long)model[5].start + FRAME_HDR + 2);
}

Test(vlog, recovery_starts_at_the_checkpoint) {
    prepare_checkpointed_log();
    /* A frame after the checkpoint (fsync off: the checkpoint stays). */
    vlog_t *l0 = open_rw();
    append_n(l0, 1, 100, 101);
    flush_ok(l0);
    vlog_close(l0);
    uint64_t end = model_end();
    /* A torn tail after it is cut... */
    static const uint8_t zeros[100];
    votes_append(zeros, sizeof zeros);
    vlog_t *l = open_rw();
    cr_assert_eq((uint64_t)votes_size(), end);
    cr_assert_eq(durable_end(l), end);
    /* ...and what lies before it was not even looked at: the damage is
     * there for the reader to find. */
    int parts[NPARTS] = {0, 1, 2};
    char err[256] = "";
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, NULL, NPARTS, &s);
    int got, total = 0;
    while ((got = vlog_reader_poll(r, sink_cb, &s, 2, 0, err, sizeof err)) > 0)
        total += got;
    cr_assert_eq(got, -1, "read a damaged frame");
    cr_assert_eq(s.n, 5, "the records before the damage are read (%d in polls that ended well)",
                 total);
    cr_assert_not_null(strstr(err, "checksum mismatch"), "%s", err);
    char at[64];
    snprintf(at, sizeof at, "offset %llu", (unsigned long long)model[5].start);
    cr_assert_not_null(strstr(err, at), "%s", err);
    /* It stays stuck there. */
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 2, 0, err, sizeof err), -1);
    cr_assert_eq(s.n, 5);
    vlog_reader_free(r);
    sink_free(&s);
    /* A reader from after the damage reads the rest. */
    uint64_t after[NPARTS] = {model[5].end, model[5].end, model[5].end};
    r = reader_new(l, parts, after, NPARTS, &s);
    cr_assert_eq(drain(r, &s, 1000), nmodel - 6);
    for (int p = 0; p < NPARTS; p++)
        expect_part_from(&s, p, model[5].end);
    vlog_reader_free(r);
    sink_free(&s);
    /* and appends go on after the checkpointed end. */
    append_n(l, 2, 10, 11);
    flush_ok(l);
    cr_assert_eq((uint64_t)votes_size(), model_end());
    vlog_close(l);
}

/* Was: every bad CHECKPOINT meant a full scan that cut the log at frame 5
 * (within 16 MiB of the end). Now the full scan finds frame 5 damaged with
 * intact frames after it and refuses; and an intact checkpoint of this very
 * file that lies past its end means the log lost acknowledged bytes:
 * refused too. */
Test(vlog, damaged_checkpoint_falls_back_to_a_full_scan) {
    prepare_checkpointed_log();
    char *f = votes_path();
    size_t len;
    char *orig = file_read(f, &len);
    unsigned long long end = len;
    char good[256];
    ckpt_text(good, sizeof good, 2, end);
    /* One of these in CHECKPOINT: the full scan finds frame 5. */
    char bad[9][256];
    snprintf(bad[0], sizeof bad[0], "garbage\n");
    snprintf(bad[1], sizeof bad[1], "tally-ckpt 2 %llu %llu %016llx 0000000000000000\n",
             votes_ino(), end, votes_head());
    ckpt_text(bad[2], sizeof bad[2], 1, end); /* format 1 */
    snprintf(bad[3], sizeof bad[3], "%s", "");
    snprintf(bad[4], sizeof bad[4], "%s", good);
    bad[4][strlen(good) - 20] ^= 1; /* a digit of END changed, sum kept */
    snprintf(bad[5], sizeof bad[5], "%.*s", (int)strlen(good) - 5, good); /* cut short */
    /* This inode, a valid sum, but another file's head: the inode number
     * of a deleted file was reused. */
    int hn = snprintf(bad[6], sizeof bad[6], "tally-ckpt 2 %llu %llu %016llx", votes_ino(), end,
                      votes_head() ^ 1);
    snprintf(bad[6] + hn, sizeof bad[6] - (size_t)hn, " %016llx\n",
             (unsigned long long)XXH3_64bits(bad[6], (size_t)hn));
    /* The format before log ids, intact: not trusted (a full scan). */
    hn = snprintf(bad[7], sizeof bad[7], "tally-ckpt 2 %llu %llu %016llx", votes_ino(), end,
                  votes_head());
    snprintf(bad[7] + hn, sizeof bad[7] - (size_t)hn, " %016llx\n",
             (unsigned long long)XXH3_64bits(bad[7], (size_t)hn));
    /* This file's inode and head, a valid sum, another log's id (log.dir
     * swapped, the inode number and first frame the same). */
    hn = snprintf(bad[8], sizeof bad[8], "tally-ckpt 2 %llu %llu %016llx file:%032d", votes_ino(),
                  end, votes_head(), 7);
    snprintf(bad[8] + hn, sizeof bad[8] - (size_t)hn, " %016llx\n",
             (unsigned long long)XXH3_64bits(bad[8], (size_t)hn));
    char at[64], after[64];
    damage_text(at, sizeof at, 5);
    after_text(after, sizeof after, nmodel - 6);
    for (int k = 0; k <= 9; k++) {
        file_write(f, orig, len);
        char *ck = log_file("CHECKPOINT");
        if (k < 9)
            file_write_str(ck, bad[k]);
        else
            cr_assert_eq(unlink(ck), 0); /* missing */
        free(ck);
        expect_refused(TALLY_ERR_CORRUPT, at, after);
    }
    /* Intact, of this file, past its end: the file lost bytes. */
    const unsigned long long past[2] = {end + 1, 1ull << 40};
    for (int k = 0; k < 2; k++) {
        char ck[256];
        ckpt_text(ck, sizeof ck, 2, past[k]);
        ckpt_put(ck);
        expect_refused(TALLY_ERR_STATE, "CHECKPOINT says", "lost acknowledged votes");
    }
    /* The control: the intact one is trusted. */
    file_write(f, orig, len);
    ckpt_put(good);
    vlog_t *l = open_rw();
    cr_assert_eq((uint64_t)votes_size(), end);
    vlog_close(l);
    free(orig);
    free(f);
}

/* A log cut short (same file, same inode) below what CHECKPOINT recorded as
 * durable: acknowledged votes are gone. Before, the open scanned the rest
 * and went on as if nothing happened. */
Test(vlog, log_shorter_than_its_checkpoint_is_refused) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 10);
    flush_ok(l);
    vlog_close(l);
    conf->log_fsync = 0;
    cr_assert_eq(ckpt_get(), (long long)model_end());
    char *f = votes_path();
    file_truncate(f, (long long)model[20].end); /* a frame boundary */
    free(f);
    expect_refused(TALLY_ERR_STATE, "CHECKPOINT says", "lost acknowledged votes");
}

/* A votes.log replaced (moved away, as the corruption message suggests, or
 * restored) must not inherit the old CHECKPOINT: recovery would start in the
 * middle of a frame, take it for a torn tail and cut acknowledged records.
 * The checkpoint names the file's inode, and a checkpoint that does not land
 * on a frame means a full scan. */
Test(vlog, stale_checkpoint_of_a_replaced_log_is_not_trusted) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 20);
    flush_ok(l);
    vlog_close(l);
    uint64_t old_end = model_end();
    cr_assert_eq(ckpt_get(), (long long)old_end);

    /* Replaced by another log's votes.log, written elsewhere and moved in
     * (a META without any votes.log is refused, so tally itself never
     * makes the new file here). */
    char *ld = log_file(""), *ld2 = path_join(dir, "log2");
    conf_set_str(&conf->log_dir, ld2);
    nmodel = 0;
    conf->log_fsync = 0;
    l = open_rw();
    append_interleaved(l, NPARTS, 20);
    flush_ok(l);
    vlog_close(l);
    char *f = votes_path(), *f2 = path_join(ld2, "votes.log");
    cr_assert_eq(rename(f2, f), 0);
    conf_set_str(&conf->log_dir, ld);
    free(f);
    free(f2);
    free(ld);
    free(ld2);
    cr_assert_gt(model_end(), old_end);
    for (int j = 0; j < nmodel; j++)
        cr_assert_neq(model[j].start, old_end, "the old end is a frame boundary by chance");

    l = open_rw();
    cr_assert_eq((uint64_t)votes_size(), model_end(), "acknowledged records were cut");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
}

/* ---- recovery: corruption ---- */

static uint32_t frame_sum(const uint8_t *p, uint32_t len, uint16_t partition) {
    return (uint32_t)XXH3_64bits_withSeed(p, len, (uint64_t)len | (uint64_t)partition << 32);
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The big log's frames: partition, payload length, end offset. */
typedef struct {
    int n;
    uint16_t *part;
    uint32_t *len;
    uint64_t *end;
} big_log_t;

static void big_log_free(big_log_t *b) {
    free(b->part);
    free(b->len);
    free(b->end);
}

/* Writes a two-partition log of > 16 MiB directly, frames of every size
 * from 1 byte to the maximum (so frames straddle every read chunk), of
 * either partition at random. */
static big_log_t write_big_log(void) {
    conf->log_partitions = 2;
    char *ld = path_join(dir, "log");
    cr_assert_eq(mkdir_p(ld), 0);
    char *meta = path_join(ld, "META");
    file_write_str(meta, "tally-log 2 partitions=2 id=file:0123456789abcdef0123456789abcdef\n");
    char *f = path_join(ld, "votes.log");
    FILE *out = fopen(f, "wb");
    cr_assert_not_null(out);
    static uint8_t frame[FRAME_HDR + MAX_PAYLOAD];
    big_log_t b = {0};
    int cap = 0;
    uint64_t size = 0, seed = 1;
    while (size < (17u << 20) + 12345) {
        uint32_t len;
        uint64_t r = rng_next(&seed);
        int n = b.n;
        if (n % 50 == 0)
            len = MAX_PAYLOAD;
        else if (n % 3 == 0)
            len = 1 + (uint32_t)(r % 64);
        else
            len = 1 + (uint32_t)(r % MAX_PAYLOAD);
        uint16_t p = (uint16_t)(r >> 40 & 1);
        for (uint32_t j = 0; j < len; j++)
            frame[FRAME_HDR + j] = (uint8_t)(n * 7 + (int)j);
        put32(frame, len);
        put32(frame + 4, frame_sum(frame + FRAME_HDR, len, p));
        put16(frame + 8, p);
        put16(frame + 10, 0);
        cr_assert_eq(fwrite(frame, 1, FRAME_HDR + len, out), FRAME_HDR + len);
        size += FRAME_HDR + len;
        if (b.n == cap) {
            cap = cap ? cap * 2 : 1024;
            b.part = xrealloc(b.part, sizeof *b.part * (size_t)cap);
            b.len = xrealloc(b.len, sizeof *b.len * (size_t)cap);
            b.end = xrealloc(b.end, sizeof *b.end * (size_t)cap);
        }
        b.part[n] = p;
        b.len[n] = len;
        b.end[n] = size;
        b.n++;
    }
    cr_assert_eq(fclose(out), 0);
    free(f);
    free(meta);
    free(ld);
    return b;
}

/* Reads with a reader of parts from pos and checks every record against
 * the big log: the frames of those partitions that start at or after pos,
 * in order. Returns how many. */
static int big_log_read(vlog_t *l, const big_log_t *b, const int *parts, const uint64_t *pos,
                        int nparts, int max) {
    char err[256];
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, parts, pos, nparts, &s);
    int k = 0, delivered = 0;
    uint64_t start[2] = {0, 0};
    for (int i = 0; i < nparts; i++)
        start[parts[i]] = pos ? pos[i] : 0;
    for (;;) {
        sink_clear(&s);
        int got = vlog_reader_poll(r, sink_cb, &s, max, 0, err, sizeof err);
        cr_assert_geq(got, 0, "%s", err);
        if (got == 0)
            break;
        for (int i = 0; i < s.n; i++) {
            const msg_t *m = &s.msgs[i];
            /* the next frame of the reader's partitions */
            for (;; k++) {
                cr_assert_lt(k, b->n, "a record past the last frame");
                uint64_t fstart = b->end[k] - FRAME_HDR - b->len[k];
                int p = b->part[k];
                if ((p == parts[0] || (nparts > 1 && p == parts[1])) && fstart >= start[p])
                    break;
            }
            cr_assert_eq(m->partition, b->part[k], "frame %d", k);
            cr_assert_eq(m->len, b->len[k], "frame %d", k);
            cr_assert_eq(m->next_pos, b->end[k], "frame %d", k);
            for (size_t j = 0; j < m->len; j += 997)
                cr_assert_eq(m->data[j], (uint8_t)(k * 7 + (int)j), "frame %d byte %zu", k, j);
            cr_assert_eq(m->data[m->len - 1], (uint8_t)(k * 7 + (int)m->len - 1));
            k++;
            delivered++;
        }
    }
    for (int i = 0; i < nparts; i++)
        cr_assert_eq(s.pos[parts[i]], b->end[b->n - 1], "partition %d short of the end", parts[i]);
    sink_free(&s);
    vlog_reader_free(r);
    return delivered;
}

Test(vlog, big_log_recovers_and_reads_across_chunks, .timeout = 60) {
    big_log_t b = write_big_log();
    uint64_t size = b.end[b.n - 1];
    int n1 = 0;
    for (int k = 0; k < b.n; k++)
        n1 += b.part[k];
    cr_assert(n1 > 0 && n1 < b.n);
    vlog_t *l = open_log(VLOG_F_READ);
    uint64_t ends[2];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    cr_assert_eq(ends[0], size, "a valid log was cut at open");
    cr_assert_eq(ends[1], size);
    int both[2] = {0, 1}, one[1] = {1}, zero[1] = {0};
    cr_assert_eq(big_log_read(l, &b, both, NULL, 2, 64), b.n);
    /* A reader of one partition skips the other's frames across chunks. */
    cr_assert_eq(big_log_read(l, &b, one, NULL, 1, 64), n1);
    cr_assert_eq(big_log_read(l, &b, zero, NULL, 1, 1000000), b.n - n1);
    /* From the middle, past the first chunk. */
    int mid = b.n / 2;
    cr_assert_gt(b.end[mid], 1u << 20);
    uint64_t from[2] = {b.end[mid], b.end[mid / 2]};
    int want = 0;
    for (int k = mid / 2 + 1; k < b.n; k++)
        want += b.part[k] == 1 || k > mid;
    cr_assert_eq(big_log_read(l, &b, both, from, 2, 7), want);
    vlog_close(l);
    big_log_free(&b);
}

Test(vlog, corruption_far_from_the_tail_refuses_to_open, .timeout = 60) {
    big_log_t b = write_big_log();
    uint64_t size = b.end[b.n - 1];
    char *f = votes_path();
    char *orig = file_read(f, NULL);
    /* A damaged payload in the first frame, or a damaged header in the
     * second. */
    const struct {
        uint64_t at;
        const char *why;
    } dmg[2] = {{FRAME_HDR + 0, "checksum mismatch"}, {b.end[0] + 9, "bad frame header"}};
    for (int d = 0; d < 2; d++) {
        file_write(f, orig, size);
        file_flip_byte(f, (long long)dmg[d].at);
        char err[1024] = "";
        cr_assert_null(vlog_open(conf, VLOG_F_READ | VLOG_F_WRITE, on_ack, NULL, err, sizeof err));
        cr_assert_not_null(strstr(err, "corruption"), "%s", err);
        cr_assert_not_null(strstr(err, "votes.log"), "%s", err);
        cr_assert_not_null(strstr(err, dmg[d].why), "%s", err);
        char at[64];
        snprintf(at, sizeof at, "offset %llu ", d ? (unsigned long long)b.end[0] : 0ull);
        cr_assert_not_null(strstr(err, at), "%s", err);
        cr_assert_eq((uint64_t)file_size(f), size, "the log was cut after all");
        /* Read-only opens refuse too. */
        cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err, sizeof err));
        cr_assert_eq((uint64_t)file_size(f), size);
    }

    /* With a checkpoint past the damage, a writer's recovery does not look
     * there: the log opens, and a reader stops at the damage with an error.
     * (A read-only open, replay's, scans the whole log whatever the
     * checkpoint says, and refuses.) */
    char ck[256];
    ckpt_text(ck, sizeof ck, 2, size);
    ckpt_put(ck);
    char err0[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err0, sizeof err0));
    cr_assert_not_null(strstr(err0, "corruption"), "%s", err0);
    vlog_t *l = open_log(VLOG_F_READ | VLOG_F_WRITE);
    int both[2] = {0, 1};
    sink_t s = {.decline_at = -1};
    vlog_reader_t *r = reader_new(l, both, NULL, 2, &s);
    char err[256] = "";
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 64, 0, err, sizeof err), -1);
    cr_assert_eq(s.n, 1, "the frame before the damage is read");
    cr_assert_not_null(strstr(err, "bad frame header"), "%s", err);
    vlog_reader_free(r);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq((uint64_t)file_size(f), size);
    free(orig);
    free(f);
    big_log_free(&b);
}

/* ---- META and LOCK ---- */

Test(vlog, meta_partition_count_is_fixed) {
    conf->log_partitions = 4;
    vlog_t *l = open_rw();
    append_n(l, 3, 0, 2);
    flush_ok(l);
    vlog_close(l);
    char *meta = log_file("META");
    size_t len;
    char *text = file_read(meta, &len);
    char want[256];
    snprintf(want, sizeof want, "%s", text);
    cr_assert_eq(strncmp(text, "tally-log 3 partitions=4 id=file:", 33), 0, "%s", text);
    free(text);

    conf->log_partitions = 2;
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "log.partitions"), "%s", err);
    cr_assert_not_null(strstr(err, "4"), "%s", err);
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err, sizeof err));
    conf->log_partitions = 5;
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err, sizeof err));
    text = file_read(meta, &len);
    cr_assert_str_eq(text, want, "a refused open changed META");
    free(text);

    conf->log_partitions = 4;
    l = open_rw();
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 3, 2);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    free(meta);
}

Test(vlog, format_1_log_is_refused) {
    /* A log of the old one-file-per-partition format. */
    char *ld = log_file("");
    cr_assert_eq(mkdir_p(ld), 0);
    char *meta = log_file("META"), *p0 = log_file("p000.log");
    file_write_str(meta, "tally-log 1 partitions=3\n");
    file_write_str(p0, "old frames");
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "format 1"), "%s", err);
    cr_assert_not_null(strstr(err, "formats 2 to 3"), "%s", err);
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err, sizeof err));
    char *text = file_read(meta, NULL);
    cr_assert_str_eq(text, "tally-log 1 partitions=3\n");
    free(text);
    cr_assert_eq(votes_size(), -1, "votes.log created next to an old log");
    cr_assert_eq(file_size(p0), 10);
    free(meta);
    free(p0);
    free(ld);
}

Test(vlog, missing_meta_with_an_existing_log_is_refused) {
    conf->log_partitions = 4;
    vlog_t *l = open_rw();
    append_n(l, 3, 0, 2);
    flush_ok(l);
    vlog_close(l);
    char *meta = log_file("META");
    cr_assert_eq(unlink(meta), 0);
    conf->log_partitions = 2;
    char err[1024] = "";
    l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, NULL, err, sizeof err);
    if (l)
        vlog_close(l);
    cr_assert_null(l, "opened a 4-partition log as 2 partitions");
    cr_assert_not_null(strstr(err, "log.partitions"), "%s", err);
    cr_assert_not_null(strstr(err, "META"), "%s", err);
    cr_assert_eq(file_size(meta), -1, "META made up");
    /* The same partition count is no excuse either: it cannot be known. */
    conf->log_partitions = 4;
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err, sizeof err));
    /* Restored as the error says (no id), it opens with a legacy id, and
     * META keeps it so (a writer says format 3, no id made up). */
    file_write_str(meta, "tally-log 2 partitions=4\n");
    l = open_rw();
    cr_assert_eq(strncmp(vlog_id(l), "legacy:", 7), 0, "%s", vlog_id(l));
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    char *text = file_read(meta, NULL);
    cr_assert_str_eq(text, "tally-log 3 partitions=4\n");
    free(text);
    free(meta);
}

/* ---- log ids ---- */

Test(vlog, a_new_log_gets_a_random_id_kept_across_opens) {
    vlog_t *l = open_rw();
    char id[VLOG_ID_MAX], fromfile[160];
    snprintf(id, sizeof id, "%s", vlog_id(l));
    cr_assert_eq(vlog_id_legacy(l), 0);
    append_n(l, 0, 0, 3);
    flush_ok(l);
    vlog_close(l);
    meta_id(fromfile, sizeof fromfile);
    cr_assert_str_eq(id, fromfile);
    for (size_t i = 5; i < strlen(id); i++)
        cr_assert(strchr("0123456789abcdef", id[i]), "%s", id);
    l = open_rw();
    cr_assert_str_eq(vlog_id(l), id);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    cr_assert_str_eq(vlog_id(l), id);
    vlog_close(l);
    /* Another log elsewhere: another id. */
    char *other = path_join(dir, "other");
    const char *keep = conf->log_dir;
    conf->log_dir = other;
    l = open_rw();
    cr_assert_str_neq(vlog_id(l), id);
    cr_assert_eq(strncmp(vlog_id(l), "file:", 5), 0);
    vlog_close(l);
    conf->log_dir = (char *)keep;
    free(other);
}

/* A META of the tally before ids, over a log with votes: read as it is
 * (never given an id; a writer only says the format now has commit
 * frames), the id derived from the first frame header. */
Test(vlog, old_meta_without_id_is_read_as_it_is) {
    conf->log_partitions = 2;
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 3);
    append_n(l, 1, 3, 2);
    flush_ok(l);
    vlog_close(l);
    char *meta = log_file("META");
    file_write_str(meta, "tally-log 2 partitions=2\n");
    l = open_rw();
    char id[VLOG_ID_MAX];
    snprintf(id, sizeof id, "%s", vlog_id(l));
    cr_assert_eq(vlog_id_legacy(l), 1);
    cr_assert_eq(strncmp(id, "legacy:", 7), 0, "%s", id);
    cr_assert_eq(strlen(id), 7 + 16, "%s", id);
    append_n(l, 0, 5, 1);
    flush_ok(l);
    vlog_close(l);
    char *text = file_read(meta, NULL);
    cr_assert_str_eq(text, "tally-log 3 partitions=2\n", "META of an old log given an id");
    free(text);
    /* Deterministic: the same id read-only and again. */
    l = open_log(VLOG_F_READ);
    cr_assert_str_eq(vlog_id(l), id);
    vlog_close(l);
    /* As documented: XXH3 of the first frame header, seeded with the
     * partition count. */
    char *f = votes_path();
    size_t len;
    uint8_t *data = (uint8_t *)file_read(f, &len);
    char want[64];
    snprintf(want, sizeof want, "legacy:%016llx",
             (unsigned long long)XXH3_64bits_withSeed(data, FRAME_HDR, 2));
    cr_assert_str_eq(id, want);
    free(data);
    free(f);
    free(meta);
}

/* An empty log of the old tally holds no vote a snapshot could count: a
 * writer gives it an id; a read-only open writes nothing. */
Test(vlog, old_meta_of_an_empty_log_gets_an_id_from_a_writer_only) {
    char *ld = log_file("");
    cr_assert_eq(mkdir_p(ld), 0);
    char *meta = log_file("META"), *f = votes_path();
    conf->log_partitions = 4;
    file_write_str(meta, "tally-log 2 partitions=4\n");
    file_write_str(f, "");
    vlog_t *l = open_log(VLOG_F_READ);
    cr_assert_str_eq(vlog_id(l), "legacy:empty");
    vlog_close(l);
    char *text = file_read(meta, NULL);
    cr_assert_str_eq(text, "tally-log 2 partitions=4\n");
    free(text);
    l = open_rw();
    cr_assert_eq(strncmp(vlog_id(l), "file:", 5), 0, "%s", vlog_id(l));
    cr_assert_eq(vlog_id_legacy(l), 0);
    char id[160];
    meta_id(id, sizeof id);
    cr_assert_str_eq(id, vlog_id(l));
    vlog_close(l);
    free(meta);
    free(f);
    free(ld);
}

Test(vlog, malformed_id_in_meta_is_refused) {
    const char *bad[] = {
        "tally-log 2 partitions=4 id=\n",
        "tally-log 2 partitions=4 id=file:0123\n",
        "tally-log 2 partitions=4 id=file:0123456789abcdef0123456789abcdeg\n",
        "tally-log 2 partitions=4 id=file:0123456789abcdef0123456789abcdef0\n",
        "tally-log 2 partitions=4 id=kafka:x\n",
    };
    conf->log_partitions = 4;
    vlog_t *l = open_rw();
    vlog_close(l);
    char *meta = log_file("META");
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        file_write_str(meta, bad[k]);
        tally_err_t err = TALLY_OK;
        char e[1024] = "";
        l = vlog_open(conf, VLOG_F_READ | VLOG_F_WRITE, on_ack, &err, e, sizeof e);
        if (l)
            vlog_close(l);
        cr_assert_null(l, "opened with META '%s'", bad[k]);
        cr_assert_eq(err, TALLY_ERR_CORRUPT, "%s: %s", bad[k], e);
        char *text = file_read(meta, NULL);
        cr_assert_str_eq(text, bad[k]);
        free(text);
    }
    free(meta);
}

Test(vlog, unreadable_meta_is_refused) {
    char *ld = path_join(dir, "log");
    cr_assert_eq(mkdir_p(ld), 0);
    char *meta = path_join(ld, "META");
    file_write_str(meta, "something else\n");
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "not a tally log"), "%s", err);
    free(meta);
    free(ld);
}

Test(vlog, second_open_is_refused_while_in_use) {
    vlog_t *l = open_rw();
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "in use"), "%s", err);
    err[0] = '\0';
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "in use"), "%s", err);
    /* The first one is unharmed. */
    append_n(l, 0, 0, 3);
    flush_ok(l);
    vlog_close(l);
    /* and once it is closed the directory is free. */
    l = open_rw();
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 3);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, log_dir_that_cannot_be_created) {
    char *file = path_join(dir, "plainfile");
    file_write_str(file, "x");
    char *bad = path_join(dir, "plainfile/log");
    conf_set_str(&conf->log_dir, bad);
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE, on_ack, NULL, err, sizeof err));
    cr_assert_not_null(strstr(err, "log.dir"), "%s", err);
    free(file);
    free(bad);
}

/* ---- read-only opens ---- */

/* Every file of log/ with its contents, to compare before and after. */
static char *dir_snapshot(void) {
    static const char *const names[] = {"votes.log", "META", "CHECKPOINT", "LOCK", NULL};
    buf_t b = {0};
    for (int i = 0; names[i]; i++) {
        char *f = log_file(names[i]);
        size_t len = 0;
        char *text = file_read(f, &len);
        buf_printf(&b, "%s:%lld:%016llx\n", names[i], text ? (long long)len : -1LL,
                   text ? (unsigned long long)XXH3_64bits(text, len) : 0ull);
        free(text);
        free(f);
    }
    char *ld = log_file("");
    buf_printf(&b, "files:%d\n", dir_count(ld, ""));
    free(ld);
    return b.data;
}

/* tally replay's open: before, it cut the torn tail (and wrote CHECKPOINT,
 * and created META or votes.log when missing). */
Test(vlog, read_only_open_changes_nothing_and_stops_at_a_torn_tail) {
    conf->log_fsync = 1;
    prepare_closed_log();
    conf->log_fsync = 0;
    votes_append("\x17torn", 5);
    char *before = dir_snapshot();
    vlog_t *l = open_log(VLOG_F_READ);
    cr_assert_eq(durable_end(l), model_end(), "a reader would read the torn tail");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    char *after = dir_snapshot();
    cr_assert_str_eq(after, before, "a read-only open changed log.dir");
    free(after);
    /* Without a LOCK file (a copied directory), it creates none. */
    char *lock = log_file("LOCK");
    cr_assert_eq(unlink(lock), 0);
    free(before);
    before = dir_snapshot();
    l = open_log(VLOG_F_READ);
    vlog_close(l);
    after = dir_snapshot();
    cr_assert_str_eq(after, before, "a read-only open created LOCK");
    cr_assert_eq(file_size(lock), -1);
    free(lock);
    free(after);
    free(before);
    /* Two readers share the lock; a writer is refused meanwhile. */
    vlog_t *r1 = open_log(VLOG_F_READ), *r2 = open_log(VLOG_F_READ);
    char err[1024] = "";
    tally_err_t e = TALLY_OK;
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, &e, err, sizeof err));
    cr_assert_eq(e, TALLY_ERR_STATE, "%s", err);
    cr_assert_not_null(strstr(err, "in use"), "%s", err);
    vlog_close(r1);
    vlog_close(r2);
    /* The writer cuts the tail. */
    l = open_rw();
    cr_assert_eq((uint64_t)votes_size(), model_end());
    vlog_close(l);
}

Test(vlog, read_only_open_of_no_log_is_refused) {
    tally_err_t e = TALLY_OK;
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, &e, err, sizeof err));
    cr_assert_eq(e, TALLY_ERR_STATE);
    cr_assert_not_null(strstr(err, "no vote log"), "%s", err);
    char *ld = log_file("");
    struct stat st;
    cr_assert_neq(stat(ld, &st), 0, "log.dir created by a read-only open");
    cr_assert_eq(mkdir_p(ld), 0);
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, &e, err, sizeof err));
    cr_assert_eq(dir_count(ld, ""), 0, "files created by a read-only open");
    free(ld);
}

/* ---- a vanished votes.log ---- */

/* Before: META without votes.log silently got a new, empty log. */
Test(vlog, meta_without_votes_log_is_refused) {
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 3);
    flush_ok(l);
    vlog_close(l);
    char *f = votes_path();
    cr_assert_eq(unlink(f), 0);
    expect_refused(TALLY_ERR_STATE, "votes.log is missing", "META");
    cr_assert_eq(file_size(f), -1, "votes.log made up");
    free(f);
}

Test(vlog, open_errors_have_classes) {
    vlog_t *l = open_rw();
    char err[1024] = "";
    tally_err_t e = TALLY_OK;
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE, on_ack, &e, err, sizeof err));
    cr_assert_eq(e, TALLY_ERR_STATE, "in use: %s", tally_err2str(e));
    vlog_close(l);
    conf->log_partitions = NPARTS + 1;
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE, on_ack, &e, err, sizeof err));
    cr_assert_eq(e, TALLY_ERR_CONFIG, "partition count: %s", tally_err2str(e));
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, &e, err, sizeof err));
    cr_assert_eq(e, TALLY_ERR_CONFIG);
    conf->log_partitions = NPARTS;
    l = vlog_open(conf, VLOG_F_READ, on_ack, &e, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    cr_assert_eq(e, TALLY_OK);
    vlog_close(l);
}

/* Before: votes went on being acknowledged into the unlinked inode. */
Test(vlog, deleted_log_is_noticed_within_a_second_and_takes_no_votes) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 3);
    flush_ok(l);
    cr_assert_eq(vlog_health(l, NULL, 0), TALLY_OK);
    char *f = votes_path();
    cr_assert_eq(unlink(f), 0);
    /* A vote right away: its round finds the file gone (or the idle check
     * did first): never acknowledged. */
    uint8_t buf[256];
    size_t n = payload(0, 9, buf);
    vlog_err_t ae = vlog_append(l, 0, buf, n, NULL, NULL);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 9, "a vote acknowledged into a deleted file");
    cr_assert_eq(atomic_load(&acks_bad), ae == VLOG_OK ? 1u : 0u);
    const char *msg = wait_health(l, TALLY_ERR_STATE);
    cr_assert_not_null(strstr(msg, "deleted or moved"), "%s", msg);
    cr_assert_eq(vlog_append(l, 1, buf, n, NULL, NULL), VLOG_UNAVAIL);
    /* Reads and ends are still served. */
    cr_assert_eq(durable_end(l), model_end());
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq(file_size(f), -1, "close brought votes.log back");
    free(f);
}

Test(vlog, idle_writer_notices_a_deleted_log_within_a_second) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 2);
    flush_ok(l);
    char *f = votes_path();
    uint64_t t0 = mono_ms();
    cr_assert_eq(unlink(f), 0);
    char msg[512];
    while (vlog_health(l, msg, sizeof msg) == TALLY_OK) {
        cr_assert_lt(mono_ms() - t0, 1000 * TMOUT_MULT, "not noticed within a second");
        tiny_pause();
    }
    cr_assert_not_null(strstr(msg, "deleted or moved"), "%s", msg);
    vlog_close(l);
    free(f);
}

Test(vlog, replaced_log_takes_no_votes) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 2);
    flush_ok(l);
    char *f = votes_path(), *other = log_file("other");
    file_write_str(other, "another file");
    cr_assert_eq(rename(other, f), 0);
    uint8_t buf[256];
    vlog_err_t ae = vlog_append(l, 0, buf, payload(0, 2, buf), NULL, NULL);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 2);
    cr_assert_eq(atomic_load(&acks_bad), ae == VLOG_OK ? 1u : 0u);
    cr_assert_not_null(strstr(wait_health(l, TALLY_ERR_STATE), "replaced"));
    vlog_close(l);
    cr_assert_eq(file_size(f), 12, "the replacement was written to");
    free(f);
    free(other);
}

/* ---- disk faults: degrade, repair, never abort ---- */

/* Before: a write that failed half-way and a truncate that failed too
 * called tally_assert and aborted the process. */
Test(vlog, failed_write_and_truncate_degrade_then_recover) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 3);
    flush_ok(l);
    uint64_t end = model_end();
    /* stderr to a file: the failure is logged once, not once a retry. */
    char *errlog = log_file("stderr.txt");
    fflush(stderr);
    int saved = dup(2), efd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(saved >= 0 && efd >= 0);
    dup2(efd, 2);
    close(efd);
    atomic_store(&pwrite_partial, 7); /* 7 bytes land, then ENOSPC */
    atomic_store(&pwrite_fail, ENOSPC);
    atomic_store(&ftruncate_fail, EIO);
    uint8_t buf[256];
    append_ok(l, 0, buf, payload(0, 3, buf));
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_bad), 1);
    const char *msg = wait_health(l, TALLY_ERR_IO);
    cr_assert_not_null(strstr(msg, "cannot cut"), "%s", msg);
    cr_assert_eq((uint64_t)votes_size(), end + 7, "the garbage is there while cutting fails");
    /* Failed: appends are refused at once, reads and ends go on. */
    cr_assert_eq(vlog_append(l, 1, buf, 10, NULL, NULL), VLOG_UNAVAIL);
    cr_assert_eq(durable_end(l), end);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    /* It keeps trying: still failing after a few retries. */
    int calls = atomic_load(&ftruncate_calls);
    WAIT_UNTIL(atomic_load(&ftruncate_calls) >= calls + 2, 10000);
    cr_assert_eq(vlog_health(l, NULL, 0), TALLY_ERR_IO);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char *text = file_read(errlog, NULL);
    int lines = 0;
    for (const char *q = text; (q = strstr(q, "votes are answered 503")); q++)
        lines++;
    cr_assert_eq(lines, 1, "the failure was logged %d times:\n%s", lines, text);
    free(text);
    free(errlog);
    /* The disk comes back: the garbage is cut, writes resume after the
     * last good frame. */
    atomic_store(&ftruncate_fail, 0);
    atomic_store(&pwrite_fail, 0);
    wait_health(l, TALLY_OK);
    cr_assert_eq((uint64_t)votes_size(), end);
    append_n(l, 0, 3, 5);
    append_n(l, 2, 3, 4);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 12);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_model(&s);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq((uint64_t)votes_size(), model_end());
}

Test(vlog, votes_queued_when_the_log_fails_are_not_written) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 1);
    flush_ok(l);
    uint64_t end = model_end();
    /* Round A fails; B, queued behind it, is answered 503 unwritten even
     * though the disk is fine again by then. */
    gate_close();
    append_n(l, 1, 0, 1); /* a good round, held in its ack */
    gate_wait_entered();
    end = model_end();
    atomic_store(&pwrite_fail, EIO);
    uint8_t buf[256];
    append_ok(l, 0, buf, payload(0, 1, buf));
    gate_open();
    WAIT_UNTIL(vlog_health(l, NULL, 0) == TALLY_ERR_IO, 10000);
    atomic_store(&pwrite_fail, 0);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_bad), 1);
    cr_assert_eq((uint64_t)votes_size(), end);
    wait_health(l, TALLY_OK);
    vlog_close(l);
}

/* ---- start positions ---- */

Test(vlog, positions_past_the_end_are_refused) {
    vlog_t *l = open_rw();
    append_interleaved(l, NPARTS, 2);
    flush_ok(l);
    uint64_t pos[NPARTS] = {model_end(), 0, model_end()};
    char err[512] = "";
    cr_assert_eq(vlog_check_positions(l, pos, err, sizeof err), TALLY_OK, "%s", err);
    pos[1] = model_end() + 1;
    cr_assert_eq(vlog_check_positions(l, pos, err, sizeof err), TALLY_ERR_STATE);
    cr_assert_not_null(strstr(err, "partition 1: start position"), "%s", err);
    cr_assert_not_null(strstr(err, "past the end of the log"), "%s", err);
    vlog_close(l);
}

/* ---- the scan, on a buffer and through a file ---- */

/* Appends a frame of partition p with n payload bytes of value v. */
static uint64_t frame_put(buf_t *b, uint16_t p, uint32_t n, uint8_t v) {
    uint8_t hdr[FRAME_HDR], pay[512];
    cr_assert_leq(n, sizeof pay);
    memset(pay, v, n);
    put32(hdr, n);
    put32(hdr + 4, frame_sum(pay, n, p));
    put16(hdr + 8, p);
    put16(hdr + 10, 0);
    buf_append(b, hdr, FRAME_HDR);
    buf_append(b, pay, n);
    return b->len;
}

static void scan_expect_same(const vlog_scan_t *a, const vlog_scan_t *b, const char *what) {
    cr_assert_eq(a->size, b->size, "%s: size", what);
    cr_assert_eq(a->frames, b->frames, "%s: frames", what);
    cr_assert_eq(a->valid_end, b->valid_end, "%s: valid end", what);
    cr_assert_eq(a->ndamage, b->ndamage, "%s: damage", what);
    for (size_t k = 0; k < a->ndamage; k++) {
        cr_assert_eq(a->damage[k].start, b->damage[k].start, "%s", what);
        cr_assert_eq(a->damage[k].end, b->damage[k].end, "%s", what);
        cr_assert_eq(a->damage[k].frames_after, b->damage[k].frames_after, "%s", what);
    }
    cr_assert_eq(a->has_tail, b->has_tail, "%s: tail", what);
    if (a->has_tail)
        cr_assert_eq(a->tail.start, b->tail.start, "%s: tail start", what);
    for (int p = 0; p < a->npartitions; p++)
        cr_assert_eq(a->part_frames[p], b->part_frames[p], "%s: partition %d", what, p);
}

/* The buffer scan, and the same bytes through a file with windows small
 * and large, agree. */
static void scan_both(const buf_t *b, vlog_scan_t *out) {
    vlog_scan_buf((const uint8_t *)b->data, b->len, NPARTS, out);
    char *f = log_file("scan.bin");
    char *ld = log_file("");
    mkdir_p(ld);
    free(ld);
    file_write(f, b->data ? b->data : "", b->len);
    int fd = open(f, O_RDONLY);
    cr_assert_geq(fd, 0);
    const size_t windows[3] = {1, 100, 1u << 20};
    for (int w = 0; w < 3; w++) {
        vlog_scan_t s2;
        char err[256];
        cr_assert_eq(vlog_scan_fd_window(fd, 0, NPARTS, windows[w], &s2, err, sizeof err), TALLY_OK,
                     "%s", err);
        scan_expect_same(out, &s2, "fd scan");
        vlog_scan_free(&s2);
    }
    close(fd);
    free(f);
}

Test(vlog, scan_finds_frames_damage_and_tail) {
    buf_t b = {0};
    uint64_t e0 = frame_put(&b, 0, 10, 'a');
    uint64_t e1 = frame_put(&b, 1, 300, 'b');
    buf_append(&b, "\x01garbage", 8); /* damage */
    uint64_t s2 = b.len;
    frame_put(&b, 2, 1, 'c');
    uint64_t e3 = frame_put(&b, 0, 50, 'd');
    uint64_t s4 = b.len;
    frame_put(&b, 1, 40, 'e');
    b.len -= 3; /* the last frame cut short: the tail */
    vlog_scan_t s;
    scan_both(&b, &s);
    cr_assert_eq(s.frames, 4);
    cr_assert_eq(s.part_frames[0], 2);
    cr_assert_eq(s.part_frames[1], 1);
    cr_assert_eq(s.part_frames[2], 1);
    cr_assert_eq(s.valid_end, e3);
    cr_assert_eq(s.ndamage, 1);
    cr_assert_eq(s.damage[0].start, e1);
    cr_assert_eq(s.damage[0].end, s2);
    cr_assert_eq(s.damage[0].frames_after, 2);
    cr_assert(s.has_tail);
    cr_assert_eq(s.tail.start, s4);
    cr_assert_eq(s.tail.end, b.len);
    cr_assert_eq(s.size, b.len);
    cr_assert_not(vlog_scan_clean(&s));
    vlog_scan_free(&s);
    (void)e0;

    /* Without the damage it is clean: a torn tail only. */
    buf_t c = {0};
    frame_put(&c, 0, 10, 'a');
    uint64_t ce = frame_put(&c, 2, 20, 'b');
    buf_append(&c, "\0\0\0", 3);
    scan_both(&c, &s);
    cr_assert_eq(s.ndamage, 0);
    cr_assert(s.has_tail);
    cr_assert_eq(s.tail.start, ce);
    cr_assert(vlog_scan_clean(&s));
    vlog_scan_free(&s);

    /* Nothing at all; nothing but garbage. */
    buf_t z = {0};
    scan_both(&z, &s);
    cr_assert(s.frames == 0 && !s.has_tail && s.ndamage == 0 && vlog_scan_clean(&s));
    vlog_scan_free(&s);
    buf_append(&z, "zzzzzzzzzzzzzzzzzzzzzzzz", 24);
    scan_both(&z, &s);
    cr_assert(s.frames == 0 && s.has_tail && s.tail.start == 0 && s.ndamage == 0);
    vlog_scan_free(&s);
    buf_free(&b);
    buf_free(&c);
    buf_free(&z);
}
