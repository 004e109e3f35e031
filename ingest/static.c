/* Read-only serving of the published results directory. Paths are checked
 * component by component ([A-Za-z0-9_.-], no leading dot, so no "..") and
 * the resolved file must still lie under the root (no symlink escapes).
 * Files are opened non-blocking and must be regular (fstat after open), so a
 * FIFO or device planted in the directory cannot stall the loop. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest/ingest.h"

static int component_ok(const char *s, size_t n) {
    if (n == 0 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

static const char *content_type(const char *path) {
    const char *dot = strrchr(path, '.');
    if (dot && !strcmp(dot, ".html"))
        return "text/html; charset=utf-8";
    if (dot && !strcmp(dot, ".json"))
        return "application/json";
    if (dot && !strcmp(dot, ".svg"))
        return "image/svg+xml";
    if (dot && !strcmp(dot, ".css"))
        return "text/css";
    return "application/octet-stream";
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes src into dst (cap bytes with the NUL). -1 on a bad escape,
 * a NUL byte, or no room. */
static int path_decode(const char *src, size_t n, char *dst, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        if (ch == '%') {
            int hi = i + 2 < n ? hexval(src[i + 1]) : -1;
            int lo = i + 2 < n ? hexval(src[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        if (ch == '\0' || o + 1 >= cap)
            return -1;
        dst[o++] = ch;
    }
    dst[o] = '\0';
    return 0;
}

int static_serve(http_conn_t *c, const char *root, const char *rawpath, size_t rawlen) {
    char path[PATH_MAX], full[PATH_MAX], rroot[PATH_MAX], rfull[PATH_MAX];
    if (path_decode(rawpath, rawlen, path, sizeof path) != 0 || path[0] != '/') {
        ingest_reply_error(c, 400, "bad_path", "the path is not valid");
        return 400;
    }
    const char *rel = path + 1;
    if (*rel == '\0')
        rel = "index.html";
    for (const char *s = rel; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (!component_ok(s, n)) {
            ingest_reply_error(c, 403, "forbidden", "the path leaves the results directory");
            return 403;
        }
        s = e ? e + 1 : s + n;
    }
    if (snprintf(full, sizeof full, "%s/%s", root, rel) >= (int)sizeof full ||
        !realpath(root, rroot) || !realpath(full, rfull)) {
        ingest_reply_error(c, 404, "not_found", "no such file");
        return 404;
    }
    size_t rl = strlen(rroot);
    if (strncmp(rfull, rroot, rl) != 0 || rfull[rl] != '/') {
        ingest_reply_error(c, 403, "forbidden", "the path leaves the results directory");
        return 403;
    }
    int fd = open(rfull, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        ingest_reply_error(c, 404, "not_found", "no such file");
        return 404;
    }
    http_conn_send_file(c, content_type(rfull), "Cache-Control: no-cache\r\n", fd,
                        (uint64_t)st.st_size);
    return 200;
}
