/* ingest's insides, shared by ingest.c (loops, listeners, lifecycle),
 * routes.c (the route table and handlers) and static.c. Not for other
 * modules: they use ingest.h. */
#ifndef TALLY_INGEST_INT_H
#define TALLY_INGEST_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "common/ids.h"
#include "ingest/http_conn.h"
#include "ingest/ingest.h"
#include "ingest/limits.h"

struct event;
struct event_base;
typedef struct worker_s worker_t;

/* What ingest keeps per connection (allocated at accept, freed at close;
 * never per request). While a vote waits for the log its connection is
 * deferred and stays allocated, so the ack always finds it. */
typedef struct conn_ctx_s {
    worker_t *w;
    http_conn_t *conn;
    uint8_t ip[16]; /* the peer, counted in the limits table */
    vlog_err_t err;
    struct conn_ctx_s *next_done;
    char poll[ID_MAX_LEN + 1];
    char option[ID_MAX_LEN + 1];
    uint64_t closes_at; /* the vote's poll's close when it was stamped; 0 none */
} conn_ctx_t;

struct worker_s {
    ingest_t *in;
    int id;
    pthread_t thread;
    struct event_base *base;
    int listen_fd;
    struct event *accept_ev;
    struct event *resume_ev; /* timer: try accepting again after EMFILE */
    int accept_paused;
    struct event *done_ev;  /* the log answered: reply */
    struct event *stop_ev;  /* stop accepting, drain */
    struct event *sweep_ev; /* deadlines */
    http_conn_cfg_t conn_cfg;
    http_conns_t conns;
    uint64_t spread; /* spreads voter-less votes over partitions */
    size_t inflight; /* loop thread only */
    int draining;
    uint64_t drain_started;
    uint64_t warned_ms; /* rate-limits accept warnings */
    uint64_t warn_suppressed;
    pthread_mutex_t mu; /* guards done */
    conn_ctx_t *done;
};

struct ingest_s {
    const tally_config_t *conf;
    vlog_t *log;
    _Atomic int starting;              /* 503 "starting" to votes and /healthz */
    char *static_dir;
    int port;
    int nworkers;
    worker_t *workers;
    struct event *sig_int, *sig_term, *tick_ev;
    int (*tick)(void *arg);
    void *tick_arg;
    void (*stats_fill)(void *arg, ingest_t *in, buf_t *buf);
    void *stats_arg;
    limits_table_t *clients;
    uint64_t swept_ms;
    limits_cidr_t *trusted;
    int ntrusted;
    _Atomic long nconns;
    _Atomic uint64_t accepted, rejected, unavailable;
    _Atomic uint64_t closed, not_open; /* among rejected: the poll's lifecycle */
    ingest_catalog_fn *catalog;
    void *catalog_arg;
};

/* ingest.c: a listening socket on hostport (the config key `key`, for
 * messages). See the comment at its definition. */
int ingest_bind_listen(const char *key, const char *hostport, int reuseport, int *port_io,
                       char *errstr, size_t esz);

/* routes.c: the http_conn handler (arg is the worker). */
void routes_handle(void *arg, http_conn_t *c, const http_req_t *req);
/* routes.c: answers a vote the log has acknowledged (or failed).
 * c may be gone afterwards. @locality the worker's loop */
void routes_answer_vote(conn_ctx_t *x);

#endif
