#include "publisher/publisher.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <xxhash.h>

#include "common/metrics.h"
#include "publisher/s3.h"

/* After a failed write: wait BACKOFF_MIN_MS, doubling to BACKOFF_MAX_MS,
 * until one succeeds. Failures are logged once, then at most every
 * FAIL_LOG_EVERY_MS with how many there were since. */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define FAIL_LOG_EVERY_MS 30000

struct publisher_s {
    const tally_config_t *conf;
    engine_t *engine;
    char *dir;
    int min_interval_ms;
    /* Per poll (engine index), publisher thread only; grown with the
     * engine's polls. */
    int cap;
    uint64_t *published_gen;
    uint64_t *last_ms;     /* monotonic ms of the last write */
    uint8_t *ever;         /* written at least once */
    uint8_t *state;        /* poll_state_t of the last write */
    uint8_t *frozen;       /* final and written (here or by an earlier run) */
    uint8_t *checked;      /* the existing file was looked at */
    uint64_t *version;     /* the last version rendered */
    uint64_t *vote_hash;   /* XXH3 of the vote page written, 0: none */
    uint64_t *content;     /* XXH3 of the last results rendered, version and time left out */
    int index_npolls;      /* index.html lists this many polls... */
    uint64_t index_states; /* ...in these states, with these options (a hash) */
    void (*on_publish)(void *arg, const poll_def_t *def, uint64_t version, const char *json,
                       size_t len);
    void *on_publish_arg;
    _Atomic uint64_t writes;
    s3_t *s3; /* NULL: S3 publishing is off */
    /* Publisher thread only (or the caller, before pub_start). */
    int index_done;          /* index.html (and polls/) written */
    int backoff_ms;          /* 0: the last write succeeded */
    uint64_t retry_at;       /* monotonic ms: no write before this */
    uint64_t fail_logged_ms; /* monotonic ms of the last failure logged */
    uint64_t fails_unlogged; /* failures since then */
    int stale_swept;

    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int notified; /* under mu */
    int held;     /* under mu: pub_hold */
    int stopping; /* under mu */
};

publisher_t *pub_new(const tally_config_t *c, engine_t *e) {
    publisher_t *p = xcalloc(1, sizeof *p);
    p->conf = c;
    p->engine = e;
    p->dir = xstrdup(c->pub_dir);
    p->min_interval_ms = c->pub_min_interval_ms;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    /* The key files were checked at start (config_check_s3): failing now
     * means they changed since; results still go to publisher.dir. */
    char err[512];
    if (s3_new(c, &p->s3, err, sizeof err) != TALLY_OK)
        log_error("publisher: S3 publishing is off: %s", err);
    return p;
}

void pub_free(publisher_t *p) {
    if (!p)
        return;
    s3_free(p->s3); /* after the last publish: it sends what that handed over */
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cond);
    free(p->published_gen);
    free(p->last_ms);
    free(p->ever);
    free(p->state);
    free(p->frozen);
    free(p->checked);
    free(p->version);
    free(p->vote_hash);
    free(p->content);
    free(p->dir);
    free(p);
}

/* Room for the engine's polls, which grow at run time. */
static void ensure_cap(publisher_t *p, int n) {
    int cap = grow_cap(p->cap, n);
    if (cap == p->cap)
        return;
    size_t o = (size_t)p->cap, c = (size_t)cap;
    p->published_gen = xrealloc_zero(p->published_gen, o, c, sizeof *p->published_gen);
    p->last_ms = xrealloc_zero(p->last_ms, o, c, sizeof *p->last_ms);
    p->ever = xrealloc_zero(p->ever, o, c, sizeof *p->ever);
    p->state = xrealloc_zero(p->state, o, c, sizeof *p->state);
    p->frozen = xrealloc_zero(p->frozen, o, c, sizeof *p->frozen);
    p->checked = xrealloc_zero(p->checked, o, c, sizeof *p->checked);
    p->version = xrealloc_zero(p->version, o, c, sizeof *p->version);
    p->vote_hash = xrealloc_zero(p->vote_hash, o, c, sizeof *p->vote_hash);
    p->content = xrealloc_zero(p->content, o, c, sizeof *p->content);
    p->cap = cap;
}

/* The version of poll i's next rendering: the one place that decides what
 * a version is (results JSON "version", the SSE event id). Milliseconds
 * since the epoch, and at least one more than the last: strictly
 * increasing with every rendering (a state that changes with time alone,
 * open -> closed, is a new version too, which a sum of log positions would
 * not be), and across restarts too while the clock does not go back, so a
 * page that saw a version before a restart takes the new ones. */
