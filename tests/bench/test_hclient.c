/* hclient against a scripted listener on a thread of its own: answers split
 * byte by byte, chunked, delimited by the close, interim 1xx, a second answer
 * to one request, closes before or during the answer, silence, refusal. */
#include <criterion/criterion.h>
#include <errno.h>
#include <event2/event.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/hclient.h"
#include "common/util.h"

#define REQ "POST /v1/polls/p/votes HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
#define A202 "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"

/* ---- the listener ---- */

typedef struct srv_s srv_t;
struct srv_s {
    int lfd;
    struct sockaddr_in addr;
    void (*script)(srv_t *);
    pthread_t tid;
    int to_test[2], to_srv[2]; /* pipes: "I got there" either way */
};

static void *srv_main(void *arg) {
    srv_t *s = arg;
    s->script(s);
    return NULL;
}

static void srv_start(srv_t *s, void (*script)(srv_t *)) {
    memset(s, 0, sizeof *s);
    s->script = script;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(s->lfd >= 0);
    s->addr.sin_family = AF_INET;
    s->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&s->addr, sizeof s->addr), 0);
    socklen_t al = sizeof s->addr;
    getsockname(s->lfd, (struct sockaddr *)&s->addr, &al);
    cr_assert_eq(listen(s->lfd, 16), 0);
    cr_assert_eq(pipe(s->to_test), 0);
    cr_assert_eq(pipe(s->to_srv), 0);
    cr_assert_eq(pthread_create(&s->tid, NULL, srv_main, s), 0);
}

static void srv_join(srv_t *s) {
    pthread_join(s->tid, NULL);
    close(s->lfd);
    close(s->to_test[0]);
    close(s->to_test[1]);
    close(s->to_srv[0]);
    close(s->to_srv[1]);
}

static void signal_fd(int fd) {
    char c = 1;
    cr_assert_eq(write(fd, &c, 1), 1);
}

static void wait_fd(int fd) {
    char c;
    cr_assert_eq(read(fd, &c, 1), 1);
}

static int srv_accept(srv_t *s) {
    int fd = accept(s->lfd, NULL, NULL);
    cr_assert(fd >= 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int req_done(http_parser *p) {
    *(int *)p->data = 1;
    return 0;
}

/* Reads one whole request (its body too). 0, or -1 at the close. */
static int srv_read(int fd) {
    static const http_parser_settings ps = {.on_message_complete = req_done};
    http_parser p;
    int done = 0;
    http_parser_init(&p, HTTP_REQUEST);
    p.data = &done;
    char buf[65536];
    while (!done) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return -1;
        http_parser_execute(&p, &ps, buf, (size_t)n);
        cr_assert_eq(HTTP_PARSER_ERRNO(&p), HPE_OK);
    }
    return 0;
}

/* Writes s in pieces of step bytes, a little apart so each is a read. */
static void srv_write(int fd, const char *s, size_t step) {
    size_t len = strlen(s);
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        cr_assert_eq(send(fd, s + off, n, MSG_NOSIGNAL), (ssize_t)n);
        if (off + n < len) {
            struct timespec ts = {0, 300 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

/* ---- the client ---- */

typedef struct {
    struct event_base *base;
    hclient_t *h;
    int calls, status;
} client_t;

static void on_answer(void *arg, int status) {
    client_t *c = arg;
    c->calls++;
    c->status = status;
    event_base_loopbreak(c->base);
}

static void client_open(client_t *c, srv_t *s, int timeout_s) {
    memset(c, 0, sizeof *c);
    c->base = event_base_new();
    c->h =
        hclient_new(c->base, (struct sockaddr *)&s->addr, sizeof s->addr, timeout_s, on_answer, c);
}

/* Sends req and runs the loop to its answer. */
static int roundtrip(client_t *c, const char *req, size_t len) {
    int before = c->calls;
    cr_assert_eq(hclient_send(c->h, req, len), 0);
    cr_assert_eq(c->calls, before, "answered inside hclient_send");
    while (c->calls == before)
        event_base_loop(c->base, EVLOOP_ONCE);
    cr_assert_eq(c->calls, before + 1);
    return c->status;
}

/* Lets whatever is pending run: no answer may come twice. */
static void client_close(client_t *c, int calls) {
    for (int i = 0; i < 3; i++)
        event_base_loop(c->base, EVLOOP_NONBLOCK);
    cr_assert_eq(c->calls, calls, "%d answers, expected %d", c->calls, calls);
    hclient_free(c->h);
    event_base_free(c->base);
}

/* ---- scripts and tests ---- */

static void answers_three(srv_t *s) {
    int fd = srv_accept(s);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(srv_read(fd), 0);
        srv_write(fd, A202, 1 << 20);
    }
    close(fd);
}

Test(hclient, keep_alive_carries_every_request_on_one_connection, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, answers_three);
    client_open(&c, &s, 5);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    cr_assert_eq(hclient_connects(c.h), 1);
    srv_join(&s);
    client_close(&c, 3);
}

static void answers_byte_by_byte(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd,
              "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n"
              "Content-Length: 5\r\n\r\n{\"a\"}",
              1);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 3);
    close(fd);
}

