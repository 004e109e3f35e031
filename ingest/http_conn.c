/* One HTTP/1.1 connection: socket I/O on libevent, parsing by http-parser,
 * strict framing, limits and deadlines. See http_conn.h for the contract. */
#include "ingest/http_conn.h"

#include <errno.h>
#include <event2/event.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdatomic.h>
#include <sys/sendfile.h>
#include <time.h>
#include <unistd.h>

#include "common/json.h"
#include "common/util.h"

/* Deadlines are seconds long and set several times per request: the coarse
 * clock (the kernel's last tick, read from the vDSO without a TSC read) is
 * exact enough and cheaper. The sweep compares with the same clock. */
uint64_t http_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Input is parsed as it arrives and only the pieces a handler needs are
 * kept (URL, a few header values, the body), so the input buffer only holds
 * bytes not parsed yet: pipelined requests waiting behind a deferred answer. */
#define IN_CAP 4096
#define OUT_INIT 1024
#define SENDFILE_CHUNK (1 << 20)
#define HNAME_CAP 32
#define TE_CAP 64
#define EXPECT_CAP 32
#define IMS_CAP 64  /* an HTTP-date is 29 bytes (IMF-fixdate), 37 at most */
#define LEID_CAP 64 /* Last-Event-ID: a version number, longer ones are ignored */

typedef enum {
    H_OTHER,
    H_TE,
    H_EXPECT,
    H_XFF,
    H_HOST,
    H_INM,
    H_IMS,
    H_LEID,
    H_AUTHZ,
    H_IDEM
} hdr_kind_t;
typedef enum { S_IDLE, S_HEADERS, S_BODY, S_DISPATCHED } req_state_t;

struct http_conn_s {
    /* Scalars first, buffers last: a vote touches every length below on
     * every request (on_message_begin resets them), and with thousands of
     * connections each scattered field would be a cache and TLB miss of its
     * own (they were spread over 20 KB, one length after each buffer). */
    int fd; /* -1 detached */
    req_state_t state;
    struct event *rev, *wev;
    http_conns_t *set;
    http_conn_t *prev, *next;
    const http_conn_cfg_t *cfg;
    void *owner;
    unsigned deferred : 1;    /* the handler answers later */
    unsigned in_process : 1;  /* inside conn_process: answers must not recurse */
    unsigned closing : 1;     /* close once the output is out */
    unsigned close_after : 1; /* set by the owner: close after this answer */
    unsigned peer_eof : 1;
    unsigned read_off : 1; /* read event deleted (input full or EOF) */
    unsigned wblocked : 1; /* write event added */
    unsigned broken : 1;   /* the socket failed: nothing more to send */
    unsigned hdrs_paused : 1;
    unsigned msg_done : 1;
    unsigned keep_alive : 1;
    unsigned head : 1;
    unsigned http10 : 1;
    unsigned value_started : 1;
    unsigned te_seen : 1, te_over : 1, xff_over : 1, xff_seen : 1, hname_over : 1;
    unsigned inm_seen : 1, inm_over : 1, ims_seen : 1, ims_over : 1;
    unsigned authz_seen : 1, authz_over : 1;
    unsigned idem_seen : 1, idem_over : 1;
    unsigned host_count : 2;
    unsigned prev_cr : 1;    /* framing scan: the last framing byte was CR */
    unsigned after_data : 1; /* framing scan: a chunk's data just ended */
    unsigned streaming : 1;  /* the answer is a stream (http_conn_stream_start) */
    unsigned leid_over : 1;
    hdr_kind_t hkind;
    uint64_t deadline; /* mono ms; 0 none */
    uint64_t nreq;
    size_t hdr_bytes;
    size_t trailer_bytes;  /* a chunked body's trailer fields: read, never used */
    const char *scan_from; /* chunked: framing bytes not scanned yet */
    int err_status;        /* set by a callback that failed the request */
    const char *err_code, *err_msg;

    /* lengths of the buffers below */
    size_t ilen, ioff;
    size_t url_len, body_len, hname_len, te_len, expect_len, xff_len;
    size_t inm_len, ims_len, authz_len, idem_len, leid_len;
    char *out;
    size_t olen, ocap, ooff;
    int file_fd;
    int sqn;
    off_t file_off;
    uint64_t file_left;
    size_t sq_off;                       /* bytes of sq[0] sent */
    http_chunk_t *sq[HTTP_STREAM_QUEUE]; /* stream chunks; sq[0] goes out first */
    http_parser parser;
    socklen_t peerlen;
    struct sockaddr_storage peer;

