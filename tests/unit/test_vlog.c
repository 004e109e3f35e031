/* tsan: the file log's writer thread, concurrent appenders and readers. */
/* log/vlog.h over log/vlog_file.c, the embedded log: appends and acks,
 * reading back, durability across reopen, torn-tail recovery, corruption,
 * the META and LOCK files, back-pressure. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <xxhash.h>

#include "log/vlog.h"
#include "unit_helpers.h"

#define FRAME_HDR 8
#define MAX_PAYLOAD 65536

static char *dir;
static tally_config_t *conf;

static atomic_ulong acks_ok, acks_bad;

/* The ack gate: while closed, the writer thread blocks in its first ack,
 * which holds the log's state still (nothing is acknowledged, nothing
 * leaves `inflight`). */
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

/* Waits until the writer is inside an ack. */
static void gate_wait_entered(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10 * TMOUT_MULT;
    pthread_mutex_lock(&gate_mu);
    int rc = 0;
    while (gate_entered == 0 && rc == 0)
        rc = pthread_cond_timedwait(&gate_cv, &gate_mu, &ts);
    int entered = gate_entered;
    pthread_mutex_unlock(&gate_mu);
    cr_assert_gt(entered, 0, "the writer never acknowledged");
}

static void setup(void) {
    dir = tmpdir_new();
    conf = config_new_defaults();
    char *ld = path_join(dir, "log");
    conf_set_str(&conf->log_dir, ld);
    free(ld);
    conf->log_partitions = 3;
    conf->log_group_commit_us = 0;
    conf->log_fsync = 0;
    atomic_store(&acks_ok, 0);
    atomic_store(&acks_bad, 0);
    gate_open();
    tally_log_quiet = 1;
}

static void teardown(void) {
    gate_open();
    config_free(conf);
    conf = NULL;
    tmpdir_free(dir);
    dir = NULL;
}

TestSuite(vlog, .init = setup, .fini = teardown);

static vlog_t *open_log(int flags) {
    char err[1024];
    vlog_t *l = vlog_open(conf, flags, on_ack, err, sizeof err);
    cr_assert_not_null(l, "vlog_open: %s", err);
    return l;
}

static vlog_t *open_rw(void) { return open_log(VLOG_F_WRITE | VLOG_F_READ); }

static char *part_path(int p) {
    char name[32];
    snprintf(name, sizeof name, "log/p%03d.log", p);
    return path_join(dir, name);
}

/* Record i of partition p: a recognizable payload of varying length. */
static size_t payload(int p, int i, uint8_t *out) {
    size_t n = (size_t)snprintf((char *)out, 64, "p%d-r%d-", p, i);
    size_t pad = (size_t)((i * 37 + p * 11) % 150);
    memset(out + n, 'a' + (i % 26), pad);
    return n + pad;
}

static void append_ok(vlog_t *l, int p, const uint8_t *rec, size_t n) {
    vlog_err_t err = vlog_append(l, p, rec, n, NULL);
    cr_assert_eq(err, VLOG_OK, "append: %s", vlog_err2str(err));
}

static void append_n(vlog_t *l, int p, int from, int to) {
    uint8_t buf[256];
    for (int i = from; i < to; i++)
        append_ok(l, p, buf, payload(p, i, buf));
}

static void flush_ok(vlog_t *l) {
    cr_assert_eq(vlog_flush(l, 10000 * TMOUT_MULT), 0, "flush timed out");
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
} sink_t;

static int sink_cb(void *arg, const vlog_msg_t *m) {
    sink_t *s = arg;
    if (s->decline_at >= 0 && m->partition == s->decline_part && s->n == s->decline_at)
        return 1;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->msgs = xrealloc(s->msgs, sizeof *s->msgs * (size_t)s->cap);
    }
    msg_t *d = &s->msgs[s->n++];
    d->partition = m->partition;
    d->next_pos = m->next_pos;
    cr_assert_eq(m->ts_ms, -1, "the file log has no timestamps of its own");
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

