/* The S3 uploader: one thread, one slot per object name, libcurl signing.
 * See s3.h for the contract. */
#include "publisher/s3.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "common/util.h"

/* After a failed PUT nothing is sent for BACKOFF_MIN_MS, doubling to
 * BACKOFF_MAX_MS, until one succeeds: a server that is down or refuses our
 * keys fails every object alike, so the backoff is the uploader's, not an
 * object's. Failures are logged once, then at most every FAIL_LOG_EVERY_MS
 * with how many there were since. */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
#define FAIL_LOG_EVERY_MS 30000
#define CONNECT_TIMEOUT_MS 3000
#define REQUEST_TIMEOUT_MS 15000
#define FINAL_TIMEOUT_MS 2000 /* the last pass at stop: a stop is not held up */
#define REPLY_KEEP 2048       /* bytes of an error reply kept to name the cause */
#define SHA256_LEN 32

typedef struct {
    char *name; /* relative to publisher.dir; never freed before s3_free */
    uint64_t name_hash;
    buf_t pending; /* newest content not uploaded yet (has_pending) */
    int has_pending;
    int have_sent;
    unsigned char sent_sha[SHA256_LEN]; /* of the last content uploaded */
} s3_obj_t;

struct s3_s {
    char *url_base; /* up to and including the '/' before the object key */
    char *prefix;   /* "" or ending in '/' */
    char *cache_control;
    char sigv4[128];
    buf_t access, secret;
    CURL *curl; /* uploader thread only: one connection, kept alive */

    pthread_t thread;
    pthread_mutex_t mu; /* guards objs, nobjs, npending, stopping */
    pthread_cond_t cond;
    s3_obj_t *objs;
    size_t nobjs, cap, cursor;
    size_t npending;
    int stopping;
    _Atomic int abort_inflight; /* set by s3_free: a PUT in flight gives up */

    /* uploader thread only */
    int backoff_ms;
    uint64_t retry_at; /* mono ms */
    uint64_t fail_logged_ms, fails_unlogged;
    int failing;
};

/* Process-wide counters behind s3_stats(). */
static _Atomic int st_enabled;
static _Atomic uint64_t st_ok, st_fail, st_unchanged, st_pending, st_err_ms;
static pthread_mutex_t st_mu = PTHREAD_MUTEX_INITIALIZER; /* guards st_err */
static char st_err[256];

void s3_stats(s3_stats_t *out) {
    memset(out, 0, sizeof *out);
    out->enabled = atomic_load(&st_enabled);
    out->uploads_ok = atomic_load(&st_ok);
    out->failures = atomic_load(&st_fail);
    out->unchanged = atomic_load(&st_unchanged);
    out->pending = atomic_load(&st_pending);
    out->last_error_ms = atomic_load(&st_err_ms);
    pthread_mutex_lock(&st_mu);
    memcpy(out->last_error, st_err, sizeof out->last_error);
    pthread_mutex_unlock(&st_mu);
}

/* "UTF-8" in capitals: S3Proxy's Jetty rewrites "charset=utf-8" so before
 * checking the signature, which then no longer matches the header signed. */
static const char *content_type(const char *name) {
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=UTF-8"},
        {".json", "application/json"},
        {".svg", "image/svg+xml"},
        {".css", "text/css"},
        {".js", "text/javascript"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].type;
    return "application/octet-stream";
}

static void sha256(const void *data, size_t len, unsigned char out[SHA256_LEN]) {
    unsigned int n = SHA256_LEN;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != SHA256_LEN)
        tally_panic(__FILE__, __LINE__, "OpenSSL SHA-256");
}

/* ---- one PUT ---- */

static size_t keep_reply(char *ptr, size_t size, size_t nmemb, void *arg) {
    buf_t *b = arg;
    size_t n = size * nmemb;
    if (b->len < REPLY_KEEP)
        buf_append(b, ptr, n < REPLY_KEEP - b->len ? n : REPLY_KEEP - b->len);
    return n;
}

/* "<Code>X</Code>" of an S3 error document, for the message. */
static void reply_code(const buf_t *b, char *out, size_t cap) {
    out[0] = '\0';
    if (!b->len)
        return;
    const char *end = b->data + b->len;
    const char *s = memmem(b->data, b->len, "<Code>", 6);
    const char *e = s ? memmem(s, (size_t)(end - s), "</Code>", 7) : NULL;
    if (!s || !e)
        return;
    s += 6;
    size_t n = (size_t)(e - s) < cap - 1 ? (size_t)(e - s) : cap - 1;
    for (size_t i = 0; i < n; i++) /* it goes into logs and JSON: printable only */
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[n] = '\0';
}