Test(hclient, an_answer_in_pieces_is_put_together, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, answers_byte_by_byte);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 409);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    cr_assert_eq(hclient_connects(c.h), 1);
    srv_join(&s);
    client_close(&c, 2);
}

static void answers_chunked(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1 << 20);
    srv_write(fd, "5\r\nhello\r\n", 4);
    srv_write(fd, "3\r\n, w\r\n0\r\n\r\n", 1 << 20);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1 << 20);
    close(fd);
}

Test(hclient, a_chunked_answer_ends_at_the_last_chunk, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, answers_chunked);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 200);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 201);
    cr_assert_eq(hclient_connects(c.h), 1);
    srv_join(&s);
    client_close(&c, 2);
}

static void answers_and_closes(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    /* Connection: close, but the close itself comes later. */
    srv_write(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 1 << 20);
    wait_fd(s->to_srv[0]);
    close(fd);
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "HTTP/1.0 203 Whatever\r\n\r\nthe body runs to the close", 7);
    close(fd);
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 1 << 20);
    close(fd);
}

Test(hclient, connection_close_and_a_body_to_the_close_take_a_new_connection, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, answers_and_closes);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 200);
    signal_fd(s.to_srv[1]);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 203);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    cr_assert_eq(hclient_connects(c.h), 3);
    srv_join(&s);
    client_close(&c, 3);
}

static void closes_idle(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 1 << 20);
    close(fd); /* idle keep-alive connection closed by the server */
    signal_fd(s->to_test[1]);
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 1 << 20);
    close(fd);
}

Test(hclient, a_connection_the_server_closed_while_idle_is_reopened, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, closes_idle);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    wait_fd(s.to_test[0]);
    /* The FIN is in: let the loop see it before the next send. */
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    event_base_loop(c.base, EVLOOP_NONBLOCK);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    cr_assert_eq(hclient_connects(c.h), 2);
    srv_join(&s);
    client_close(&c, 2);
}

static void fails_in_three_ways(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    close(fd); /* before any answer */
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "HTTP/1.1 202 Acc", 1 << 20);
    close(fd); /* in the status line */
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\nabc", 1 << 20);
    close(fd); /* in the body */
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "not http at all\r\n\r\n", 1 << 20);
    wait_fd(s->to_srv[0]);
    close(fd);
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 1 << 20);
    close(fd);
}

Test(hclient, a_close_or_garbage_before_the_whole_answer_is_no_answer, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, fails_in_three_ways);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 0);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 0);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 0);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 0); /* the client closes on garbage */
    signal_fd(s.to_srv[1]);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    cr_assert_eq(hclient_connects(c.h), 5);
    srv_join(&s);
    client_close(&c, 5);
}

/* Answers the first connection's request with first (which ends in bytes
 * that must make the client drop the connection) and leaves it open; the
 * client's next request must come on a new connection, answered 201. */
static void answer_then_201_on_a_new_connection(srv_t *s, const char *first) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, first, 1 << 20);
    int fd2 = srv_accept(s); /* the first stays open: the client must not wait for it */
    cr_assert_eq(srv_read(fd2), 0);
    srv_write(fd2, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 1 << 20);
    close(fd2);
    close(fd);
}

/* The client side of answer_then_201_on_a_new_connection. */
static void expect_202_then_201_on_a_new_connection(void (*serve)(srv_t *)) {
    srv_t s;
    client_t c;
    srv_start(&s, serve);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 201);
    cr_assert_eq(hclient_connects(c.h), 2, "the connection was reused");
    srv_join(&s);
    client_close(&c, 2);
}

static void answers_twice(srv_t *s) {
    answer_then_201_on_a_new_connection(s, "HTTP/1.1 100 Continue\r\n\r\n" A202
                                           "HTTP/1.1 500 Unasked\r\n\r\n");
}

Test(hclient, an_interim_answer_is_skipped_and_a_second_answer_drops_the_connection,
     .timeout = 10) {
    expect_202_then_201_on_a_new_connection(answers_twice);
}

static void stays_silent(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    wait_fd(s->to_srv[0]);
    close(fd);
}