/* Reads partitions [0, nparts) from pos (NULL: 0) until nothing is left. */
static void read_all(vlog_t *l, const uint64_t *pos, sink_t *s) {
    int np = vlog_partitions(l);
    int parts[64];
    uint64_t zero[64] = {0};
    for (int p = 0; p < np; p++)
        parts[p] = p;
    char err[512];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos ? pos : zero, np, err, sizeof err);
    cr_assert_not_null(r, "reader: %s", err);
    int got;
    while ((got = vlog_reader_poll(r, sink_cb, s, 1000, 0, err, sizeof err)) > 0)
        ;
    cr_assert_eq(got, 0, "poll: %s", err);
    vlog_reader_free(r);
}

/* The records of partition p read back are exactly payload(p, 0..n-1) in
 * order, at increasing positions that add up to the file's size. */
static void expect_partition(const sink_t *s, int p, int n) {
    uint8_t want[256];
    int i = 0;
    uint64_t pos = 0;
    for (int k = 0; k < s->n; k++) {
        const msg_t *m = &s->msgs[k];
        if (m->partition != p)
            continue;
        cr_assert_lt(i, n, "partition %d: more than %d records", p, n);
        size_t wl = payload(p, i, want);
        cr_assert_eq(m->len, wl, "partition %d record %d: length %zu, want %zu", p, i, m->len, wl);
        cr_assert_eq(memcmp(m->data, want, wl), 0, "partition %d record %d differs", p, i);
        pos += FRAME_HDR + wl;
        cr_assert_eq(m->next_pos, pos, "partition %d record %d: next_pos", p, i);
        i++;
    }
    cr_assert_eq(i, n, "partition %d: %d records, want %d", p, i, n);
}

static uint64_t frames_size(int p, int n) {
    uint8_t b[256];
    uint64_t s = 0;
    for (int i = 0; i < n; i++)
        s += FRAME_HDR + payload(p, i, b);
    return s;
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
    cr_assert_eq(vlog_partitions(l), 3);
    for (int p = 0; p < 3; p++)
        cr_assert_eq(vlog_begin_position(l, p), 0);
    vlog_close(l);
    vlog_close(NULL);
}

Test(vlog, append_ack_and_read_back_in_order) {
    vlog_t *l = open_rw();
    const int n[3] = {300, 1, 77};
    /* Interleave the partitions. */
    uint8_t buf[256];
    for (int i = 0; i < 300; i++)
        for (int p = 0; p < 3; p++)
            if (i < n[p])
                append_ok(l, p, buf, payload(p, i, buf));
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 378);
    cr_assert_eq(atomic_load(&acks_bad), 0);

    uint64_t ends[3];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    for (int p = 0; p < 3; p++) {
        cr_assert_eq(ends[p], frames_size(p, n[p]));
        char *f = part_path(p);
        cr_assert_eq((uint64_t)file_size(f), ends[p]);
        free(f);
    }
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 378);
    for (int p = 0; p < 3; p++)
        expect_partition(&s, p, n[p]);
    sink_free(&s);
    vlog_close(l);
    cr_assert_eq(atomic_load(&acks_ok), 378, "acks after close");
}

Test(vlog, empty_log_reads_nothing) {
    vlog_t *l = open_rw();
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 0);
    uint64_t ends[3] = {9, 9, 9};
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    cr_assert(ends[0] == 0 && ends[1] == 0 && ends[2] == 0);
    cr_assert_eq(vlog_flush(l, 0), 0, "nothing in flight");
    vlog_close(l);
}

