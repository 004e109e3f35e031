/* The route table and its handlers. A handler answers through http_conn;
 * a vote's answer waits for the log (http_conn_defer, then
 * routes_answer_vote from the worker's done queue). */
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/metrics.h"
#include "common/util.h"
#include "ingest/ingest_int.h"
#include "ingest/vote.h"
#include "log/record.h"

#define M(m) (1u << (m))

/* ---- metrics ---- */

/* Every reason a vote can be refused, registered up front so that each
 * series exists (at 0) from the first scrape and the hot path looks one up
 * without the registry's lock. */
static const char *const reject_reasons[] = {
    "unknown_poll",  "rate_limited",   "malformed_json", "invalid_body",    "missing_field",
    "invalid_field", "unknown_field",  "unknown_option", "log_unavailable", "unauthorized",
    "forbidden",     "invalid_header", "poll_closed",    "poll_not_open",   "other",
};
#define NREASONS (sizeof reject_reasons / sizeof reject_reasons[0])
static metric_t *m_accepted, *m_rejected[NREASONS], *m_ack_latency;

static void route_metrics_init(void) {
    metrics_t *m = metrics_default();
    m_accepted = metrics_counter(m, "tally_votes_accepted_total",
                                 "votes answered 202 (durable in the log)", NULL);
    for (size_t i = 0; i < NREASONS; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "reason=\"%s\"", reject_reasons[i]);
        m_rejected[i] = metrics_counter(m, "tally_votes_rejected_total",
                                        "votes refused, by the error code of the answer", labels);
    }
    m_ack_latency = metrics_histogram(
        m, "tally_ingest_ack_latency_seconds",
        "from a vote's append to the log until its answer (the durable 202 or a 503)", NULL,
        METRICS_LATENCY_NS, METRICS_LATENCY_NS_N, 1e9);
}

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;

void routes_init(void) {
    pthread_once(&metrics_once, route_metrics_init);
}

static void count_rejected(const char *code) {
    size_t i = 0;
    while (i < NREASONS - 1 && strcmp(reject_reasons[i], code) != 0)
        i++;
    metric_inc(m_rejected[i]);
}

/* ---- replies ---- */

void ingest_reply_error(http_conn_t *c, int status, const char *code, const char *msg) {
    http_conn_reply_error(c, status, code, msg, NULL);
}

