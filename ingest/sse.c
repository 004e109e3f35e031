/* Server-Sent Events: GET /v1/polls/{id}/events.
 *
 * One rendering per version, fanned out. The publisher hands each new
 * version's results JSON to ingest_sse_publish (its own thread); that builds
 * the event once, as a refcounted chunk ("id: V\ndata: JSON\n\n"), makes it
 * the poll's current event under the hub's lock, and wakes every HTTP loop
 * with one event_active each (not one per subscriber). Each loop owns its
 * subscribers (its connections): on waking it takes a reference to each
 * poll's current event it has not sent yet and queues that same chunk on
 * every subscriber of the poll (http_conn_stream_send, no copy). Versions
 * coalesce like the files: a loop that wakes late sends only the newest,
 * and a subscriber whose previous event has not begun to go out gets the
 * new one in its place. A subscriber whose queue is full, or whose socket
 * stays unwritable for server.body_timeout_ms, is dropped.
 *
 * Resuming: the event id is the version; a reconnecting EventSource sends
 * Last-Event-ID, and gets the current event unless it names that very
 * version. Heartbeats are comment lines every server.sse_heartbeat_ms, sent
 * only to subscribers with nothing queued. */
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/json.h"
#include "common/metrics.h"
#include "common/util.h"
#include "ingest/ingest_int.h"

#define SSE_RETRY_MS 2000 /* the browser's reconnect delay, sent once */
/* Subscribers served per turn of the loop: a fan-out to thousands goes in
 * slices, so the votes on the same loop are answered in between (one
 * send() per subscriber is a few microseconds: a slice is about a ms). */
#define SSE_SLICE 256

static metric_t *m_subs, *m_dropped, *m_events;

static void sse_metrics_init(void) {
    metrics_t *m = metrics_default();
    m_subs = metrics_gauge(m, "tally_sse_subscribers", "open Server-Sent Events streams", NULL);
    m_dropped = metrics_counter(m, "tally_sse_dropped_total",
                                "SSE subscribers dropped because they did not keep up", NULL);
    m_events =
        metrics_counter(m, "tally_sse_events_total",
                        "events queued to SSE subscribers (one per subscriber and version)", NULL);
}

/* Embargoed polls (visibility = on_close) stream their state only, never a
 * count, until they are final: 1 for such a poll, with *state (static
 * storage) the state its results JSON says. The visibility is the
 * definition the publisher rendered (the engine's, from the history); the
 * state is the one that rendering says (an embargoed rendering has no
 * counts either: this keeps the stream to the state even if one did). */
static int sse_state_only(const poll_def_t *def, const char *json, size_t len, const char **state) {
    if (def->visibility != VIS_ON_CLOSE)
        return 0;
    static const char *const names[] = {"scheduled", "open", "closed", "final"};
    *state = "open";
    json_t *j = json_loadb(json, len, 0, NULL);
    const char *st = j ? json_string_value(json_object_get(j, "state")) : NULL;
    for (size_t i = 0; st && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(st, names[i]))
            *state = names[i];
    json_decref(j);
    return strcmp(*state, "final") != 0;
}

void sse_hub_init(ingest_t *in) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, sse_metrics_init);
    sse_hub_t *h = &in->sse;
    pthread_mutex_init(&h->mu, NULL);
    h->max_subs = in->conf->server_sse_max_subscribers;
}

void sse_hub_free(ingest_t *in) {
    sse_hub_t *h = &in->sse;
    int n = atomic_load(&h->nslots);
    for (int i = 0; i < n; i++) {
        http_chunk_unref(h->cur[i]);
        free(h->ids[i]);
    }
    free(h->cur);
    free(h->ver);
    free(h->ids);
    free(h->index);
    pthread_mutex_destroy(&h->mu);
}