Test(vlog, durable_across_reopen) {
    conf->log_fsync = 1;
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 50);
    append_n(l, 2, 0, 20);
    flush_ok(l);
    vlog_close(l);

    for (int round = 0; round < 2; round++) {
        l = open_log(round == 0 ? VLOG_F_READ : VLOG_F_WRITE | VLOG_F_READ);
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
    append_n(l, 0, 50, 60);
    flush_ok(l);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 60);
    sink_free(&s);
    vlog_close(l);
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
    append_n(l, 1, 0, 200);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 200);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 1, 200);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, append_rejects_bad_arguments) {
    vlog_t *l = open_rw();
    static uint8_t big[MAX_PAYLOAD + 1];
    cr_assert_eq(vlog_append(l, 0, big, 0, NULL), VLOG_ERR);
    cr_assert_eq(vlog_append(l, 0, big, MAX_PAYLOAD + 1, NULL), VLOG_ERR);
    cr_assert_eq(vlog_append(l, -1, big, 10, NULL), VLOG_ERR);
    cr_assert_eq(vlog_append(l, 3, big, 10, NULL), VLOG_ERR);
    /* The largest frame is fine and reads back. */
    for (size_t i = 0; i < MAX_PAYLOAD; i++)
        big[i] = (uint8_t)(i * 13);
    cr_assert_eq(vlog_append(l, 0, big, MAX_PAYLOAD, NULL), VLOG_OK);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 1, "rejected appends were acknowledged");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 1);
    cr_assert_eq(s.msgs[0].len, (size_t)MAX_PAYLOAD);
    cr_assert_eq(memcmp(s.msgs[0].data, big, MAX_PAYLOAD), 0);
    sink_free(&s);
    vlog_close(l);

    /* A read-only log takes no appends. */
    l = open_log(VLOG_F_READ);
    cr_assert_eq(vlog_append(l, 0, big, 10, NULL), VLOG_ERR);
    vlog_close(l);
}

Test(vlog, failed_write_is_not_acknowledged_and_leaves_no_garbage) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 5);
    flush_ok(l);
    uint64_t end = frames_size(0, 5);
    /* Make the next write to partition 0 fail half-way: the file may grow
     * by 10 bytes only. */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)end + 10;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_n(l, 0, 5, 6);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_bad), 1, "the failed append was not answered with an error");
    cr_assert_eq(atomic_load(&acks_ok), 5);
    char *f = part_path(0);
    cr_assert_eq((uint64_t)file_size(f), end, "a failed write left bytes behind");
    uint64_t ends[3];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    cr_assert_eq(ends[0], end, "the durable end moved over a failed write");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 5);
    sink_free(&s);

    /* Once the disk has room again, appends go on right after the last
     * good record. */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    append_n(l, 0, 5, 6);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 6);
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 6);
    sink_free(&s);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 6);
    sink_free(&s);
    vlog_close(l);
    free(f);
}

Test(vlog, a_batch_fails_as_a_whole) {
    /* Partition 1 is big, partition 0 small; one batch holds a record for
     * each, and only partition 1's write fails. Neither is acknowledged as
     * written, and neither becomes readable. */
    vlog_t *l = open_rw();
    append_n(l, 1, 0, 50);
    append_n(l, 0, 0, 2);
    flush_ok(l);
    uint64_t end0 = frames_size(0, 2), end1 = frames_size(1, 50);
    cr_assert_lt(end0 + 200, end1);

    gate_close();
    append_n(l, 2, 0, 1);
    gate_wait_entered(); /* the writer is held in this record's ack */
    append_n(l, 0, 2, 3);
    append_n(l, 1, 50, 51);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)end0 + 200;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    gate_open();
    flush_ok(l);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_assert_eq(atomic_load(&acks_ok), 53, "ok acks");
    cr_assert_eq(atomic_load(&acks_bad), 2, "both records of the failed batch get an error");
    char *f0 = part_path(0), *f1 = part_path(1);
    cr_assert_eq((uint64_t)file_size(f0), end0, "partition 0 kept a record of a failed batch");
    cr_assert_eq((uint64_t)file_size(f1), end1);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 2);
    expect_partition(&s, 1, 50);
    expect_partition(&s, 2, 1);
    sink_free(&s);
    vlog_close(l);
    free(f0);
    free(f1);
}

/* ---- readers ---- */