static uint64_t next_version(publisher_t *p, int i) {
    uint64_t v = now_ms();
    if (v <= p->version[i])
        v = p->version[i] + 1;
    p->version[i] = v;
    return v;
}

static metric_t *m_publishes, *m_publish_ns, *m_publish_fail;
static void pub_metrics_init(void) {
    metrics_t *m = metrics_default();
    m_publishes = metrics_counter(m, "tally_publish_total",
                                  "poll results rendered and written (one per version)", NULL);
    m_publish_fail =
        metrics_counter(m, "tally_publish_failures_total",
                        "poll results that could not be written to publisher.dir", NULL);
    m_publish_ns = metrics_histogram(m, "tally_publish_latency_seconds",
                                     "rendering and writing one poll's results (JSON and HTML)",
                                     NULL, METRICS_LATENCY_NS, METRICS_LATENCY_NS_N, 1e9);
}

void pub_set_on_publish(publisher_t *p,
                        void (*fn)(void *arg, const poll_def_t *def, uint64_t version,
                                   const char *json, size_t len),
                        void *arg) {
    p->on_publish = fn;
    p->on_publish_arg = arg;
}

/* Whether polls/ID.json already says the poll is final: then it was
 * frozen by an earlier run (or replay) and is never rewritten. *text gets
 * the file's bytes and *version its version (for the event stream). */
static int file_is_final(const char *dir, const char *id, buf_t *text, uint64_t *version) {
    char path[4200], chunk[8192];
    snprintf(path, sizeof path, "%s/polls/%s.json", dir, id);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(text, chunk, n);
    fclose(f);
    json_error_t jerr;
    json_t *j = text->len ? json_loadb(text->data, text->len, 0, &jerr) : NULL;
    if (!j)
        return 0;
    const char *st = json_string_value(json_object_get(j, "state"));
    int fin = st && !strcmp(st, "final");
    json_int_t v = json_integer_value(json_object_get(j, "version"));
    *version = v > 0 ? (uint64_t)v : 0;
    json_decref(j);
    return fin;
}

uint64_t pub_writes(const publisher_t *p) {
    return atomic_load(&p->writes);
}

/* Writes name (relative to publisher.dir) and hands it to the S3 uploader,
 * which mirrors it (when on), whether or not the local write worked. */
static tally_err_t write_out(publisher_t *p, const char *name, const buf_t *b, char *errstr,
                             size_t esz) {
    char path[4200];
    s3_put(p->s3, name, b->data, b->len);
    snprintf(path, sizeof path, "%s/%s", p->dir, name);
    /* Not fsynced: published files are derived data, rebuilt from the log. */
    if (write_file_atomic(path, b->data, b->len, 0) != 0) {
        snprintf(errstr, esz, "%s: %s", path, strerror(errno));
        return TALLY_ERR_IO;
    }
    return TALLY_OK;
}

/* Temp files of write_file_atomic (NAME.tmp.PID) whose writer is gone (a
 * crash between write and rename): publisher.dir is served to the public,
 * so they must not pile up there. A live process's are left alone. */
static void sweep_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d))) {
        const char *t = strstr(de->d_name, ".tmp.");
        char *end;
        if (!t)
            continue;
        long pid = strtol(t + 5, &end, 10);
        if (*end || end == t + 5 || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 ||
            errno != ESRCH)
            continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (unlink(path) == 0)
            log_info("publisher: removed %s, left by an interrupted write", path);
    }
    closedir(d);
}

/* Once, at pub_start (a held publisher writes nothing for a while, and
 * its leftovers are no less stale) or at the first write. */
static void sweep_stale(publisher_t *p) {
    if (p->stale_swept)
        return;
    char sub[4200];
    sweep_dir(p->dir);
    snprintf(sub, sizeof sub, "%s/polls", p->dir);
    sweep_dir(sub);
    snprintf(sub, sizeof sub, "%s/vote", p->dir);
    sweep_dir(sub);
    p->stale_swept = 1;
}

/* What index.html and the vote pages show of poll i (its state and
 * options), folded into h; 0 when the index does not list it. */
