#include "ingest/ingest.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/ids.h"
#include "common/json.h"
#include "common/util.h"
#include "ingest/vote.h"
#include "log/record.h"

#define MAX_BODY 4096
#define HTTP_BODY_LIMIT (1 << 20) /* past this libevent answers 413 itself */
#define DRAIN_TIMEOUT_MS 15000

typedef struct worker_s worker_t;

/* A vote waiting for the log. Owned by the worker from creation to reply. */
typedef struct pending_s {
    struct evhttp_request *req;
    worker_t *w;
    vlog_err_t err;
    struct pending_s *next;
    char poll[ID_MAX_LEN + 1];
    char option[ID_MAX_LEN + 1];
} pending_t;

struct worker_s {
    ingest_t *in;
    int id;
    pthread_t thread;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    struct event *done_ev;  /* the log answered: reply */
    struct event *stop_ev;  /* stop accepting, drain */
    uint64_t spread;        /* spreads voter-less votes over partitions */
    size_t inflight;        /* loop thread only */
    int draining;
    uint64_t drain_started;
    pthread_mutex_t mu;     /* guards done */
    pending_t *done;
};

struct ingest_s {
    const tally_config_t *conf;
    vlog_t *log;
    char *static_dir;
    int listen_fd;
    int port;
    int nworkers;
    worker_t *workers;
    struct event *sig_int, *sig_term, *tick_ev;
    int (*tick)(void *arg);
    void *tick_arg;
    void (*stats_fill)(void *arg, ingest_t *in, void *buf);
    void *stats_arg;
    _Atomic uint64_t accepted, rejected, unavailable;
};

/* ---- replies ---- */

static void reply_json(struct evhttp_request *req, int status, const char *reason,
                       const char *body) {
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, reason, b);
    evbuffer_free(b);
}

static const char *reason_of(int status) {
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

void ingest_reply_error(struct evhttp_request *req, int status, const char *code,
                        const char *msg) {
    buf_t b = {0};
    json_put_error(&b, code, msg);
    reply_json(req, status, reason_of(status), b.data);
    buf_free(&b);
}

static void reply_unavailable(worker_t *w, struct evhttp_request *req, const char *why) {
    atomic_fetch_add(&w->in->unavailable, 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
    ingest_reply_error(req, 503, "log_unavailable", why);
}

static void reject(worker_t *w, struct evhttp_request *req, int status, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void reject(worker_t *w, struct evhttp_request *req, int status, const char *code,
                   const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    atomic_fetch_add(&w->in->rejected, 1);
    ingest_reply_error(req, status, code, msg);
}

/* ---- the log's answers ---- */

void ingest_ack(void *opaque, vlog_err_t err) {
    pending_t *pd = opaque;
    worker_t *w = pd->w;
    pd->err = err;
    pthread_mutex_lock(&w->mu);
    int was_empty = w->done == NULL;
    pd->next = w->done;
    w->done = pd;
    pthread_mutex_unlock(&w->mu);
    if (was_empty)
        event_active(w->done_ev, EV_READ, 0);
}

static void maybe_exit(worker_t *w) {
    if (w->draining && w->inflight == 0)
        event_base_loopexit(w->base, NULL);
}

static void on_done(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    worker_t *w = arg;
    pthread_mutex_lock(&w->mu);
    pending_t *list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    /* The list is newest first; answer in arrival order. */
    pending_t *rev = NULL;
    while (list) {
        pending_t *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    char body[256];
    while (rev) {
        pending_t *pd = rev;
        rev = rev->next;
        if (pd->err == VLOG_OK) {
            atomic_fetch_add(&w->in->accepted, 1);
            snprintf(body, sizeof body, "{\"status\":\"accepted\",\"poll\":\"%s\",\"option\":\"%s\"}",
                     pd->poll, pd->option);
            reply_json(pd->req, 202, "Accepted", body);
        } else {
            reply_unavailable(w, pd->req, vlog_err2str(pd->err));
        }
        free(pd);
        w->inflight--;
    }
    maybe_exit(w);
}

/* ---- votes ---- */

static void handle_vote(worker_t *w, struct evhttp_request *req, const char *poll_id,
                        size_t poll_len) {
    const tally_config_t *c = w->in->conf;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        reject(w, req, 405, "method_not_allowed", "use POST to cast a vote");
        return;
    }
    const poll_conf_t *poll = config_poll(c, poll_id, poll_len);
    if (!poll) {
        reject(w, req, 404, "unknown_poll", "no poll '%.*s'", (int)(poll_len > 64 ? 64 : poll_len),
               poll_id);
        return;
    }
    if (w->draining) {
        reply_unavailable(w, req, "server is shutting down");
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > MAX_BODY) {
        reject(w, req, 413, "body_too_large", "the body is %zu bytes; the limit is %d", len,
               MAX_BODY);
        return;
    }
    char body[MAX_BODY];
    evbuffer_copyout(in, body, len);
    vote_record_t v;
    vote_error_t verr;
    char voter[VOTE_SCRATCH_MIN];
    if (vote_parse(poll, body, len, now_ms(), &v, voter, sizeof voter, &verr) != 0) {
        reject(w, req, verr.status, verr.code, "%s", verr.message);
        return;
    }
    uint8_t rec[RECORD_MAX_LEN];
    size_t rlen = record_encode(&v, rec);
    tally_assert(rlen > 0); /* every field was validated above */
    int partition = record_partition(&v, vlog_partitions(w->in->log), w->spread++);
    pending_t *pd = xmalloc(sizeof *pd);
    pd->req = req;
    pd->w = w;
    pd->next = NULL;
    snprintf(pd->poll, sizeof pd->poll, "%s", poll->id);
    snprintf(pd->option, sizeof pd->option, "%.*s", (int)v.option_len, v.option);
    w->inflight++;
    vlog_err_t err = vlog_append(w->in->log, partition, rec, rlen, pd);
    if (err != VLOG_OK) {
        w->inflight--;
        free(pd);
        reply_unavailable(w, req, err == VLOG_FULL ? "too many votes in flight, retry shortly"
                                                   : vlog_err2str(err));
    }
}

static void on_request(struct evhttp_request *req, void *arg) {
    worker_t *w = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path)
        path = "/";
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    static const char prefix[] = "/v1/polls/", suffix[] = "/votes";
    size_t plen = strlen(path);
    if (!strncmp(path, prefix, sizeof prefix - 1) && plen > sizeof prefix - 1 + sizeof suffix - 1 &&
        !strcmp(path + plen - (sizeof suffix - 1), suffix)) {
        const char *id = path + sizeof prefix - 1;
        size_t idlen = plen - (sizeof prefix - 1) - (sizeof suffix - 1);
        if (memchr(id, '/', idlen) == NULL) {
            handle_vote(w, req, id, idlen);
            return;
        }
    }
    if (!strcmp(path, "/healthz")) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            reject(w, req, 405, "method_not_allowed", "use GET");
            return;
        }
        char why[512];
        if (w->in->log && vlog_health(w->in->log, why, sizeof why) != TALLY_OK)
            ingest_reply_error(req, 503, "log_unavailable", why);
        else
            reply_json(req, 200, "OK", "{\"status\":\"ok\"}");
        return;
    }
    if (!strcmp(path, "/v1/stats") && w->in->stats_fill) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            reject(w, req, 405, "method_not_allowed", "use GET");
            return;
        }
        buf_t b = {0};
        w->in->stats_fill(w->in->stats_arg, w->in, &b);
        reply_json(req, 200, "OK", b.data ? b.data : "{}");
        buf_free(&b);
        return;
    }
    if (w->in->static_dir) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            reject(w, req, 405, "method_not_allowed", "the results are read-only");
            return;
        }
        static_serve(req, w->in->static_dir, path);
        return;
    }
    reject(w, req, 404, "not_found", "no such resource");
}