    /* buffers, in the order a vote fills them */
    char in[IN_CAP];
    char url[HTTP_MAX_TARGET + 1];
    char hname[HNAME_CAP];
    char body[HTTP_MAX_BODY];
    char te[TE_CAP];
    char expect[EXPECT_CAP];
    char xff[HTTP_MAX_XFF];
    char inm[HTTP_MAX_INM];
    char ims[IMS_CAP];
    char authz[HTTP_MAX_AUTHZ];
    char idem[HTTP_MAX_IDEM];
    char leid[LEID_CAP];
};

static void conn_process(http_conn_t *c);
static void conn_flush(http_conn_t *c);
static void conn_pump(http_conn_t *c);
static int conn_maybe_finish(http_conn_t *c);

/* ---- replies ---- */

const char *http_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void out_reserve(http_conn_t *c, size_t n) {
    if (c->olen + n <= c->ocap)
        return;
    if (c->ooff > 0) { /* slide the unsent tail down before growing */
        memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
        c->olen -= c->ooff;
        c->ooff = 0;
        if (c->olen + n <= c->ocap)
            return;
    }
    size_t cap = c->ocap ? c->ocap : OUT_INIT;
    while (cap < c->olen + n)
        cap *= 2;
    c->out = xrealloc(c->out, cap);
    c->ocap = cap;
}

static void out_add(http_conn_t *c, const void *p, size_t n) {
    out_reserve(c, n);
    memcpy(c->out + c->olen, p, n);
    c->olen += n;
}

static void out_str(http_conn_t *c, const char *s) {
    out_add(c, s, strlen(s));
}

static void out_uint(http_conn_t *c, uint64_t v) {
    char tmp[24];
    int i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    out_add(c, tmp + i, sizeof tmp - (size_t)i);
}

/* The request is answered: get ready for the next one on this connection. */
static void conn_answered(http_conn_t *c) {
    c->state = S_IDLE;
    c->msg_done = 0;
    c->head = 0; /* the next request's method is not known before its line */
    c->nreq++;
    if (!c->keep_alive || c->close_after)
        c->closing = 1;
    c->deadline = http_now_ms() + (uint64_t)c->cfg->keepalive_timeout_ms;
    if (c->deferred) {
        c->deferred = 0;
        if (!c->in_process) { /* an answer from outside the read path */
            conn_pump(c);
            conn_maybe_finish(c);
        }
    }
}

static void put_head(http_conn_t *c, int status, const char *ctype, const char *extra,
                     uint64_t len) {
    if (!c->keep_alive || c->close_after)
        c->closing = 1;
    out_reserve(c, 160);
    out_str(c, "HTTP/1.1 ");
    out_uint(c, (uint64_t)status);
    out_add(c, " ", 1);
    out_str(c, http_reason(status));
    if (ctype) {
        out_str(c, "\r\nContent-Type: ");
        out_str(c, ctype);
    }
    if (status != 304 && len != (uint64_t)HTTP_LEN_UNKNOWN) { /* a 304 has no content */
        out_str(c, "\r\nContent-Length: ");
        out_uint(c, len);
    }
    if (c->closing)
        out_str(c, "\r\nConnection: close");
    else if (c->http10)
        out_str(c, "\r\nConnection: keep-alive");
    out_str(c, "\r\n");
    if (extra)
        out_str(c, extra);
    out_str(c, "\r\n");
}

void http_conn_reply(http_conn_t *c, int status, const char *content_type,
                     const char *extra_headers, const void *body, size_t len) {
    tally_assert(c->state != S_IDLE); /* one answer per request */
    tally_assert(len != HTTP_LEN_UNKNOWN || c->head);
    if (status == 304)
        len = 0;
    put_head(c, status, content_type, extra_headers, len);
    if (!c->head && len)
        out_add(c, body, len);
    conn_answered(c);
}

void http_conn_reply_error(http_conn_t *c, int status, const char *code, const char *msg,
                           const char *extra_headers) {
    buf_t body = {0}; /* errors are off the hot path: one allocation is fine */
    json_put_error(&body, code, msg);
    http_conn_reply(c, status, "application/json", extra_headers, body.data, body.len);
    buf_free(&body);
}

void http_conn_send_file(http_conn_t *c, const char *content_type, const char *extra_headers,
                         int fd, uint64_t size) {
    put_head(c, 200, content_type, extra_headers, size);
    if (c->head || size == 0 || c->fd < 0) {
        close(fd);
    } else {
        c->file_fd = fd;
        c->file_off = 0;
        c->file_left = size;
    }
    conn_answered(c);
}

/* ---- streams ---- */

http_chunk_t *http_chunk_new(size_t len) {
    http_chunk_t *k = xmalloc(sizeof *k + len);
    atomic_init(&k->refs, 1);
    k->len = len;
    return k;
}

http_chunk_t *http_chunk_ref(http_chunk_t *k) {
    atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
    return k;
}

/* The last reference frees: acq_rel so that every other holder's reads of
 * the bytes happen before the free. */
