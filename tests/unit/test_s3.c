/* tsan: the S3 uploader's thread against a small HTTP server of the test's
 * own (a thread on a loopback socket): what a PUT carries (path, SigV4
 * authorization, x-amz-content-sha256, Content-Type, Cache-Control), equal
 * content not sent twice, newest-wins coalescing while a PUT is in flight,
 * retries with backoff after failures, and a stop that does not wait out
 * an unreachable server. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "publisher/s3.h"
#include "unit_helpers.h"

#define MAX_REQS 64

typedef struct {
    char method[8], path[256], sha[80], ctype[80], cache[128], auth[512];
    char body[256];
    size_t body_len;
} req_t;

/* The fake server: answers each request with status_for(n) once `hold` is
 * 0. Everything under mu. */
static struct {
    int fd, port;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    req_t reqs[MAX_REQS];
    int nreqs;
    int hold;       /* 1: received requests wait for their answer */
    int fail_first; /* this many first requests get fail_status */
    int fail_status;
    int stop;
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void header_value(const char *head, const char *name, char *out, size_t cap) {
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *l = strstr(head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (!strncasecmp(h, name, nl) && h[nl] == ':') {
            h += nl + 1;
            while (*h == ' ')
                h++;
            const char *e = strstr(h, "\r\n");
            snprintf(out, cap, "%.*s", (int)(e - h), h);
            return;
        }
    }
}

static void serve_conn(int c) {
    char buf[8192];
    size_t len = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
            ssize_t n = recv(c, buf + len, sizeof buf - 1 - len, 0);
            if (n <= 0)
                return;
            len += (size_t)n;
        }
        *end = '\0';
        req_t r = {0};
        sscanf(buf, "%7s %255s", r.method, r.path);
        char cl[32];
        header_value(buf, "x-amz-content-sha256", r.sha, sizeof r.sha);
        header_value(buf, "Content-Type", r.ctype, sizeof r.ctype);
        header_value(buf, "Cache-Control", r.cache, sizeof r.cache);
        header_value(buf, "Authorization", r.auth, sizeof r.auth);
        header_value(buf, "Content-Length", cl, sizeof cl);
        size_t blen = (size_t)atol(cl), hlen = (size_t)(end + 4 - buf);
        while (len < hlen + blen) {
            ssize_t n = recv(c, buf + len, sizeof buf - 1 - len, 0);
            if (n <= 0)
                return;
            len += (size_t)n;
        }
        r.body_len = blen < sizeof r.body ? blen : sizeof r.body;
        memcpy(r.body, buf + hlen, r.body_len);
        memmove(buf, buf + hlen + blen, len - hlen - blen);
        len -= hlen + blen;

        pthread_mutex_lock(&srv.mu);
        int n = srv.nreqs;
        if (n < MAX_REQS)
            srv.reqs[srv.nreqs++] = r;
        pthread_cond_broadcast(&srv.cond);
        while (srv.hold && !srv.stop)
            pthread_cond_wait(&srv.cond, &srv.mu);
        int status = n < srv.fail_first ? srv.fail_status : 200;
        pthread_mutex_unlock(&srv.mu);
        char out[512];
        const char *xml = status == 200 ? "" : "<Error><Code>SlowDown</Code></Error>";
        int ol = snprintf(out, sizeof out, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n\r\n%s", status,
                          strlen(xml), xml);
        if (send(c, out, (size_t)ol, MSG_NOSIGNAL) != ol)
            return;
    }
}

static void *conn_main(void *arg) {
    int c = (int)(intptr_t)arg;
    serve_conn(c);
    close(c);
    return NULL;
}

static void *srv_main(void *arg) {
    (void)arg;
    for (;;) {
        int c = accept(srv.fd, NULL, NULL);
        if (c < 0)
            return NULL;
        pthread_t t; /* a thread per connection: curl may open another */
        pthread_create(&t, NULL, conn_main, (void *)(intptr_t)c);
        pthread_detach(t);
    }
}

static void srv_start(void) {
    srv.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    cr_assert(bind(srv.fd, (struct sockaddr *)&a, sizeof a) == 0);
    cr_assert(listen(srv.fd, 8) == 0);
    getsockname(srv.fd, (struct sockaddr *)&a, &al);
    srv.port = ntohs(a.sin_port);
    pthread_create(&srv.thread, NULL, srv_main, NULL);
}

