/* hclient: one keep-alive HTTP/1.1 connection, one request at a time.
 *
 * Per request the steady state costs a send(), the epoll_wait that reports
 * the answer and one recv(): the read event stays registered for the life
 * of the socket, write interest is asked for only while a request does not
 * fit in the socket, and the deadline is a common timeout of the base (O(1)
 * to add and delete, no syscall). */
#include "bench/hclient.h"

#include <errno.h>
#include <event2/event.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"

/* Reads land in one buffer per thread: the parser keeps no pointer into it
 * between reads, so connections need none of their own. */
#define HCLIENT_READ_BUF 16384
static _Thread_local char read_buf[HCLIENT_READ_BUF];

/* After a failed connect the answer waits this long, doubling with each
 * failure in a row: near ephemeral-port exhaustion (EADDRNOTAVAIL) or with
 * the server gone (ECONNREFUSED) every connect fails at once, and answering
 * at once would make the caller's next send connect again in a busy loop. */
#define HCLIENT_BACKOFF_MIN_MS 1u
#define HCLIENT_BACKOFF_MAX_MS 1000u

struct hclient_s {
    struct event_base *base;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct timeval timeout; /* a common timeout of base */
    hclient_answer_fn on_answer;
    void *arg;
    int fd;                        /* -1: not connected */
    int connecting;                /* connect() under way: the first writable event tells */
    int busy;                      /* a request in flight */
    size_t left;                   /* bytes of it the socket took: 0, the server cannot have it */
    int err;                       /* why it failed, answered from the loop (on_timeout) */
    struct event *rev, *wev, *tev; /* reads (while connected), output left, deadline */
    http_parser parser;
    int status;     /* of the response being parsed */
    int complete;   /* the response is complete */
    int keep_alive; /* and the connection may carry the next request */
    int extra;      /* bytes came after the response */
    char *out;      /* what is left to send of the request */
    size_t out_off, out_len, out_cap;
    unsigned long connects;
    unsigned long connect_failures;
    int connect_errno;   /* of the latest failure */
    unsigned backoff_ms; /* the wait of the next failure's answer; 0 after a connect */
};

/* ---- parsing ---- */

static int on_message_begin(http_parser *p) {
    hclient_t *h = p->data;
    if (h->complete)
        h->extra = 1; /* a second response to one request */
    return 0;
}

static int on_headers_complete(http_parser *p) {
    hclient_t *h = p->data;
    if (!h->complete) /* not an unasked second response's */
        h->status = p->status_code;
    return 0;
}