static void reply_unavailable(worker_t *w, http_conn_t *c, const char *why) {
    atomic_fetch_add(&w->in->unavailable, 1);
    count_rejected("log_unavailable");
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

/* A refused vote: counted by reason as well. */
#define reject_vote(w, c, status, code, hdrs, ...)                                                 \
    do {                                                                                           \
        count_rejected(code);                                                                      \
        reject(w, c, status, code, hdrs, __VA_ARGS__);                                             \
    } while (0)
/* ---- vote integrity: tokens, per-voter limits, hashed voter ids ----
 * Each step answers (401/403/429) and returns -1, or returns 0; none
 * touches the log, so a refused vote never reaches it. */

/* 401 unauthorized. RFC 6750 sec. 3: no error attribute when no token was
 * sent, invalid_token with a description otherwise. */
static void reply_unauthorized(worker_t *w, http_conn_t *c, const char *why, int had_token) {
    char hdr[256];
    if (had_token)
        snprintf(hdr, sizeof hdr,
                 "WWW-Authenticate: Bearer realm=\"tally\", error=\"invalid_token\", "
                 "error_description=\"%s\"\r\n",
                 why);
    else
        snprintf(hdr, sizeof hdr, "WWW-Authenticate: Bearer realm=\"tally\"\r\n");
    reject_vote(w, c, 401, "unauthorized", hdr, "%s", why);
}

/* voter_auth = jwt: "Authorization: Bearer <token>", verified. */
static int vote_authenticate(worker_t *w, http_conn_t *c, const http_req_t *r, jwt_claims_t *cl) {
    if (!w->in->jwt) {
        /* A jwt poll made at run time (admin API) on a server without
         * auth.jwt_* keys: no token can be verified. */
        reply_unauthorized(w, c, "this poll needs voter tokens and this server has no key for them",
                           r->authz != NULL);
        return -1;
    }
    if (!r->authz) {
        reply_unauthorized(w, c, "this poll needs Authorization: Bearer <token>", 0);
        return -1;
    }
    const char *a = r->authz;
    size_t n = r->authz_len;
    if (n < 7 || strncasecmp(a, "Bearer ", 7) != 0) {
        reply_unauthorized(w, c, "the Authorization scheme must be Bearer", 1);
        return -1;
    }
    a += 7, n -= 7;
    while (n && (*a == ' ' || *a == '\t'))
        a++, n--;
    while (n && (a[n - 1] == ' ' || a[n - 1] == '\t'))
        n--;
    char why[128];
    jwt_err_t e = r->authz_over ? JWT_ERR_TOO_LARGE
                                : jwt_verify(w->in->jwt, a, n, (int64_t)(now_ms() / 1000), cl, why,
                                             sizeof why);
    if (e == JWT_ERR_TOO_LARGE)
        snprintf(why, sizeof why, "the token is larger than %d bytes", JWT_MAX_LEN);
    if (e != JWT_OK) {
        reply_unauthorized(w, c, why, 1);
        return -1;
    }
    return 0;
}

/* The token's sub is the voter; a body voter must be the same, and a poll
 * claim must name this poll. */
static int vote_bind_voter(worker_t *w, http_conn_t *c, const poll_conf_t *poll,
                           const jwt_claims_t *cl, vote_record_t *v) {
    if (cl->poll_set && (cl->poll_long || strcmp(cl->poll, poll->id) != 0)) {
        reject_vote(w, c, 403, "forbidden", NULL, "the token is for another poll");
        return -1;
    }
    if (v->voter && (v->voter_len != cl->sub_len || memcmp(v->voter, cl->sub, cl->sub_len))) {
        reject_vote(w, c, 403, "forbidden", NULL, "'voter' is not the token's subject");
        return -1;
    }
    v->voter = cl->sub;
    v->voter_len = cl->sub_len;
    return 0;
}

/* limits.voter_rate, on the id as sent (before any hashing). */
static int vote_voter_limited(worker_t *w, http_conn_t *c, const vote_record_t *v) {
    int retry = 1;
    if (!v->voter || limits_voter_take(w->in->voters, v->poll, v->poll_len, v->voter, v->voter_len,
                                       mono_ms(), &retry))
        return 0;
    char hdr[48];
    snprintf(hdr, sizeof hdr, "Retry-After: %d\r\n", retry);
    reject_vote(w, c, 429, "rate_limited", hdr, "too many votes from this voter");
    return -1;
}

/* auth.voter_id_key_file: the log gets the keyed hash, never the id. */
static void vote_hash_voter(const ingest_t *in, vote_record_t *v,
                            uint8_t tag[RECORD_VOTER_HMAC_LEN]) {
    if (!v->voter)
        return;
    voter_hmac(in->voter_key, v->voter, v->voter_len, tag);
    v->voter = (const char *)tag;
    v->voter_len = RECORD_VOTER_HMAC_LEN;
    v->flags |= RECORD_F_VOTER_HMAC;
}

/* ---- votes ---- */

/* The poll a vote is for, from the catalog when ingest has one (the poll's
 * lifecycle judged at ts), else from the config. Returns the poll, or NULL
 * once it has answered. view is the caller's storage. */
static const poll_conf_t *vote_poll(worker_t *w, http_conn_t *c, const char *poll_id,
                                    size_t poll_len, uint64_t ts, poll_conf_t *view,
                                    uint64_t *closes_at) {
    ingest_t *in = w->in;
    char q[ID_QUOTE_MAX];
    *closes_at = 0;
    if (!in->catalog) {
        const poll_conf_t *poll = config_poll(in->conf, poll_id, poll_len);
        if (!poll)
            reject_vote(w, c, 404, "unknown_poll", NULL, "no poll %s",
                        id_quote(poll_id, poll_len, q));
        return poll;
    }
    const char *code = "starting", *why = "the poll catalog is not loaded yet";
    const catalog_t *cat = in->catalog(in->catalog_arg, &code, &why);
    if (!cat) {
        /* A stale catalog is most often the log's cluster gone: say that. */
        char lwhy[512];
        if (in->log && vlog_health(in->log, lwhy, sizeof lwhy) != TALLY_OK) {
            reply_unavailable(w, c, lwhy);
            return NULL;
        }
        atomic_fetch_add(&in->unavailable, 1);
        http_conn_reply_error(c, 503, code, why, "Retry-After: 1\r\n");
        return NULL;
    }
    const catalog_entry_t *en = catalog_find(cat, poll_id, poll_len);
    if (!en && config_poll(in->conf, poll_id, poll_len)) {
        /* A config poll the engine has not defined in the history yet (tally
         * ingest started before it): a vote now would precede its DEFINE
         * and not count. */
        atomic_fetch_add(&in->unavailable, 1);
        http_conn_reply_error(c, 503, "starting",
                              "the engine has not yet written this poll to the history; retry "
                              "shortly",
                              "Retry-After: 1\r\n");
        return NULL;
    }
    if (!en) {
        reject_vote(w, c, 404, "unknown_poll", NULL, "no poll %s", id_quote(poll_id, poll_len, q));
        return NULL;
    }
    const poll_def_t *d = en->def;
    if (en->final || (d->closes_at && ts >= d->closes_at)) {
        atomic_fetch_add(&in->closed, 1);
        reject_vote(w, c, 409, "poll_closed", NULL, "poll '%s' is closed", d->id);
        return NULL;
    }
    if (d->opens_at && ts < d->opens_at) {
        atomic_fetch_add(&in->not_open, 1);
        reject_vote(w, c, 409, "poll_not_open", NULL, "poll '%s' is not open yet", d->id);
        return NULL;
    }
    /* vote_parse needs the id, the mode and the options: borrowed from the
     * definition, which outlives this request (CATALOG_GRACE_MS). */
    /* Who may vote is the definition's too (a config poll's voter_auth
     * became its definition's). */
    *view = (poll_conf_t){.id = d->id,
                          .title = d->title,
                          .mode = d->mode,
                          .voter_auth =
                              d->voter_auth == VOTER_AUTH_JWT ? POLL_AUTH_JWT : POLL_AUTH_NONE,
                          .options = d->options,
                          .noptions = d->noptions};
    *closes_at = d->closes_at;
    return view;
}

static void handle_vote(worker_t *w, http_conn_t *c, const http_req_t *r, const char *poll_id,
                        size_t poll_len) {
    ingest_t *in = w->in;
    conn_ctx_t *x = http_conn_owner(c);
    if (atomic_load_explicit(&in->starting, memory_order_acquire)) {
        atomic_fetch_add(&in->unavailable, 1);
        http_conn_reply_error(c, 503, "starting",
                              "the engine is catching up with the log; retry shortly",
                              "Retry-After: 1\r\n");
        return;
    }
    /* One stamp: the lifecycle is judged by the ts the record carries. */
    uint64_t ts = x->ts = now_ms();
    poll_conf_t view;
    const poll_conf_t *poll = vote_poll(w, c, poll_id, poll_len, ts, &view, &x->closes_at);
    if (!poll)
        return;
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
            reject_vote(w, c, 429, "rate_limited", hdr, "too many votes from this client");
            return;
        }
    }
    jwt_claims_t claims;
    if (poll->voter_auth == POLL_AUTH_JWT && vote_authenticate(w, c, r, &claims) != 0)
        return;
    vote_record_t v;
    char voter[VOTE_SCRATCH_MIN];
    vote_error_t e;
    if (vote_parse(poll, r->body, r->body_len, ts, &v, voter, sizeof voter, &e) != 0 ||
        vote_parse_idem_key(r->idem_key, r->idem_key_len, &v, &e) != 0) {
        reject_vote(w, c, e.status, e.code, NULL, "%s", e.message);
        return;
    }
    if (poll->voter_auth == POLL_AUTH_JWT && vote_bind_voter(w, c, poll, &claims, &v) != 0)
        return;
    if (in->voters && vote_voter_limited(w, c, &v) != 0)
        return;
    uint8_t voter_tag[RECORD_VOTER_HMAC_LEN];
    if (in->voter_key)
        vote_hash_voter(in, &v, voter_tag);
    uint8_t rec[RECORD_MAX_LEN];
    size_t rlen = record_encode(&v, rec);
    tally_assert(rlen > 0); /* every field was validated */
    int partition = record_partition(&v, vlog_partitions(in->log), w->spread++);
    memcpy(x->poll, v.poll, v.poll_len + 1);
    memcpy(x->option, v.option, v.option_len + 1);
    char key[RECORD_LOG_KEY_MAX];
    vlog_meta_t meta = {.ts_ms = v.ts_ms};
    if (vlog_caps(in->log) & VLOG_CAP_KEYS) {
        meta.key = key;
        meta.key_len = record_log_key(&v, key);
    }
    /* The ack comes back through this loop's done queue, so deferring after
     * the append is safe. */
    vlog_err_t err = vlog_append(in->log, partition, rec, rlen, &meta, x);
    if (err != VLOG_OK) {
        reply_unavailable(
            w, c, err == VLOG_FULL ? "too many votes in flight, retry shortly" : vlog_err2str(err));
        return;
    }
    x->appended_ns = metrics_now_ns();
    w->inflight++;
    http_conn_defer(c);
}

