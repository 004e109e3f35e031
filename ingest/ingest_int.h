/* ingest's insides, shared by ingest.c (loops, listeners, lifecycle),
 * routes.c (the route table and handlers) and static.c. Not for other
 * modules: they use ingest.h. */
#ifndef TALLY_INGEST_INT_H
#define TALLY_INGEST_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "common/ids.h"
#include "common/jwt.h"
#include "common/voter_hmac.h"
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
    uint64_t appended_ns; /* ack latency */
    struct conn_ctx_s *next_done;
    char poll[ID_MAX_LEN + 1];
    char option[ID_MAX_LEN + 1];
    /* An SSE subscriber (sse.c): in its loop's list of the poll. */
    int sse_on, sse_poll; /* sse_poll: the hub's slot */
    uint64_t sse_ver;     /* the last version queued to it */
    struct conn_ctx_s *sse_prev, *sse_next;
    uint64_t closes_at; /* the vote's poll's close when it was stamped; 0 none */
    uint64_t ts;        /* the vote's stamp */
} conn_ctx_t;

/* The SSE hub (sse.c): each poll's current event, shared by every loop.
 * Polls are slots, found by id (a hash), created by the first version
 * published or the first subscriber, never removed: config polls and polls
 * created at run time alike. */
typedef struct {
    pthread_mutex_t mu; /* guards the slots */
    char **ids;         /* [nslots] */
    http_chunk_t **cur; /* [nslots]: the current event, NULL before the first */
    uint64_t *ver;      /* [nslots] */
    int cap;
    _Atomic int nslots; /* written under mu; loops read it without */
    int *index;         /* open addressing by id: slot+1, 0 empty */
    size_t index_cap;   /* a power of two, over twice nslots */
    int max_subs;
    _Atomic long nsubs; /* over every loop */
} sse_hub_t;

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
    /* SSE (sse.c), loop thread only; the arrays grow with the hub's slots */
    int sse_n;                  /* the arrays' length */
    conn_ctx_t **sse_subs;      /* [sse_n]: subscriber lists */
    uint64_t *sse_sent;         /* [sse_n]: the version last fanned out */
    conn_ctx_t **sse_cursor;    /* [sse_n]: next subscriber of a fan-out under way */
    http_chunk_t **sse_sending; /* [sse_n]: the event of that fan-out */
    struct event *sse_ev;       /* a poll has a new version */
    struct event *sse_more_ev;  /* the next slice of a fan-out */
    struct event *sse_hb_ev;
    struct event *sse_hb_more_ev; /* the next slice of a heartbeat round */
    int sse_hb_poll;              /* the round's slot; -1: none under way */
    conn_ctx_t *sse_hb_cursor;
    http_chunk_t *sse_hb;
};

struct ingest_s {
    const tally_config_t *conf;
    vlog_t *log;
    _Atomic int starting; /* 503 "starting" to votes and /healthz */
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
    jwt_keys_t *jwt;         /* NULL: no [auth] key, no jwt poll */
    voter_hmac_t *voter_key; /* NULL: voter ids logged as sent */
    limits_voters_t *voters; /* NULL: limits.voter_rate is 0 */
    _Atomic long nconns;
    /* Connections that may send a vote now: nconns less the event streams.
     * The file log's group commit stops gathering once each has a vote in
     * the round (vlog_set_clients). */
    _Atomic long vote_conns;
    _Atomic uint64_t accepted, rejected, unavailable;
    sse_hub_t sse;
    int sse_on; /* results are published in this process: serve events */
    int (*ready)(void *arg, char *why, size_t wsz);
    void *ready_arg;
    _Atomic uint64_t closed, not_open; /* among rejected: the poll's lifecycle */
    ingest_catalog_fn *catalog;
    void *catalog_arg;
    int catalog_remote; /* ingest_set_catalog */
};

/* routes.c: registers the routes' metrics (once per process). */
void routes_init(void);
/* ingest.c: a listening socket on hostport (the config key `key`, for
 * messages). See the comment at its definition. */
int ingest_bind_listen(const char *key, const char *hostport, int reuseport, int *port_io,
                       char *errstr, size_t esz);

/* routes.c: the http_conn handler (arg is the worker). */
void routes_handle(void *arg, http_conn_t *c, const http_req_t *req);
/* routes.c: answers a vote the log has acknowledged (or failed).
 * c may be gone afterwards. @locality the worker's loop */
void routes_answer_vote(conn_ctx_t *x);

/* sse.c */
void sse_hub_init(ingest_t *in);
void sse_hub_free(ingest_t *in);
int sse_worker_init(worker_t *w);
void sse_worker_free(worker_t *w);
/* Answers the request with the event stream of the poll named id (the
 * caller checked that it exists). @locality the worker's loop */
void sse_subscribe(worker_t *w, http_conn_t *c, const http_req_t *r, const char *id, size_t len);
/* The connection is closing. @locality the worker's loop */
void sse_unsubscribe(worker_t *w, conn_ctx_t *x);

#endif