void http_chunk_unref(http_chunk_t *k) {
    if (k && atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) == 1)
        free(k);
}

void http_conn_stream_start(http_conn_t *c, const char *content_type, const char *extra_headers) {
    tally_assert(c->state == S_DISPATCHED && !c->streaming);
    c->keep_alive = 0;
    out_reserve(c, 160);
    out_str(c, "HTTP/1.1 200 OK\r\nContent-Type: ");
    out_str(c, content_type);
    out_str(c, "\r\nConnection: close\r\n");
    if (extra_headers)
        out_str(c, extra_headers);
    out_str(c, "\r\n");
    c->streaming = 1;
    c->deadline = 0;
    /* Bound what the kernel buffers for a reader too (autotuning would let
     * a stalled one hold megabytes, times every subscriber): past this the
     * write blocks, and the write deadline drops the reader. */
    if (c->fd >= 0) {
        int sz = HTTP_STREAM_SNDBUF;
        setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    }
    c->ilen = c->ioff = 0; /* pipelined requests are dropped */
}

int http_conn_stream_send(http_conn_t *c, http_chunk_t *k, int replace_unsent) {
    tally_assert(c->streaming);
    if (c->fd < 0) { /* detached: the bytes go to the output, for tests */
        out_add(c, k->data, k->len);
        return 0;
    }
    if (c->broken)
        return -1;
    int last = c->sqn - 1;
    if (replace_unsent && last >= 0 && (last > 0 || c->sq_off == 0)) {
        http_chunk_unref(c->sq[last]);
        c->sq[last] = http_chunk_ref(k);
    } else {
        if (c->sqn == HTTP_STREAM_QUEUE)
            return -1;
        c->sq[c->sqn++] = http_chunk_ref(k);
    }
    if (!c->wblocked)
        conn_flush(c);
    return c->broken ? -1 : 0;
}

int http_conn_stream_pending(const http_conn_t *c) {
    return c->sqn;
}

int http_conn_write_blocked(const http_conn_t *c) {
    return c->wblocked;
}

void http_conn_defer(http_conn_t *c) {
    tally_assert(c->state == S_DISPATCHED && !c->deferred);
    c->deferred = 1;
    c->deadline = 0; /* the log's answer is bounded by the drain timeout */
}

void http_conn_close_after(http_conn_t *c) {
    c->close_after = 1;
}

/* ---- parser callbacks ---- */

/* Debian builds http-parser without HTTP_PARSER_STRICT, so after a CR it
 * takes any byte as the LF, and after chunk data any two bytes as the CRLF.
 * Line endings are checked here instead: in the header block and in chunked
 * framing (everything but the chunk data) a CR must be followed by LF, in
 * chunked framing an LF must follow a CR, and chunk data must be followed by
 * CRLF. 0, or -1 (the request failed with 400). */
static int fail(http_conn_t *c, int status, const char *code, const char *msg);
static int scan_framing(http_conn_t *c, const char *p, const char *end, int chunked) {
    if (!chunked) { /* the header block: only a CR needs a look */
        while (p < end) {
            if (c->prev_cr) {
                if (*p != '\n')
                    return fail(c, 400, "bad_request", "a CR not followed by LF");
                c->prev_cr = 0;
                p++;
                continue;
            }
            const char *cr = memchr(p, '\r', (size_t)(end - p));
            if (!cr)
                return 0;
            c->prev_cr = 1;
            p = cr + 1;
        }
        return 0;
    }
    for (; p < end; p++) {
        char ch = *p;
        if (c->after_data) {
            c->after_data = 0;
            if (ch != '\r')
                return fail(c, 400, "bad_chunk", "chunk data must be followed by CRLF");
        }
        if (c->prev_cr && ch != '\n')
            return fail(c, 400, "bad_request", "a CR not followed by LF");
        if (chunked && ch == '\n' && !c->prev_cr)
            return fail(c, 400, "bad_chunk", "a bare LF in the chunked framing");
        c->prev_cr = ch == '\r';
    }
    return 0;
}

/* tchar of RFC 9110 5.6.2 */
static int is_tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int fail(http_conn_t *c, int status, const char *code, const char *msg) {
    if (!c->err_status) {
        c->err_status = status;
        c->err_code = code;
        c->err_msg = msg;
    }
    return -1;
}