/* 1 when a durable vote may have landed after its poll's final, written at
 * the cut + final_grace_ms: an ack later than 2 s before that is not
 * answered 202. The cut is the one the vote was judged by, or an earlier
 * one since. When this process writes the history (tally run), a vote
 * judged before its poll had a close was appended before any FINAL of it
 * (one log writer, in order): it counts. When another process does (tally
 * ingest with Kafka), the two reach the broker in no agreed order, so such
 * a vote is held to the current view's cut; with none, a view confirmed
 * now proves that any cut is later than its confirmation (a cut is learned
 * before it is logged), at most 1 s ago, so no final for 1 s more (the
 * grace is 2 s at least); a view not confirmed (Kafka slow) proves only
 * that any cut is after the vote's stamp, which then stands for it.
 * Before, a vote held back past the final by a slow broker was answered
 * 202 and never counted. */
/* 0: answer 202; 1: the poll closed and its final is near; 2: no close
 * known, but the view could not be confirmed (the stamp stood for it). */
static int ack_too_late(worker_t *w, const conn_ctx_t *x) {
    ingest_t *in = w->in;
    if (!in->catalog || (!x->closes_at && !in->catalog_remote))
        return 0;
    const char *code, *why;
    const catalog_t *cat = in->catalog(in->catalog_arg, &code, &why);
    const catalog_entry_t *en = cat ? catalog_find(cat, x->poll, strlen(x->poll)) : NULL;
    if (en && en->final)
        return 1;
    uint64_t cut = x->closes_at;
    if (en && en->def->closes_at && (!cut || en->def->closes_at < cut))
        cut = en->def->closes_at;
    uint64_t grace = (uint64_t)in->conf->admin_final_grace_ms;
    if (!cut) /* no close known: 2 when the stamp had to stand for it */
        return !cat && now_ms() + 2000 >= x->ts + grace ? 2 : 0;
    return now_ms() + 2000 >= cut + grace;
}

