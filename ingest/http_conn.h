/* tally's HTTP/1.1 server connection: one accepted socket on one libevent
 * loop, parsed by http-parser (nodejs/http-parser, Debian's
 * libhttp-parser-dev), answered from preformatted headers.
 *
 * A connection is registered once: a persistent read event for its whole
 * life, a persistent write event added only while a write would block. Its
 * buffers (input, URL, body, output) belong to it and are reused by every
 * request on it, so the hot path does not allocate. Requests are handled one
 * at a time in arrival order: while a handler's answer is outstanding
 * (http_conn_defer, a vote waiting for the log) the parser is paused and
 * pipelined bytes wait in the input buffer, so answers leave in order.
 *
 * Framing is strict (RFC 9112): duplicate or malformed Content-Length,
 * Content-Length with Transfer-Encoding and bad chunks are 400; a transfer
 * coding other than a lone "chunked" is 501; a header block over
 * max_header_bytes is 431, a request target over HTTP_MAX_TARGET is 414, a
 * version other than 1.0/1.1 is 505, a method http-parser does not know is
 * 501, a body over HTTP_MAX_BODY is 413 (checked while reading). Every error
 * is the JSON {"error","message"} body and closes the connection.
 *
 * Deadlines, not inactivity timeouts: the header of a request must arrive
 * within header_timeout_ms of its first byte (of the accept for the first),
 * its body within body_timeout_ms of the header's end, and an idle keep-alive
 * connection is closed after keepalive_timeout_ms. http_conns_sweep enforces
 * them; the owner calls it from a timer.
 *
 * @locality every function runs on the connection's loop thread. */
#ifndef TALLY_HTTP_CONN_H
#define TALLY_HTTP_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;

#define HTTP_MAX_BODY 4096
#define HTTP_MAX_TARGET 4096
#define HTTP_MAX_XFF 512
#define HTTP_MAX_AUTH 1024

typedef struct http_conn_s http_conn_t;

/* One parsed request, valid until the handler's answer is written.
 * method is http-parser's enum http_method. */
typedef struct {
    int method;
    int head;         /* HEAD: answered like GET without the body */
    const char *path; /* the target's path, query stripped, not decoded */
    size_t path_len;
    const char *body;
    size_t body_len;
    const char *xff; /* X-Forwarded-For (all such headers joined), or NULL */
    size_t xff_len;
    /* Authorization, or NULL when absent, repeated or over HTTP_MAX_AUTH */
    const char *authorization;
    size_t authorization_len;
} http_req_t;

/* What the owner plugs in; arg is passed back. handler must answer (reply,
 * reply_error, send_file) or call http_conn_defer and answer later.
 * on_close runs once, when the connection is gone (fd already closed). */
typedef struct {
    int max_header_bytes;
    int header_timeout_ms, body_timeout_ms, keepalive_timeout_ms;
    void (*handler)(void *arg, http_conn_t *c, const http_req_t *req);
    void (*on_close)(void *arg, http_conn_t *c);
    void *arg;
} http_conn_cfg_t;

/* The connections of one loop: a list the sweep walks. */
typedef struct {
    http_conn_t *head;
    size_t n;
} http_conns_t;

/* Takes fd (non-blocking) and registers it with base. peer is copied.
 * Returns NULL (fd closed) if libevent refuses. cfg must outlive it. */
http_conn_t *http_conn_open(struct event_base *base, http_conns_t *set, int fd,
                            const struct sockaddr *peer, socklen_t peerlen,
                            const http_conn_cfg_t *cfg);
/* A connection without a socket, for tests and the fuzzer: feed it bytes,
 * read what it would have sent. */
http_conn_t *http_conn_new_detached(const http_conn_cfg_t *cfg);
/* Parses data as if it had been read from the socket (copied; at most the
 * free input space is taken). Returns the bytes taken, or -1 once the
 * connection is closing. */
long http_conn_feed(http_conn_t *c, const void *data, size_t len);
/* Detached connections: the bytes answered so far; clear drops them. */
const char *http_conn_output(const http_conn_t *c, size_t *len);
void http_conn_output_clear(http_conn_t *c);
int http_conn_closing(const http_conn_t *c);
/* Frees a detached connection (or any, closing it first, without on_close). */
void http_conn_free(http_conn_t *c);

/* Answers the current request. extra_headers is NULL or complete lines
 * ("Allow: GET\r\n"). body is copied; HEAD gets its Content-Length only. */
void http_conn_reply(http_conn_t *c, int status, const char *content_type,
                     const char *extra_headers, const void *body, size_t len);
/* {"error":code,"message":msg}; msg may hold any bytes, it is escaped so the
 * body is valid UTF-8 JSON. */
void http_conn_reply_error(http_conn_t *c, int status, const char *code, const char *msg,
                           const char *extra_headers);
/* 200 with the regular file fd (taken, closed when sent) of size bytes. */
void http_conn_send_file(http_conn_t *c, const char *content_type, const char *extra_headers,
                         int fd, uint64_t size);
/* The handler will answer later (from another event on this loop). */
void http_conn_defer(http_conn_t *c);
/* Close after the current answer (e.g. the server is draining). */
void http_conn_close_after(http_conn_t *c);
/* Closes now unless a deferred answer is outstanding (then after it). */
void http_conn_close(http_conn_t *c);

const struct sockaddr *http_conn_peer(const http_conn_t *c, socklen_t *len);
/* Owner data (e.g. the client-IP table entry). */
void http_conn_set_owner(http_conn_t *c, void *owner);
void *http_conn_owner(const http_conn_t *c);

/* Closes connections whose deadline is past. now_ms is mono_ms(). */
void http_conns_sweep(http_conns_t *set, uint64_t now_ms);
/* Closes every connection not waiting for a deferred answer (draining). */
void http_conns_close_idle(http_conns_t *set);
/* Frees every connection (the loop has stopped), calling on_close. */
void http_conns_free(http_conns_t *set);

const char *http_reason(int status);

#endif