static int on_message_begin(http_parser *p) {
    http_conn_t *c = p->data;
    c->state = S_HEADERS;
    c->url_len = c->hname_len = c->te_len = c->expect_len = c->xff_len = c->body_len = 0;
    c->te_seen = c->te_over = c->xff_over = c->xff_seen = c->hname_over = 0;
    c->inm_seen = c->inm_over = c->ims_seen = c->ims_over = 0;
    c->inm_len = c->ims_len = 0;
    c->leid_len = 0;
    c->leid_over = 0;
    c->authz_seen = c->authz_over = 0;
    c->authz_len = 0;
    c->idem_seen = c->idem_over = 0;
    c->idem_len = 0;
    c->value_started = c->hdrs_paused = c->msg_done = c->head = 0;
    c->host_count = 0;
    c->prev_cr = c->after_data = 0;
    c->trailer_bytes = 0;
    c->hkind = H_OTHER;
    if (c->nreq > 0) /* the first request's deadline runs from the accept */
        c->deadline = http_now_ms() + (uint64_t)c->cfg->header_timeout_ms;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    c->head = p->method == HTTP_HEAD;
    if (c->url_len + len > HTTP_MAX_TARGET)
        return fail(c, 414, "uri_too_long", "the request target is over 4096 bytes");
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return 0;
}

/* A chunked body's trailer section (RFC 9110 6.5): its fields are never
 * merged into the header (an X-Forwarded-For, Authorization or
 * Idempotency-Key there would take effect unchecked), only bounded like
 * the header block. */
static int trailer_piece(http_conn_t *c, size_t len) {
    c->trailer_bytes += len;
    if (c->trailer_bytes > (size_t)c->cfg->max_header_bytes)
        return fail(c, 431, "header_too_large", "the chunked body's trailer fields are too large");
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    if (c->state != S_HEADERS)
        return trailer_piece(c, len);
    if (c->value_started) { /* a new header */
        c->value_started = 0;
        c->hname_len = 0;
        c->hname_over = 0;
    }
    for (size_t i = 0; i < len; i++)
        if (!is_tchar((unsigned char)at[i]))
            return fail(c, 400, "bad_header", "a header name holds a character not allowed");
    if (c->hname_len + len > HNAME_CAP) {
        c->hname_over = 1;
        return 0;
    }
    memcpy(c->hname + c->hname_len, at, len);
    c->hname_len += len;
    return 0;
}

static int name_is(const http_conn_t *c, const char *name) {
    size_t n = strlen(name);
    return !c->hname_over && c->hname_len == n && !strncasecmp(c->hname, name, n);
}

/* Appends a value piece to buf; a repeated header joins with ", ". */
static int append(char *buf, size_t cap, size_t *len, const char *at, size_t n, int sep) {
    if (sep && *len > 0) {
        if (*len + 2 > cap)
            return -1;
        memcpy(buf + *len, ", ", 2);
        *len += 2;
    }
    if (*len + n > cap)
        return -1;
    memcpy(buf + *len, at, n);
    *len += n;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    if (c->state != S_HEADERS)
        return trailer_piece(c, len);
    int first = !c->value_started;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)at[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return fail(c, 400, "bad_header", "a header value holds a control character");
    }
    if (first) {
        c->value_started = 1;
        c->hkind = name_is(c, "transfer-encoding")   ? H_TE
                   : name_is(c, "expect")            ? H_EXPECT
                   : name_is(c, "x-forwarded-for")   ? H_XFF
                   : name_is(c, "host")              ? H_HOST
                   : name_is(c, "if-none-match")     ? H_INM
                   : name_is(c, "if-modified-since") ? H_IMS
                   : name_is(c, "last-event-id")     ? H_LEID
                   : name_is(c, "authorization")     ? H_AUTHZ
                   : name_is(c, "idempotency-key")   ? H_IDEM
                                                     : H_OTHER;
    }
    switch (c->hkind) {
    case H_TE:
        c->te_seen = 1;
        if (!c->te_over && append(c->te, TE_CAP, &c->te_len, at, len, first) != 0)
            c->te_over = 1;
        break;
    case H_EXPECT:
        if (append(c->expect, EXPECT_CAP, &c->expect_len, at, len, first) != 0)
            return fail(c, 417, "expectation_failed", "only Expect: 100-continue is supported");
        break;
    case H_XFF:
        c->xff_seen = 1;
        if (!c->xff_over && append(c->xff, HTTP_MAX_XFF, &c->xff_len, at, len, first) != 0)
            c->xff_over = 1;
        break;
    case H_AUTHZ:
        c->authz_seen = 1;
        if (!c->authz_over && append(c->authz, HTTP_MAX_AUTHZ, &c->authz_len, at, len, first) != 0)
            c->authz_over = 1;
        break;
    case H_HOST:
        if (first && ++c->host_count > 1)
            return fail(c, 400, "bad_request", "more than one Host header");
        break;
    case H_INM: /* a list: repeated headers join with ", " */
        c->inm_seen = 1;
        if (!c->inm_over && append(c->inm, HTTP_MAX_INM, &c->inm_len, at, len, first) != 0)
            c->inm_over = 1;
        break;
    case H_IMS: /* one date: a second header makes it invalid, so ignored */
        if (first && c->ims_seen)
            c->ims_over = 1;
        c->ims_seen = 1;
        if (!c->ims_over && append(c->ims, IMS_CAP, &c->ims_len, at, len, 0) != 0)
            c->ims_over = 1;
        break;
    case H_LEID:
        if (!c->leid_over && append(c->leid, LEID_CAP, &c->leid_len, at, len, first) != 0)
            c->leid_over = 1;
        break;
    case H_IDEM:
        /* Repeated: joined with ", ", which no valid key holds. */
        c->idem_seen = 1;
        if (!c->idem_over && append(c->idem, HTTP_MAX_IDEM, &c->idem_len, at, len, first) != 0)
            c->idem_over = 1;
        break;
    case H_OTHER: break;
    }
    return 0;
}