typedef struct {
    s3_t *s;
    int final; /* a PUT of the last pass: only its timeout ends it */
} put_ctx_t;

/* libcurl's progress callback, at least once a second: non-zero aborts. */
static int put_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                        curl_off_t ulnow) {
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    put_ctx_t *pc = arg;
    return !pc->final && atomic_load(&pc->s->abort_inflight);
}

/* PUTs data as object name. TALLY_OK on a 2xx; else TALLY_ERR_IO with the
 * cause in err. @locality the uploader thread */
static tally_err_t put_object(s3_t *s, const char *name, const void *data, size_t len,
                              const unsigned char sha[SHA256_LEN], long timeout_ms, char *err,
                              size_t esz) {
    buf_t url = {0}, reply = {0}, h = {0};
    struct curl_slist *hdrs = NULL;
    tally_err_t rc = TALLY_ERR_IO;
    buf_printf(&url, "%s%s%s", s->url_base, s->prefix, name);
    buf_printf(&h, "x-amz-content-sha256: ");
    for (int i = 0; i < SHA256_LEN; i++)
        buf_printf(&h, "%02x", sha[i]);
    hdrs = curl_slist_append(hdrs, h.data);
    h.len = 0;
    buf_printf(&h, "Content-Type: %s", content_type(name));
    hdrs = curl_slist_append(hdrs, h.data);
    h.len = 0;
    buf_printf(&h, "Cache-Control: %s", s->cache_control);
    hdrs = curl_slist_append(hdrs, h.data);
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
    if (!hdrs)
        tally_panic(__FILE__, __LINE__, "curl_slist_append: out of memory");

    CURL *cu = s->curl;
    curl_easy_reset(cu);
    curl_easy_setopt(cu, CURLOPT_URL, url.data);
    curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS,
                     timeout_ms < CONNECT_TIMEOUT_MS ? timeout_ms : (long)CONNECT_TIMEOUT_MS);
    curl_easy_setopt(cu, CURLOPT_TIMEOUT_MS, timeout_ms);
    put_ctx_t pc = {s, timeout_ms == FINAL_TIMEOUT_MS};
    curl_easy_setopt(cu, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(cu, CURLOPT_XFERINFOFUNCTION, put_progress);
    curl_easy_setopt(cu, CURLOPT_XFERINFODATA, &pc);
    curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(cu, CURLOPT_POSTFIELDS, len ? data : "");
    curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(cu, CURLOPT_AWS_SIGV4, s->sigv4);
    curl_easy_setopt(cu, CURLOPT_USERNAME, s->access.data);
    curl_easy_setopt(cu, CURLOPT_PASSWORD, s->secret.data);
    curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, keep_reply);
    curl_easy_setopt(cu, CURLOPT_WRITEDATA, &reply);
    CURLcode cc = curl_easy_perform(cu);
    long status = 0;
    curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK) {
        snprintf(err, esz, "PUT %s: %s", url.data, curl_easy_strerror(cc));
    } else if (status < 200 || status > 299) {
        char code[64];
        reply_code(&reply, code, sizeof code);
        snprintf(err, esz, "PUT %s: HTTP %ld%s%s", url.data, status, code[0] ? " " : "", code);
    } else {
        rc = TALLY_OK;
    }
    /* The credentials are not left in the handle between requests. */
    curl_easy_setopt(cu, CURLOPT_USERNAME, "");
    curl_easy_setopt(cu, CURLOPT_PASSWORD, "");
    curl_slist_free_all(hdrs);
    buf_free(&url);
    buf_free(&reply);
    buf_free(&h);
    return rc;
}

/* ---- the thread ---- */

