/* The route table and its handlers. A handler answers through http_conn;
 * a vote's answer waits for the log (http_conn_defer, then
 * routes_answer_vote from the worker's done queue). */
#include <cJSON.h>
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "ingest/ingest_int.h"
#include "log/record.h"

#define M(m) (1u << (m))

/* ---- replies ---- */

void ingest_reply_error(http_conn_t *c, int status, const char *code, const char *msg) {
    http_conn_reply_error(c, status, code, msg, NULL);
}

static void reply_unavailable(worker_t *w, http_conn_t *c, const char *why) {
    atomic_fetch_add(&w->in->unavailable, 1);
    http_conn_reply_error(c, 503, "log_unavailable", why, "Retry-After: 1\r\n");
}

static void reject(worker_t *w, http_conn_t *c, int status, const char *code,
                   const char *extra_headers, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void reject(worker_t *w, http_conn_t *c, int status, const char *code,
                   const char *extra_headers, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    atomic_fetch_add(&w->in->rejected, 1);
    http_conn_reply_error(c, status, code, msg, extra_headers);
}

/* ---- votes ---- */

typedef struct {
    int status;
    const char *code;
    char msg[256];
} route_err_t;

static int route_err(route_err_t *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int route_err(route_err_t *e, int status, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    e->code = code;
    return -1;
}

/* The vote body for poll: bytes in, the record's option and voter out (the
 * voter copied into voter_buf), or an error with its HTTP status. The one
 * place that reads a vote's JSON. */
static int route_parse_vote(const poll_conf_t *poll, const char *body, size_t len, vote_record_t *v,
                            char voter_buf[VOTER_MAX_LEN + 1], route_err_t *e) {
    int rc = -1;
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (!j)
        return route_err(e, 400, "malformed_json", "the body is not valid JSON");
    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(j, "option");
    const cJSON *voter = cJSON_GetObjectItemCaseSensitive(j, "voter");
    int oi;
    if (!cJSON_IsObject(j)) {
        route_err(e, 400, "invalid_body", "the body must be a JSON object");
        goto out;
    }
    if (!opt) {
        route_err(e, 400, "missing_field", "'option' is required");
        goto out;
    }
    if (!cJSON_IsString(opt)) {
        route_err(e, 400, "invalid_field", "'option' must be a string");
        goto out;
    }
    oi = poll_option_index(poll, opt->valuestring, strlen(opt->valuestring));
    if (voter && !cJSON_IsNull(voter)) {
        if (!cJSON_IsString(voter)) {
            route_err(e, 400, "invalid_field", "'voter' must be a string");
            goto out;
        }
        if (!voter_valid(voter->valuestring, strlen(voter->valuestring))) {
            route_err(e, 400, "invalid_field",
                      "'voter' must be 1-%d bytes without control characters", VOTER_MAX_LEN);
            goto out;
        }
    } else {
        voter = NULL;
        if (poll->mode != MODE_UNLIMITED) {
            route_err(e, 400, "missing_field", "'voter' is required in %s mode",
                      poll_mode_name(poll->mode));
            goto out;
        }
    }
    if (oi < 0) {
        route_err(e, 422, "unknown_option", "poll '%s' has no option '%.64s'", poll->id,
                  opt->valuestring);
        goto out;
    }
    memset(v, 0, sizeof *v);
    v->poll = poll->id;
    v->poll_len = strlen(poll->id);
    v->option = poll->options[oi].id;
    v->option_len = strlen(poll->options[oi].id);
    if (voter) {
        v->voter_len = strlen(voter->valuestring);
        memcpy(voter_buf, voter->valuestring, v->voter_len + 1);
        v->voter = voter_buf;
    }
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

static void handle_vote(worker_t *w, http_conn_t *c, const http_req_t *r, const char *poll_id,
                        size_t poll_len) {
    ingest_t *in = w->in;
    conn_ctx_t *x = http_conn_owner(c);
    const poll_conf_t *poll = config_poll(in->conf, poll_id, poll_len);
    if (!poll) {
        reject(w, c, 404, "unknown_poll", NULL, "no poll '%.*s'",
               (int)(poll_len > ID_MAX_LEN ? ID_MAX_LEN : poll_len), poll_id);
        return;
    }
    if (w->draining) {
        reply_unavailable(w, c, "server is shutting down");
        return;
    }
    if (limits_rate_on(in->clients)) {
        uint8_t client[16];
        int retry = 1;
        limits_client_addr(in->trusted, in->ntrusted, x->ip, r->xff, r->xff_len, client);
        if (!limits_take(in->clients, client, mono_ms(), &retry)) {
            char hdr[48];
            snprintf(hdr, sizeof hdr, "Retry-After: %d\r\n", retry);
            reject(w, c, 429, "rate_limited", hdr, "too many votes from this client");
            return;
        }
    }
    vote_record_t v;
    char voter[VOTER_MAX_LEN + 1];
    route_err_t e;
    if (route_parse_vote(poll, r->body, r->body_len, &v, voter, &e) != 0) {
        reject(w, c, e.status, e.code, NULL, "%s", e.msg);
        return;
    }
    v.ts_ms = now_ms();
    uint8_t rec[RECORD_MAX_LEN];
    size_t rlen = record_encode(&v, rec);
    tally_assert(rlen > 0); /* every field was validated */
    int partition = record_partition(&v, vlog_partitions(in->log), w->spread++);
    memcpy(x->poll, v.poll, v.poll_len + 1);
    memcpy(x->option, v.option, v.option_len + 1);
    /* The ack comes back through this loop's done queue, so deferring after
     * the append is safe. */
    vlog_err_t err = vlog_append(in->log, partition, rec, rlen, x);
    if (err != VLOG_OK) {
        reply_unavailable(
            w, c, err == VLOG_FULL ? "too many votes in flight, retry shortly" : vlog_err2str(err));
        return;
    }
    w->inflight++;
    http_conn_defer(c);
}

void routes_answer_vote(conn_ctx_t *x) {
    worker_t *w = x->w;
    w->inflight--;
    if (x->err != VLOG_OK) {
        reply_unavailable(w, x->conn, vlog_err2str(x->err));
        return;
    }
    atomic_fetch_add(&w->in->accepted, 1);
    char body[64 + 2 * ID_MAX_LEN];
    size_t pl = strlen(x->poll), ol = strlen(x->option), n = 0;
    /* Ids are [A-Za-z0-9_-]: nothing to escape. */
    memcpy(body, "{\"status\":\"accepted\",\"poll\":\"", 29);
    n = 29;
    memcpy(body + n, x->poll, pl);
    n += pl;
    memcpy(body + n, "\",\"option\":\"", 12);
    n += 12;
    memcpy(body + n, x->option, ol);
    n += ol;
    memcpy(body + n, "\"}", 2);
    n += 2;
    http_conn_reply(x->conn, 202, "application/json", NULL, body, n);
}

/* ---- the other routes ---- */

static void handle_healthz(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                           size_t alen) {
    (void)w, (void)r, (void)arg, (void)alen;
    static const char ok[] = "{\"status\":\"ok\"}";
    http_conn_reply(c, 200, "application/json", NULL, ok, sizeof ok - 1);
}

static void handle_stats(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                         size_t alen) {
    (void)r, (void)arg, (void)alen;
    buf_t b = {0};
    w->in->stats_fill(w->in->stats_arg, w->in, &b);
    http_conn_reply(c, 200, "application/json", NULL, b.data ? b.data : "{}", b.data ? b.len : 2);
    buf_free(&b);
}

static void handle_static(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                          size_t alen) {
    (void)arg, (void)alen;
    static_serve(c, w->in->static_dir, r->path, r->path_len);
}

static void handle_vote_route(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                              size_t alen) {
    handle_vote(w, c, r, arg, alen);
}

/* ---- the table ---- */

static int match_vote(const ingest_t *in, const char *p, size_t n, const char **arg, size_t *alen) {
    (void)in;
    static const char prefix[] = "/v1/polls/", suffix[] = "/votes";
    const size_t pl = sizeof prefix - 1, sl = sizeof suffix - 1;
    if (n <= pl + sl || memcmp(p, prefix, pl) != 0 || memcmp(p + n - sl, suffix, sl) != 0)
        return 0;
    *arg = p + pl;
    *alen = n - pl - sl;
    return memchr(*arg, '/', *alen) == NULL;
}

static int match_healthz(const ingest_t *in, const char *p, size_t n, const char **arg,
                         size_t *alen) {
    (void)in, (void)arg, (void)alen;
    return n == 8 && !memcmp(p, "/healthz", 8);
}

static int match_stats(const ingest_t *in, const char *p, size_t n, const char **arg,
                       size_t *alen) {
    (void)arg, (void)alen;
    return in->stats_fill && n == 9 && !memcmp(p, "/v1/stats", 9);
}

static int match_static(const ingest_t *in, const char *p, size_t n, const char **arg,
                        size_t *alen) {
    (void)p, (void)n, (void)arg, (void)alen;
    return in->static_dir != NULL;
}

typedef struct {
    int (*match)(const ingest_t *in, const char *path, size_t len, const char **arg, size_t *alen);
    unsigned methods;
    const char *allow; /* the Allow header of a 405 */
    const char *wrong_method;
    void (*handle)(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg, size_t alen);
} route_t;

/* First match wins. */
static const route_t routes[] = {
    {match_vote, M(HTTP_POST), "Allow: POST\r\n", "use POST to cast a vote", handle_vote_route},
    {match_healthz, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "use GET", handle_healthz},
    {match_stats, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "use GET", handle_stats},
    {match_static, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "the results are read-only",
     handle_static},
};

void routes_handle(void *arg, http_conn_t *c, const http_req_t *r) {
    worker_t *w = arg;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const char *a = NULL;
        size_t alen = 0;
        if (!routes[i].match(w->in, r->path, r->path_len, &a, &alen))
            continue;
        if (r->method > 31 || !(routes[i].methods & M(r->method))) {
            reject(w, c, 405, "method_not_allowed", routes[i].allow, "%s", routes[i].wrong_method);
            return;
        }
        routes[i].handle(w, c, r, a, alen);
        return;
    }
    reject(w, c, 404, "not_found", NULL, "no such resource");
}