/* The slot of the poll named id (created if absent). @locality under h->mu */
static int hub_slot(sse_hub_t *h, const char *id, size_t len) {
    int n = atomic_load(&h->nslots);
    if (h->index_cap) {
        size_t mask = h->index_cap - 1;
        for (size_t k = XXH3_64bits(id, len) & mask; h->index[k]; k = (k + 1) & mask) {
            int i = h->index[k] - 1;
            if (strlen(h->ids[i]) == len && !memcmp(h->ids[i], id, len))
                return i;
        }
    }
    if (n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 16;
        h->ids = xrealloc(h->ids, sizeof *h->ids * (size_t)h->cap);
        h->cur = xrealloc(h->cur, sizeof *h->cur * (size_t)h->cap);
        h->ver = xrealloc(h->ver, sizeof *h->ver * (size_t)h->cap);
    }
    h->ids[n] = xstrndup(id, len);
    h->cur[n] = NULL;
    h->ver[n] = 0;
    if ((size_t)(n + 1) * 2 > h->index_cap) { /* rebuild at twice the size */
        free(h->index);
        h->index_cap = h->index_cap ? 2 * h->index_cap : 32;
        h->index = xcalloc(h->index_cap, sizeof *h->index);
        for (int i = 0; i < n; i++) {
            size_t k = XXH3_64bits(h->ids[i], strlen(h->ids[i])) & (h->index_cap - 1);
            while (h->index[k])
                k = (k + 1) & (h->index_cap - 1);
            h->index[k] = i + 1;
        }
    }
    size_t k = XXH3_64bits(id, len) & (h->index_cap - 1);
    while (h->index[k])
        k = (k + 1) & (h->index_cap - 1);
    h->index[k] = n + 1;
    atomic_store(&h->nslots, n + 1);
    return n;
}

/* Grows the loop's arrays to the hub's first n slots. @locality the loop */
static void worker_reserve(worker_t *w, int n) {
    int cap = grow_cap(w->sse_n, n);
    if (cap == w->sse_n)
        return;
    size_t o = (size_t)w->sse_n, c = (size_t)cap;
    w->sse_subs = xrealloc_zero(w->sse_subs, o, c, sizeof *w->sse_subs);
    w->sse_sent = xrealloc_zero(w->sse_sent, o, c, sizeof *w->sse_sent);
    w->sse_cursor = xrealloc_zero(w->sse_cursor, o, c, sizeof *w->sse_cursor);
    w->sse_sending = xrealloc_zero(w->sse_sending, o, c, sizeof *w->sse_sending);
    w->sse_n = cap;
}

/* "id: V\ndata: line\n...\n\n": every line of body becomes a data line (the
 * results JSON is one line, but nothing here relies on it). */
static http_chunk_t *make_event(uint64_t version, const char *body, size_t len) {
    buf_t b = {0};
    buf_printf(&b, "id: %llu\n", (unsigned long long)version);
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(body + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (body + i)) : len - i;
        if (n > 0 && body[i + n - 1] == '\r')
            n--;
        if (n > 0 || !nl) {
            buf_puts(&b, "data: ");
            buf_append(&b, body + i, n);
            buf_puts(&b, "\n");
        }
        i += nl ? (size_t)(nl - (body + i)) + 1 : len - i;
    }
    buf_puts(&b, "\n");
    http_chunk_t *k = http_chunk_new(b.len);
    memcpy(k->data, b.data, b.len);
    buf_free(&b);
    return k;
}

void ingest_sse_publish(void *arg, const poll_def_t *def, uint64_t version, const char *json,
                        size_t len) {
    ingest_t *in = arg;
    sse_hub_t *h = &in->sse;
    http_chunk_t *k;
    const char *state;
    if (sse_state_only(def, json, len, &state)) {
        buf_t b = {0};
        buf_puts(&b, "{\"poll\":");
        json_put_str(&b, def->id);
        buf_printf(&b, ",\"version\":%llu,\"state\":\"%s\"}", (unsigned long long)version, state);
        k = make_event(version, b.data, b.len);
        buf_free(&b);
    } else {
        k = make_event(version, json, len);
    }
    pthread_mutex_lock(&h->mu);
    int slot = hub_slot(h, def->id, strlen(def->id));
    http_chunk_t *old = h->cur[slot];
    h->cur[slot] = k;
    h->ver[slot] = version;
    pthread_mutex_unlock(&h->mu);
    http_chunk_unref(old);
    for (int i = 0; i < in->nworkers; i++)
        if (in->workers[i].sse_ev)
            event_active(in->workers[i].sse_ev, EV_READ, 0);
}

/* The poll's current event and its version (a new reference), or NULL. */
static http_chunk_t *current(sse_hub_t *h, int poll, uint64_t *version) {
    pthread_mutex_lock(&h->mu);
    http_chunk_t *k = h->cur[poll] ? http_chunk_ref(h->cur[poll]) : NULL;
    *version = h->ver[poll];
    pthread_mutex_unlock(&h->mu);
    return k;
}