void routes_answer_vote(conn_ctx_t *x) {
    worker_t *w = x->w;
    w->inflight--;
    metric_observe(m_ack_latency, metrics_now_ns() - x->appended_ns);
    if (x->err != VLOG_OK) {
        /* Appended, then not confirmed: a failed write or fdatasync (file
         * log) or delivery (Kafka) leaves it unknown whether the bytes
         * stayed, and after a restart such a vote may count. */
        reply_unavailable(w, x->conn,
                          "the log could not confirm this vote (its write failed): it may or "
                          "may not count; retry only with the same Idempotency-Key");
        return;
    }
    int late = ack_too_late(w, x);
    if (late) {
        atomic_fetch_add(&w->in->unavailable, 1);
        if (late == 1)
            http_conn_reply_error(x->conn, 503, "poll_closing",
                                  "the poll closed and its final is near: this vote may or may not "
                                  "count; a retry is refused",
                                  "Retry-After: 1\r\n");
        else
            http_conn_reply_error(x->conn, 503, "ack_unconfirmed",
                                  "the vote is in the log, but whether its poll closed meanwhile "
                                  "could not be confirmed (the poll catalog is stale): it may or "
                                  "may not count; retry only with the same Idempotency-Key",
                                  "Retry-After: 1\r\n");
        return;
    }
    atomic_fetch_add(&w->in->accepted, 1);
    metric_inc(m_accepted);
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

/* Liveness, and whether votes can be taken: 503 with the reason while the
 * log refuses them (a vanished or failing file log, an unreachable cluster)
 * or the poll catalog is not loaded or not fresh (tally ingest). */
static void handle_healthz(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                           size_t alen) {
    (void)r, (void)arg, (void)alen;
    static const char ok[] = "{\"status\":\"ok\"}";
    char why[512];
    const char *code = NULL, *cwhy = NULL;
    if (atomic_load_explicit(&w->in->starting, memory_order_acquire))
        http_conn_reply_error(c, 503, "starting", "the engine is catching up with the log",
                              "Retry-After: 1\r\n");
    else if (w->in->log && vlog_health(w->in->log, why, sizeof why) != TALLY_OK)
        http_conn_reply_error(c, 503, "log_unavailable", why, "Retry-After: 1\r\n");
    /* Votes would get 503 until the poll catalog is loaded: so does this. */
    else if (w->in->catalog && !w->in->catalog(w->in->catalog_arg, &code, &cwhy))
        http_conn_reply_error(c, 503, code ? code : "starting", cwhy ? cwhy : "",
                              "Retry-After: 1\r\n");
    else
        http_conn_reply(c, 200, "application/json", NULL, ok, sizeof ok - 1);
}

/* Readiness: the log takes votes and the engine is not too far behind
 * (the owner's ready callback, engine.ready_lag_ms). 503 names why. */
static void handle_readyz(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                          size_t alen) {
    (void)r, (void)arg, (void)alen;
    static const char ok[] = "{\"status\":\"ready\"}";
    char why[512];
    if (atomic_load_explicit(&w->in->starting, memory_order_acquire)) {
        http_conn_reply_error(c, 503, "starting", "the engine is catching up with the log",
                              "Retry-After: 1\r\n");
        return;
    }
    if (w->in->log && vlog_health(w->in->log, why, sizeof why) != TALLY_OK) {
        http_conn_reply_error(c, 503, "log_unavailable", why, "Retry-After: 1\r\n");
        return;
    }
    if (w->in->ready && !w->in->ready(w->in->ready_arg, why, sizeof why)) {
        http_conn_reply_error(c, 503, "engine_lagging", why, "Retry-After: 1\r\n");
        return;
    }
    http_conn_reply(c, 200, "application/json", NULL, ok, sizeof ok - 1);
}

void ingest_reply_metrics(http_conn_t *c) {
    buf_t b = {0};
    metrics_render(metrics_default(), &b);
    http_conn_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8",
                    "Cache-Control: no-store\r\n", b.data ? b.data : "", b.len);
    buf_free(&b);
}

