/* Shared pieces of the fuzz harnesses (tests/fuzz/fuzz_<name>.c).
 *
 * A harness defines LLVMFuzzerTestOneInput() and is built twice: as a
 * libFuzzer binary in the clang build (`make fuzz`) and linked with
 * replay_main.c in every other build, where ctest runs it over
 * tests/fuzz/corpus/<name>/. Everything here is static inline so a harness
 * takes only what it uses. */
#ifndef TALLY_FUZZ_H
#define TALLY_FUZZ_H

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the harness checks: on failure names it and aborts, which
 * libFuzzer reports as a crash and saves the input. The message goes to fd 2
 * directly so that fuzz_quiet_stderr() cannot hide it. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dprintf(2, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Sends what the code under test prints through the stdio stream stderr
 * (tally_log's warnings about every bad input) to /dev/null, unless
 * FUZZ_VERBOSE is set. glibc's stderr is an ordinary variable; fd 2 stays as
 * it is, so sanitizer and libFuzzer reports are still seen. */
static inline void fuzz_quiet_stderr(void) {
    const char *v = getenv("FUZZ_VERBOSE");
    if (v && *v)
        return;
    FILE *null = fopen("/dev/null", "w");
    if (null)
        stderr = null;
}

/* Removes every entry of dir (not recursively: harness dirs are flat). */
static inline void fuzz_dir_clear(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char path[4096 + 300];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
}

static char fuzz_tmp_root[1024];

/* rm -r of a harness dir: flat subdirectories of flat files. */
static inline void fuzz_tmp_remove(const char *root) {
    DIR *d = opendir(root);
    if (!d)
        return;
    struct dirent *de;
    char path[sizeof fuzz_tmp_root + 300];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", root, de->d_name);
        fuzz_dir_clear(path);
        rmdir(path);
        unlink(path);
    }
    closedir(d);
    rmdir(root);
}

static inline void fuzz_tmp_cleanup(void) {
    fuzz_tmp_remove(fuzz_tmp_root);
}

/* A crash (the point of fuzzing) skips atexit(), so a crashed process leaves
 * its dir behind. Each dir is named by its pid, and the next harness to
 * start removes those whose process is gone. */
static inline void fuzz_tmp_sweep(const char *base) {
    DIR *d = opendir(base);
    if (!d)
        return;
    struct dirent *de;
    char path[sizeof fuzz_tmp_root];
    while ((de = readdir(d))) {
        long pid;
        char rest[8];
        if (sscanf(de->d_name, "tally-fuzz-%ld-%7s", &pid, rest) != 2 || pid <= 0 ||
            strlen(rest) != 6 || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        snprintf(path, sizeof path, "%s/%s", base, de->d_name);
        fuzz_tmp_remove(path);
    }
    closedir(d);
}

/* A directory of this process's own, made on first use: the only place a
 * harness may write. Under $FUZZ_TMPDIR, else /dev/shm (harnesses that
 * fsync stay fast on tmpfs), else $TMPDIR or /tmp. */
static inline const char *fuzz_tmpdir(void) {
    if (fuzz_tmp_root[0])
        return fuzz_tmp_root;
    const char *base = getenv("FUZZ_TMPDIR");
    if (!base || !*base)
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    fuzz_tmp_sweep(base);
    snprintf(fuzz_tmp_root, sizeof fuzz_tmp_root, "%s/tally-fuzz-%ld-XXXXXX", base, (long)getpid());
    if (!mkdtemp(fuzz_tmp_root)) {
        dprintf(2, "fuzz: mkdtemp %s: %s\n", fuzz_tmp_root, strerror(errno));
        abort();
    }
    atexit(fuzz_tmp_cleanup);
    return fuzz_tmp_root;
}

/* A subdirectory of fuzz_tmpdir(), made once per name. The caller keeps the
 * returned string (it is never freed: it lives as long as the process). */
static inline char *fuzz_tmpdir_sub(const char *name) {
    size_t n = strlen(fuzz_tmpdir()) + strlen(name) + 2;
    char *p = malloc(n);
    FUZZ_CHECK(p != NULL);
    snprintf(p, n, "%s/%s", fuzz_tmpdir(), name);
    if (mkdir(p, 0700) != 0 && errno != EEXIST) {
        dprintf(2, "fuzz: mkdir %s: %s\n", p, strerror(errno));
        abort();
    }
    return p;
}

#endif
