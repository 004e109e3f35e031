/* The HTTP API: validates votes and appends them to the vote log, answering
 * 202 only from the log's acknowledgement, i.e. once the vote is durable.
 *
 *   POST /v1/polls/{poll}/votes   {"option":"..","voter":".."}  -> 202
 *   GET  /healthz                                              -> 200
 *   GET  /v1/stats   log ends, engine positions, counters       -> 200
 *   GET  /readyz     the log takes votes, the engine keeps up    -> 200 | 503
 *   GET  /metrics    Prometheus text (common/metrics.h)         -> 200
 *   GET  /v1/polls/{poll}/events   Server-Sent Events (sse.c)  -> 200 stream
 *   GET  /, /polls/ID.html, ...   publisher.dir, read-only (tally run)
 *
 * Errors are JSON {"error":code,"message":text}. server.threads event loops,
 * each with its own SO_REUSEPORT listener and its own connections (see
 * http_conn.h for the HTTP layer, routes.c for the handlers). */
#ifndef TALLY_INGEST_H
#define TALLY_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/catalog.h"
#include "common/config.h"
#include "common/util.h"
#include "ingest/http_conn.h"
#include "log/vlog.h"

typedef struct ingest_s ingest_t;

/* Checks the keys only ingest understands (server.trusted_proxies, the
 * [auth] key files, read here): 0, or
 * -1 with errstr naming the key (a usage error). */
int ingest_check_config(const tally_config_t *c, char *errstr, size_t esz);
/* Binds server.listen. static_dir (may be NULL) is served read-only. */
ingest_t *ingest_new(const tally_config_t *c, const char *static_dir, char *errstr, size_t esz);
/* While starting, votes and /healthz get 503 "starting" (Retry-After: 1):
 * the engine is catching up with the log's history. @locality any thread */
void ingest_set_starting(ingest_t *in, int starting);
/* The log to append to; its ack callback must be ingest_ack (or
 * history_log_ack, which passes votes' acks on to it). The log is told how
 * many connections may vote (vlog_set_clients): the ingest must outlive it,
 * or be set to another log (or NULL) first. */
void ingest_set_log(ingest_t *in, vlog_t *log);
/* GET /v1/stats answers with what fill writes (a JSON object). */
void ingest_set_stats(ingest_t *in, void (*fill)(void *arg, ingest_t *in, buf_t *buf), void *arg);
/* Where votes find their polls (the poll lifecycle): fn returns the current
 * catalog version, read for one request only, or NULL with the code and the
 * message of a 503 ("starting" until the catalog is caught up,
 * "catalog_stale" while it may miss a change). A vote is then refused with
 * 409 poll_not_open before opens_at and 409 poll_closed at or after
 * closes_at or once final (by the ts ingest stamps, before anything is
 * appended), and answered 503 poll_closing instead of 202 when the log's
 * ack comes at or after closes_at + admin.final_grace_ms - 2000 ms (the
 * final may be near: the vote may or may not count). remote: the history
 * is written by another process (tally ingest), so its FINAL and this
 * process's votes reach the log in no agreed order: a vote judged before
 * its poll had a close is held to the close learned since (routes.c
 * ack_too_late). Without fn, the config's polls, open forever.
 * @locality fn: any ingest thread */
typedef const catalog_t *(ingest_catalog_fn)(void *arg, const char **code, const char **why);
void ingest_set_catalog(ingest_t *in, ingest_catalog_fn *fn, void *arg, int remote);

/* Called every 200 ms on the main loop; a non-zero return stops the server
 * (used to stop when the engine fails). */
void ingest_set_tick(ingest_t *in, int (*tick)(void *arg), void *arg);
/* Runs until SIGINT/SIGTERM or ingest_stop(), then drains: stops accepting,
 * waits for the log to answer every vote in flight, replies, returns. */
int ingest_run(ingest_t *in);
/* @locality any thread */
void ingest_stop(ingest_t *in);
void ingest_free(ingest_t *in);
/* The port actually bound (server.listen may say 0). */
int ingest_port(const ingest_t *in);

/* The vlog ack callback. @locality the log's thread */
void ingest_ack(void *opaque, vlog_err_t err);

/* Server-Sent Events (GET /v1/polls/{id}/events): served once enabled (a
 * process that publishes results). publish hands over the results JSON of
 * the poll def at version (copied): fanned out to every subscriber of
 * every loop. Any poll the publisher renders, config or run-time; an
 * embargoed def (visibility on_close, not final) streams its state only.
 * @locality any thread (the publisher's) */
void ingest_enable_sse(ingest_t *in);
void ingest_sse_publish(void *in, const poll_def_t *def, uint64_t version, const char *json,
                        size_t len);

/* GET /readyz: ready returns 1 when ready, else 0 with why filled. Without
 * it readiness is the log's health alone. */
void ingest_set_ready(ingest_t *in, int (*ready)(void *arg, char *why, size_t wsz), void *arg);

/* GET /metrics: the process's registry (common/metrics.h) as Prometheus
 * text. A handler of its own so that an admin listener can route to it. */
void ingest_reply_metrics(http_conn_t *c);

/* Request outcome counters. closed and not_open are among rejected: the
 * votes refused 409 poll_closed and poll_not_open. */
typedef struct {
    uint64_t accepted, rejected, unavailable;
    uint64_t closed, not_open;
} ingest_stats_t;
ingest_stats_t ingest_stats(const ingest_t *in);

/* static.c: serves root/r->path (as in the request, percent-encoded) for
 * GET/HEAD, refusing anything outside root and anything but a regular file,
 * with ETag, Last-Modified and cache_control (a complete header value), and
 * answers 304 when r's If-None-Match (or, without one, If-Modified-Since)
 * says the client has this version. Returns the HTTP status sent. */
int static_serve(http_conn_t *c, const http_req_t *r, const char *root, const char *cache_control);
/* The conditional checks, pure functions (static.c). etag is the quoted
 * opaque tag ("\"...\""). If-None-Match: 1 when the field value (a list
 * of entity tags, or "*") matches etag by weak comparison (RFC 9110 8.8.3.2,
 * 13.1.2); a malformed value matches nothing. */
int http_etag_list_matches(const char *list, size_t len, const char *etag);
/* An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms,
 * RFC 9110 5.6.7) to *out, seconds since the epoch. 0, or -1 when it is
 * not one. */
int http_date_parse(const char *s, size_t len, int64_t *out);
/* IMF-fixdate of t into out (at least HTTP_DATE_LEN + 1 bytes). */
#define HTTP_DATE_LEN 29
void http_date_format(int64_t t, char *out);
/* Sends {"error":code,"message":msg} with status (msg is escaped). */
void ingest_reply_error(http_conn_t *c, int status, const char *code, const char *msg);

#endif