static void sub_unlink(worker_t *w, conn_ctx_t *x) {
    if (w->sse_cursor[x->sse_poll] == x) /* a fan-out was to reach it next */
        w->sse_cursor[x->sse_poll] = x->sse_next;
    if (w->sse_hb_cursor == x) /* so was a heartbeat round */
        w->sse_hb_cursor = x->sse_next;
    if (x->sse_prev)
        x->sse_prev->sse_next = x->sse_next;
    else
        w->sse_subs[x->sse_poll] = x->sse_next;
    if (x->sse_next)
        x->sse_next->sse_prev = x->sse_prev;
    x->sse_prev = x->sse_next = NULL;
}

void sse_unsubscribe(worker_t *w, conn_ctx_t *x) {
    if (!x->sse_on)
        return;
    sub_unlink(w, x);
    x->sse_on = 0;
    atomic_fetch_add(&w->in->vote_conns, 1);
    /* Closed with output stuck in a full socket: the write deadline
     * dropped a reader that stopped reading. */
    if (http_conn_write_blocked(x->conn))
        metric_inc(m_dropped);
    atomic_fetch_sub(&w->in->sse.nsubs, 1);
    metric_sub(m_subs, 1);
}

/* Queues k on x; a subscriber that cannot take it is closed (x freed). */
static void sub_send(conn_ctx_t *x, http_chunk_t *k, uint64_t version) {
    if (version && x->sse_ver >= version)
        return; /* it has this one (or a newer) since it subscribed */
    if (http_conn_stream_send(x->conn, k, version != 0 /*an event replaces an unsent one*/) != 0) {
        http_conn_close(x->conn); /* counted as dropped by sse_unsubscribe */
        return;
    }
    if (version) {
        x->sse_ver = version;
        metric_inc(m_events);
    }
}

/* Fans each poll's newest version out to this loop's subscribers, a slice
 * at a time: a version is sent to everyone (from the cursor on) before the
 * next one starts; the next slice is a turn of the loop later. */
static void on_sse(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    worker_t *w = arg;
    sse_hub_t *h = &w->in->sse;
    int budget = SSE_SLICE, more = 0;
    int n = atomic_load(&h->nslots);
    worker_reserve(w, n);
    for (int i = 0; i < n; i++) {
        if (!w->sse_cursor[i]) { /* no fan-out under way: a new version? */
            uint64_t v;
            if (!w->sse_subs[i])
                continue;
            http_chunk_t *k = current(h, i, &v);
            if (!k || v == w->sse_sent[i]) {
                http_chunk_unref(k);
                continue;
            }
            http_chunk_unref(w->sse_sending[i]);
            w->sse_sending[i] = k;
            w->sse_sent[i] = v;
            w->sse_cursor[i] = w->sse_subs[i];
        }
        while (w->sse_cursor[i] && budget > 0) {
            conn_ctx_t *x = w->sse_cursor[i];
            w->sse_cursor[i] = x->sse_next; /* before the send: x may be closed */
            sub_send(x, w->sse_sending[i], w->sse_sent[i]);
            budget--;
        }
        if (w->sse_cursor[i])
            more = 1;
    }
    /* Not event_active: libevent runs events activated while it works its
     * active queue in the same pass, before polling the sockets again, so
     * the slices would run back to back. A zero timeout fires after the
     * next poll, behind the sockets that became ready. */
    if (more) {
        struct timeval now = {0, 0};
        evtimer_add(w->sse_more_ev, &now);
    }
}

/* Heartbeats go out in slices too (a turn of the loop apart), walking the
 * polls' lists from a cursor; a round that is still going when the next
 * one is due simply goes on. */
static void on_heartbeat_slice(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    worker_t *w = arg;
    int budget = SSE_SLICE;
    while (w->sse_hb_poll >= 0 && budget > 0) {
        conn_ctx_t *x = w->sse_hb_cursor;
        if (!x) {
            if (++w->sse_hb_poll < w->sse_n)
                w->sse_hb_cursor = w->sse_subs[w->sse_hb_poll];
            else
                w->sse_hb_poll = -1; /* the round is over */
            continue;
        }
        w->sse_hb_cursor = x->sse_next; /* before the send: x may be closed */
        if (http_conn_stream_pending(x->conn) == 0)
            sub_send(x, w->sse_hb, 0);
        budget--;
    }
    if (w->sse_hb_poll >= 0) {
        struct timeval now = {0, 0};
        evtimer_add(w->sse_hb_more_ev, &now);
    }
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg) {
    worker_t *w = arg;
    if (w->sse_hb_poll >= 0 || w->sse_n == 0)
        return; /* the last round is still under way, or nobody to beat for */
    w->sse_hb_poll = 0;
    w->sse_hb_cursor = w->sse_subs[0];
    on_heartbeat_slice(fd, what, arg);
}