/* Whether a field value is tok (any case), with optional whitespace around
 * it (RFC 9110 5.5: OWS is not part of the value). */
static int value_is(const char *s, size_t n, const char *tok) {
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n == strlen(tok) && !strncasecmp(s, tok, n);
}

static int on_headers_complete(http_parser *p) {
    http_conn_t *c = p->data;
    if (p->http_major != 1)
        return fail(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
    c->http10 = p->http_minor == 0;
    if (c->te_seen && (p->flags & F_CONTENTLENGTH))
        return fail(c, 400, "bad_framing", "Content-Length together with Transfer-Encoding");
    if (c->te_seen && (c->te_over || !value_is(c->te, c->te_len, "chunked")))
        return fail(c, 501, "unsupported_transfer_coding",
                    "the only transfer coding served is a lone chunked");
    if (!c->http10 && c->host_count == 0)
        return fail(c, 400, "bad_request", "an HTTP/1.1 request needs a Host header");
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > HTTP_MAX_BODY)
        return fail(c, 413, "body_too_large", "the body is over 4096 bytes");
    int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length);
    if (c->expect_len) {
        if (!value_is(c->expect, c->expect_len, "100-continue"))
            return fail(c, 417, "expectation_failed", "only Expect: 100-continue is supported");
        if (has_body && !c->http10)
            out_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    c->state = S_BODY;
    if (has_body)
        c->deadline = http_now_ms() + (uint64_t)c->cfg->body_timeout_ms;
    /* Stop so that the header's size is checked before the body is read. */
    c->hdrs_paused = 1;
    http_parser_pause(p, 1);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    if (p->flags & F_CHUNKED) {
        if (scan_framing(c, c->scan_from, at, 1) != 0)
            return -1;
        c->scan_from = at + len;
        /* http-parser counts the chunk down before calling back. */
        if (p->content_length == 0)
            c->after_data = 1;
    }
    if (c->body_len + len > HTTP_MAX_BODY)
        return fail(c, 413, "body_too_large", "the body is over 4096 bytes");
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p) {
    http_conn_t *c = p->data;
    c->msg_done = 1;
    c->keep_alive = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1); /* one request at a time */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- request processing ---- */

static void parse_error(http_conn_t *c, enum http_errno e) {
    int status = 400;
    const char *code = "bad_request", *msg = http_errno_description(e);
    if (c->err_status) {
        status = c->err_status;
        code = c->err_code;
        msg = c->err_msg;
    } else if (e == HPE_INVALID_METHOD) {
        status = 501;
        code = "not_implemented";
        msg = "unknown method";
    } else if (e == HPE_HEADER_OVERFLOW) {
        status = 431;
        code = "header_too_large";
    } else if (e == HPE_INVALID_TRANSFER_ENCODING) {
        status = 501;
        code = "unsupported_transfer_coding";
    } else if (e == HPE_INVALID_VERSION) {
        status = 505;
        code = "http_version_not_supported";
    }
    c->keep_alive = 0;
    if (c->state == S_IDLE) /* the error came before the request began */
        c->state = S_HEADERS;
    c->ilen = c->ioff = 0; /* nothing after a framing error can be trusted */
    http_conn_reply_error(c, status, code, msg, NULL);
    c->closing = 1;
}

