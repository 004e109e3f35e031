/* Read-only serving of the published results directory. Paths are checked
 * component by component ([A-Za-z0-9_.-], no leading dot, so no "..") and
 * the resolved file must still lie under the root (no symlink escapes).
 * Files are opened non-blocking and must be regular (fstat after open), so a
 * FIFO or device planted in the directory cannot stall the loop.
 *
 * Caching. The moment a result is revealed every viewer asks for it at
 * once; a CDN in front (publisher.cache_control: a short max-age plus
 * stale-while-revalidate) and conditional requests keep that off the
 * origin. The ETag is strong and made of the file's inode, mtime (ns) and
 * size, not of a hash of its bytes: the publisher replaces a file only by
 * rename of a new one (a new inode and mtime per version), so the triple
 * names the bytes without reading them, and a 304 costs an open and an
 * fstat. (An in-place rewrite of the same size within one timestamp tick
 * would keep the tag; nothing here writes that way, and a poll is rewritten
 * at most once per publisher.min_interval_ms.) nginx's ETag is mtime
 * seconds + size; this one also changes within a second. Last-Modified has
 * seconds only, so it is sent, and If-Modified-Since honoured, only for a
 * file whose second is over: a later version then has a later second. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
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

/* ---- conditional requests (RFC 9110 13.1) ---- */

static int is_ows(char ch) {
    return ch == ' ' || ch == '\t';
}

/* etagc of RFC 9110 8.8.3: %x21 / %x23-7E / obs-text */
static int is_etagc(unsigned char ch) {
    return ch == 0x21 || (ch >= 0x23 && ch != 0x7f);
}

int http_etag_list_matches(const char *s, size_t n, const char *etag) {
    size_t i = 0, el = strlen(etag);
    while (n && is_ows(s[n - 1]))
        n--;
    while (i < n && is_ows(s[i]))
        i++;
    if (n - i == 1 && s[i] == '*') /* any current representation: this one */
        return 1;
    /* 1#entity-tag: empty elements (",,") are allowed and skipped. The
     * whole value is checked before it may match. */
    int matched = 0;
    for (;;) {
        while (i < n && (is_ows(s[i]) || s[i] == ','))
            i++;
        if (i >= n)
            return matched;
        if (n - i >= 2 && s[i] == 'W' && s[i + 1] == '/')
            i += 2; /* weak comparison: W/ does not matter */
        if (i >= n || s[i] != '"')
            return 0;
        size_t start = i++;
        while (i < n && is_etagc((unsigned char)s[i]))
            i++;
        if (i >= n || s[i] != '"')
            return 0;
        i++;
        matched |= i - start == el && !memcmp(s + start, etag, el);
        while (i < n && is_ows(s[i]))
            i++;
        if (i < n && s[i] != ',')
            return 0;
    }
}