Test(hclient, silence_past_the_timeout_is_no_answer, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, stays_silent);
    client_open(&c, &s, 1);
    uint64_t t0 = mono_ns();
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 0);
    uint64_t waited = mono_ns() - t0;
    cr_assert(waited >= 900000000ull && waited < 5000000000ull, "waited %llu ns",
              (unsigned long long)waited);
    signal_fd(s.to_srv[1]);
    srv_join(&s);
    client_close(&c, 1);
}

/* An address on loopback where nobody listens (bound, then closed). */
static struct sockaddr_in closed_port(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    return a;
}

Test(hclient, a_refused_connect_is_answered_from_the_loop_as_never_sent, .timeout = 10) {
    srv_t s;
    client_t c;
    memset(&s, 0, sizeof s);
    s.addr = closed_port();
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), -ECONNREFUSED);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), -ECONNREFUSED);
    cr_assert_eq(hclient_connects(c.h), 2);
    int last = 0;
    cr_assert_eq(hclient_connect_failures(c.h, &last), 2);
    cr_assert_eq(last, ECONNREFUSED);
    client_close(&c, 2);
}

/* Sends again on every answer for ms: the answers (so connects) it got. */
static int resend_for(client_t *c, uint64_t ms) {
    uint64_t end = mono_ns() + ms * 1000000ull;
    int before = c->calls;
    while (mono_ns() < end) {
        int calls = c->calls;
        cr_assert_eq(hclient_send(c->h, REQ, strlen(REQ)), 0);
        while (c->calls == calls)
            event_base_loop(c->base, EVLOOP_ONCE);
        cr_assert(c->status < 0, "status %d: a connect that failed sent nothing", c->status);
    }
    return c->calls - before;
}

/* 300 ms of failing connects, answered after 1, 2, 4 .. 256 ms: 9 at most
 * (without the backoff, thousands). */
static void expect_backoff(struct sockaddr_in addr) {
    srv_t s;
    client_t c;
    memset(&s, 0, sizeof s);
    s.addr = addr;
    client_open(&c, &s, 5);
    int n = resend_for(&c, 300);
    cr_assert(n >= 2 && n <= 10, "%d connects in 300 ms", n);
    cr_assert_eq(hclient_connect_failures(c.h, NULL), (unsigned long)n);
    client_close(&c, n);
}

Test(hclient, refused_connects_back_off, .timeout = 10) {
    expect_backoff(closed_port());
}

Test(hclient, connects_that_fail_inside_connect_back_off, .timeout = 10) {
    /* The broadcast address fails in connect() itself (EACCES, ENETUNREACH),
     * as a connect without a free local port does (EADDRNOTAVAIL). */
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_BROADCAST), .sin_port = htons(9)};
    expect_backoff(a);
}

Test(hclient, a_connect_still_under_way_at_the_deadline_is_never_sent, .timeout = 10) {
    srv_t s;
    client_t c;
    memset(&s, 0, sizeof s);
    /* A listener whose accept queue is full drops the next SYN: the
     * connect stays under way. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    s.addr.sin_family = AF_INET;
    s.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&s.addr, sizeof s.addr), 0);
    socklen_t al = sizeof s.addr;
    getsockname(lfd, (struct sockaddr *)&s.addr, &al);
    cr_assert_eq(listen(lfd, 0), 0);
    int fill = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(fill, (struct sockaddr *)&s.addr, sizeof s.addr), 0);
    client_open(&c, &s, 1);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), -ETIMEDOUT);
    int last = 0;
    cr_assert_eq(hclient_connect_failures(c.h, &last), 1);
    cr_assert_eq(last, ETIMEDOUT);
    client_close(&c, 1);
    close(fill);
    close(lfd);
}

Test(hclient, cancel_answers_at_once_and_tells_whether_the_request_left, .timeout = 10) {
    srv_t s;
    client_t c;
    memset(&s, 0, sizeof s);
    s.addr = closed_port();
    client_open(&c, &s, 5);
    cr_assert_eq(hclient_send(c.h, REQ, strlen(REQ)), 0); /* connecting: nothing left */
    hclient_cancel(c.h);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.status, -ECANCELED);
    hclient_cancel(c.h); /* idle: no second answer */
    client_close(&c, 1);
}

static void holds_the_request(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    signal_fd(s->to_test[1]);
    wait_fd(s->to_srv[0]);
    close(fd);
}

Test(hclient, cancel_of_a_request_that_left_is_no_answer, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, holds_the_request);
    client_open(&c, &s, 5);
    cr_assert_eq(hclient_send(c.h, REQ, strlen(REQ)), 0);
    /* Run the loop (connect, send) until the server has the whole request. */
    struct pollfd pfd = {.fd = s.to_test[0], .events = POLLIN};
    do
        event_base_loop(c.base, EVLOOP_NONBLOCK);
    while (poll(&pfd, 1, 1) == 0);
    wait_fd(s.to_test[0]);
    hclient_cancel(c.h);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.status, 0);
    signal_fd(s.to_srv[1]);
    srv_join(&s);
    client_close(&c, 1);
}