/* ---- lifecycle ---- */

static void begin_drain(worker_t *w) {
    if (w->draining)
        return;
    w->draining = 1;
    w->drain_started = mono_ms();
    if (w->bound) {
        evhttp_del_accept_socket(w->http, w->bound);
        w->bound = NULL;
    }
    maybe_exit(w);
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    begin_drain(arg);
}

void ingest_stop(ingest_t *in) {
    for (int i = 0; i < in->nworkers; i++)
        event_active(in->workers[i].stop_ev, EV_READ, 0);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)what;
    log_info("ingest: %s received: no new connections, answering votes in flight",
             sig == SIGINT ? "SIGINT" : "SIGTERM");
    ingest_stop(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    ingest_t *in = arg;
    if (in->tick && in->tick(in->tick_arg))
        ingest_stop(in);
    for (int i = 0; i < in->nworkers; i++) {
        worker_t *w = &in->workers[i];
        /* A log that never answers must not hold shutdown forever. */
        if (w->draining && mono_ms() - w->drain_started > DRAIN_TIMEOUT_MS) {
            log_error("ingest: %zu votes still unanswered after %d ms; exiting", w->inflight,
                      DRAIN_TIMEOUT_MS);
            event_base_loopexit(w->base, NULL);
        }
    }
}

static int bind_listen(const char *hostport, int *port_out, char *errstr, size_t esz) {
    char host[CONFIG_LISTEN_HOST_MAX], port[8];
    char why[512];
    int portnum;
    if (config_parse_listen(hostport, host, sizeof host, &portnum, why, sizeof why) != TALLY_OK) {
        snprintf(errstr, esz, "server.listen: %s", why);
        return -1;
    }
    snprintf(port, sizeof port, "%d", portnum);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(errstr, esz, "server.listen %s: %s", hostport, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0 ||
        evutil_make_socket_nonblocking(fd) != 0) {
        snprintf(errstr, esz, "server.listen %s: %s", hostport, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

ingest_t *ingest_new(const tally_config_t *c, const char *static_dir, char *errstr, size_t esz) {
    static int threads_ready;
    if (!threads_ready) {
        evthread_use_pthreads(); /* event_active() from the log's thread */
        threads_ready = 1;
    }
    ingest_t *in = xcalloc(1, sizeof *in);
    in->conf = c;
    in->static_dir = static_dir ? xstrdup(static_dir) : NULL;
    in->listen_fd = bind_listen(c->listen, &in->port, errstr, esz);
    if (in->listen_fd < 0) {
        ingest_free(in);
        return NULL;
    }
    in->nworkers = c->server_threads;
    in->workers = xcalloc((size_t)in->nworkers, sizeof *in->workers);
    for (int i = 0; i < in->nworkers; i++) {
        worker_t *w = &in->workers[i];
        w->in = in;
        w->id = i;
        pthread_mutex_init(&w->mu, NULL);
        /* The changelist folds a connection's add/del of read and write
         * interest into one epoll_ctl per loop turn. */
        struct event_config *ec = event_config_new();
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        w->base = event_base_new_with_config(ec);
        event_config_free(ec);
        w->http = evhttp_new(w->base);
        evhttp_set_gencb(w->http, on_request, w);
        evhttp_set_max_body_size(w->http, HTTP_BODY_LIMIT);
        evhttp_set_max_headers_size(w->http, 16384);
        evhttp_set_timeout(w->http, 60);
        /* Let every method reach on_request so that 405 is JSON too. */
        evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                                EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                                EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
        /* Each loop accepts on its own dup of the socket, so that one loop
         * closing its listener leaves the others listening. */
        int fd = dup(in->listen_fd);
        w->bound = fd >= 0 ? evhttp_accept_socket_with_handle(w->http, fd) : NULL;
        w->done_ev = event_new(w->base, -1, 0, on_done, w);
        w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
        if (!w->base || !w->http || !w->bound || !w->done_ev || !w->stop_ev) {
            snprintf(errstr, esz, "ingest: cannot set up event loop %d", i);
            ingest_free(in);
            return NULL;
        }
    }
    worker_t *w0 = &in->workers[0];
    in->sig_int = evsignal_new(w0->base, SIGINT, on_signal, in);
    in->sig_term = evsignal_new(w0->base, SIGTERM, on_signal, in);
    in->tick_ev = event_new(w0->base, -1, EV_PERSIST, on_tick, in);
    struct timeval tv = {0, 200000};
    event_add(in->sig_int, NULL);
    event_add(in->sig_term, NULL);
    event_add(in->tick_ev, &tv);
    return in;
}

void ingest_set_log(ingest_t *in, vlog_t *log) { in->log = log; }

void ingest_set_tick(ingest_t *in, int (*tick)(void *), void *arg) {
    in->tick = tick;
    in->tick_arg = arg;
}

void ingest_set_stats(ingest_t *in, void (*fill)(void *, ingest_t *, void *), void *arg) {
    in->stats_fill = fill;
    in->stats_arg = arg;
}

int ingest_port(const ingest_t *in) { return in->port; }

static void *worker_main(void *arg) {
    worker_t *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

int ingest_run(ingest_t *in) {
    tally_assert(in->log);
    for (int i = 1; i < in->nworkers; i++)
        if (pthread_create(&in->workers[i].thread, NULL, worker_main, &in->workers[i]) != 0)
            tally_assert(!"cannot start an HTTP thread");
    event_base_dispatch(in->workers[0].base);
    /* Worker 0 has drained; make sure the others do too. */
    ingest_stop(in);
    for (int i = 1; i < in->nworkers; i++)
        pthread_join(in->workers[i].thread, NULL);
    return 0;
}

void ingest_free(ingest_t *in) {
    if (!in)
        return;
    if (in->sig_int)
        event_free(in->sig_int);
    if (in->sig_term)
        event_free(in->sig_term);
    if (in->tick_ev)
        event_free(in->tick_ev);
    for (int i = 0; i < in->nworkers; i++) {
        worker_t *w = &in->workers[i];
        if (w->done_ev)
            event_free(w->done_ev);
        if (w->stop_ev)
            event_free(w->stop_ev);
        if (w->http)
            evhttp_free(w->http);
        if (w->base)
            event_base_free(w->base);
        pthread_mutex_destroy(&w->mu);
    }
    free(in->workers);
    if (in->listen_fd >= 0)
        close(in->listen_fd);
    free(in->static_dir);
    free(in);
}

ingest_stats_t ingest_stats(const ingest_t *in) {
    ingest_stats_t s = {atomic_load(&in->accepted), atomic_load(&in->rejected),
                        atomic_load(&in->unavailable)};
    return s;
}