static void srv_stop(void) {
    pthread_mutex_lock(&srv.mu);
    srv.stop = 1;
    pthread_cond_broadcast(&srv.cond);
    pthread_mutex_unlock(&srv.mu);
    shutdown(srv.fd, SHUT_RDWR);
    close(srv.fd);
    pthread_join(srv.thread, NULL);
}

static int nreqs(void) {
    pthread_mutex_lock(&srv.mu);
    int n = srv.nreqs;
    pthread_mutex_unlock(&srv.mu);
    return n;
}

static req_t req_at(int i) {
    pthread_mutex_lock(&srv.mu);
    req_t r = srv.reqs[i];
    pthread_mutex_unlock(&srv.mu);
    return r;
}

static s3_stats_t stats(void) {
    s3_stats_t st;
    s3_stats(&st);
    return st;
}

static char *dir;
static tally_config_t *conf;

/* An uploader for the fake server at port (0: the fake server's). */
static s3_t *uploader(int port) {
    dir = tmpdir_new();
    char *ak = path_join(dir, "ak"), *sk = path_join(dir, "sk"), ep[64];
    file_write_str(ak, "AKIDTEST\n");
    file_write_str(sk, "  s3cr3t  \n");
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/", port ? port : srv.port);
    conf = config_new_defaults();
    conf_set(conf, "publisher", "s3_endpoint", ep);
    conf_set(conf, "publisher", "s3_bucket", "res");
    conf_set(conf, "publisher", "s3_prefix", "/live");
    conf_set(conf, "publisher", "s3_region", "eu-west-3");
    conf_set(conf, "publisher", "s3_access_key_file", ak);
    conf_set(conf, "publisher", "s3_secret_key_file", sk);
    conf_set(conf, "publisher", "cache_control", "public, max-age=3");
    conf_finish(conf);
    char err[512];
    s3_t *s = NULL;
    cr_assert(s3_new(conf, &s, err, sizeof err) == TALLY_OK, "s3_new: %s", err);
    cr_assert_not_null(s);
    free(ak);
    free(sk);
    return s;
}

static void done(s3_t *s) {
    s3_free(s);
    config_free(conf);
    tmpdir_free(dir);
}

Test(s3, off_without_endpoint) {
    tally_config_t *c = config_new_defaults();
    s3_t *s = (s3_t *)1;
    char err[64];
    cr_assert(s3_new(c, &s, err, sizeof err) == TALLY_OK);
    cr_assert_null(s);
    s3_put(NULL, "x", "y", 1); /* a no-op */
    cr_assert_eq(stats().enabled, 0);
    config_free(c);
}

