/* The admin API's insides, shared by admin.c (listener, thread, auth) and
 * admin_routes.c (the admin route set and its handlers). */
#ifndef TALLY_ADMIN_INT_H
#define TALLY_ADMIN_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "ingest/admin.h"

struct event;
struct event_base;

struct admin_s {
    const tally_config_t *conf;
    admin_ops_t ops;
    /* Set once by admin_set_catalog (NULL until then: 503 "starting");
     * history and wait are written before live is published. */
    _Atomic(catalog_live_t *) live;
    history_t *history;
    void (*wait_learnable)(void *arg, uint64_t seq);
    void *wait_arg;
    unsigned char token_hash[32]; /* SHA-256 of the token */
    struct event_base *base;
    int listen_fd, port;
    struct event *accept_ev, *stop_ev, *sweep_ev;
    http_conn_cfg_t conn_cfg;
    http_conns_t conns;
    pthread_t thread;
    int started;
};

/* admin_routes.c: answers an authorized request. @locality the admin thread */
void admin_routes_handle(admin_t *a, http_conn_t *c, const http_req_t *r);

#endif