static uint64_t index_hash(publisher_t *p, int i, uint64_t now, const catalog_entry_t **out,
                           poll_state_t *state) {
    const catalog_entry_t *en = engine_poll_entry(p->engine, i);
    *out = en;
    if (!en)
        return 0;
    engine_poll_status_t st = engine_poll_status(p->engine, i, NULL);
    *state = poll_def_state_at(en->def, st.final, now);
    /* Options appended (or labels changed) rewrite the vote page. */
    return ((uint64_t)*state + 1) * 0x9E3779B97F4A7C15ull + (uint64_t)en->def_seq * 131 +
           (uint64_t)en->def->noptions;
}

/* mkdir publisher.dir/polls and vote/, write index.html and the vote
 * pages; again whenever a poll is added or changes state or options. */
static tally_err_t publish_index(publisher_t *p, char *errstr, size_t esz) {
    char sub[4200], votes[4200];
    snprintf(sub, sizeof sub, "%s/polls", p->dir);
    snprintf(votes, sizeof votes, "%s/vote", p->dir);
    if (mkdir_p(sub) != 0 || mkdir_p(votes) != 0) {
        snprintf(errstr, esz, "publisher.dir %s: %s", p->dir, strerror(errno));
        return TALLY_ERR_IO;
    }
    sweep_stale(p);
    buf_t idx = {0};
    int n = engine_npolls(p->engine);
    ensure_cap(p, n);
    /* After a failure (or at the first write) every vote page is written
     * again: publisher.dir may have lost them. */
    if (!p->index_done)
        memset(p->vote_hash, 0, sizeof *p->vote_hash * (size_t)p->cap);
    pub_poll_t *v = xcalloc((size_t)(n ? n : 1), sizeof *v);
    int k = 0;
    uint64_t now = now_ms(), states = 0;
    tally_err_t err = TALLY_OK;
    for (int i = 0; i < n; i++) {
        const catalog_entry_t *en;
        poll_state_t state = POLL_OPEN;
        uint64_t h = index_hash(p, i, now, &en, &state);
        if (!en)
            continue;
        states = states * 31 + h;
        v[k].def = en->def;
        v[k].state = state;
        k++;
        /* Every poll gets its vote page (the page answers what a closed or
         * scheduled poll says to a vote: 409), written when it changed: a
         * state change of one poll rewrites the index, not every page. */
        buf_t page = {0};
        char name[128];
        pub_render_poll_vote(en->def, &page);
        uint64_t ph = XXH3_64bits(page.data, page.len) | 1;
        snprintf(name, sizeof name, "vote/%s.html", en->def->id);
        if (err == TALLY_OK && ph != p->vote_hash[i]) {
            err = write_out(p, name, &page, errstr, esz);
            if (err == TALLY_OK)
                p->vote_hash[i] = ph;
        }
        buf_free(&page);
    }
    if (err != TALLY_OK) {
        free(v);
        return err;
    }
    pub_render_index_polls(v, k, now, &idx);
    free(v);
    p->index_npolls = n;
    p->index_states = states;
    err = write_out(p, "index.html", &idx, errstr, esz);
    buf_free(&idx);
    if (err == TALLY_OK)
        p->index_done = 1;
    return err;
}

/* A write failed: back off, and say so without flooding the log. quiet:
 * the caller reports this failure itself (pub_publish_all). */
static void note_failure(publisher_t *p, const char *err, int quiet) {
    uint64_t now = mono_ms();
    int first = p->backoff_ms == 0;
    p->backoff_ms = first
                        ? BACKOFF_MIN_MS
                        : (p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2);
    p->retry_at = now + (uint64_t)p->backoff_ms;
    if (quiet || !(first || now - p->fail_logged_ms >= FAIL_LOG_EVERY_MS)) {
        if (quiet)
            p->fail_logged_ms = now;
        else
            p->fails_unlogged++;
        return;
    }
    if (first)
        log_error("publisher: %s (results are derived: counting goes on, the publisher retries)",
                  err);
    else
        log_error("publisher: still failing (%llu more failures): %s",
                  (unsigned long long)p->fails_unlogged, err);
    p->fail_logged_ms = now;
    p->fails_unlogged = 0;
}

static void note_success(publisher_t *p) {
    if (p->backoff_ms)
        log_info("publisher: writing to %s again", p->dir);
    p->backoff_ms = 0;
    p->retry_at = 0;
}

/* Whether index.html lists other polls or states than it would now. */
static int index_stale(publisher_t *p) {
    int n = engine_npolls(p->engine);
    if (n != p->index_npolls)
        return 1;
    uint64_t now = now_ms(), states = 0;
    for (int i = 0; i < n; i++) {
        const catalog_entry_t *en;
        poll_state_t state;
        uint64_t h = index_hash(p, i, now, &en, &state);
        if (en)
            states = states * 31 + h;
    }
    return states != p->index_states;
}