Test(vlog, reader_from_a_position) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 10);
    append_n(l, 1, 0, 10);
    flush_ok(l);
    uint64_t pos[3] = {frames_size(0, 4), frames_size(1, 10), 0};
    sink_t s = {.decline_at = -1};
    read_all(l, pos, &s);
    cr_assert_eq(s.n, 6);
    uint8_t want[256];
    for (int k = 0; k < 6; k++) {
        cr_assert_eq(s.msgs[k].partition, 0);
        size_t wl = payload(0, 4 + k, want);
        cr_assert_eq(s.msgs[k].len, wl);
        cr_assert_eq(memcmp(s.msgs[k].data, want, wl), 0);
        cr_assert_eq(s.msgs[k].next_pos, frames_size(0, 5 + k));
    }
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, reader_past_the_end_is_refused) {
    vlog_t *l = open_rw();
    append_n(l, 1, 0, 3);
    flush_ok(l);
    int parts[2] = {0, 1};
    uint64_t pos[2] = {0, frames_size(1, 3) + 1};
    char err[512] = "";
    cr_assert_null(vlog_reader_new(l, parts, pos, 2, err, sizeof err));
    cr_assert_not_null(strstr(err, "past the end"), "%s", err);
    cr_assert_not_null(strstr(err, "partition 1"), "%s", err);
    pos[1] = frames_size(1, 3); /* exactly the end is fine */
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 2, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    vlog_reader_free(r);
    vlog_reader_free(NULL);
    vlog_close(l);
}

Test(vlog, reader_max_and_fairness) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 10);
    append_n(l, 2, 0, 10);
    flush_ok(l);
    int parts[2] = {0, 2};
    uint64_t pos[2] = {0, 0};
    char err[256];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 2, err, sizeof err);
    sink_t s = {.decline_at = -1};
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 3, 0, err, sizeof err), 3);
    cr_assert_eq(s.n, 3);
    int total = 3, polls = 1;
    int got;
    while ((got = vlog_reader_poll(r, sink_cb, &s, 3, 0, err, sizeof err)) > 0) {
        cr_assert_leq(got, 3);
        total += got;
        polls++;
    }
    cr_assert_eq(total, 20);
    cr_assert_eq(s.n, 20);
    expect_partition(&s, 0, 10);
    expect_partition(&s, 2, 10);
    /* Both partitions progress: partition 2 is not starved until 0 is done. */
    int first2 = -1;
    for (int k = 0; k < s.n && first2 < 0; k++)
        if (s.msgs[k].partition == 2)
            first2 = k;
    cr_assert(first2 >= 0 && first2 < 10, "partition 2 first read at %d", first2);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

Test(vlog, reader_decline_stops_that_partition) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 10);
    flush_ok(l);
    append_n(l, 1, 0, 5);
    flush_ok(l);
    int parts[2] = {0, 1};
    uint64_t pos[2] = {0, 0};
    char err[256];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 2, err, sizeof err);
    /* Decline the 4th record of partition 0 (index 3 of what was taken). */
    sink_t s = {.decline_at = 3, .decline_part = 0};
    while (vlog_reader_poll(r, sink_cb, &s, 1000, 0, err, sizeof err) > 0)
        ;
    int n0 = 0, n1 = 0;
    for (int k = 0; k < s.n; k++)
        *(s.msgs[k].partition == 0 ? &n0 : &n1) += 1;
    cr_assert_eq(n0 + n1, s.n);
    cr_assert_eq(n0, 3, "partition 0 delivered after a decline");
    cr_assert_eq(n1, 5, "other partitions go on");
    /* More data in the declined partition is not delivered either. */
    append_n(l, 0, 10, 12);
    flush_ok(l);
    int before = s.n;
    while (vlog_reader_poll(r, sink_cb, &s, 1000, 0, err, sizeof err) > 0)
        ;
    cr_assert_eq(s.n, before);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

