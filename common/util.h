/* Small helpers every module uses: allocation that dies loudly, clocks,
 * durable file writes. */
#ifndef TALLY_UTIL_H
#define TALLY_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Out of memory is not recoverable for a counter that must stay exact:
 * these never return NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
/* Grows an array of n elements of size bytes to cap elements (cap >= n),
 * the new ones zeroed. */
void *xrealloc_zero(void *p, size_t n, size_t cap, size_t size);
/* The capacity for at least n elements of a table that has cap: cap itself
 * when it holds them, else doubled (from 16) until it does. */
int grow_cap(int cap, int n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Always-on assertion for invariants that guard the counts. */
#define tally_assert(cond)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            tally_panic(__FILE__, __LINE__, #cond);                                                \
    } while (0)
_Noreturn void tally_panic(const char *file, int line, const char *what);

void tally_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_info(...) tally_log("info", __VA_ARGS__)
#define log_warn(...) tally_log("warn", __VA_ARGS__)
#define log_error(...) tally_log("error", __VA_ARGS__)
extern int tally_log_quiet; /* 1: info lines are not printed */

uint64_t now_ms(void);  /* wall clock, ms since the epoch */
uint64_t mono_ms(void); /* monotonic clock, ms */
/* The CLOCK_REALTIME time ms from now, for pthread_cond_timedwait. */
struct timespec deadline_in_ms(int ms);
uint64_t mono_ns(void); /* monotonic clock, ns */

/* Names the calling thread "tally-" + name, cut to the 15 bytes Linux
 * keeps (top -H, perf and gdb show it). Best effort. */
void thread_name(const char *name);

/* RFC 3339 UTC with milliseconds into buf (>= 32 bytes). */
void fmt_rfc3339(uint64_t ms, char *buf, size_t size);
/* Parses RFC 3339 (Z or +hh:mm offsets, optional fraction). 0 on success. */
int parse_rfc3339(const char *s, uint64_t *ms);

/* Creates dir and its parents. 0 on success, -1 with errno. */
int mkdir_p(const char *dir);
/* The absolute, canonical form of path, which need not exist yet: the
 * existing part is resolved as the kernel would (symlinks, "." and ".."),
 * the rest appended with "." and ".." applied, so that the result names what
 * mkdir_p(path) would create. A malloc'd string the caller frees, or NULL
 * with errno (ENOTDIR: a part is a file; ENOENT: a dangling symlink; ELOOP,
 * EACCES). */
char *path_canonical(const char *path);
/* fsyncs a directory so that a rename or create in it is durable. */
int fsync_dir(const char *dir);
/* Writes data to path atomically: temp file in the same directory, fsync
 * when durable != 0, rename over path. Readers see the old or the new file,
 * never a partial one. 0 on success, -1 with errno. */
int write_file_atomic(const char *path, const void *data, size_t len, int durable);

/* Growable byte buffer. */
typedef struct {
    char *data;
    size_t len, cap;
} buf_t;
void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_puts(buf_t *b, const char *s);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(buf_t *b);

#endif
