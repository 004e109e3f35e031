/* faultshim: an LD_PRELOAD library that makes write, pwrite, fsync,
 * fdatasync, ftruncate and rename fail on command, so tests can stage disk
 * faults while the real binary runs (tests/chaos); and connect, so they can
 * stage a client without local ports (tests/bench).
 *
 * (and pread, sendmsg and recvmsg, to be slowed down: delay_ms below; and the wall
 * clock, to be stepped forward: step_ms below).
 *
 * Control: FAULTSHIM_CTL names a control file, re-read at most every 10 ms.
 * It holds one line of space-separated key=value pairs, or "off" (a missing
 * or empty file is off too):
 *
 *   gen=N            any change re-arms the fault (resets count and seed)
 *   ops=a,b,...      write pwrite fsync fdatasync ftruncate rename connect
 *                    pread clock recvmsg sendmsg
 *   prefix=PATH      only calls on files whose path starts with PATH
 *                    (a socket's is "socket:[INODE]")
 *   errno=EIO        EIO | ENOSPC | EROFS | EDQUOT | EADDRNOTAVAIL |
 *                    ECONNREFUSED (a failing connect fails inside
 *                    connect(), before any packet, as the kernel does
 *                    when no local port is free)
 *   count=K          fail the next K matching calls (-1: every one)
 *   prob=P           each matching call fails with probability P (0..1]
 *   seed=S           seed of the probability draws
 *   partial=1        a failing write/pwrite first writes half its bytes
 *                    (data on disk, error reported: the worst case)
 *   delay_ms=N       instead of failing, a matching call is made slow: it
 *                    sleeps N ms, then does its work (a stalling disk; with
 *                    ops=pread it holds up the log's readers, the engine;
 *                    with ops=sendmsg/recvmsg every request librdkafka sends
 *                    to a broker / answer it reads: a slow network, for one
 *                    process only)
 *   step_ms=N        with ops=clock: each clock_gettime(CLOCK_REALTIME)
 *                    (the first count of them) steps the wall clock N ms
 *                    forward first, so two readings in a row differ; the
 *                    steps taken stay when the fault is off (a clock that
 *                    was stepped, never one that goes back)
 *
 * Every injected failure is reported on stderr ("faultshim: inject ..."),
 * so a test can count them and a failure can be read back in the log. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum {
    OP_WRITE = 1 << 0,
    OP_PWRITE = 1 << 1,
    OP_FSYNC = 1 << 2,
    OP_FDATASYNC = 1 << 3,
    OP_FTRUNCATE = 1 << 4,
    OP_RENAME = 1 << 5,
    OP_PREAD = 1 << 6,
    OP_CLOCK = 1 << 7,
    OP_CONNECT = 1 << 8,
    OP_RECVMSG = 1 << 9,
    OP_SENDMSG = 1 << 10,
};

static const struct {
    const char *name;
    int bit;
} shim_ops[] = {
    {"write", OP_WRITE},         {"pwrite", OP_PWRITE},       {"fsync", OP_FSYNC},
    {"fdatasync", OP_FDATASYNC}, {"ftruncate", OP_FTRUNCATE}, {"rename", OP_RENAME},
    {"pread", OP_PREAD},         {"clock", OP_CLOCK},         {"connect", OP_CONNECT},
    {"recvmsg", OP_RECVMSG},     {"sendmsg", OP_SENDMSG},
};

static const struct {
    const char *name;
    int value;
} shim_errnos[] = {{"EIO", EIO},
                   {"ENOSPC", ENOSPC},
                   {"EROFS", EROFS},
                   {"EDQUOT", EDQUOT},
                   {"EADDRNOTAVAIL", EADDRNOTAVAIL},
                   {"ECONNREFUSED", ECONNREFUSED}};

typedef struct {
    long gen;
    int ops;
    char prefix[1024];
    int err;
    long count; /* remaining; -1 unlimited */
    double prob;
    uint64_t rng;
    int partial;
    long delay_ms; /* > 0: slow down instead of failing */
    long step_ms;  /* ops=clock: each wall-clock reading steps this far */
} shim_state_t;

static pthread_mutex_t shim_mu = PTHREAD_MUTEX_INITIALIZER;
static shim_state_t shim_st; /* guarded by shim_mu; ops == 0 means off */
static uint64_t shim_next_reload_ns;
static int64_t shim_clock_ahead_ns; /* guarded by shim_mu: the steps taken */
static __thread int shim_busy;      /* our own calls pass through */

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_rename)(const char *, const char *);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);

static void shim_resolve(void) {
    if (real_write)
        return;
    real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
    real_rename = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    real_pread = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread");
    real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    real_recvmsg = (ssize_t(*)(int, struct msghdr *, int))dlsym(RTLD_NEXT, "recvmsg");
    real_sendmsg = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
}

