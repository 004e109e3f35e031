/* The admin route set: the second route table of tally's HTTP layer (the
 * public one is routes.c), same shape, its own handlers. Every change goes
 * through the history writer (common/catalog.h): durable in every partition
 * of the log before the answer, and before ingest learns it. */
#include <http_parser.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/ids.h"
#include "common/json.h"
#include "common/util.h"
#include "ingest/admin_int.h"

#define M(m) (1u << (m))

/* ---- replies ---- */

static void reply_json(http_conn_t *c, int status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    tally_assert(s);
    http_conn_reply(c, status, "application/json", NULL, s, strlen(s));
    free(s);
    json_decref(j);
}

/* {"error":code,"message":..,"field":..}: the catalog's verdict. */
static void reply_catalog_error(http_conn_t *c, const catalog_error_t *e) {
    buf_t b = {0};
    buf_puts(&b, "{\"error\":");
    json_put_str(&b, e->code[0] ? e->code : "internal");
    buf_puts(&b, ",\"message\":");
    json_put_str(&b, e->message);
    if (e->field[0]) {
        buf_puts(&b, ",\"field\":");
        json_put_str(&b, e->field);
    }
    buf_puts(&b, "}");
    http_conn_reply(c, e->http_status ? e->http_status : 500, "application/json", NULL, b.data,
                    b.len);
    buf_free(&b);
}

static void fail(http_conn_t *c, int status, const char *code, const char *field, const char *fmt,
                 ...) __attribute__((format(printf, 5, 6)));
