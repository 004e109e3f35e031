/* Runs a fuzz harness without libFuzzer: every file named on the command
 * line, and every regular file in every directory named there (sorted by
 * name, not recursive), goes through LLVMFuzzerTestOneInput() once. This is
 * how ctest replays the seed corpora in the gcc and ASan builds, and how a
 * crash file from `make fuzz` reproduces under gdb or valgrind:
 *   build/tests/fuzz/fuzz_record_replay build-fuzz/crashes/record/crash-...
 * Exits 0 when every input ran, 2 when an argument cannot be read or names
 * no input at all (an empty corpus must not pass as a test). A failing
 * input aborts inside the harness, after its name was printed. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional, as with libFuzzer. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Reads path into a heap block of exactly its size, so that ASan sees a read
 * one byte past the input. 0, or -1 with errno. Owns nothing on failure. */
static int replay_read_file(const char *path, uint8_t **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = -1;
    if (!f)
        goto out;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb)
                goto out;
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                goto out;
            break;
        }
    }
    /* Exact size: a harness reading data[size] must trip ASan. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact)
        goto out;
    memcpy(exact, buf, len);
    *data = exact;
    *size = len;
    rc = 0;
out:
    free(buf);
    if (f)
        fclose(f);
    return rc;
}

static int replay_one(const char *path) {
    uint8_t *data;
    size_t size;
    if (replay_read_file(path, &data, &size) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(stdout, "replay: %s (%zu bytes)\n", path, size);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 0;
}

static int replay_by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Runs every regular file of dir. Returns how many, or -1. */
static int replay_dir(const char *dir) {
    struct dirent **names;
    int n = scandir(dir, &names, NULL, replay_by_name), ran = 0, rc = 0;
    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        if (rc == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_one(path) != 0)
                rc = -1;
            else
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return rc == 0 ? ran : -1;
}

int main(int argc, char **argv) {
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        int n = S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : (replay_one(argv[i]) == 0 ? 1 : -1);
        if (n < 0)
            return 2;
        if (n == 0) {
            fprintf(stderr, "replay: %s: no inputs\n", argv[i]);
            return 2;
        }
        total += n;
    }
    printf("replay: %d inputs ran\n", total);
    return 0;
}
