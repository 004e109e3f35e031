/* ingest's setup and lifecycle: one event loop per server.threads, each with
 * its own SO_REUSEPORT listener; accepting (with the connection caps and a
 * pause, not a spin, at EMFILE); the done queue that brings the log's acks
 * back to the connection's loop; signals and the drain. The HTTP layer is
 * http_conn.c, the handlers routes.c. */
#include "ingest/ingest.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "ingest/ingest_int.h"

#define DRAIN_TIMEOUT_MS 15000
#define ACCEPT_BATCH 64
#define ACCEPT_RETRY_MS 100 /* after EMFILE/ENFILE or at the connection cap */
#define WARN_INTERVAL_MS 10000
#define SWEEP_MS 250
#define CLIENT_SWEEP_MS 10000 /* forget idle clients of the limits table */

/* ---- the log's answers ---- */

void ingest_ack(void *opaque, vlog_err_t err) {
    conn_ctx_t *x = opaque;
    worker_t *w = x->w;
    x->err = err;
    pthread_mutex_lock(&w->mu);
    int was_empty = w->done == NULL;
    x->next_done = w->done;
    w->done = x;
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
    conn_ctx_t *list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    /* The list is newest first; answer in arrival order. */
    conn_ctx_t *rev = NULL;
    while (list) {
        conn_ctx_t *n = list->next_done;
        list->next_done = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        conn_ctx_t *x = rev;
        rev = rev->next_done;
        routes_answer_vote(x); /* may close x's connection and free x */
    }
    maybe_exit(w);
}

/* ---- accepting ---- */

static void warn_limited(worker_t *w, const char *fmt, const char *what) {
    uint64_t now = mono_ms();
    if (w->warned_ms && now - w->warned_ms < WARN_INTERVAL_MS) {
        w->warn_suppressed++;
        return;
    }
    log_warn(fmt, w->id, what, (unsigned long long)w->warn_suppressed);
    w->warned_ms = now;
    w->warn_suppressed = 0;
}

static void accept_pause(worker_t *w) {
    if (w->accept_paused)
        return;
    w->accept_paused = 1;
    event_del(w->accept_ev);
    struct timeval tv = {0, ACCEPT_RETRY_MS * 1000};
    event_add(w->resume_ev, &tv);
}

static void accept_resume(worker_t *w) {
    if (!w->accept_paused || w->draining || w->listen_fd < 0)
        return;
    w->accept_paused = 0;
    event_del(w->resume_ev);
    event_add(w->accept_ev, NULL);
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    accept_resume(arg);
}

static void on_conn_close(void *arg, http_conn_t *c) {
    worker_t *w = arg;
    conn_ctx_t *x = http_conn_owner(c);
    sse_unsubscribe(w, x);
    limits_conn_del(w->in->clients, x->ip);
    free(x);
    atomic_fetch_sub(&w->in->nconns, 1);
    atomic_fetch_sub(&w->in->vote_conns, 1);
    /* A slot is free: a listener paused at the cap may go on. */
    accept_resume(w);
}

/* A best-effort answer on a socket we will not keep. */
static void refuse(int fd, int status, const char *code, const char *msg) {
    char body[256], resp[512];
    int bl = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}", code, msg);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
                     "%d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s",
                     status, http_reason(status), bl, body);
    ssize_t rc = send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)rc;
    close(fd);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg) {
    (void)what;
    worker_t *w = arg;
    ingest_t *in = w->in;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (atomic_load(&in->nconns) >= in->conf->server_max_connections) {
            warn_limited(w, "ingest[%d]: %s; not accepting for now (%llu warnings suppressed)",
                         "server.max_connections reached");
            accept_pause(w);
            return;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
                return;
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays
             * queued; retry on a timer instead of spinning on it. */
            warn_limited(w, "ingest[%d]: accept: %s; pausing (%llu warnings suppressed)",
                         strerror(errno));
            accept_pause(w);
            return;
        }
        conn_ctx_t *x = xcalloc(1, sizeof *x);
        x->w = w;
        if (limits_addr_from_sockaddr((struct sockaddr *)&ss, x->ip) != 0 ||
            limits_conn_add(in->clients, x->ip) != 0) {
            free(x);
            refuse(fd, 429, "too_many_connections",
                   "this client holds server.max_connections_per_ip connections");
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        atomic_fetch_add(&in->nconns, 1);
        atomic_fetch_add(&in->vote_conns, 1);
        http_conn_t *c =
            http_conn_open(w->base, &w->conns, fd, (struct sockaddr *)&ss, sl, &w->conn_cfg);
        if (!c) {
            limits_conn_del(in->clients, x->ip);
            atomic_fetch_sub(&in->nconns, 1);
            atomic_fetch_sub(&in->vote_conns, 1);
            free(x);
            continue;
        }
        x->conn = c;
        http_conn_set_owner(c, x);
    }
}