static void dispatch(http_conn_t *c) {
    http_req_t r = {0};
    r.method = c->parser.method;
    r.head = c->head;
    const char *u = c->url;
    size_t ul = c->url_len;
    c->url[ul] = '\0';
    struct http_parser_url pu;
    if (ul && u[0] != '/') { /* absolute-form or "*" */
        http_parser_url_init(&pu);
        if (http_parser_parse_url(u, ul, 0, &pu) == 0 && (pu.field_set & (1 << UF_PATH))) {
            u += pu.field_data[UF_PATH].off;
            ul = pu.field_data[UF_PATH].len;
        } else {
            u = "/";
            ul = 1;
        }
    }
    for (size_t i = 0; i < ul; i++)
        if (u[i] == '?' || u[i] == '#') {
            ul = i;
            break;
        }
    r.path = u;
    r.path_len = ul;
    r.body = c->body;
    r.body_len = c->body_len;
    if (c->xff_seen && !c->xff_over) {
        r.xff = c->xff;
        r.xff_len = c->xff_len;
    }
    if (c->inm_seen) { /* too long to keep: present, matching nothing */
        r.if_none_match = c->inm_over ? "" : c->inm;
        r.if_none_match_len = c->inm_over ? 0 : c->inm_len;
    }
    if (c->ims_seen && !c->ims_over) {
        r.if_modified_since = c->ims;
        r.if_modified_since_len = c->ims_len;
    }
    if (c->leid_len && !c->leid_over) {
        r.last_event_id = c->leid;
        r.last_event_id_len = c->leid_len;
    }
    if (c->authz_seen) {
        r.authz = c->authz;
        r.authz_len = c->authz_len;
        r.authz_over = c->authz_over;
    }
    if (c->idem_seen) {
        r.idem_key = c->idem;
        r.idem_key_len = c->idem_over ? HTTP_MAX_IDEM + 1 : c->idem_len;
    }
    c->state = S_DISPATCHED;
    c->cfg->handler(c->cfg->arg, c, &r);
}

/* Parses buffered input while answers can go out in order. */
static void conn_process(http_conn_t *c) {
    if (c->in_process)
        return;
    c->in_process = 1;
    while (!c->closing && !c->deferred && !c->streaming && !c->wblocked && c->file_fd < 0 &&
           c->ioff < c->ilen) {
        int in_hdr = c->state == S_IDLE || c->state == S_HEADERS;
        int chunked = !in_hdr && (c->parser.flags & F_CHUNKED);
        const char *from = c->in + c->ioff;
        c->scan_from = from;
        size_t n = http_parser_execute(&c->parser, &parser_settings, from, c->ilen - c->ioff);
        c->ioff += n;
        if (in_hdr)
            c->hdr_bytes += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if ((e == HPE_OK || e == HPE_PAUSED) && (in_hdr || chunked) &&
            scan_framing(c, in_hdr ? from : c->scan_from, from + n, chunked) != 0) {
            parse_error(c, HPE_UNKNOWN);
            break;
        }
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            if (c->hdrs_paused) {
                c->hdrs_paused = 0;
                /* The parser stopped on the block's last LF, taken leniently. */
                if (c->prev_cr && c->in[c->ioff] != '\n') {
                    fail(c, 400, "bad_request", "a CR not followed by LF");
                    parse_error(c, HPE_UNKNOWN);
                    break;
                }
                /* That LF is fed again with the body: let the chunk scan
                 * take it as the end of a line. */
                c->prev_cr = c->in[c->ioff] == '\n';
                if (c->hdr_bytes + 1 > (size_t)c->cfg->max_header_bytes) {
                    parse_error(c, HPE_HEADER_OVERFLOW);
                    break;
                }
            }
            if (c->msg_done) {
                c->hdr_bytes = 0;
                /* The LF the framing scan last saw ended this request: a
                 * CRLF before the next request line is a blank line to
                 * ignore (RFC 9112 2.2), not a CR after a CR. */
                c->prev_cr = c->after_data = 0;
                if (c->parser.upgrade) /* nothing after an Upgrade is HTTP/1.1 */
                    c->keep_alive = 0;
                dispatch(c);
            }
            continue;
        }
        if (e != HPE_OK) {
            parse_error(c, e);
            break;
        }
        if (in_hdr && c->state != S_IDLE && c->hdr_bytes > (size_t)c->cfg->max_header_bytes) {
            parse_error(c, HPE_HEADER_OVERFLOW);
            break;
        }
        if (c->parser.upgrade) {
            c->closing = 1;
            break;
        }
    }
    if (c->ioff == c->ilen) {
        c->ioff = c->ilen = 0;
    } else if (c->ioff > 0 && c->ilen == IN_CAP) {
        memmove(c->in, c->in + c->ioff, c->ilen - c->ioff);
        c->ilen -= c->ioff;
        c->ioff = 0;
    }
    c->in_process = 0;
    if (c->read_off && !c->peer_eof && !c->closing && c->ilen < IN_CAP && c->rev) {
        event_add(c->rev, NULL);
        c->read_off = 0;
    }
}

/* ---- socket I/O ---- */

static void conn_destroy(http_conn_t *c, int notify) {
    if (c->set) {
        if (c->prev)
            c->prev->next = c->next;
        else
            c->set->head = c->next;
        if (c->next)
            c->next->prev = c->prev;
        c->set->n--;
    }
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    if (c->fd >= 0)
        close(c->fd);
    if (c->file_fd >= 0)
        close(c->file_fd);
    for (int i = 0; i < c->sqn; i++)
        http_chunk_unref(c->sq[i]);
    if (notify && c->cfg->on_close)
        c->cfg->on_close(c->cfg->arg, c);
    free(c->out);
    free(c);
}