/* A keep-alive answer (no Connection: close) whose FIN comes in the same
 * segment (MSG_MORE holds the bytes until close() adds the FIN to them). */
static void answers_with_a_fin(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    cr_assert_eq(send(fd, A202, strlen(A202), MSG_NOSIGNAL | MSG_MORE), (ssize_t)strlen(A202));
    close(fd);
    fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 1 << 20);
    close(fd);
}

Test(hclient, a_fin_with_a_keep_alive_answer_sends_the_next_request_on_a_new_connection,
     .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, answers_with_a_fin);
    client_open(&c, &s, 5);
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 202);
    /* At once, as the load generator does from its answer callback. */
    cr_assert_eq(roundtrip(&c, REQ, strlen(REQ)), 201, "the request went to the closed socket");
    cr_assert_eq(hclient_connects(c.h), 2);
    srv_join(&s);
    client_close(&c, 2);
}

static void answers_one(srv_t *s) {
    int fd = srv_accept(s);
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 1 << 20);
    close(fd);
}

Test(hclient, a_second_send_while_one_is_in_flight_is_refused, .timeout = 10) {
    srv_t s;
    client_t c;
    srv_start(&s, answers_one);
    client_open(&c, &s, 5);
    cr_assert_eq(hclient_send(c.h, REQ, strlen(REQ)), 0);
    errno = 0;
    cr_assert_eq(hclient_send(c.h, REQ, strlen(REQ)), -1);
    cr_assert_eq(errno, EBUSY);
    while (c.calls == 0)
        event_base_loop(c.base, EVLOOP_ONCE);
    cr_assert_eq(c.status, 202);
    srv_join(&s);
    client_close(&c, 1);
}

#define BIG_BODY (32u << 20)

static void reads_slowly(srv_t *s) {
    int fd = srv_accept(s);
    wait_fd(s->to_srv[0]); /* the client's socket is full by now */
    cr_assert_eq(srv_read(fd), 0);
    srv_write(fd, A202, 1 << 20);
    close(fd);
}

Test(hclient, a_request_larger_than_the_socket_goes_out_as_it_drains, .timeout = 20) {
    srv_t s;
    client_t c;
    srv_start(&s, reads_slowly);
    client_open(&c, &s, 10);
    char head[128];
    int hl = snprintf(head, sizeof head,
                      "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %u\r\n\r\n", BIG_BODY);
    char *req = xmalloc((size_t)hl + BIG_BODY);
    memcpy(req, head, (size_t)hl);
    memset(req + hl, 'x', BIG_BODY);
    cr_assert_eq(hclient_send(c.h, req, (size_t)hl + BIG_BODY), 0);
    memset(req, 0, (size_t)hl + BIG_BODY); /* the client kept its own copy */
    free(req);
    for (int i = 0; i < 5; i++)
        event_base_loop(c.base, EVLOOP_NONBLOCK);
    signal_fd(s.to_srv[1]);
    while (c.calls == 0)
        event_base_loop(c.base, EVLOOP_ONCE);
    cr_assert_eq(c.status, 202);
    srv_join(&s);
    client_close(&c, 1);
}

/* A 202 of exactly one read buffer (16384 bytes), an unasked 500 behind it
 * in the same write: the 500 must not become the next request's answer. */
static void answers_twice_past_the_buffer(srv_t *s) {
    char resp[16384 + 64];
    const char *head = "HTTP/1.1 202 Accepted\r\nContent-Length: 00000\r\n\r\n";
    size_t hl = strlen(head), body = 16384 - hl;
    snprintf(resp, sizeof resp, "HTTP/1.1 202 Accepted\r\nContent-Length: %05zu\r\n\r\n", body);
    memset(resp + hl, 'x', body);
    snprintf(resp + 16384, sizeof resp - 16384,
             "HTTP/1.1 500 Unasked\r\nContent-Length: 0\r\n\r\n");
    answer_then_201_on_a_new_connection(s, resp);
}

Test(hclient, a_second_answer_just_past_a_full_read_drops_the_connection, .timeout = 10) {
    expect_202_then_201_on_a_new_connection(answers_twice_past_the_buffer);
}

static void answers_then_garbage(srv_t *s) {
    answer_then_201_on_a_new_connection(s, A202 "\x01garbage");
}

Test(hclient, garbage_after_a_whole_answer_drops_the_connection, .timeout = 10) {
    expect_202_then_201_on_a_new_connection(answers_then_garbage);
}