static uint64_t shim_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void shim_say(const char *fmt, ...) {
    char line[1400];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    if (real_write(2, line, (size_t)n) < 0)
        return; /* nothing to be done about a failing stderr */
}

/* Parses one control line into *st. Unknown keys are reported once and
 * ignored, so a typo in a test shows in the output. */
static void shim_parse(char *text, shim_state_t *st) {
    memset(st, 0, sizeof *st);
    st->err = EIO;
    st->count = -1;
    st->prob = 1.0;
    for (char *save = NULL, *tok = strtok_r(text, " \t\r\n", &save); tok;
         tok = strtok_r(NULL, " \t\r\n", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq)
            continue; /* "off" and stray words */
        *eq = '\0';
        const char *k = tok, *v = eq + 1;
        if (!strcmp(k, "gen")) {
            st->gen = strtol(v, NULL, 10);
        } else if (!strcmp(k, "ops")) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *s2 = NULL, *o = strtok_r(buf, ",", &s2); o; o = strtok_r(NULL, ",", &s2))
                for (size_t i = 0; i < sizeof shim_ops / sizeof shim_ops[0]; i++)
                    if (!strcmp(o, shim_ops[i].name))
                        st->ops |= shim_ops[i].bit;
        } else if (!strcmp(k, "prefix")) {
            snprintf(st->prefix, sizeof st->prefix, "%s", v);
        } else if (!strcmp(k, "errno")) {
            for (size_t i = 0; i < sizeof shim_errnos / sizeof shim_errnos[0]; i++)
                if (!strcmp(v, shim_errnos[i].name))
                    st->err = shim_errnos[i].value;
        } else if (!strcmp(k, "count")) {
            st->count = strtol(v, NULL, 10);
        } else if (!strcmp(k, "prob")) {
            st->prob = strtod(v, NULL);
        } else if (!strcmp(k, "seed")) {
            st->rng = strtoull(v, NULL, 10);
        } else if (!strcmp(k, "partial")) {
            st->partial = atoi(v) != 0;
        } else if (!strcmp(k, "delay_ms")) {
            st->delay_ms = strtol(v, NULL, 10);
        } else if (!strcmp(k, "step_ms")) {
            st->step_ms = strtol(v, NULL, 10);
        } else {
            shim_say("faultshim: unknown control key %s\n", k);
        }
    }
    st->rng = st->rng * 2654435761u + 0x9E3779B97F4A7C15u;
}

/* Re-reads the control file when its time has come. shim_mu held. */
static void shim_reload(void) {
    uint64_t now = shim_now_ns();
    if (now < shim_next_reload_ns)
        return;
    shim_next_reload_ns = now + 10 * 1000000u;
    const char *ctl = getenv("FAULTSHIM_CTL");
    char text[2048] = "";
    if (ctl) {
        int fd = open(ctl, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, text, sizeof text - 1);
            text[n > 0 ? n : 0] = '\0';
            close(fd);
        }
    }
    shim_state_t next;
    shim_parse(text, &next);
    if (next.ops == 0) {
        shim_st.ops = 0;
        return;
    }
    if (next.gen != shim_st.gen || shim_st.ops == 0) {
        shim_st = next; /* a new fault: fresh count and draws */
        shim_say("faultshim: armed gen=%ld ops=0x%x prefix=%s errno=%d count=%ld prob=%.3f\n",
                 next.gen, next.ops, next.prefix, next.err, next.count, next.prob);
    }
}

static double shim_draw(shim_state_t *st) {
    /* xorshift64*: reproducible for a given seed and call sequence */
    st->rng ^= st->rng >> 12;
    st->rng ^= st->rng << 25;
    st->rng ^= st->rng >> 27;
    return (double)((st->rng * 2685821657736338717u) >> 11) / 9007199254740992.0;
}

/* The path behind fd, or NULL. */
static const char *shim_fd_path(int fd, char *buf, size_t sz) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, sz - 1);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

/* Decides whether this call fails: it acts on path, or on fd when path is
 * NULL (resolved only when the op is armed). Returns the errno to fail
 * with, or 0; *partial tells a write to land half of its bytes first. */
static int shim_decide(int op, int fd, const char *path, const char *what, int *partial) {
    char buf[1200];
    int err = 0;
    *partial = 0;
    pthread_mutex_lock(&shim_mu);
    shim_reload();
    if ((shim_st.ops & op) && shim_st.count != 0) {
        if (!path)
            path = shim_fd_path(fd, buf, sizeof buf);
        if (path && !strncmp(path, shim_st.prefix, strlen(shim_st.prefix)) &&
            (shim_st.prob >= 1.0 || shim_draw(&shim_st) < shim_st.prob)) {
            if (shim_st.count > 0)
                shim_st.count--;
            if (shim_st.delay_ms > 0) {
                *partial = -(int)shim_st.delay_ms; /* a delay, not a failure */
            } else {
                err = shim_st.err;
                *partial = shim_st.partial;
                shim_say("faultshim: inject %s(%s) -> %s\n", what, path, strerror(err));
            }
        }
    }
    pthread_mutex_unlock(&shim_mu);
    return err;
}