static const char wdays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const wdays_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                          "Thursday", "Friday", "Saturday"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Reads exactly w digits at *p (w <= 4); -1 if not digits. */
static int digits(const char **p, const char *end, int w) {
    int v = 0;
    for (int k = 0; k < w; k++, (*p)++) {
        if (*p >= end || **p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

static int lit(const char **p, const char *end, const char *l) {
    size_t n = strlen(l);
    if ((size_t)(end - *p) < n || memcmp(*p, l, n))
        return -1;
    *p += n;
    return 0;
}

static int month_of(const char **p, const char *end) {
    for (int m = 0; m < 12; m++)
        if (lit(p, end, months[m]) == 0)
            return m;
    return -1;
}

static int hms(const char **p, const char *end, struct tm *tm) {
    tm->tm_hour = digits(p, end, 2);
    if (tm->tm_hour < 0 || lit(p, end, ":"))
        return -1;
    tm->tm_min = digits(p, end, 2);
    if (tm->tm_min < 0 || lit(p, end, ":"))
        return -1;
    tm->tm_sec = digits(p, end, 2);
    return tm->tm_sec < 0 || tm->tm_hour > 23 || tm->tm_min > 59 || tm->tm_sec > 60 ? -1 : 0;
}

int http_date_parse(const char *s, size_t len, int64_t *out) {
    const char *p = s, *end = s + len;
    struct tm tm = {0};
    int wday = -1;
    for (int d = 0; d < 7 && wday < 0; d++) /* the long names first: "Sunday," */
        if (lit(&p, end, wdays_long[d]) == 0)
            wday = d;
    int long_name = wday >= 0;
    for (int d = 0; d < 7 && wday < 0; d++)
        if (lit(&p, end, wdays[d]) == 0)
            wday = d;
    if (wday < 0)
        return -1;
    if (!long_name && lit(&p, end, ", ") == 0) { /* IMF-fixdate */
        tm.tm_mday = digits(&p, end, 2);
        if (tm.tm_mday < 0 || lit(&p, end, " ") || (tm.tm_mon = month_of(&p, end)) < 0 ||
            lit(&p, end, " ") || (tm.tm_year = digits(&p, end, 4)) < 0 || lit(&p, end, " ") ||
            hms(&p, end, &tm) || lit(&p, end, " GMT"))
            return -1;
        tm.tm_year -= 1900;
    } else if (long_name && lit(&p, end, ", ") == 0) { /* RFC 850 */
        tm.tm_mday = digits(&p, end, 2);
        if (tm.tm_mday < 0 || lit(&p, end, "-") || (tm.tm_mon = month_of(&p, end)) < 0 ||
            lit(&p, end, "-") || (tm.tm_year = digits(&p, end, 2)) < 0 || lit(&p, end, " ") ||
            hms(&p, end, &tm) || lit(&p, end, " GMT"))
            return -1;
        /* Two-digit years: RFC 9110 says the one not over 50 years ahead;
         * these are dates of files, so 70-99 are 19xx. */
        if (tm.tm_year < 70)
            tm.tm_year += 100;
    } else if (!long_name && lit(&p, end, " ") == 0) { /* asctime: "Nov  6 08:49:37 1994" */
        if ((tm.tm_mon = month_of(&p, end)) < 0 || lit(&p, end, " "))
            return -1;
        if (p < end && *p == ' ') {
            p++;
            tm.tm_mday = digits(&p, end, 1);
        } else {
            tm.tm_mday = digits(&p, end, 2);
        }
        if (tm.tm_mday < 0 || lit(&p, end, " ") || hms(&p, end, &tm) || lit(&p, end, " ") ||
            (tm.tm_year = digits(&p, end, 4)) < 0)
            return -1;
        tm.tm_year -= 1900;
    } else {
        return -1;
    }
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (p != end || tm.tm_mday < 1 || tm.tm_mday > mdays[tm.tm_mon])
        return -1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *out = (int64_t)t;
    return 0;
}

void http_date_format(int64_t t, char *out) {
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    char tmp[64];
    /* By hand: strftime's names follow the locale. Years past 9999 do not
     * fit the format (and no file has one): cut. */
    snprintf(tmp, sizeof tmp, "%s, %02d %s %04d %02d:%02d:%02d GMT", wdays[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(out, tmp, HTTP_DATE_LEN);
    out[HTTP_DATE_LEN] = '\0';
}

/* ---- serving ---- */

/* The read storm's path costs: realpath of the root and of the file is a
 * readlink per component. The root's canonical name is kept per thread
 * (resolved again once a second, or when root changes), and the file is
 * opened under it in one openat2 that refuses any symlink on the way: with
 * the components checked above (no "..") that cannot leave the root. A
 * symlink inside the root (or a kernel without openat2) takes the slow
 * path, which allows a link that stays inside. */
#define ROOT_RECHECK_MS 1000
static _Thread_local char root_seen[PATH_MAX], root_canon[PATH_MAX];
static _Thread_local uint64_t root_at;

static const char *canon_root(const char *root) {
    uint64_t now = mono_ms();
    if (root_canon[0] && now - root_at < ROOT_RECHECK_MS && !strcmp(root_seen, root))
        return root_canon;
    if (strlen(root) >= sizeof root_seen || !realpath(root, root_canon)) {
        root_canon[0] = '\0';
        return NULL;
    }
    strcpy(root_seen, root);
    root_at = now;
    return root_canon;
}

/* The Date header (RFC 9110 6.6.1: an origin with a clock sends it; a
 * cache ages the answer by it), formatted once a second per thread. */
static _Thread_local char date_now[HTTP_DATE_LEN + 1];
static _Thread_local int64_t date_sec = -1;

static const char *date_header(int64_t now) {
    if (now != date_sec) {
        http_date_format(now, date_now);
        date_sec = now;
    }
    return date_now;
}

/* Whether an open failed for want of resources (descriptors, memory), not
 * because of the file: 503, worth a retry, never 404. */
static int out_of_resources(int err) {
    return err == EMFILE || err == ENFILE || err == ENOMEM;
}

/* fd, -1 (no such file: 404), -2 (cannot tell here: the slow path) or -3
 * (out of resources: 503). */
static int open_beneath_fast(const char *canon, const char *rel) {
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s/%s", canon, rel) >= (int)sizeof p)
        return -1;
    struct open_how how = {.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
                           .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, AT_FDCWD, p, &how, sizeof how);
    if (fd >= 0)
        return (int)fd;
    if (out_of_resources(errno))
        return -3;
    return errno == ENOENT || errno == ENOTDIR || errno == EACCES ? -1 : -2;
}

int static_serve(http_conn_t *c, const http_req_t *r, const char *root, const char *cache_control) {
    const char *rawpath = r->path;
    size_t rawlen = r->path_len;
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
    const char *canon = canon_root(root);
    int fd = canon ? open_beneath_fast(canon, rel) : -1;
    if (fd == -2) {
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
        fd = open(rfull, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0 && out_of_resources(errno))
            fd = -3;
    }
    if (fd == -3) {
        http_conn_reply_error(c, 503, "unavailable",
                              "the server is out of file descriptors; retry shortly",
                              "Retry-After: 1\r\n");
        return 503;
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        ingest_reply_error(c, 404, "not_found", "no such file");
        return 404;
    }
    char etag[80], lm[HTTP_DATE_LEN + 1], hdrs[1024];
    snprintf(etag, sizeof etag, "\"%llx-%llx-%llx\"", (unsigned long long)st.st_ino,
             (unsigned long long)st.st_mtim.tv_sec * 1000000000ull +
                 (unsigned long long)st.st_mtim.tv_nsec,
             (unsigned long long)st.st_size);
    int64_t mtime = (int64_t)st.st_mtim.tv_sec, now = (int64_t)time(NULL);
    int lm_ok = mtime < now; /* its second is over (see the top) */
    if (lm_ok)
        http_date_format(mtime, lm);
    /* config_validate keeps cache_control short and free of CR/LF. */
    snprintf(hdrs, sizeof hdrs, "Date: %s\r\nETag: %s\r\n%s%s%sCache-Control: %s\r\n",
             date_header(now), etag, lm_ok ? "Last-Modified: " : "", lm_ok ? lm : "",
             lm_ok ? "\r\n" : "", cache_control);
    int not_modified;
    int64_t since;
    if (r->if_none_match) /* If-Modified-Since is ignored then (13.1.3) */
        not_modified = http_etag_list_matches(r->if_none_match, r->if_none_match_len, etag);
    else
        not_modified =
            lm_ok && r->if_modified_since &&
            http_date_parse(r->if_modified_since, r->if_modified_since_len, &since) == 0 &&
            since <= now && mtime <= since;
    if (not_modified) {
        close(fd);
        http_conn_reply(c, 304, NULL, hdrs, NULL, 0);
        return 304;
    }
    http_conn_send_file(c, content_type(rel), hdrs, fd, (uint64_t)st.st_size);
    return 200;
}
