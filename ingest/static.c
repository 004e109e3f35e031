/* Read-only serving of the published results directory. Paths are checked
 * component by component ([A-Za-z0-9_.-], no leading dot, so no "..") and
 * the resolved file must still lie under the root (no symlink escapes). */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
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

int static_serve(struct evhttp_request *req, const char *root, const char *rawpath) {
    size_t dlen = 0;
    char *path = evhttp_uridecode(rawpath, 0, &dlen);
    int status = 404;
    char full[PATH_MAX], rroot[PATH_MAX], rfull[PATH_MAX];
    if (!path || strlen(path) != dlen || path[0] != '/') {
        ingest_reply_error(req, 400, "bad_path", "the path is not valid");
        status = 400;
        goto out;
    }
    const char *rel = path + 1;
    if (*rel == '\0')
        rel = "index.html";
    /* Check every component. */
    for (const char *s = rel; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (!component_ok(s, n)) {
            ingest_reply_error(req, 403, "forbidden", "the path leaves the results directory");
            status = 403;
            goto out;
        }
        s = e ? e + 1 : s + n;
    }
    if (snprintf(full, sizeof full, "%s/%s", root, rel) >= (int)sizeof full ||
        !realpath(root, rroot) || !realpath(full, rfull)) {
        ingest_reply_error(req, 404, "not_found", "no such file");
        goto out;
    }
    size_t rl = strlen(rroot);
    if (strncmp(rfull, rroot, rl) != 0 || rfull[rl] != '/') {
        ingest_reply_error(req, 403, "forbidden", "the path leaves the results directory");
        status = 403;
        goto out;
    }
    int fd = open(rfull, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        ingest_reply_error(req, 404, "not_found", "no such file");
        goto out;
    }
    struct evbuffer *b = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", content_type(rfull));
    evhttp_add_header(h, "Cache-Control", "no-cache");
    if (st.st_size > 0)
        evbuffer_add_file(b, fd, 0, st.st_size); /* takes the fd */
    else
        close(fd);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
    status = 200;
out:
    free(path);
    return status;
}