Test(vlog, reader_waits_for_data_with_a_timeout) {
    vlog_t *l = open_rw();
    int parts[1] = {0};
    uint64_t pos[1] = {0};
    char err[256];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 1, err, sizeof err);
    sink_t s = {.decline_at = -1};
    uint64_t t0 = mono_ms();
    cr_assert_eq(vlog_reader_poll(r, sink_cb, &s, 10, 40, err, sizeof err), 0);
    cr_assert_geq(mono_ms() - t0, 30, "returned before the timeout with nothing to read");
    append_n(l, 0, 0, 1);
    flush_ok(l);
    t0 = mono_ms();
    int got = 0;
    WAIT_UNTIL((got += vlog_reader_poll(r, sink_cb, &s, 10, 5000, err, sizeof err)) > 0, 10000);
    cr_assert_lt(mono_ms() - t0, 4000, "data was there but the poll waited");
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
    vlog_append(a->l, 0, buf, payload(0, 0, buf), NULL);
    return NULL;
}

Test(vlog, reader_wakes_up_when_data_arrives) {
    vlog_t *l = open_rw();
    int parts[1] = {0};
    uint64_t pos[1] = {0};
    char err[256];
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 1, err, sizeof err);
    atomic_int go = 0;
    late_append_t a = {l, &go};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, late_append, &a), 0);
    sink_t s = {.decline_at = -1};
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
    flush_ok(l);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

/* ---- durability and back-pressure (ack gate) ---- */

Test(vlog, readers_never_see_unacknowledged_records) {
    vlog_t *l = open_rw();
    gate_close();
    append_n(l, 0, 0, 1);
    gate_wait_entered(); /* the writer holds record 0 in its ack */
    append_n(l, 0, 1, 3); /* queued behind it, not written */
    uint64_t ends[3];
    char err[256];
    cr_assert_eq(vlog_end_positions(l, ends, err, sizeof err), 0);
    cr_assert_eq(ends[0], frames_size(0, 1));
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    cr_assert_eq(s.n, 1, "a reader saw records not yet durable");
    sink_free(&s);
    cr_assert_neq(vlog_flush(l, 50), 0, "flush returned with acks outstanding");
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 3);
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 3);
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
    cr_assert_eq(vlog_append(l, 0, buf, n, NULL), VLOG_FULL);
    cr_assert_eq(vlog_append(l, 1, buf, n, NULL), VLOG_FULL);
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 3, "a VLOG_FULL append was acknowledged");
    /* Room again. */
    cr_assert_eq(vlog_append(l, 0, buf, n, NULL), VLOG_OK);
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), 4);
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, 2);
    expect_partition(&s, 1, 1);
    expect_partition(&s, 2, 1);
    sink_free(&s);
    vlog_close(l);
}

Test(vlog, full_when_one_partition_queues_16mib) {
    vlog_t *l = open_rw();
    gate_close();
    uint8_t small[4] = "tiny";
    append_ok(l, 0, small, 4);
    gate_wait_entered();
    static uint8_t big[MAX_PAYLOAD];
    memset(big, 'B', sizeof big);
    int ok = 0;
    vlog_err_t err;
    while ((err = vlog_append(l, 0, big, sizeof big, NULL)) == VLOG_OK)
        ok++;
    cr_assert_eq(err, VLOG_FULL);
    /* 16 MiB / (8 + 64 KiB) frames */
    cr_assert_eq(ok, (int)((16u << 20) / (FRAME_HDR + MAX_PAYLOAD)));
    /* The limit is per partition. */
    cr_assert_eq(vlog_append(l, 1, big, sizeof big, NULL), VLOG_OK);
    gate_open();
    flush_ok(l);
    cr_assert_eq(atomic_load(&acks_ok), (unsigned long)ok + 2);
    char *f = part_path(0);
    cr_assert_eq(file_size(f),
                 (long long)(FRAME_HDR + 4) + (long long)ok * (FRAME_HDR + MAX_PAYLOAD));
    free(f);
    vlog_close(l);
}

