/* The HTTP connection's parser glue without sockets: bytes in, answers out.
 * Each framing case checks the status and that the handler never saw the
 * request; split feeds must answer exactly as whole ones. */
#include <criterion/criterion.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#include "ingest/http_conn.h"

typedef struct {
    int calls;
    int defer;         /* defer every request */
    http_conn_t *last; /* the deferred connection */
    char paths[8][64]; /* what the handler saw */
    char bodies[8][128];
} seen_t;

static void handler(void *arg, http_conn_t *c, const http_req_t *r) {
    seen_t *s = arg;
    if (s->calls < 8) {
        snprintf(s->paths[s->calls], sizeof s->paths[0], "%.*s", (int)r->path_len, r->path);
        snprintf(s->bodies[s->calls], sizeof s->bodies[0], "%.*s", (int)r->body_len, r->body);
    }
    s->calls++;
    if (s->defer) {
        s->last = c;
        http_conn_defer(c);
        return;
    }
    http_conn_reply(c, 200, "text/plain", NULL, r->body, r->body_len);
}

static http_conn_cfg_t cfg_for(seen_t *s) {
    http_conn_cfg_t cfg = {.max_header_bytes = 8192,
                           .header_timeout_ms = 10000,
                           .body_timeout_ms = 10000,
                           .keepalive_timeout_ms = 60000,
                           .handler = handler,
                           .arg = s};
    return cfg;
}

/* Feeds everything (in pieces of step bytes; 0 = at once) and returns the
 * output in out. */
static void run(const char *req, size_t len, size_t step, seen_t *s, char *out, size_t cap) {
    http_conn_cfg_t cfg = cfg_for(s);
    http_conn_t *c = http_conn_new_detached(&cfg);
    size_t off = 0;
    while (off < len) {
        size_t n = step && len - off > step ? step : len - off;
        long took = http_conn_feed(c, req + off, n);
        if (took < 0)
            break;
        off += (size_t)took;
        if (took == 0)
            break;
    }
    size_t olen;
    const char *o = http_conn_output(c, &olen);
    snprintf(out, cap, "%.*s", (int)olen, o);
    http_conn_free(c);
}

static int status_of(const char *out) {
    int st = 0;
    if (sscanf(out, "HTTP/1.1 %d", &st) != 1)
        return -1;
    return st;
}

#define POST "POST /v HTTP/1.1\r\nHost: x\r\n"

typedef struct {
    const char *name, *req;
    int status;
} framing_case_t;

