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
#define HTTP_MAX_INM 512 /* If-None-Match kept; a longer one matches nothing */
/* "Bearer " and a token of up to JWT_MAX_LEN (4096) bytes, with room. */
#define HTTP_MAX_AUTHZ 4160
/* Idempotency-Key bytes kept; a longer value is reported as over. */
#define HTTP_MAX_IDEM 80

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
    /* Conditionals, not NUL-terminated; NULL when absent. An If-None-Match
     * over HTTP_MAX_INM is "" (present, matching nothing, so a full answer);
     * two If-Modified-Since headers are absent (invalid, so ignored). */
    const char *if_none_match;
    size_t if_none_match_len;
    const char *if_modified_since;
    size_t if_modified_since_len;
    const char *last_event_id; /* Last-Event-ID (SSE resume), or NULL */
    size_t last_event_id_len;
    const char *authz; /* Authorization (repeats joined with ", "), or NULL */
    size_t authz_len;
    int authz_over; /* longer than HTTP_MAX_AUTHZ: authz holds a prefix */
    /* Idempotency-Key (repeats joined with ", "), or NULL; a value over
     * HTTP_MAX_IDEM bytes has idem_key_len HTTP_MAX_IDEM + 1 (its bytes
     * are then not all there). */
    const char *idem_key;
    size_t idem_key_len;
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
 * ("Allow: GET\r\n"). body is copied; HEAD gets its Content-Length only.
 * A 304 is sent with neither Content-Length nor body (RFC 9110 15.4.5).
 * len HTTP_LEN_UNKNOWN (a HEAD only): no Content-Length, the GET's is not
 * known (a stream). */
#define HTTP_LEN_UNKNOWN ((size_t)-1)
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

/* ---- streams (Server-Sent Events) ----
 * A stream answer has no Content-Length: its body runs until the connection
 * closes. Its bytes are chunks shared by every connection that sends them
 * (one rendering fanned out to many subscribers): a connection holds a
 * reference, never a copy, and at most HTTP_STREAM_QUEUE of them. While
 * streaming, the keep-alive and request deadlines do not apply, but a write
 * that stays blocked for body_timeout_ms closes the connection (a reader
 * that stopped reading is dropped, not buffered for). */
#define HTTP_STREAM_QUEUE 4
#define HTTP_STREAM_SNDBUF (64 * 1024) /* SO_SNDBUF of a stream's socket */
#define HTTP_CONN_SNDBUF (128 * 1024)  /* SO_SNDBUF of every other (the kernel doubles both) */

typedef struct http_chunk_s {
    _Atomic long refs;
    size_t len;
    char data[];
} http_chunk_t;
/* One reference, len bytes of data to fill. */
http_chunk_t *http_chunk_new(size_t len);
http_chunk_t *http_chunk_ref(http_chunk_t *k);
void http_chunk_unref(http_chunk_t *k);

/* Answers the current request with a 200 stream head (extra_headers as in
 * http_conn_reply). Pipelined requests after it are never read. */
void http_conn_stream_start(http_conn_t *c, const char *content_type, const char *extra_headers);
/* Queues k (takes a new reference). replace_unsent: if the newest queued
 * chunk has not begun to go out, k takes its place (a newer version makes
 * an unsent older one pointless). Returns 0, or -1 when the queue is full
 * (the reader is too slow: the caller closes the connection). */
int http_conn_stream_send(http_conn_t *c, http_chunk_t *k, int replace_unsent);
/* Chunks queued and not completely sent. */
int http_conn_stream_pending(const http_conn_t *c);
/* Output waits for the socket to take it (e.g. in on_close: the peer
 * stopped reading). */
int http_conn_write_blocked(const http_conn_t *c);

const struct sockaddr *http_conn_peer(const http_conn_t *c, socklen_t *len);
/* Owner data (e.g. the client-IP table entry). */
void http_conn_set_owner(http_conn_t *c, void *owner);
void *http_conn_owner(const http_conn_t *c);

/* The clock of the deadlines: CLOCK_MONOTONIC_COARSE, in ms. */
uint64_t http_now_ms(void);
/* Closes connections whose deadline is past. now_ms is http_now_ms(). */
void http_conns_sweep(http_conns_t *set, uint64_t now_ms);
/* Closes every connection not waiting for a deferred answer (draining). */
void http_conns_close_idle(http_conns_t *set);
/* Frees every connection (the loop has stopped), calling on_close. */
void http_conns_free(http_conns_t *set);

const char *http_reason(int status);

#endif