/* 1 when the connection was destroyed. */
static int conn_maybe_finish(http_conn_t *c) {
    if (c->deferred || c->fd < 0)
        return 0;
    int out_pending = !c->broken && (c->ooff < c->olen || c->file_fd >= 0 || c->sqn > 0);
    /* After EOF, whatever could be answered has been: the rest is a request
     * cut short. */
    if (c->broken || ((c->closing || c->peer_eof) && !out_pending)) {
        conn_destroy(c, 1);
        return 1;
    }
    return 0;
}

static void set_write_interest(http_conn_t *c, int on) {
    if (on && !c->wblocked) {
        event_add(c->wev, NULL);
        c->wblocked = 1;
        /* A client that does not read its answers gets the body deadline. */
        c->deadline = http_now_ms() + (uint64_t)c->cfg->body_timeout_ms;
    } else if (!on && c->wblocked) {
        event_del(c->wev);
        c->wblocked = 0;
        if (c->state == S_IDLE)
            c->deadline = http_now_ms() + (uint64_t)c->cfg->keepalive_timeout_ms;
        else if (c->streaming)
            c->deadline = 0; /* a stream has no deadline while it drains */
    }
}

/* After a send or sendfile n that wrote nothing: 1 to try again (EINTR);
 * else 0, with write interest on when the socket is full, or the
 * connection broken (an error, or a file that shrank under us: sendfile 0). */
static int send_again(http_conn_t *c, ssize_t n) {
    if (n < 0 && errno == EINTR)
        return 1;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        set_write_interest(c, 1);
    else
        c->broken = 1;
    return 0;
}

static void conn_flush(http_conn_t *c) {
    if (c->fd < 0 || c->broken)
        return;
    while (c->ooff < c->olen) {
        ssize_t n = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (n > 0) {
            c->ooff += (size_t)n;
            continue;
        }
        if (send_again(c, n))
            continue;
        return;
    }
    c->ooff = c->olen = 0;
    while (c->file_fd >= 0 && c->file_left > 0) {
        size_t chunk = c->file_left > SENDFILE_CHUNK ? SENDFILE_CHUNK : (size_t)c->file_left;
        ssize_t n = sendfile(c->fd, c->file_fd, &c->file_off, chunk);
        if (n > 0) {
            c->file_left -= (uint64_t)n;
            continue;
        }
        if (send_again(c, n))
            continue;
        return;
    }
    if (c->file_fd >= 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    while (c->sqn > 0) {
        http_chunk_t *k = c->sq[0];
        ssize_t n = send(c->fd, k->data + c->sq_off, k->len - c->sq_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->sq_off += (size_t)n;
            if (c->sq_off < k->len)
                continue;
            http_chunk_unref(k);
            memmove(c->sq, c->sq + 1, sizeof c->sq[0] * (size_t)(c->sqn - 1));
            c->sqn--;
            c->sq_off = 0;
            continue;
        }
        if (send_again(c, n))
            continue;
        return;
    }
    set_write_interest(c, 0);
}

/* Parses and answers buffered requests, and sends, for as long as that
 * makes progress: parsing stops behind a file being sent, and a file that
 * went out at once (sendfile did not block, so no write event will come)
 * must let the pipelined requests behind it go on. */
static void conn_pump(http_conn_t *c) {
    do {
        conn_process(c);
        conn_flush(c);
    } while (!c->wblocked && !c->broken && !c->closing && !c->deferred && !c->in_process &&
             c->file_fd < 0 && c->ioff < c->ilen);
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    http_conn_t *c = arg;
    conn_flush(c);
    if (!c->wblocked && !c->broken)
        conn_pump(c); /* input that waited for the output to drain */
    conn_maybe_finish(c);
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    http_conn_t *c = arg;
    if (c->ilen == IN_CAP && c->ioff > 0) {
        memmove(c->in, c->in + c->ioff, c->ilen - c->ioff);
        c->ilen -= c->ioff;
        c->ioff = 0;
    }
    if (c->ilen == IN_CAP) { /* paused with a full buffer: wait for room */
        event_del(c->rev);
        c->read_off = 1;
        return;
    }
    ssize_t n = recv(fd, c->in + c->ilen, IN_CAP - c->ilen, 0);
    if (n > 0) {
        c->ilen += (size_t)n;
        if (c->streaming) /* nothing after a stream's request is read */
            c->ilen = c->ioff = 0;
    } else if (n == 0) {
        c->peer_eof = 1;
        event_del(c->rev);
        c->read_off = 1;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        return;
    } else {
        c->broken = 1;
        c->peer_eof = 1;
        event_del(c->rev);
        c->read_off = 1;
    }
    if (!c->broken && !c->closing)
        conn_pump(c);
    conn_maybe_finish(c);
}

static http_conn_t *conn_alloc(const http_conn_cfg_t *cfg) {
    http_conn_t *c = xmalloc(sizeof *c);
    /* Only the bookkeeping is cleared; the buffers are written before read. */
    memset(c, 0, offsetof(http_conn_t, hname));
    c->cfg = cfg;
    c->fd = -1;
    c->file_fd = -1;
    c->out = NULL;
    c->olen = c->ocap = c->ooff = 0;
    c->ilen = c->ioff = 0;
    c->sqn = 0;
    c->sq_off = 0;
    c->leid_len = 0;
    c->url_len = c->body_len = c->hname_len = c->te_len = c->expect_len = c->xff_len = 0;
    c->authz_len = 0;
    c->keep_alive = 1;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->deadline = http_now_ms() + (uint64_t)cfg->header_timeout_ms;
    return c;
}

http_conn_t *http_conn_open(struct event_base *base, http_conns_t *set, int fd,
                            const struct sockaddr *peer, socklen_t peerlen,
                            const http_conn_cfg_t *cfg) {
    http_conn_t *c = conn_alloc(cfg);
    c->fd = fd;
    if (peerlen > sizeof c->peer)
        peerlen = sizeof c->peer;
    memcpy(&c->peer, peer, peerlen);
    c->peerlen = peerlen;
    c->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, c);
    c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write, c);
    if (!c->rev || !c->wev || event_add(c->rev, NULL) != 0) {
        conn_destroy(c, 0);
        return NULL;
    }
    c->set = set;
    c->next = set->head;
    if (set->head)
        set->head->prev = c;
    set->head = c;
    set->n++;
    return c;
}