static int on_message_complete(http_parser *p) {
    hclient_t *h = p->data;
    /* 1xx is interim (100 Continue): the answer is still to come. */
    if (h->status >= 100 && h->status < 200)
        return 0;
    if (!h->complete) {
        h->complete = 1;
        h->keep_alive = http_should_keep_alive(p) != 0;
    }
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/* ---- connection ---- */

static void hc_close(hclient_t *h) {
    if (h->fd < 0)
        return;
    event_del(h->rev);
    event_del(h->wev);
    close(h->fd);
    h->fd = -1;
    h->connecting = 0;
    h->out_off = h->out_len = 0;
}

static void hc_answer(hclient_t *h, int status) {
    event_del(h->tev);
    h->busy = 0;
    h->on_answer(h->arg, status);
}

/* The answer to a request that failed with err: 0 if any of it left (the
 * server may have acted on it), else -err (it cannot have). */
static int hc_lost(const hclient_t *h, int err) {
    return h->left ? 0 : -(err ? err : EIO);
}

/* Closes the connection and answers from the loop after wait_ms (0: on the
 * next turn), as promised: the caller may be in the middle of its own
 * bookkeeping, and a failed connect must not be tried again at once. */
static void hc_fail_later(hclient_t *h, int err, unsigned wait_ms) {
    hc_close(h);
    h->err = err;
    if (wait_ms) {
        struct timeval tv = {(time_t)(wait_ms / 1000), (suseconds_t)(wait_ms % 1000) * 1000};
        event_add(h->tev, &tv);
    } else {
        event_active(h->tev, EV_TIMEOUT, 1);
    }
}

/* Counts a failed connect; returns how long its answer waits. */
static unsigned hc_connect_failed(hclient_t *h, int err) {
    h->connect_failures++;
    h->connect_errno = err;
    h->backoff_ms = h->backoff_ms ? h->backoff_ms * 2 : HCLIENT_BACKOFF_MIN_MS;
    if (h->backoff_ms > HCLIENT_BACKOFF_MAX_MS)
        h->backoff_ms = HCLIENT_BACKOFF_MAX_MS;
    return h->backoff_ms;
}

/* The connect under way failed (refused, unreachable): nothing of the
 * request left; answered after the backoff. */
static void hc_connect_error(hclient_t *h, int err) {
    hc_fail_later(h, err, hc_connect_failed(h, err));
}

/* Sends what is left of the request. 0, or -1 when the connection is dead. */
static int hc_flush(hclient_t *h) {
    while (h->out_off < h->out_len) {
        ssize_t n = send(h->fd, h->out + h->out_off, h->out_len - h->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            h->out_off += (size_t)n;
            h->left += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!event_pending(h->wev, EV_WRITE, NULL))
                event_add(h->wev, NULL);
            return 0;
        } else {
            return -1;
        }
    }
    h->out_off = h->out_len = 0;
    event_del(h->wev);
    return 0;
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
    hclient_t *h = arg;
    ssize_t n = recv(fd, read_buf, sizeof read_buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (!h->busy) {
        /* The server closed an idle connection, or spoke unasked. */
        hc_close(h);
        return;
    }
    if (n <= 0) {
        int err = n < 0 ? errno : ECONNRESET;
        if (h->connecting) { /* the read event can tell a refusal first */
            hc_connect_error(h, err);
            return;
        }
        if (n == 0) /* the end of a body that runs to the close */
            http_parser_execute(&h->parser, &parser_settings, NULL, 0);
        hc_close(h);
        hc_answer(h, h->complete ? h->status : hc_lost(h, err));
        return;
    }
    http_parser_execute(&h->parser, &parser_settings, read_buf, (size_t)n);
    if (h->complete) {
        /* A full buffer may have left the start of a second response in
         * the socket, where the next request would take it for its own. */
        char next;
        if ((size_t)n == sizeof read_buf && recv(fd, &next, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
            h->extra = 1;
        /* The server's FIN came with the answer (EV_CLOSED: epoll saw it
         * with the bytes; it would be the next read's 0), although the
         * answer did not say Connection: close: the next request would go
         * to a dead socket and get no answer. */
        int closed = (what & EV_CLOSED) != 0;
        /* Unsent request bytes, a second response or bytes that are not
         * HTTP (the parser failed past the answer) would be taken for the
         * next request's: start that one on a fresh connection. */
        if (!h->keep_alive || closed || h->extra || h->out_off < h->out_len ||
            HTTP_PARSER_ERRNO(&h->parser) != HPE_OK)
            hc_close(h);
        hc_answer(h, h->status);
    } else if (HTTP_PARSER_ERRNO(&h->parser) != HPE_OK) {
        hc_close(h);
        hc_answer(h, hc_lost(h, EPROTO));
    }
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    hclient_t *h = arg;
    if (h->connecting) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err != 0) {
            hc_connect_error(h, err);
            return;
        }
        h->connecting = 0;
        h->backoff_ms = 0;
    }
    if (hc_flush(h) != 0) {
        int err = errno;
        hc_close(h);
        hc_answer(h, hc_lost(h, err));
    }
}

/* The deadline, or the answer to a failure that hc_fail_later put off. */
static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    hclient_t *h = arg;
    if (!h->busy)
        return;
    int err = h->err;
    if (!err) {
        err = ETIMEDOUT;
        if (h->connecting) /* the connect never finished: a failure too */
            hc_connect_failed(h, err);
    }
    hc_close(h); /* a late answer must not pass for the next one's */
    hc_answer(h, hc_lost(h, err));
}

/* Opens the socket and starts connecting. 0 under way or done, 1 the
 * connect failed (errno; an answer < 0), -1 no socket (errno). */