/* ---- many appenders ---- */

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
        while (vlog_append(a->l, (a->id + i) % 3, rec, (size_t)n, NULL) == VLOG_FULL)
            sched_yield();
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
    /* Each appender's records are in its own order within a partition. */
    int last[3][APPENDERS];
    memset(last, -1, sizeof last);
    int seen[APPENDERS] = {0};
    for (int k = 0; k < s.n; k++) {
        char txt[32];
        snprintf(txt, sizeof txt, "%.*s", (int)s.msgs[k].len, (const char *)s.msgs[k].data);
        int id, i;
        cr_assert_eq(sscanf(txt, "%d:%d", &id, &i), 2, "garbled record '%s'", txt);
        cr_assert(id >= 0 && id < APPENDERS);
        int p = s.msgs[k].partition;
        cr_assert_eq(p, (id + i) % 3, "record %s in partition %d", txt, p);
        cr_assert_gt(i, last[p][id], "appender %d out of order in partition %d", id, p);
        last[p][id] = i;
        seen[id]++;
    }
    for (int i = 0; i < APPENDERS; i++)
        cr_assert_eq(seen[i], PER_APPENDER);
    sink_free(&s);
    vlog_close(l);
}

/* ---- recovery: torn tails ---- */

/* Writes 20 records to partition 0 and 5 to partition 1, closes. */
static void prepare_closed_log(void) {
    vlog_t *l = open_rw();
    append_n(l, 0, 0, 20);
    append_n(l, 1, 0, 5);
    flush_ok(l);
    vlog_close(l);
}

/* Reopens; partition 0 holds exactly `intact` records, partition 1 its 5;
 * a new record appended to partition 0 lands right after them. */
static void expect_recovered(int intact) {
    char *f = part_path(0);
    vlog_t *l = open_rw();
    cr_assert_eq((uint64_t)file_size(f), frames_size(0, intact), "torn tail not cut");
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 0, intact);
    expect_partition(&s, 1, 5);
    sink_free(&s);
    append_n(l, 0, intact, intact + 1);
    flush_ok(l);
    vlog_close(l);
    l = open_log(VLOG_F_READ);
    read_all(l, NULL, &s);
    expect_partition(&s, 0, intact + 1);
    expect_partition(&s, 1, 5);
    sink_free(&s);
    vlog_close(l);
    free(f);
}

Test(vlog, torn_tail_garbage_appended) {
    prepare_closed_log();
    char *f = part_path(0);
    file_append(f, "\x17garbage!", 9);
    expect_recovered(20);
    free(f);
}

Test(vlog, torn_tail_partial_header) {
    prepare_closed_log();
    char *f = part_path(0);
    file_append(f, "\x05\x00\x00", 3);
    expect_recovered(20);
    free(f);
}

Test(vlog, torn_tail_zeros) {
    /* A file system may leave zeros after a crash. */
    prepare_closed_log();
    char *f = part_path(0);
    static const uint8_t zeros[4096];
    file_append(f, zeros, sizeof zeros);
    expect_recovered(20);
    free(f);
}

Test(vlog, torn_tail_header_promising_more) {
    prepare_closed_log();
    char *f = part_path(0);
    uint8_t hdr[12] = {0x00, 0x10, 0x00, 0x00, 1, 2, 3, 4, 'a', 'b', 'c', 'd'}; /* 4096 bytes */
    file_append(f, hdr, sizeof hdr);
    expect_recovered(20);
    free(f);
}

Test(vlog, torn_tail_last_frame_cut_at_every_length) {
    prepare_closed_log();
    char *f = part_path(0);
    size_t len;
    char *orig = file_read(f, &len);
    uint64_t last = frames_size(0, 19);
    cr_assert_eq(len, frames_size(0, 20));
    for (uint64_t cut = last; cut < len; cut++) {
        file_write(f, orig, (size_t)cut);
        vlog_t *l = open_rw();
        cr_assert_eq((uint64_t)file_size(f), last, "cut at %llu", (unsigned long long)cut);
        sink_t s = {.decline_at = -1};
        read_all(l, NULL, &s);
        expect_partition(&s, 0, 19);
        sink_free(&s);
        vlog_close(l);
    }
    file_write(f, orig, (size_t)last + 5);
    expect_recovered(19);
    free(orig);
    free(f);
}