/* ---- lifecycle ---- */

static void begin_drain(worker_t *w) {
    if (w->draining)
        return;
    w->draining = 1;
    w->drain_started = mono_ms();
    event_del(w->accept_ev);
    event_del(w->resume_ev);
    if (w->listen_fd >= 0) {
        close(w->listen_fd);
        w->listen_fd = -1;
    }
    http_conns_close_idle(&w->conns);
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

static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    worker_t *w = arg;
    http_conns_sweep(&w->conns, http_now_ms());
    /* A log that never answers must not hold shutdown forever. */
    if (w->draining && mono_ms() - w->drain_started > DRAIN_TIMEOUT_MS) {
        log_error("ingest[%d]: %zu votes still unanswered after %d ms; exiting", w->id, w->inflight,
                  DRAIN_TIMEOUT_MS);
        event_base_loopexit(w->base, NULL);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    ingest_t *in = arg;
    if (in->tick && in->tick(in->tick_arg))
        ingest_stop(in);
    uint64_t now = mono_ms();
    if (now - in->swept_ms >= CLIENT_SWEEP_MS) {
        limits_sweep(in->clients, now);
        in->swept_ms = now;
    }
}

/* One listener on hostport, SO_REUSEPORT when several threads each bind one
 * (a lone thread leaves it off, so a second server on the port fails to bind
 * rather than sharing it). Port 0 picks one, which *port_io then holds for
 * the next threads' listeners. */
int ingest_bind_listen(const char *key, const char *hostport, int reuseport, int *port_io,
                       char *errstr, size_t esz) {
    char host[CONFIG_LISTEN_HOST_MAX], port[16], why[512];
    int portnum;
    if (config_parse_listen(hostport, host, sizeof host, &portnum, why, sizeof why) != TALLY_OK) {
        snprintf(errstr, esz, "%s: %s", key, why);
        return -1;
    }
    snprintf(port, sizeof port, "%d", *port_io > 0 ? *port_io : portnum);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(errstr, esz, "%s %s: %s", key, hostport, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1, sndbuf = HTTP_CONN_SNDBUF;
    /* Accepted sockets inherit the listener's send buffer: a client that
     * sends requests and never reads the answers fills this much, then its
     * requests wait and the write deadline drops it (autotuned, the kernel
     * would hold up to net.ipv4.tcp_wmem's 4 MB for it until keep-alive
     * runs out). */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(errstr, esz, "%s %s: %s", key, hostport, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port_io = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static int worker_init(ingest_t *in, worker_t *w, int id, char *errstr, size_t esz) {
    const tally_config_t *c = in->conf;
    w->in = in;
    w->id = id;
    w->listen_fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    w->conn_cfg = (http_conn_cfg_t){
        .max_header_bytes = c->server_max_header_bytes,
        .header_timeout_ms = c->server_header_timeout_ms,
        .body_timeout_ms = c->server_body_timeout_ms,
        .keepalive_timeout_ms = c->server_keepalive_timeout_ms,
        .handler = routes_handle,
        .on_close = on_conn_close,
        .arg = w,
    };
    w->base = event_base_new();
    if (!w->base) {
        snprintf(errstr, esz, "ingest: cannot set up event loop %d", id);
        return -1;
    }
    w->listen_fd = ingest_bind_listen("server.listen", c->listen, c->server_threads > 1, &in->port,
                                      errstr, esz);
    if (w->listen_fd < 0)
        return -1;
    w->accept_ev = event_new(w->base, w->listen_fd, EV_READ | EV_PERSIST, on_accept, w);
    w->resume_ev = evtimer_new(w->base, on_resume, w);
    w->done_ev = event_new(w->base, -1, 0, on_done, w);
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->sweep_ev = event_new(w->base, -1, EV_PERSIST, on_sweep, w);
    struct timeval sweep = {0, SWEEP_MS * 1000};
    if (!w->accept_ev || !w->resume_ev || !w->done_ev || !w->stop_ev || !w->sweep_ev ||
        event_add(w->accept_ev, NULL) != 0 || event_add(w->sweep_ev, &sweep) != 0 ||
        sse_worker_init(w) != 0) {
        snprintf(errstr, esz, "ingest: cannot set up event loop %d", id);
        return -1;
    }
    return 0;
}

/* The [auth] key files: read and checked once here, so that a missing or
 * short key is a usage error before anything is bound. */
static int auth_load(const tally_config_t *c, jwt_keys_t **jwt, voter_hmac_t **vk, char *errstr,
                     size_t esz) {
    *jwt = NULL;
    *vk = NULL;
    if (jwt_keys_load(c, jwt, errstr, esz) != TALLY_OK)
        return -1;
    if (voter_hmac_load(c->auth_voter_id_key_file, vk, errstr, esz) != TALLY_OK) {
        jwt_keys_free(*jwt);
        *jwt = NULL;
        return -1;
    }
    return 0;
}

int ingest_check_config(const tally_config_t *c, char *errstr, size_t esz) {
    limits_cidr_t *v = NULL;
    int n = 0;
    int rc = limits_cidrs_parse(c->server_trusted_proxies, &v, &n, errstr, esz);
    free(v);
    jwt_keys_t *jwt;
    voter_hmac_t *vk;
    if (rc == 0 && (rc = auth_load(c, &jwt, &vk, errstr, esz)) == 0) {
        jwt_keys_free(jwt);
        voter_hmac_free(vk);
    }
    return rc;
}

ingest_t *ingest_new(const tally_config_t *c, const char *static_dir, char *errstr, size_t esz) {
    static int threads_ready;
    if (!threads_ready) {
        evthread_use_pthreads();  /* event_active() from the log's thread */
        signal(SIGPIPE, SIG_IGN); /* sendfile() to a closed peer */
        threads_ready = 1;
    }
    ingest_t *in = xcalloc(1, sizeof *in);
    in->conf = c;
    in->static_dir = static_dir ? xstrdup(static_dir) : NULL;
    if (limits_cidrs_parse(c->server_trusted_proxies, &in->trusted, &in->ntrusted, errstr, esz) !=
        0) {
        ingest_free(in);
        return NULL;
    }
    in->clients =
        limits_table_new(c->server_max_connections_per_ip, c->limits_ip_rate, c->limits_ip_burst);
    routes_init();
    sse_hub_init(in);
    if (auth_load(c, &in->jwt, &in->voter_key, errstr, esz) != 0) {
        ingest_free(in);
        return NULL;
    }
    if (c->limits_voter_rate > 0)
        in->voters = limits_voters_new(c->limits_voter_rate, c->limits_voter_burst, 0);
    in->nworkers = c->server_threads;
    in->workers = xcalloc((size_t)in->nworkers, sizeof *in->workers);
    for (int i = 0; i < in->nworkers; i++) {
        if (worker_init(in, &in->workers[i], i, errstr, esz) != 0) {
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

void ingest_set_starting(ingest_t *in, int starting) {
    atomic_store_explicit(&in->starting, starting, memory_order_release);
}

void ingest_set_log(ingest_t *in, vlog_t *log) {
    if (in->log && in->log != log)
        vlog_set_clients(in->log, NULL);
    in->log = log;
    if (log)
        vlog_set_clients(log, &in->vote_conns);
}

void ingest_set_catalog(ingest_t *in, ingest_catalog_fn *fn, void *arg, int remote) {
    in->catalog = fn;
    in->catalog_arg = arg;
    in->catalog_remote = remote;
}

void ingest_set_tick(ingest_t *in, int (*tick)(void *), void *arg) {
    in->tick = tick;
    in->tick_arg = arg;
}

void ingest_set_stats(ingest_t *in, void (*fill)(void *, ingest_t *, buf_t *), void *arg) {
    in->stats_fill = fill;
    in->stats_arg = arg;
}

void ingest_enable_sse(ingest_t *in) {
    in->sse_on = 1;
}

void ingest_set_ready(ingest_t *in, int (*ready)(void *, char *, size_t), void *arg) {
    in->ready = ready;
    in->ready_arg = arg;
}

int ingest_port(const ingest_t *in) {
    return in->port;
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    char name[16];
    snprintf(name, sizeof name, "http%d", w->id);
    thread_name(name);
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
    for (int i = 0; in->workers && i < in->nworkers; i++) {
        worker_t *w = &in->workers[i];
        if (!w->in)
            continue;
        http_conns_free(&w->conns);
        struct event *evs[] = {w->accept_ev, w->resume_ev, w->done_ev, w->stop_ev, w->sweep_ev};
        for (size_t k = 0; k < sizeof evs / sizeof evs[0]; k++)
            if (evs[k])
                event_free(evs[k]);
        if (w->listen_fd >= 0)
            close(w->listen_fd);
        sse_worker_free(w);
        if (w->base)
            event_base_free(w->base);
        pthread_mutex_destroy(&w->mu);
    }
    free(in->workers);
    sse_hub_free(in);
    limits_table_free(in->clients);
    limits_voters_free(in->voters);
    jwt_keys_free(in->jwt);
    voter_hmac_free(in->voter_key);
    free(in->trusted);
    free(in->static_dir);
    free(in);
}

ingest_stats_t ingest_stats(const ingest_t *in) {
    ingest_stats_t s = {atomic_load(&in->accepted), atomic_load(&in->rejected),
                        atomic_load(&in->unavailable), atomic_load(&in->closed),
                        atomic_load(&in->not_open)};
    return s;
}