static void fail(http_conn_t *c, int status, const char *code, const char *field, const char *fmt,
                 ...) {
    catalog_error_t e = {.http_status = status};
    snprintf(e.code, sizeof e.code, "%s", code);
    snprintf(e.field, sizeof e.field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    reply_catalog_error(c, &e);
}

/* ---- the poll object ---- */

static json_t *time_json(uint64_t ms) {
    if (!ms)
        return json_null();
    char buf[40];
    fmt_rfc3339(ms, buf, sizeof buf);
    return json_string(buf);
}

/* The definition as the admin API shows it: the canonical JSON with times
 * as RFC 3339 (and in ms, for scripts), plus state, seq and the final cut.
 * With totals, the engine's current counts whatever the visibility. */
static json_t *poll_json(admin_t *a, const catalog_entry_t *en, uint64_t now, int totals) {
    const poll_def_t *d = en->def;
    char *canon = poll_def_to_json(d);
    json_error_t je;
    json_t *j = json_loads(canon, 0, &je);
    free(canon);
    tally_assert(j && json_is_object(j)); /* our own canonical form */
    json_object_set_new(j, "opens_at", time_json(d->opens_at));
    json_object_set_new(j, "closes_at", time_json(d->closes_at));
    json_object_set_new(j, "opens_at_ms",
                        d->opens_at ? json_integer((json_int_t)d->opens_at) : json_null());
    json_object_set_new(j, "closes_at_ms",
                        d->closes_at ? json_integer((json_int_t)d->closes_at) : json_null());
    json_object_set_new(j, "created", time_json(d->created_ms));
    json_object_set_new(j, "state",
                        json_string(poll_state_name(poll_def_state_at(d, en->final, now))));
    json_object_set_new(j, "seq", json_integer((json_int_t)en->def_seq));
    json_object_set_new(j, "final", json_boolean(en->final));
    if (en->final)
        json_object_set_new(j, "final_at", time_json(en->final_at));
    if (totals && a->ops.totals) {
        uint64_t *counts = xcalloc((size_t)d->noptions + 1, sizeof *counts);
        uint64_t late = 0, early = 0, total = 0;
        if (a->ops.totals(a->ops.totals_arg, d->id, counts, d->noptions, &late, &early) == 0) {
            json_t *opts = json_object_get(j, "options");
            for (int i = 0; i < d->noptions; i++) {
                json_t *o = json_array_get(opts, (size_t)i);
                if (o)
                    json_object_set_new(o, "votes", json_integer((json_int_t)counts[i]));
                total += counts[i];
            }
            json_object_set_new(j, "total", json_integer((json_int_t)total));
            json_object_set_new(j, "late", json_integer((json_int_t)late));
            json_object_set_new(j, "early", json_integer((json_int_t)early));
        }
        free(counts);
    }
    return j;
}

/* The catalog, once the start-up handed it over (routes check first). */
static catalog_live_t *admin_live(admin_t *a) {
    return atomic_load_explicit(&a->live, memory_order_acquire);
}

static const catalog_entry_t *find(admin_t *a, const char *id, size_t len) {
    return catalog_find(catalog_live_get(admin_live(a)), id, len);
}

/* Answers with the poll as it is now (after a change: the entry the writer
 * returned). */
static void reply_entry(admin_t *a, http_conn_t *c, int status, catalog_entry_t *en) {
    json_t *j = poll_json(a, en, now_ms(), 1);
    catalog_entry_unref(en);
    reply_json(c, status, j);
}

static tally_err_t parse_body(const http_req_t *r, json_t **out, http_conn_t *c) {
    json_error_t je;
    *out = json_loadb(r->body_len ? r->body : "", r->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!*out || !json_is_object(*out)) {
        if (*out)
            json_decref(*out);
        *out = NULL;
        fail(c, 400, "bad_json", "", "the body must be one JSON object (byte %d: %s)", je.position,
             r->body_len ? "not valid JSON" : "empty");
        return TALLY_ERR_CONFIG;
    }
    return TALLY_OK;
}

static poll_def_defaults_t defaults(admin_t *a) {
    /* The window goes into the definition: replays keep applying it. */
    return (poll_def_defaults_t){
        .idempotency_window_s = (uint32_t)a->conf->ingest_idempotency_window_s,
        .now_ms = now_ms(),
        .source = POLL_SRC_ADMIN,
    };
}

/* ---- handlers ---- */

static void handle_list(admin_t *a, http_conn_t *c) {
    const catalog_t *cat = catalog_live_get(admin_live(a));
    uint64_t now = now_ms();
    json_t *polls = json_array();
    for (int i = 0; i < catalog_npolls(cat); i++)
        json_array_append_new(polls, poll_json(a, catalog_at(cat, i), now, 0));
    json_t *j = json_object();
    json_object_set_new(j, "polls", polls);
    json_object_set_new(j, "seq", json_integer((json_int_t)catalog_seq(cat)));
    reply_json(c, 200, j);
}

static void handle_create(admin_t *a, http_conn_t *c, const http_req_t *r) {
    json_t *body;
    if (parse_body(r, &body, c) != TALLY_OK)
        return;
    /* Who made it and when is the server's to say. */
    static const char *const server_keys[] = {"source", "created_ms", "created", "state",
                                              "seq",    "final",      NULL};
    for (const char *const *k = server_keys; *k; k++)
        if (json_object_get(body, *k)) {
            fail(c, 400, "bad_field", *k, "'%s' is set by the server, not by a request", *k);
            json_decref(body);
            return;
        }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    poll_def_defaults_t dd = defaults(a);
    poll_def_t *def = NULL;
    catalog_error_t err = {0};
    if (poll_def_from_json(text, strlen(text), &dd, &def, &err) != TALLY_OK) {
        free(text);
        reply_catalog_error(c, &err);
        return;
    }
    free(text);
    def->source = POLL_SRC_ADMIN;
    def->created_ms = dd.now_ms;
    catalog_entry_t *en = NULL;
    if (history_create(a->history, def, &en, &err) != TALLY_OK) {
        reply_catalog_error(c, &err);
        return;
    }
    log_info("admin: created poll %s (seq %llu)", en->def->id, (unsigned long long)en->def_seq);
    reply_entry(a, c, 201, en);
}

static void handle_show(admin_t *a, http_conn_t *c, const char *id, size_t len) {
    const catalog_entry_t *en = find(a, id, len);
    if (!en) {
        char q[ID_QUOTE_MAX];
        fail(c, 404, "no_such_poll", "", "no poll %s", id_quote(id, len, q));
        return;
    }
    reply_json(c, 200, poll_json(a, en, now_ms(), 1));
}

/* Writes next as id's successor, checked at now (the clock reading the
 * handler built next from: a second reading may be a millisecond later and
 * then refuse the handler's own close cut as too early); answers with the
 * result. */
static int write_update(admin_t *a, http_conn_t *c, poll_def_t *next, uint64_t now,
                        catalog_entry_t **out) {
    catalog_error_t err = {0};
    if (history_update(a->history, next, now, (uint64_t)a->conf->admin_close_delay_ms, out, &err) !=
        TALLY_OK) {
        reply_catalog_error(c, &err);
        return -1;
    }
    return 0;
}

static void handle_open(admin_t *a, http_conn_t *c, const char *id, size_t len) {
    const catalog_entry_t *cur = find(a, id, len);
    if (!cur) {
        char q[ID_QUOTE_MAX];
        fail(c, 404, "no_such_poll", "", "no poll %s", id_quote(id, len, q));
        return;
    }
    uint64_t now = now_ms();
    poll_state_t st = poll_def_state_at(cur->def, cur->final, now);
    if (st == POLL_CLOSED || st == POLL_FINAL) {
        fail(c, 409, "poll_closed", "closes_at", "poll '%s' is %s: a closed poll never reopens",
             cur->def->id, poll_state_name(st));
        return;
    }
    if (st == POLL_OPEN) { /* nothing to change */
        reply_json(c, 200, poll_json(a, cur, now, 1));
        return;
    }
    poll_def_t *next = poll_def_dup(cur->def);
    next->opens_at = now;
    catalog_entry_t *en = NULL;
    if (write_update(a, c, next, now, &en) != 0)
        return;
    log_info("admin: opened poll %s (seq %llu)", en->def->id, (unsigned long long)en->def_seq);
    reply_entry(a, c, 200, en);
}

/* "Close now": closes_at = now + admin.close_delay_ms, a time by which every
 * ingest has learned the change, so that the cut is the same everywhere.
 * Every ingest learns the cut before it is logged (history_update, with the
 * catalog topic's readers through its learner); when that took until the
 * cut or later, the cut moves to then + the delay. */
static void handle_close(admin_t *a, http_conn_t *c, const char *id, size_t len) {
    const catalog_entry_t *cur = find(a, id, len);
    if (!cur) {
        char q[ID_QUOTE_MAX];
        fail(c, 404, "no_such_poll", "", "no poll %s", id_quote(id, len, q));
        return;
    }
    uint64_t delay = (uint64_t)a->conf->admin_close_delay_ms, now = now_ms();
    uint64_t cut = now + delay;
    poll_state_t st = poll_def_state_at(cur->def, cur->final, now);
    /* Already closed, or closing sooner than a close now would: keep it. */
    if (st == POLL_CLOSED || st == POLL_FINAL ||
        (cur->def->closes_at && cur->def->closes_at <= cut)) {
        reply_json(c, 200, poll_json(a, cur, now, 1));
        return;
    }
    if (cur->def->opens_at && cur->def->opens_at >= cut) {
        /* Closing before it opens would leave no voting time at all; an
         * opening moved to the close would open it meanwhile. */
        fail(c, 409, "incompatible", "opens_at",
             "poll '%s' opens after the close would take effect: PATCH its opens_at and "
             "closes_at instead",
             cur->def->id);
        return;
    }
    poll_def_t *next = poll_def_dup(cur->def);
    next->closes_at = cut;
    catalog_entry_t *en = NULL;
    if (write_update(a, c, next, now, &en) != 0)
        return;
    /* Every ingest learned the cut before it was logged (history_update);
     * the answer waits until the catalog topic holds the DEFINE too. */
    if (a->wait_learnable)
        a->wait_learnable(a->wait_arg, en->def_seq);
    char at[40];
    fmt_rfc3339(en->def->closes_at, at, sizeof at);
    log_info("admin: poll %s closes at %s (seq %llu)", en->def->id, at,
             (unsigned long long)en->def_seq);
    reply_entry(a, c, 200, en);
}

/* PATCH: the body's keys laid over the current definition, then judged as a
 * successor (poll_def_check_successor): title, labels, appended options,
 * schedule and visibility may change; what would alter counted votes (mode,
 * max_votes, voter_auth, options removed or reordered) is 409. "labels":
 * {"option": "label"} is a shorthand for relabelling. */
static void handle_patch(admin_t *a, http_conn_t *c, const http_req_t *r, const char *id,
                         size_t len) {
    const catalog_entry_t *cur = find(a, id, len);
    if (!cur) {
        char q[ID_QUOTE_MAX];
        fail(c, 404, "no_such_poll", "", "no poll %s", id_quote(id, len, q));
        return;
    }
    json_t *body;
    if (parse_body(r, &body, c) != TALLY_OK)
        return;
    char *canon = poll_def_to_json(cur->def);
    json_t *merged = json_loads(canon, 0, NULL);
    free(canon);
    tally_assert(merged);
    const char *key;
    json_t *val;
    const char *bad = NULL;
    json_object_foreach(body, key, val) {
        if (!strcmp(key, "id")) {
            if (!json_is_string(val) || strcmp(json_string_value(val), cur->def->id)) {
                bad = "id";
                fail(c, 409, "incompatible", "id", "a poll's id never changes");
                break;
            }
        } else if (!strcmp(key, "source") || !strcmp(key, "created_ms")) {
            bad = key;
            fail(c, 400, "bad_field", key, "'%s' is set by the server, not by a request", key);
            break;
        } else if (!strcmp(key, "labels")) {
            const char *oid;
            json_t *lab;
            /* The body's options when it has them (merged shares that
             * array, by reference, in whatever order the keys come). */
            json_t *opts =
                json_object_get(json_object_get(body, "options") ? body : merged, "options");
            if (!json_is_object(val)) {
                bad = key;
                fail(c, 400, "bad_field", "labels", "'labels' must be an object of option: label");
                break;
            }
            json_object_foreach(val, oid, lab) {
                size_t k, at = 0;
                json_t *o, *hit = NULL;
                json_array_foreach(opts, k, o) {
                    json_t *oidj = json_is_object(o) ? json_object_get(o, "id") : o;
                    if (json_is_string(oidj) && !strcmp(json_string_value(oidj), oid)) {
                        hit = o;
                        at = k;
                    }
                }
                if (!hit || !json_is_string(lab)) {
                    bad = key;
                    if (id_valid(oid, strlen(oid)))
                        fail(c, 400, "bad_field", "labels", "labels.%s: %s", oid,
                             hit ? "a label is a string" : "no such option");
                    else
                        fail(c, 400, "bad_field", "labels", "labels: no such option");
                    break;
                }
                if (json_is_object(hit))
                    json_object_set(hit, "label", lab);
                else { /* an id in a list of ids: make it an object */
                    json_t *obj = json_pack("{sOsO}", "id", hit, "label", lab);
                    json_array_set_new(opts, at, obj);
                }
            }
            if (bad)
                break;
        } else if (!strcmp(key, "options") && json_is_array(val)) {
            /* An existing option named by its id alone keeps its label. */
            size_t k;
            json_t *o;
            json_array_foreach(val, k, o) {
                if (!json_is_string(o))
                    continue;
                int oi =
                    poll_def_option_index(cur->def, json_string_value(o), json_string_length(o));
                if (oi >= 0)
                    json_array_set_new(
                        val, k, json_pack("{sOss}", "id", o, "label", cur->def->options[oi].label));
            }
            json_object_set(merged, key, val);
        } else {
            json_object_set(merged, key, val);
        }
    }
    json_decref(body);
    if (bad) {
        json_decref(merged);
        return;
    }
    char *text = json_dumps(merged, JSON_COMPACT);
    json_decref(merged);
    poll_def_defaults_t dd = defaults(a);
    poll_def_t *next = NULL;
    catalog_error_t err = {0};
    if (poll_def_from_json(text, strlen(text), &dd, &next, &err) != TALLY_OK) {
        free(text);
        reply_catalog_error(c, &err);
        return;
    }
    free(text);
    if (poll_def_equal(next, cur->def)) { /* nothing changes: no record */
        poll_def_free(next);
        reply_json(c, 200, poll_json(a, cur, now_ms(), 1));
        return;
    }
    catalog_entry_t *en = NULL;
    if (write_update(a, c, next, now_ms(), &en) != 0)
        return;
    log_info("admin: patched poll %s (seq %llu)", en->def->id, (unsigned long long)en->def_seq);
    reply_entry(a, c, 200, en);
}

static void handle_metrics(admin_t *a, http_conn_t *c) {
    a->ops.metrics(c);
}

static void handle_healthz(http_conn_t *c) {
    static const char ok[] = "{\"status\":\"ok\"}";
    http_conn_reply(c, 200, "application/json", NULL, ok, sizeof ok - 1);
}

/* ---- the table ---- */

typedef enum { R_POLLS, R_POLL, R_OPEN, R_CLOSE, R_METRICS, R_HEALTHZ } admin_route_id_t;

typedef struct {
    admin_route_id_t id;
    const char *prefix, *suffix; /* path = prefix [id suffix]; suffix NULL: exact */
    unsigned methods;
    const char *allow;
} admin_route_t;

/* First match wins. */
static const admin_route_t admin_routes[] = {
    {R_POLLS, "/v1/admin/polls", NULL, M(HTTP_GET) | M(HTTP_HEAD) | M(HTTP_POST),
     "Allow: GET, HEAD, POST\r\n"},
    {R_OPEN, "/v1/admin/polls/", "/open", M(HTTP_POST), "Allow: POST\r\n"},
    {R_CLOSE, "/v1/admin/polls/", "/close", M(HTTP_POST), "Allow: POST\r\n"},
    {R_POLL, "/v1/admin/polls/", "", M(HTTP_GET) | M(HTTP_HEAD) | M(HTTP_PATCH),
     "Allow: GET, HEAD, PATCH\r\n"},
    {R_METRICS, "/metrics", NULL, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n"},
    {R_HEALTHZ, "/healthz", NULL, M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n"},
};

static int route_match(const admin_route_t *rt, const char *p, size_t n, const char **arg,
                       size_t *alen) {
    size_t pl = strlen(rt->prefix);
    if (!rt->suffix)
        return n == pl && !memcmp(p, rt->prefix, pl);
    size_t sl = strlen(rt->suffix);
    if (n <= pl + sl || memcmp(p, rt->prefix, pl) || memcmp(p + n - sl, rt->suffix, sl))
        return 0;
    *arg = p + pl;
    *alen = n - pl - sl;
    return memchr(*arg, '/', *alen) == NULL;
}

void admin_routes_handle(admin_t *a, http_conn_t *c, const http_req_t *r) {
    for (size_t i = 0; i < sizeof admin_routes / sizeof admin_routes[0]; i++) {
        const admin_route_t *rt = &admin_routes[i];
        const char *id = NULL;
        size_t len = 0;
        if (!route_match(rt, r->path, r->path_len, &id, &len))
            continue;
        if (rt->id == R_METRICS && !a->ops.metrics)
            break;
        if (r->method > 31 || !(rt->methods & M(r->method))) {
            http_conn_reply_error(c, 405, "method_not_allowed", "method not allowed here",
                                  rt->allow);
            return;
        }
        if (id && !id_valid(id, len)) {
            fail(c, 404, "no_such_poll", "", "a poll id is 1-%d characters of [A-Za-z0-9_-]",
                 ID_MAX_LEN);
            return;
        }
        if (rt->id != R_METRICS && rt->id != R_HEALTHZ && !admin_live(a)) {
            http_conn_reply_error(c, 503, "starting",
                                  "the engine is reading the poll history; retry shortly",
                                  "Retry-After: 1\r\n");
            return;
        }
        int changes = r->method == HTTP_POST || r->method == HTTP_PATCH;
        if (changes && rt->id != R_METRICS && rt->id != R_HEALTHZ) {
            /* A change that failed earlier is completed before any other is
             * built from the catalog (it may be in some partitions). */
            catalog_error_t err = {0};
            if (history_settle(a->history, &err) != TALLY_OK) {
                reply_catalog_error(c, &err);
                return;
            }
        }
        switch (rt->id) {
        case R_POLLS:
            if (r->method == HTTP_POST)
                handle_create(a, c, r);
            else
                handle_list(a, c);
            return;
        case R_POLL:
            if (r->method == HTTP_PATCH)
                handle_patch(a, c, r, id, len);
            else
                handle_show(a, c, id, len);
            return;
        case R_OPEN: handle_open(a, c, id, len); return;
        case R_CLOSE: handle_close(a, c, id, len); return;
        case R_METRICS: handle_metrics(a, c); return;
        case R_HEALTHZ: handle_healthz(c); return;
        }
    }
    http_conn_reply_error(c, 404, "not_found", "no such admin resource", NULL);
}