static void handle_metrics(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                           size_t alen) {
    (void)w, (void)r, (void)arg, (void)alen;
    ingest_reply_metrics(c);
}

/* Any poll this process knows: the config's, or the catalog's (created at
 * run time); the stream shows only what the publisher renders. Without a
 * usable catalog (start-up, or stale) a poll not in the config may well
 * exist: 503 with the catalog's reason, as its votes get, not 404. */
static void handle_events(worker_t *w, http_conn_t *c, const http_req_t *r, const char *arg,
                          size_t alen) {
    ingest_t *in = w->in;
    int known = config_poll(in->conf, arg, alen) != NULL;
    if (!known && in->catalog) {
        const char *code = "starting", *why = "the poll catalog is not loaded yet";
        const catalog_t *cat = in->catalog(in->catalog_arg, &code, &why);
        if (!cat) {
            http_conn_reply_error(c, 503, code, why, "Retry-After: 1\r\n");
            return;
        }
        known = catalog_find(cat, arg, alen) != NULL;
    }
    if (!known) {
        char q[ID_QUOTE_MAX];
        reject(w, c, 404, "unknown_poll", NULL, "no poll %s", id_quote(arg, alen, q));
        return;
    }
    if (w->draining) {
        http_conn_reply_error(c, 503, "shutting_down", "server is shutting down",
                              "Retry-After: 1\r\n");
        return;
    }
    sse_subscribe(w, c, r, arg, alen);
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
    static_serve(c, r, w->in->static_dir, w->in->conf->pub_cache_control);
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

static int match_events(const ingest_t *in, const char *p, size_t n, const char **arg,
                        size_t *alen) {
    static const char prefix[] = "/v1/polls/", suffix[] = "/events";
    const size_t pl = sizeof prefix - 1, sl = sizeof suffix - 1;
    if (!in->sse_on || n <= pl + sl || memcmp(p, prefix, pl) != 0 ||
        memcmp(p + n - sl, suffix, sl) != 0)
        return 0;
    *arg = p + pl;
    *alen = n - pl - sl;
    return memchr(*arg, '/', *alen) == NULL;
}

static int match_readyz(const ingest_t *in, const char *p, size_t n, const char **arg,
                        size_t *alen) {
    (void)in, (void)arg, (void)alen;
    return n == 7 && !memcmp(p, "/readyz", 7);
}

/* With the admin API on, metrics are the operator's: served on the admin
 * listener only (404 here); else on the public listener. */
static int match_metrics(const ingest_t *in, const char *p, size_t n, const char **arg,
                         size_t *alen) {
    (void)arg, (void)alen;
    return n == 8 && !memcmp(p, "/metrics", 8) && !in->conf->admin_token_file[0];
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
    {match_events, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "use GET", handle_events},
    {match_healthz, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "use GET", handle_healthz},
    {match_readyz, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "use GET", handle_readyz},
    {match_metrics, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n", "use GET", handle_metrics},
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