/* The state poll i would be published in now, or -1 for none. */
static int poll_state_now(publisher_t *p, int i) {
    const catalog_entry_t *en = engine_poll_entry(p->engine, i);
    if (!en)
        return -1;
    engine_poll_status_t st = engine_poll_status(p->engine, i, NULL);
    return (int)poll_def_state_at(en->def, st.final, now_ms());
}

/* Reads generation before totals: a change after the read bumps the
 * generation again, so it is never missed. A final poll is written once
 * and never again (nor when an earlier run left it final). */
static tally_err_t publish_poll(publisher_t *p, int i, char *errstr, size_t esz) {
    ensure_cap(p, i + 1);
    if (p->frozen[i])
        return TALLY_OK;
    const catalog_entry_t *en = engine_poll_entry(p->engine, i);
    if (!en)
        return TALLY_OK; /* an unreadable DEFINE: nothing to show */
    const poll_def_t *pc = en->def;
    if (!p->checked[i]) {
        p->checked[i] = 1;
        buf_t text = {0};
        uint64_t version = 0;
        if (file_is_final(p->dir, pc->id, &text, &version)) {
            p->frozen[i] = 1;
            p->ever[i] = 1;
            p->state[i] = POLL_FINAL;
            /* The stream serves the frozen results as they are. */
            if (p->on_publish)
                p->on_publish(p->on_publish_arg, pc, version, text.data, text.len);
            buf_free(&text);
            return TALLY_OK;
        }
        buf_free(&text);
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pub_metrics_init);
    uint64_t t0 = metrics_now_ns();
    int np = engine_npartitions(p->engine);
    uint64_t gen = engine_poll_generation(p->engine, i);
    uint64_t *finals = xcalloc((size_t)np, sizeof *finals);
    engine_poll_status_t st = engine_poll_status(p->engine, i, finals);
    uint64_t *counts = xmalloc(sizeof *counts * (size_t)(pc->noptions ? pc->noptions : 1));
    series_view_t series;
    series_view_init(&series, pc->noptions);
    /* One read: the series sums to these counts. */
    engine_poll_read(p->engine, i, counts, pc->noptions, &series);
    uint64_t now = now_ms();
    pub_poll_t v = {
        .def = pc,
        .counts = counts,
        .series = &series,
        .state = poll_def_state_at(pc, st.final, now),
        .late = st.late,
        .final_positions = st.final ? finals : NULL,
        .npartitions = np,
    };
    if (pc->visibility == VIS_ON_CLOSE && !st.final) {
        /* Embargoed: the poll and its state; no counts, no series (the
         * buckets would tell the counts), in the files and the stream. */
        v.counts = NULL;
        v.series = NULL;
    }
    buf_t json = {0}, html = {0};
    /* What a reader would see, but for the version and the time: the
     * generation was read before the totals, so a change applied between
     * the two reads is in this rendering and bumps the generation once
     * more; the next round would render the same results as a new version
     * (an event to every subscriber, one more write). Unchanged: nothing. */
    pub_render_poll_json(&v, 0, &json);
    uint64_t content = XXH3_64bits(json.data, json.len) | 1;
    if (p->ever[i] && content == p->content[i]) {
        p->published_gen[i] = gen;
        buf_free(&json);
        series_view_free(&series);
        free(counts);
        free(finals);
        return TALLY_OK;
    }
    json.len = 0;
    v.version = next_version(p, i);
    pub_render_poll_json(&v, now, &json);
    pub_render_poll_html(&v, now, &html);
    series_view_free(&series);
    char name[128];
    tally_err_t rc = TALLY_OK;
    /* The HTML first: a reader that sees new JSON finds a page at least as new. */
    snprintf(name, sizeof name, "polls/%s.html", pc->id);
    rc = write_out(p, name, &html, errstr, esz);
    snprintf(name, sizeof name, "polls/%s.json", pc->id);
    if (rc == TALLY_OK)
        rc = write_out(p, name, &json, errstr, esz);
    metric_observe(m_publish_ns, metrics_now_ns() - t0);
    metric_inc(rc == TALLY_OK ? m_publishes : m_publish_fail);
    /* Live subscribers get it even when publisher.dir refused it: the
     * files are one copy of the results, the stream another. */
    if (p->on_publish)
        p->on_publish(p->on_publish_arg, pc, v.version, json.data, json.len);
    buf_free(&json);
    buf_free(&html);
    free(counts);
    free(finals);
    if (rc == TALLY_OK) {
        p->published_gen[i] = gen;
        p->content[i] = content;
        p->last_ms[i] = mono_ms();
        p->ever[i] = 1;
        p->state[i] = (uint8_t)v.state;
        if (st.final)
            p->frozen[i] = 1;
        atomic_fetch_add(&p->writes, 1);
    }
    return rc;
}