Test(vlog, torn_tail_any_byte_of_last_frame_flipped) {
    prepare_closed_log();
    char *f = part_path(0);
    size_t len;
    char *orig = file_read(f, &len);
    uint64_t last = frames_size(0, 19);
    for (uint64_t at = last; at < len; at++) {
        file_write(f, orig, len);
        file_flip_byte(f, (long long)at);
        vlog_t *l = open_rw();
        cr_assert_eq((uint64_t)file_size(f), last, "flip at %llu not cut",
                     (unsigned long long)at);
        sink_t s = {.decline_at = -1};
        read_all(l, NULL, &s);
        expect_partition(&s, 0, 19);
        sink_free(&s);
        vlog_close(l);
    }
    file_write(f, orig, len);
    file_flip_byte(f, -1);
    expect_recovered(19);
    free(orig);
    free(f);
}

Test(vlog, bad_frame_within_one_write_of_the_end_drops_the_rest) {
    /* Documented trade-off: bad bytes with at most one write (16 MiB) after
     * them count as a torn tail, so everything from them on is dropped. */
    prepare_closed_log();
    char *f = part_path(0);
    file_flip_byte(f, (long long)frames_size(0, 10) + FRAME_HDR + 1);
    expect_recovered(10);
    free(f);
}

/* ---- recovery: corruption ---- */

static uint32_t frame_sum(const uint8_t *p, uint32_t len) {
    return (uint32_t)XXH3_64bits_withSeed(p, len, len);
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Writes a one-partition log of > 16 MiB directly, frames of every size
 * from 1 byte to the maximum so that frames straddle every read chunk.
 * Returns the number of frames. */
static int write_big_log(uint64_t *size_out) {
    conf->log_partitions = 1;
    char *ld = path_join(dir, "log");
    cr_assert_eq(mkdir_p(ld), 0);
    char *meta = path_join(ld, "META");
    file_write_str(meta, "tally-log 1 partitions=1\n");
    char *f = path_join(ld, "p000.log");
    FILE *out = fopen(f, "wb");
    cr_assert_not_null(out);
    static uint8_t frame[FRAME_HDR + MAX_PAYLOAD];
    uint64_t size = 0, seed = 1;
    int n = 0;
    while (size < (17u << 20) + 12345) {
        uint32_t len;
        uint64_t r = rng_next(&seed);
        if (n % 50 == 0)
            len = MAX_PAYLOAD;
        else if (n % 3 == 0)
            len = 1 + (uint32_t)(r % 64);
        else
            len = 1 + (uint32_t)(r % MAX_PAYLOAD);
        for (uint32_t j = 0; j < len; j++)
            frame[FRAME_HDR + j] = (uint8_t)(n * 7 + (int)j);
        put32(frame, len);
        put32(frame + 4, frame_sum(frame + FRAME_HDR, len));
        cr_assert_eq(fwrite(frame, 1, FRAME_HDR + len, out), FRAME_HDR + len);
        size += FRAME_HDR + len;
        n++;
    }
    cr_assert_eq(fclose(out), 0);
    free(f);
    free(meta);
    free(ld);
    *size_out = size;
    return n;
}

Test(vlog, big_log_recovers_and_reads_across_chunks, .timeout = 60) {
    uint64_t size;
    int n = write_big_log(&size);
    vlog_t *l = open_log(VLOG_F_READ);
    uint64_t end;
    char err[256];
    cr_assert_eq(vlog_end_positions(l, &end, err, sizeof err), 0);
    cr_assert_eq(end, size, "a valid log was cut at open");
    int parts[1] = {0};
    uint64_t pos[1] = {0};
    vlog_reader_t *r = vlog_reader_new(l, parts, pos, 1, err, sizeof err);
    sink_t s = {.decline_at = -1};
    int k = 0;
    uint64_t at = 0;
    for (;;) {
        sink_clear(&s);
        int got = vlog_reader_poll(r, sink_cb, &s, 64, 0, err, sizeof err);
        cr_assert_geq(got, 0, "%s", err);
        if (got == 0)
            break;
        for (int i = 0; i < s.n; i++, k++) {
            const msg_t *m = &s.msgs[i];
            for (size_t j = 0; j < m->len; j += 997)
                cr_assert_eq(m->data[j], (uint8_t)(k * 7 + (int)j), "frame %d byte %zu", k, j);
            at += FRAME_HDR + m->len;
            cr_assert_eq(m->next_pos, at);
        }
    }
    cr_assert_eq(k, n);
    cr_assert_eq(at, size);
    sink_free(&s);
    vlog_reader_free(r);
    vlog_close(l);
}

Test(vlog, corruption_far_from_the_tail_refuses_to_open, .timeout = 60) {
    uint64_t size;
    write_big_log(&size);
    char *f = path_join(dir, "log/p000.log");
    file_flip_byte(f, FRAME_HDR + 0); /* the first frame's payload */
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_READ | VLOG_F_WRITE, on_ack, err, sizeof err));
    cr_assert_not_null(strstr(err, "corruption"), "%s", err);
    cr_assert_not_null(strstr(err, "p000.log"), "%s", err);
    cr_assert_not_null(strstr(err, "offset 0"), "%s", err);
    cr_assert_eq((uint64_t)file_size(f), size, "the log was cut after all");
    /* Read-only opens refuse too. */
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, err, sizeof err));
    cr_assert_eq((uint64_t)file_size(f), size);
    free(f);
}