static void note_failure(s3_t *s, const char *err) {
    uint64_t now = mono_ms();
    atomic_fetch_add(&st_fail, 1);
    atomic_store(&st_err_ms, now_ms());
    pthread_mutex_lock(&st_mu);
    snprintf(st_err, sizeof st_err, "%.255s", err);
    pthread_mutex_unlock(&st_mu);
    s->backoff_ms = s->backoff_ms
                        ? (s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2)
                        : BACKOFF_MIN_MS;
    s->retry_at = now + (uint64_t)s->backoff_ms;
    if (!s->failing) {
        log_error("s3: %s (results are still written to publisher.dir; the upload is retried)",
                  err);
        s->failing = 1;
    } else if (now - s->fail_logged_ms >= FAIL_LOG_EVERY_MS) {
        log_error("s3: still failing (%llu more failures): %s",
                  (unsigned long long)s->fails_unlogged, err);
    } else {
        s->fails_unlogged++;
        return;
    }
    s->fail_logged_ms = now;
    s->fails_unlogged = 0;
}

static void note_success(s3_t *s) {
    if (s->failing)
        log_info("s3: uploading again (%s)", s->url_base);
    s->failing = 0;
    s->backoff_ms = 0;
    s->retry_at = 0;
    atomic_fetch_add(&st_ok, 1);
}

/* The next object with pending content, round robin so that one object
 * rewritten all the time cannot starve the others. -1: none. @locks mu */
static long next_pending(s3_t *s) {
    for (size_t k = 0; k < s->nobjs; k++) {
        size_t i = (s->cursor + k) % s->nobjs;
        if (s->objs[i].has_pending) {
            s->cursor = i + 1;
            return (long)i;
        }
    }
    return -1;
}

/* Takes object i's pending content and uploads it unless it equals the
 * last upload. Returns TALLY_OK, or TALLY_ERR_IO after a failure (the
 * content is pending again unless a newer one came meanwhile).
 * @locks mu held on entry and on return, released during the PUT */
static tally_err_t upload_one(s3_t *s, size_t i) {
    s3_obj_t *o = &s->objs[i];
    buf_t body = o->pending;
    o->pending = (buf_t){0};
    o->has_pending = 0;
    s->npending--;
    int have_sent = o->have_sent;
    unsigned char sent[SHA256_LEN], sha[SHA256_LEN];
    memcpy(sent, o->sent_sha, sizeof sent);
    const char *name = o->name;
    long timeout_ms = s->stopping ? FINAL_TIMEOUT_MS : REQUEST_TIMEOUT_MS;
    pthread_mutex_unlock(&s->mu);

    char err[512];
    tally_err_t rc = TALLY_OK;
    sha256(body.data ? body.data : "", body.len, sha);
    int same = have_sent && !memcmp(sha, sent, sizeof sha);
    if (same)
        atomic_fetch_add(&st_unchanged, 1);
    else
        rc = put_object(s, name, body.data, body.len, sha, timeout_ms, err, sizeof err);
    if (rc == TALLY_OK && !same)
        note_success(s);
    else if (rc != TALLY_OK)
        note_failure(s, err);

    pthread_mutex_lock(&s->mu);
    o = &s->objs[i]; /* s3_put may have grown the array meanwhile */
    if (rc == TALLY_OK) {
        memcpy(o->sent_sha, sha, sizeof sha);
        o->have_sent = 1;
        buf_free(&body);
    } else if (o->has_pending) {
        buf_free(&body); /* a newer version came meanwhile: it wins */
    } else {
        o->pending = body;
        o->has_pending = 1;
        s->npending++;
    }
    atomic_store(&st_pending, s->npending);
    return rc;
}

static void *s3_main(void *arg) {
    s3_t *s = arg;
    thread_name("s3");
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        uint64_t now = mono_ms();
        long i = s->npending ? next_pending(s) : -1;
        if (i < 0) {
            struct timespec ts = deadline_in_ms(1000);
            pthread_cond_timedwait(&s->cond, &s->mu, &ts);
        } else if (s->retry_at > now) {
            struct timespec ts = deadline_in_ms((int)(s->retry_at - now));
            s->cursor = (size_t)i; /* start there when the wait is over */
            pthread_cond_timedwait(&s->cond, &s->mu, &ts);
        } else {
            upload_one(s, (size_t)i);
        }
    }
    /* Last pass: what the final publish handed over goes out if the server
     * answers; the first failure ends it. */
    long i;
    while ((i = next_pending(s)) >= 0 && upload_one(s, (size_t)i) == TALLY_OK)
        ;
    if (s->npending)
        log_error("s3: stopping with %zu objects not uploaded (they are in publisher.dir)",
                  s->npending);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- lifecycle ---- */