tally_err_t pub_publish_all(publisher_t *p, char *errstr, size_t esz) {
    tally_err_t rc = publish_index(p, errstr, esz);
    for (int i = 0; i < engine_npolls(p->engine) && rc == TALLY_OK; i++)
        rc = publish_poll(p, i, errstr, esz);
    if (rc == TALLY_OK) {
        note_success(p);
    } else {
        note_failure(p, errstr, 1 /*quiet*/);
        p->index_done = 0;
    }
    return rc;
}

/* One round: publishes what changed and is due; returns ms until the next
 * poll becomes due, or -1 when nothing is pending. After a failure nothing
 * is written before retry_at (force: the last round, tries anyway). */
static int publish_round(publisher_t *p, int force) {
    int next = -1;
    uint64_t now = mono_ms();
    char err[512];
    if (!force && p->retry_at > now)
        return (int)(p->retry_at - now);
    if ((!p->index_done || index_stale(p)) && publish_index(p, err, sizeof err) != TALLY_OK) {
        note_failure(p, err, 0);
        return p->backoff_ms;
    }
    int npolls = engine_npolls(p->engine);
    ensure_cap(p, npolls);
    for (int i = 0; i < npolls; i++) {
        if (p->frozen[i])
            continue;
        /* Time moves states too (scheduled -> open -> closed): republish. */
        if (p->ever[i] && engine_poll_generation(p->engine, i) == p->published_gen[i] &&
            poll_state_now(p, i) == p->state[i])
            continue;
        uint64_t due = p->last_ms[i] + (uint64_t)p->min_interval_ms;
        if (!force && p->ever[i] && now < due) {
            int wait = (int)(due - now);
            if (next < 0 || wait < next)
                next = wait;
            continue;
        }
        if (publish_poll(p, i, err, sizeof err) != TALLY_OK) {
            note_failure(p, err, 0);
            /* polls/ may be gone, or never was (mkdir_p takes any existing
             * name): make it again on the next try. */
            p->index_done = 0;
            return p->backoff_ms; /* the others would fail alike */
        }
        note_success(p);
    }
    return next;
}

static void *pub_main(void *arg) {
    publisher_t *p = arg;
    thread_name("publisher");
    int next = -1;
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        if (next > 0) {
            /* Something is waiting out its min interval: further notices
             * would only wake us early, so sleep the interval out. */
            struct timespec ts = deadline_in_ms(next);
            while (!p->stopping && pthread_cond_timedwait(&p->cond, &p->mu, &ts) != ETIMEDOUT)
                ;
        } else if (!p->notified || p->held) {
            struct timespec ts = deadline_in_ms(1000);
            pthread_cond_timedwait(&p->cond, &p->mu, &ts);
        }
        if (p->stopping)
            break;
        if (p->held) {
            next = -1; /* what is noticed now is published at the release */
            continue;
        }
        p->notified = 0;
        pthread_mutex_unlock(&p->mu);
        next = publish_round(p, 0);
        pthread_mutex_lock(&p->mu);
    }
    int held = p->held;
    pthread_mutex_unlock(&p->mu);
    if (!held)
        publish_round(p, 1); /* last round: nothing changed stays unpublished */
    return NULL;
}

tally_err_t pub_start(publisher_t *p, char *errstr, size_t esz) {
    sweep_stale(p);
    if (pthread_create(&p->thread, NULL, pub_main, p) != 0) {
        snprintf(errstr, esz, "publisher: cannot start thread");
        return TALLY_ERR_IO;
    }
    p->started = 1;
    return TALLY_OK;
}

void pub_hold(publisher_t *p, int on) {
    pthread_mutex_lock(&p->mu);
    p->held = on;
    p->notified = 1; /* released: publish what changed meanwhile */
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

void pub_notify(void *arg) {
    publisher_t *p = arg;
    pthread_mutex_lock(&p->mu);
    if (!p->notified) {
        p->notified = 1;
        pthread_cond_signal(&p->cond);
    }
    pthread_mutex_unlock(&p->mu);
}

void pub_stop(publisher_t *p) {
    if (!p->started)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    p->started = 0;
}