static int hc_connect(hclient_t *h) {
    int fd = socket(h->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (h->addr.ss_family == AF_INET || h->addr.ss_family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    h->fd = fd;
    h->connects++;
    /* EV_CLOSED: a FIN that comes with an answer shows with its bytes. */
    event_assign(h->rev, h->base, fd, EV_READ | EV_CLOSED | EV_PERSIST, on_read, h);
    event_assign(h->wev, h->base, fd, EV_WRITE | EV_PERSIST, on_write, h);
    if (connect(fd, (const struct sockaddr *)&h->addr, h->addrlen) != 0) {
        if (errno != EINPROGRESS)
            return 1;
        h->connecting = 1;
        event_add(h->wev, NULL);
    } else {
        h->backoff_ms = 0;
    }
    event_add(h->rev, NULL);
    return 0;
}

/* ---- API ---- */

int hclient_resolve(const char *host, int port, struct sockaddr_storage *addr, socklen_t *addrlen,
                    char *err, size_t esz) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(err, esz, "cannot resolve %s: %s", host, rc ? gai_strerror(rc) : "no address");
        return -1;
    }
    memcpy(addr, ai->ai_addr, ai->ai_addrlen);
    *addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

hclient_t *hclient_new(struct event_base *base, const struct sockaddr *addr, socklen_t addrlen,
                       int timeout_s, hclient_answer_fn on_answer, void *arg) {
    tally_assert(addrlen <= sizeof(struct sockaddr_storage));
    hclient_t *h = xcalloc(1, sizeof *h);
    h->base = base;
    memcpy(&h->addr, addr, addrlen);
    h->addrlen = addrlen;
    struct timeval tv = {timeout_s, 0};
    h->timeout = *event_base_init_common_timeout(base, &tv);
    h->on_answer = on_answer;
    h->arg = arg;
    h->fd = -1;
    h->rev = event_new(base, -1, 0, on_read, h);
    h->wev = event_new(base, -1, 0, on_write, h);
    h->tev = evtimer_new(base, on_timeout, h);
    tally_assert(h->rev && h->wev && h->tev);
    return h;
}

int hclient_send(hclient_t *h, const char *req, size_t len) {
    if (h->busy) {
        errno = EBUSY;
        return -1;
    }
    int rc = h->fd < 0 ? hc_connect(h) : 0;
    if (rc < 0)
        return -1;
    int err = rc > 0 ? errno : 0;
    h->busy = 1;
    http_parser_init(&h->parser, HTTP_RESPONSE);
    h->parser.data = h;
    h->status = h->complete = h->keep_alive = h->extra = 0;
    h->left = 0;
    h->err = 0;
    event_add(h->tev, &h->timeout);
    if (rc > 0) {
        hc_connect_error(h, err);
        return 0;
    }
    size_t sent = 0;
    while (!h->connecting && sent < len) {
        ssize_t n = send(h->fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            h->left = sent;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            /* e.g. reset by a server that closed the idle connection */
            hc_fail_later(h, errno, 0);
            return 0;
        }
    }
    if (sent == len)
        return 0;
    /* Keep the rest until the socket (or the connect) lets it go. */
    if (h->out_cap < len - sent) {
        h->out_cap = len - sent;
        h->out = xrealloc(h->out, h->out_cap);
    }
    memcpy(h->out, req + sent, len - sent);
    h->out_off = 0;
    h->out_len = len - sent;
    if (!h->connecting)
        event_add(h->wev, NULL);
    return 0;
}

unsigned long hclient_connects(const hclient_t *h) {
    return h->connects;
}

unsigned long hclient_connect_failures(const hclient_t *h, int *last_errno) {
    if (last_errno)
        *last_errno = h->connect_failures ? h->connect_errno : 0;
    return h->connect_failures;
}

void hclient_cancel(hclient_t *h) {
    if (!h || !h->busy)
        return;
    int err = h->err ? h->err : ECANCELED;
    hc_close(h);
    hc_answer(h, hc_lost(h, err));
}

void hclient_free(hclient_t *h) {
    if (!h)
        return;
    hc_close(h);
    event_free(h->rev);
    event_free(h->wev);
    event_free(h->tev);
    free(h->out);
    free(h);
}