http_conn_t *http_conn_new_detached(const http_conn_cfg_t *cfg) {
    return conn_alloc(cfg);
}

long http_conn_feed(http_conn_t *c, const void *data, size_t len) {
    if (c->closing)
        return -1;
    if (c->ilen == IN_CAP && c->ioff > 0) {
        memmove(c->in, c->in + c->ioff, c->ilen - c->ioff);
        c->ilen -= c->ioff;
        c->ioff = 0;
    }
    size_t room = IN_CAP - c->ilen;
    size_t n = len < room ? len : room;
    memcpy(c->in + c->ilen, data, n);
    c->ilen += n;
    conn_process(c);
    return (long)n;
}

const char *http_conn_output(const http_conn_t *c, size_t *len) {
    *len = c->olen - c->ooff;
    return c->out ? c->out + c->ooff : "";
}

void http_conn_output_clear(http_conn_t *c) {
    c->olen = c->ooff = 0;
}

int http_conn_closing(const http_conn_t *c) {
    return c->closing || c->broken;
}

void http_conn_free(http_conn_t *c) {
    if (c)
        conn_destroy(c, 0);
}

void http_conn_close(http_conn_t *c) {
    c->closing = 1;
    c->broken = 1; /* drop unsent output too */
    if (!c->in_process)
        conn_maybe_finish(c);
}

const struct sockaddr *http_conn_peer(const http_conn_t *c, socklen_t *len) {
    *len = c->peerlen;
    return (const struct sockaddr *)&c->peer;
}

void http_conn_set_owner(http_conn_t *c, void *owner) {
    c->owner = owner;
}
void *http_conn_owner(const http_conn_t *c) {
    return c->owner;
}

/* ---- the loop's connections ---- */

void http_conns_sweep(http_conns_t *set, uint64_t now) {
    http_conn_t *next;
    for (http_conn_t *c = set->head; c; c = next) {
        next = c->next;
        if (c->deferred || c->deadline == 0 || now < c->deadline)
            continue;
        if ((c->state == S_HEADERS || c->state == S_BODY) && !c->wblocked && !c->closing) {
            c->keep_alive = 0;
            http_conn_reply_error(c, 408, "request_timeout",
                                  c->state == S_HEADERS ? "the header did not arrive in time"
                                                        : "the body did not arrive in time",
                                  NULL);
            /* Best effort: one non-blocking write, then close. */
            conn_flush(c);
        }
        conn_destroy(c, 1);
    }
}

void http_conns_close_idle(http_conns_t *set) {
    http_conn_t *next;
    for (http_conn_t *c = set->head; c; c = next) {
        next = c->next;
        c->close_after = 1;
        if (c->streaming ||
            (!c->deferred && c->state == S_IDLE && c->ooff == c->olen && c->file_fd < 0))
            conn_destroy(c, 1);
    }
}

void http_conns_free(http_conns_t *set) {
    while (set->head)
        conn_destroy(set->head, 1);
}