tally_err_t s3_new(const tally_config_t *c, s3_t **out, char *errstr, size_t esz) {
    *out = NULL;
    if (!c->s3_endpoint || !c->s3_endpoint[0])
        return TALLY_OK;
    s3_t *s = xcalloc(1, sizeof *s);
    tally_err_t rc = config_read_secret("publisher.s3_access_key_file", c->s3_access_key_file,
                                        &s->access, errstr, esz);
    if (rc == TALLY_OK)
        rc = config_read_secret("publisher.s3_secret_key_file", c->s3_secret_key_file, &s->secret,
                                errstr, esz);
    if (rc != TALLY_OK)
        goto fail;
    buf_append(&s->access, "", 1); /* NUL-terminated for libcurl */
    buf_append(&s->secret, "", 1);

    /* Object URL: path style ENDPOINT/BUCKET/KEY, or BUCKET.HOST/KEY. */
    const char *ep = c->s3_endpoint;
    size_t el = strlen(ep);
    while (el && ep[el - 1] == '/')
        el--;
    buf_t u = {0};
    if (c->s3_path_style) {
        buf_printf(&u, "%.*s/%s/", (int)el, ep, c->s3_bucket);
    } else {
        const char *host = strstr(ep, "://") + 3;
        buf_printf(&u, "%.*s%s.%.*s/", (int)(host - ep), ep, c->s3_bucket, (int)(ep + el - host),
                   host);
    }
    s->url_base = u.data;
    const char *pre = c->s3_prefix;
    while (*pre == '/')
        pre++;
    buf_t p = {0};
    buf_puts(&p, pre);
    if (p.len && p.data[p.len - 1] != '/')
        buf_puts(&p, "/");
    s->prefix = p.data ? p.data : xstrdup("");
    s->cache_control = xstrdup(c->pub_cache_control);
    snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%s:s3", c->s3_region);

    /* curl_global_init is thread-safe from 7.84 on (Debian ships newer);
     * it is still done here, before the thread exists. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(s->curl = curl_easy_init())) {
        snprintf(errstr, esz, "s3: libcurl cannot start");
        rc = TALLY_ERR_IO;
        goto fail;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->thread, NULL, s3_main, s) != 0) {
        snprintf(errstr, esz, "s3: cannot start the uploader thread");
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cond);
        rc = TALLY_ERR_IO;
        goto fail;
    }
    atomic_store(&st_enabled, 1);
    log_info("s3: publishing to %s%s (region %s)", s->url_base, s->prefix, c->s3_region);
    *out = s;
    return TALLY_OK;
fail:
    if (s->curl) {
        curl_easy_cleanup(s->curl);
        curl_global_cleanup();
    }
    if (s->secret.data)
        explicit_bzero(s->secret.data, s->secret.cap);
    buf_free(&s->access);
    buf_free(&s->secret);
    free(s->url_base);
    free(s->prefix);
    free(s->cache_control);
    free(s);
    return rc;
}

void s3_put(s3_t *s, const char *name, const void *data, size_t len) {
    if (!s)
        return;
    uint64_t h = XXH3_64bits(name, strlen(name));
    pthread_mutex_lock(&s->mu);
    s3_obj_t *o = NULL;
    for (size_t i = 0; i < s->nobjs && !o; i++)
        if (s->objs[i].name_hash == h && !strcmp(s->objs[i].name, name))
            o = &s->objs[i];
    if (!o) {
        if (s->nobjs == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 16;
            s->objs = xrealloc(s->objs, s->cap * sizeof *s->objs);
        }
        o = &s->objs[s->nobjs++];
        *o = (s3_obj_t){.name = xstrdup(name), .name_hash = h};
    }
    o->pending.len = 0; /* a newer version replaces one not sent yet */
    buf_append(&o->pending, data, len);
    if (!o->has_pending) {
        o->has_pending = 1;
        s->npending++;
    }
    atomic_store(&st_pending, s->npending);
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

void s3_free(s3_t *s) {
    if (!s)
        return;
    atomic_store(&s->abort_inflight, 1); /* it is sent again in the last pass */
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    curl_easy_cleanup(s->curl);
    curl_global_cleanup();
    for (size_t i = 0; i < s->nobjs; i++) {
        free(s->objs[i].name);
        buf_free(&s->objs[i].pending);
    }
    free(s->objs);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    explicit_bzero(s->secret.data, s->secret.cap);
    buf_free(&s->access);
    buf_free(&s->secret);
    free(s->url_base);
    free(s->prefix);
    free(s->cache_control);
    atomic_store(&st_pending, 0);
    free(s);
}