int sse_worker_init(worker_t *w) {
    ingest_t *in = w->in;
    static const char hb[] = ":\n\n";
    w->sse_hb = http_chunk_new(sizeof hb - 1);
    memcpy(w->sse_hb->data, hb, sizeof hb - 1);
    w->sse_ev = event_new(w->base, -1, 0, on_sse, w);
    w->sse_more_ev = evtimer_new(w->base, on_sse, w);
    w->sse_hb_ev = event_new(w->base, -1, EV_PERSIST, on_heartbeat, w);
    w->sse_hb_more_ev = evtimer_new(w->base, on_heartbeat_slice, w);
    w->sse_hb_poll = -1; /* no round under way */
    int ms = in->conf->server_sse_heartbeat_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!w->sse_ev || !w->sse_more_ev || !w->sse_hb_ev || !w->sse_hb_more_ev ||
        event_add(w->sse_hb_ev, &tv) != 0)
        return -1;
    return 0;
}

void sse_worker_free(worker_t *w) {
    if (w->sse_ev)
        event_free(w->sse_ev);
    if (w->sse_hb_ev)
        event_free(w->sse_hb_ev);
    if (w->sse_more_ev)
        event_free(w->sse_more_ev);
    if (w->sse_hb_more_ev)
        event_free(w->sse_hb_more_ev);
    http_chunk_unref(w->sse_hb);
    for (int i = 0; i < w->sse_n; i++)
        http_chunk_unref(w->sse_sending[i]);
    free(w->sse_sending);
    free(w->sse_cursor);
    free(w->sse_subs);
    free(w->sse_sent);
}

/* Parses Last-Event-ID as a version; 0 when absent or not a number. */
static uint64_t parse_last_id(const http_req_t *r) {
    uint64_t v = 0;
    if (!r->last_event_id || r->last_event_id_len == 0 || r->last_event_id_len > 19)
        return 0;
    for (size_t i = 0; i < r->last_event_id_len; i++) {
        char ch = r->last_event_id[i];
        if (ch < '0' || ch > '9')
            return 0;
        v = v * 10 + (uint64_t)(ch - '0');
    }
    return v;
}

void sse_subscribe(worker_t *w, http_conn_t *c, const http_req_t *r, const char *id, size_t len) {
    ingest_t *in = w->in;
    conn_ctx_t *x = http_conn_owner(c);
    if (atomic_fetch_add(&in->sse.nsubs, 1) >= in->sse.max_subs) {
        atomic_fetch_sub(&in->sse.nsubs, 1);
        http_conn_reply_error(c, 503, "too_many_subscribers",
                              "server.sse_max_subscribers streams are open; retry later",
                              "Retry-After: 5\r\n");
        return;
    }
    if (r->head) { /* HEAD: the head of a stream, no stream */
        atomic_fetch_sub(&in->sse.nsubs, 1);
        /* No Content-Length: a GET's stream has none to tell. */
        http_conn_reply(c, 200, "text/event-stream", "Cache-Control: no-store\r\n", NULL,
                        HTTP_LEN_UNKNOWN);
        return;
    }
    pthread_mutex_lock(&in->sse.mu);
    int poll = hub_slot(&in->sse, id, len);
    pthread_mutex_unlock(&in->sse.mu);
    worker_reserve(w, poll + 1);
    metric_add(m_subs, 1);
    http_conn_stream_start(c, "text/event-stream",
                           "Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n");
    x->sse_on = 1;
    atomic_fetch_sub(&in->vote_conns, 1); /* a stream sends no votes */
    x->sse_poll = poll;
    x->sse_ver = 0;
    x->sse_prev = NULL;
    x->sse_next = w->sse_subs[poll];
    if (x->sse_next)
        x->sse_next->sse_prev = x;
    w->sse_subs[poll] = x;
    char retry[32];
    int rn = snprintf(retry, sizeof retry, "retry: %d\n\n", SSE_RETRY_MS);
    http_chunk_t *rk = http_chunk_new((size_t)rn);
    memcpy(rk->data, retry, (size_t)rn);
    http_conn_stream_send(c, rk, 0);
    http_chunk_unref(rk);
    uint64_t v;
    http_chunk_t *k = current(&in->sse, poll, &v);
    uint64_t last = parse_last_id(r);
    if (k && !(last && last == v))
        sub_send(x, k, v); /* may close c */
    else if (k)
        x->sse_ver = v;
    http_chunk_unref(k);
}