Test(s3, put_is_signed_with_the_payload_sha256_and_carries_type_and_cache) {
    srv_start();
    s3_t *s = uploader(0);
    s3_put(s, "polls/a.json", "abc", 3);
    WAIT_UNTIL(stats().uploads_ok == 1, 5000);
    req_t r = req_at(0);
    cr_assert_str_eq(r.method, "PUT");
    cr_assert_str_eq(r.path, "/res/live/polls/a.json");
    /* SHA-256("abc"), FIPS 180-2's example */
    cr_assert_str_eq(r.sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_assert_str_eq(r.ctype, "application/json");
    cr_assert_str_eq(r.cache, "public, max-age=3");
    cr_assert(!strncmp(r.auth, "AWS4-HMAC-SHA256 Credential=AKIDTEST/", 37), "%s", r.auth);
    cr_assert(strstr(r.auth, "/eu-west-3/s3/aws4_request"), "%s", r.auth);
    cr_assert(strstr(r.auth, "x-amz-content-sha256"), "signed headers: %s", r.auth);
    cr_assert(!strstr(r.auth, "s3cr3t"));
    cr_assert_eq(r.body_len, 3);
    cr_assert(!memcmp(r.body, "abc", 3));
    s3_put(s, "index.html", "<p>", 3);
    WAIT_UNTIL(stats().uploads_ok == 2, 5000);
    cr_assert_str_eq(req_at(1).ctype, "text/html; charset=UTF-8");
    cr_assert_str_eq(req_at(1).path, "/res/live/index.html");
    cr_assert_eq(stats().failures, 0);
    done(s);
    srv_stop();
}

Test(s3, equal_content_is_not_sent_again) {
    srv_start();
    s3_t *s = uploader(0);
    s3_put(s, "polls/a.json", "v1", 2);
    WAIT_UNTIL(stats().uploads_ok == 1, 5000);
    s3_put(s, "polls/a.json", "v1", 2);
    WAIT_UNTIL(stats().unchanged == 1, 5000);
    s3_put(s, "polls/b.json", "v1", 2); /* another name: its own object */
    WAIT_UNTIL(stats().uploads_ok == 2, 5000);
    s3_put(s, "polls/a.json", "v2", 2);
    WAIT_UNTIL(stats().uploads_ok == 3, 5000);
    cr_assert_eq(nreqs(), 3);
    cr_assert(!memcmp(req_at(2).body, "v2", 2));
    cr_assert_eq(stats().pending, 0);
    done(s);
    srv_stop();
}

Test(s3, newest_content_wins_while_a_put_is_in_flight) {
    srv_start();
    pthread_mutex_lock(&srv.mu);
    srv.hold = 1;
    pthread_mutex_unlock(&srv.mu);
    s3_t *s = uploader(0);
    s3_put(s, "polls/a.json", "v1", 2);
    WAIT_UNTIL(nreqs() == 1, 5000); /* v1 is on the wire, its answer held */
    s3_put(s, "polls/a.json", "v2", 2);
    s3_put(s, "polls/a.json", "v3", 2);
    s3_put(s, "polls/a.json", "v4", 2);
    cr_assert_eq(stats().pending, 1);
    pthread_mutex_lock(&srv.mu);
    srv.hold = 0;
    pthread_cond_broadcast(&srv.cond);
    pthread_mutex_unlock(&srv.mu);
    WAIT_UNTIL(stats().uploads_ok == 2 && stats().pending == 0, 5000);
    cr_assert_eq(nreqs(), 2, "v2 and v3 must not be sent: %d requests", nreqs());
    cr_assert(!memcmp(req_at(1).body, "v4", 2));
    done(s);
    srv_stop();
}

Test(s3, failures_are_retried_with_backoff_until_one_succeeds) {
    srv_start();
    pthread_mutex_lock(&srv.mu);
    srv.fail_first = 3;
    srv.fail_status = 503;
    pthread_mutex_unlock(&srv.mu);
    s3_t *s = uploader(0);
    uint64_t t0 = mono_ms();
    s3_put(s, "polls/a.json", "v1", 2);
    WAIT_UNTIL(stats().failures == 1, 5000);
    s3_stats_t st = stats();
    cr_assert(strstr(st.last_error, "HTTP 503 SlowDown"), "%s", st.last_error);
    cr_assert(strstr(st.last_error, "/res/live/polls/a.json"), "%s", st.last_error);
    cr_assert_gt(st.last_error_ms, 0);
    cr_assert_eq(st.pending, 1);
    WAIT_UNTIL(stats().uploads_ok == 1, 10000);
    /* Backoff 100 + 200 + 400 ms between the four tries. */
    cr_assert_geq(mono_ms() - t0, 700);
    cr_assert_eq(stats().failures, 3);
    cr_assert_eq(nreqs(), 4);
    for (int i = 0; i < 4; i++)
        cr_assert(!memcmp(req_at(i).body, "v1", 2));
    cr_assert_eq(stats().pending, 0);
    done(s);
    srv_stop();
}

Test(s3, stop_gives_up_at_the_first_failure) {
    /* A port nobody listens on: every PUT fails at once. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    s3_t *s = uploader(ntohs(a.sin_port));
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof name, "polls/p%d.json", i);
        s3_put(s, name, "x", 1);
    }
    WAIT_UNTIL(stats().failures >= 1, 5000);
    uint64_t t0 = mono_ms();
    done(s);
    cr_assert_lt(mono_ms() - t0, 2000 * TMOUT_MULT);
    cr_assert_eq(stats().uploads_ok, 0);
}

Test(s3, stop_does_not_wait_for_a_server_that_never_answers) {
    srv_start();
    pthread_mutex_lock(&srv.mu);
    srv.hold = 1; /* answers are held until the server stops */
    pthread_mutex_unlock(&srv.mu);
    s3_t *s = uploader(0);
    s3_put(s, "polls/a.json", "v1", 2);
    WAIT_UNTIL(nreqs() == 1, 5000);
    uint64_t t0 = mono_ms();
    done(s); /* the PUT in flight is abandoned, the last pass allows 2 s */
    uint64_t took = mono_ms() - t0;
    cr_assert_lt(took, 4500 * TMOUT_MULT, "stop took %llu ms", (unsigned long long)took);
    cr_assert_geq(nreqs(), 1);
    cr_assert_eq(stats().uploads_ok, 0);
    srv_stop();
}