static const framing_case_t cases[] = {
    {"conflicting CL", POST "Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400},
    {"malformed CL", POST "Content-Length: 2x\r\n\r\nab", 400},
    {"CL and TE",
     POST "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", 400},
    {"gzip, chunked", POST "Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", 501},
    {"identity", POST "Transfer-Encoding: identity\r\n\r\n", 501},
    {"bad chunk size", POST "Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400},
    {"chunk data not followed by CRLF", POST "Transfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
     400},
    {"bare CR in header", POST "X: a\rContent-Length: 2\r\n\r\nab", 400},
    {"space before colon", POST "Content-Length : 2\r\n\r\nab", 400},
    {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
    {"unknown method", "BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501},
    {"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
    {"body too large", POST "Content-Length: 4097\r\n\r\n", 413},
    {"Expect other", POST "Expect: x\r\nContent-Length: 2\r\n\r\nab", 417},
};

Test(http_conn, framing_errors_never_reach_the_handler) {
    char out[4096];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t step = 0; step <= 3; step += 1) {
            seen_t s = {0};
            run(cases[i].req, strlen(cases[i].req), step, &s, out, sizeof out);
            cr_expect_eq(status_of(out), cases[i].status, "%s (step %zu): %s", cases[i].name, step,
                         out);
            cr_expect_eq(s.calls, 0, "%s reached the handler", cases[i].name);
            cr_expect(strstr(out, "Connection: close") != NULL, "%s left the connection open",
                      cases[i].name);
            cr_expect(strstr(out, "{\"error\":\"") != NULL, "%s: not a JSON error", cases[i].name);
        }
    }
}

Test(http_conn, header_and_target_limits_are_exact) {
    char req[20000], out[4096];
    /* Exactly max_header_bytes is fine; one more is 431. */
    for (int extra = 0; extra <= 1; extra++) {
        const char *head = "GET / HTTP/1.1\r\nHost: x\r\nX: ";
        size_t hl = strlen(head);
        size_t pad = 8192 - hl - 4 + (size_t)extra; /* "\r\n\r\n" */
        memcpy(req, head, hl);
        memset(req + hl, 'a', pad);
        memcpy(req + hl + pad, "\r\n\r\n", 4);
        size_t len = hl + pad + 4;
        seen_t s = {0};
        run(req, len, 0, &s, out, sizeof out);
        cr_expect_eq(status_of(out), extra ? 431 : 200, "header of %zu bytes: %s", len, out);
    }
    for (int extra = 0; extra <= 1; extra++) {
        size_t tl = 4096 + (size_t)extra;
        int n = snprintf(req, sizeof req, "GET /");
        memset(req + n, 'b', tl - 1);
        n += (int)tl - 1;
        n += snprintf(req + n, sizeof req - (size_t)n, " HTTP/1.1\r\nHost: x\r\n\r\n");
        seen_t s = {0};
        run(req, (size_t)n, 0, &s, out, sizeof out);
        /* 4096 bytes of target is within the header limit of 8 KiB. */
        cr_expect_eq(status_of(out), extra ? 414 : 200, "target of %zu bytes: %s", tl, out);
    }
}

Test(http_conn, chunked_body_is_joined_and_split_feeds_agree) {
    const char *req = POST "Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
                           "X-Trailer: t\r\n\r\n"
                           "GET /two?q=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    char whole[4096], split[4096];
    seen_t a = {0}, b = {0};
    run(req, strlen(req), 0, &a, whole, sizeof whole);
    cr_assert_eq(a.calls, 2, "%s", whole);
    cr_expect_str_eq(a.bodies[0], "abcde");
    cr_expect_str_eq(a.paths[1], "/two");
    for (size_t step = 1; step < 40; step++) {
        memset(&b, 0, sizeof b);
        run(req, strlen(req), step, &b, split, sizeof split);
        cr_expect_str_eq(split, whole, "step %zu", step);
    }
}

Test(http_conn, deferred_answers_keep_pipelined_order) {
    seen_t s = {.defer = 1};
    http_conn_cfg_t cfg = cfg_for(&s);
    http_conn_t *c = http_conn_new_detached(&cfg);
    const char *req = POST "Content-Length: 1\r\n\r\n1" POST "Content-Length: 1\r\n\r\n2";
    cr_assert_eq(http_conn_feed(c, req, strlen(req)), (long)strlen(req));
    cr_expect_eq(s.calls, 1, "the second request ran before the first was answered");
    size_t olen;
    http_conn_output(c, &olen);
    cr_expect_eq(olen, 0);
    http_conn_reply(s.last, 202, NULL, NULL, "A", 1);
    cr_expect_eq(s.calls, 2);
    http_conn_reply(s.last, 202, NULL, NULL, "B", 1);
    const char *o = http_conn_output(c, &olen);
    char out[1024];
    snprintf(out, sizeof out, "%.*s", (int)olen, o);
    const char *first = strstr(out, "\r\n\r\nA"), *second = strstr(out, "\r\n\r\nB");
    cr_expect(first && second && first < second, "%s", out);
    http_conn_free(c);
}

Test(http_conn, head_gets_length_without_body_and_http10_closes) {
    char out[4096];
    seen_t s = {0};
    const char *req = "HEAD /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    run(req, strlen(req), 0, &s, out, sizeof out);
    cr_expect(strstr(out, "Content-Length: 3\r\n") != NULL, "%s", out);
    size_t n = strlen(out);
    cr_expect(n >= 4 && !strcmp(out + n - 4, "\r\n\r\n"), "HEAD carried a body: %s", out);
    memset(&s, 0, sizeof s);
    req = "GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n";
    run(req, strlen(req), 0, &s, out, sizeof out);
    cr_expect_eq(s.calls, 1, "served past an HTTP/1.0 close");
    cr_expect(strstr(out, "Connection: close") != NULL);
    memset(&s, 0, sizeof s);
    req = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n";
    run(req, strlen(req), 0, &s, out, sizeof out);
    cr_expect_eq(s.calls, 2);
    cr_expect(strstr(out, "Connection: keep-alive") != NULL);
}

Test(http_conn, expect_100_continue_before_the_body) {
    char out[4096];
    seen_t s = {0};
    const char *req = POST "Expect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
    run(req, strlen(req), 0, &s, out, sizeof out);
    cr_expect_str_eq(out, "HTTP/1.1 100 Continue\r\n\r\n");
    cr_expect_eq(s.calls, 0);
}

/* ---- streams ---- */

static http_chunk_t *chunk_of(const char *s) {
    http_chunk_t *k = http_chunk_new(strlen(s));
    memcpy(k->data, s, strlen(s));
    return k;
}

static void stream_handler(void *arg, http_conn_t *c, const http_req_t *r) {
    seen_t *s = arg;
    s->calls++;
    snprintf(s->paths[0], sizeof s->paths[0], "%.*s", (int)r->last_event_id_len,
             r->last_event_id ? r->last_event_id : "");
    http_conn_stream_start(c, "text/event-stream", "Cache-Control: no-store\r\n");
    http_chunk_t *k = chunk_of("id: 7\ndata: {}\n\n");
    cr_assert_eq(http_conn_stream_send(c, k, 1), 0);
    http_chunk_unref(k);
}

Test(http_conn, a_stream_has_no_length_sends_chunks_and_ignores_what_follows) {
    seen_t s = {0};
    http_conn_cfg_t cfg = cfg_for(&s);
    cfg.handler = stream_handler;
    http_conn_t *c = http_conn_new_detached(&cfg);
    const char req[] = "GET /v1/polls/p/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 42\r\n\r\n"
                       "GET /other HTTP/1.1\r\nHost: x\r\n\r\n";
    http_conn_feed(c, req, sizeof req - 1);
    cr_assert_eq(s.calls, 1, "the pipelined request after a stream is not served");
    cr_assert_str_eq(s.paths[0], "42", "Last-Event-ID reaches the handler");
    size_t n;
    const char *o = http_conn_output(c, &n);
    char out[1024];
    snprintf(out, sizeof out, "%.*s", (int)n, o);
    cr_assert_str_eq(out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: "
                          "close\r\nCache-Control: no-store\r\n\r\nid: 7\ndata: {}\n\n");
    cr_assert_null(strstr(out, "Content-Length"));
    cr_assert_not(http_conn_closing(c));
    http_conn_free(c);
}

Test(http_conn, chunks_are_shared_and_freed_with_the_last_reference) {
    http_chunk_t *k = chunk_of("x");
    cr_assert_eq(http_chunk_ref(k), k);
    cr_assert_eq(atomic_load(&k->refs), 2);
    http_chunk_unref(k);
    cr_assert_eq(atomic_load(&k->refs), 1);
    http_chunk_unref(k); /* freed: ASan would report a leak otherwise */
}