/* ---- META and LOCK ---- */

Test(vlog, meta_partition_count_is_fixed) {
    conf->log_partitions = 4;
    vlog_t *l = open_rw();
    append_n(l, 3, 0, 2);
    flush_ok(l);
    vlog_close(l);
    char *meta = path_join(dir, "log/META");
    size_t len;
    char *text = file_read(meta, &len);
    cr_assert_str_eq(text, "tally-log 1 partitions=4\n");
    free(text);

    conf->log_partitions = 2;
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, err, sizeof err));
    cr_assert_not_null(strstr(err, "log.partitions"), "%s", err);
    cr_assert_not_null(strstr(err, "4"), "%s", err);
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, err, sizeof err));

    conf->log_partitions = 4;
    l = open_rw();
    sink_t s = {.decline_at = -1};
    read_all(l, NULL, &s);
    expect_partition(&s, 3, 2);
    sink_free(&s);
    vlog_close(l);
    free(meta);
}

Test(vlog, missing_meta_with_existing_partitions_is_refused) {
    conf->log_partitions = 4;
    vlog_t *l = open_rw();
    append_n(l, 3, 0, 2);
    flush_ok(l);
    vlog_close(l);
    char *meta = path_join(dir, "log/META");
    cr_assert_eq(unlink(meta), 0);
    conf->log_partitions = 2;
    char err[1024] = "";
    l = vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, err, sizeof err);
    if (l)
        vlog_close(l);
    cr_assert_null(l, "opened a 4-partition log as 2 partitions");
    cr_assert_not_null(strstr(err, "log.partitions"), "%s", err);
    free(meta);
}

Test(vlog, unreadable_meta_is_refused) {
    char *ld = path_join(dir, "log");
    cr_assert_eq(mkdir_p(ld), 0);
    char *meta = path_join(ld, "META");
    file_write_str(meta, "something else\n");
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE, on_ack, err, sizeof err));
    cr_assert_not_null(strstr(err, "not a tally log"), "%s", err);
    free(meta);
    free(ld);
}

Test(vlog, second_open_is_refused_while_in_use) {
    vlog_t *l = open_rw();
    char err[1024] = "";
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE | VLOG_F_READ, on_ack, err, sizeof err));
    cr_assert_not_null(strstr(err, "in use"), "%s", err);
    err[0] = '\0';
    cr_assert_null(vlog_open(conf, VLOG_F_READ, on_ack, err, sizeof err));
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
    cr_assert_null(vlog_open(conf, VLOG_F_WRITE, on_ack, err, sizeof err));
    cr_assert_not_null(strstr(err, "log.dir"), "%s", err);
    free(file);
    free(bad);
}