/* Common front of the fd calls: returns the errno to fail with, or 0. */
static int shim_fd_call(int op, int fd, const char *what, int *partial) {
    shim_resolve();
    *partial = 0;
    if (shim_busy || fd <= 2 || !getenv("FAULTSHIM_CTL"))
        return 0;
    shim_busy = 1;
    int err = shim_decide(op, fd, NULL, what, partial);
    shim_busy = 0;
    if (*partial < 0) { /* slowed down: sleep outside the lock, then go on */
        struct timespec ts = {-*partial / 1000, (long)(-*partial % 1000) * 1000000};
        nanosleep(&ts, NULL);
        *partial = 0;
    }
    return err;
}

ssize_t pread(int fd, void *buf, size_t n, off_t off) {
    int partial, err = shim_fd_call(OP_PREAD, fd, "pread", &partial);
    if (!err)
        return real_pread(fd, buf, n, off);
    errno = err;
    return -1;
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
    return pread(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n) {
    int partial, err = shim_fd_call(OP_WRITE, fd, "write", &partial);
    if (!err)
        return real_write(fd, buf, n);
    if (partial && n > 1 && real_write(fd, buf, n / 2) < 0)
        return -1;
    errno = err;
    return -1;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    int partial, err = shim_fd_call(OP_PWRITE, fd, "pwrite", &partial);
    if (!err)
        return real_pwrite(fd, buf, n, off);
    if (partial && n > 1 && real_pwrite(fd, buf, n / 2, off) < 0)
        return -1;
    errno = err;
    return -1;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    return pwrite(fd, buf, n, off);
}

int fsync(int fd) {
    int partial, err = shim_fd_call(OP_FSYNC, fd, "fsync", &partial);
    if (!err)
        return real_fsync(fd);
    errno = err;
    return -1;
}

int fdatasync(int fd) {
    int partial, err = shim_fd_call(OP_FDATASYNC, fd, "fdatasync", &partial);
    if (!err)
        return real_fdatasync(fd);
    errno = err;
    return -1;
}

int ftruncate(int fd, off_t len) {
    int partial, err = shim_fd_call(OP_FTRUNCATE, fd, "ftruncate", &partial);
    if (!err)
        return real_ftruncate(fd, len);
    errno = err;
    return -1;
}

int ftruncate64(int fd, off_t len) {
    return ftruncate(fd, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    int partial, err = shim_fd_call(OP_CONNECT, fd, "connect", &partial);
    if (!err)
        return real_connect(fd, addr, len);
    errno = err;
    return -1;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    int partial, err = shim_fd_call(OP_RECVMSG, fd, "recvmsg", &partial);
    if (!err)
        return real_recvmsg(fd, msg, flags);
    errno = err;
    return -1;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    int partial, err = shim_fd_call(OP_SENDMSG, fd, "sendmsg", &partial);
    if (!err)
        return real_sendmsg(fd, msg, flags);
    errno = err;
    return -1;
}

int rename(const char *from, const char *to) {
    shim_resolve();
    int err = 0, partial;
    if (!shim_busy && getenv("FAULTSHIM_CTL")) {
        shim_busy = 1;
        err = shim_decide(OP_RENAME, -1, to, "rename", &partial);
        shim_busy = 0;
    }
    if (!err)
        return real_rename(from, to);
    errno = err;
    return -1;
}

/* The wall clock, stepped forward on command (the shim's own readings are
 * of CLOCK_MONOTONIC, which passes through). */
int clock_gettime(clockid_t clk, struct timespec *ts) {
    shim_resolve();
    int rc = real_clock_gettime(clk, ts);
    if (rc != 0 || clk != CLOCK_REALTIME || shim_busy || !getenv("FAULTSHIM_CTL"))
        return rc;
    shim_busy = 1;
    pthread_mutex_lock(&shim_mu);
    shim_reload();
    if ((shim_st.ops & OP_CLOCK) && shim_st.count != 0) {
        if (shim_st.count > 0)
            shim_st.count--;
        shim_clock_ahead_ns += (int64_t)shim_st.step_ms * 1000000;
    }
    int64_t ahead = shim_clock_ahead_ns;
    pthread_mutex_unlock(&shim_mu);
    shim_busy = 0;
    int64_t ns = (int64_t)ts->tv_nsec + ahead % 1000000000;
    ts->tv_sec += (time_t)(ahead / 1000000000 + ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
    return rc;
}
