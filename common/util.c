#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int tally_log_quiet = 0;

static _Noreturn void oom(size_t n) {
    fprintf(stderr, "tally: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

void *xrealloc_zero(void *p, size_t n, size_t cap, size_t size) {
    p = xrealloc(p, cap * size);
    memset((char *)p + n * size, 0, (cap - n) * size);
    return p;
}

int grow_cap(int cap, int n) {
    if (n <= cap)
        return cap;
    int c = cap ? cap : 16;
    while (c < n)
        c *= 2;
    return c;
}

char *xstrdup(const char *s) {
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void tally_panic(const char *file, int line, const char *what) {
    fprintf(stderr, "tally: assertion failed at %s:%d: %s\n", file, line, what);
    abort();
}

void tally_log(const char *level, const char *fmt, ...) {
    if (tally_log_quiet && strcmp(level, "info") == 0)
        return;
    char ts[40], line[2048];
    fmt_rfc3339(now_ms(), ts, sizeof ts);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s %s %s\n", ts, level, line);
}

uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t mono_ms(void) {
    return mono_ns() / 1000000;
}

struct timespec deadline_in_ms(int ms) {
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

void fmt_rfc3339(uint64_t ms, char *buf, size_t size) {
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, size, "%s.%03uZ", base, (unsigned)(ms % 1000));
}

/* Reads exactly n digits. */
static int digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

int parse_rfc3339(const char *s, uint64_t *out) {
    /* YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM), fields of fixed width. */
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = s;
    int Y, M, D, h, m, sec;
    if (digits(&p, 4, &Y) || *p++ != '-' || digits(&p, 2, &M) || *p++ != '-' || digits(&p, 2, &D) ||
        (*p != 'T' && *p != 't') || !*p++ || digits(&p, 2, &h) || *p++ != ':' ||
        digits(&p, 2, &m) || *p++ != ':' || digits(&p, 2, &sec))
        return -1;
    int leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] + (M == 2 && leap) || h > 23 || m > 59 ||
        sec > 59)
        return -1;
    uint64_t frac_ms = 0;
    if (*p == '.') {
        int n = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (n < 3)
                frac_ms = frac_ms * 10 + (uint64_t)(*p - '0');
            n++;
            p++;
        }
        if (n == 0)
            return -1;
        for (; n < 3; n++)
            frac_ms *= 10;
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset = sign * (oh * 3600L + om * 60L);
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    struct tm tm = {.tm_year = Y - 1900,
                    .tm_mon = M - 1,
                    .tm_mday = D,
                    .tm_hour = h,
                    .tm_min = m,
                    .tm_sec = sec};
    /* Four-digit years are in range of timegm: -1 is 1969-12-31T23:59:59,
     * which an offset can bring past the epoch, as it can any 1969 time. */
    time_t t = timegm(&tm);
    if (t - offset < 0)
        return -1;
    *out = (uint64_t)(t - offset) * 1000 + frac_ms;
    return 0;
}

int mkdir_p(const char *dir) {
    char tmp[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(tmp, dir, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* Drops the last component of an absolute path; "/" stays. */
static void path_pop(buf_t *p) {
    char *slash = strrchr(p->data, '/');
    p->len = slash == p->data ? 1 : (size_t)(slash - p->data);
    p->data[p->len] = '\0';
}

char *path_canonical(const char *path) {
    buf_t cur = {0};
    char *real = NULL;
    int missing = 0; /* trailing components of cur that do not exist */
    if (!path[0]) {
        errno = ENOENT;
        return NULL;
    }
    if (!(real = realpath(path[0] == '/' ? "/" : ".", NULL)))
        return NULL;
    buf_puts(&cur, real);
    free(real);
    for (const char *s = path; *s;) {
        while (*s == '/')
            s++;
        const char *e = strchrnul(s, '/');
        size_t n = (size_t)(e - s);
        if (n == 0 || (n == 1 && s[0] == '.')) {
            s = e;
            continue;
        }
        if (n == 2 && s[0] == '.' && s[1] == '.') {
            /* cur has no symlink left in it: its parent is lexical */
            path_pop(&cur);
            if (missing)
                missing--;
            s = e;
            continue;
        }
        if (cur.len > 1)
            buf_puts(&cur, "/");
        buf_append(&cur, s, n);
        cur.data[cur.len] = '\0';
        s = e;
        if (missing) {
            missing++;
            continue;
        }
        struct stat st;
        if (lstat(cur.data, &st) != 0) {
            if (errno != ENOENT)
                goto fail;
            missing = 1;
            continue;
        }
        if (!(real = realpath(cur.data, NULL)))
            goto fail; /* dangling symlink, loop */
        cur.len = 0;
        buf_puts(&cur, real);
        free(real);
    }
    return cur.data;
fail : {
    int e = errno;
    buf_free(&cur);
    errno = e;
    return NULL;
}
}

int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int write_file_atomic(const char *path, const void *data, size_t len, int durable) {
    char tmp[4200], dirbuf[4200];
    if (strlen(path) >= 4096) {
        errno = ENAMETOOLONG;
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        p += w;
        left -= (size_t)w;
    }
    if (durable && fsync(fd) != 0)
        goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto fail;
    if (durable) {
        snprintf(dirbuf, sizeof dirbuf, "%s", path);
        if (fsync_dir(dirname(dirbuf)) != 0)
            return -1;
    }
    return 0;
fail : {
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    errno = e;
    return -1;
}
}

void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(buf_t *b, const void *p, size_t n) {
    buf_reserve(b, n + 1);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_puts(buf_t *b, const char *s) {
    buf_append(b, s, strlen(s));
}

void buf_printf(buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_free(buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void thread_name(const char *name) {
    char full[16];
    snprintf(full, sizeof full, "tally-%s", name);
    pthread_setname_np(pthread_self(), full);
}
