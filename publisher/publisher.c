#include "publisher/publisher.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    uint64_t *published_gen; /* [npolls], publisher thread only */
    uint64_t *last_ms;       /* [npolls], monotonic ms of the last write */
    uint8_t *ever;           /* [npolls]: written at least once */
    _Atomic uint64_t writes;
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
    int stopping; /* under mu */
};

publisher_t *pub_new(const tally_config_t *c, engine_t *e) {
    publisher_t *p = xcalloc(1, sizeof *p);
    p->conf = c;
    p->engine = e;
    p->dir = xstrdup(c->pub_dir);
    p->min_interval_ms = c->pub_min_interval_ms;
    int n = c->npolls ? c->npolls : 1;
    p->published_gen = xcalloc((size_t)n, sizeof(uint64_t));
    p->last_ms = xcalloc((size_t)n, sizeof(uint64_t));
    p->ever = xcalloc((size_t)n, 1);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    return p;
}

void pub_free(publisher_t *p) {
    if (!p)
        return;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cond);
    free(p->published_gen);
    free(p->last_ms);
    free(p->ever);
    free(p->dir);
    free(p);
}

uint64_t pub_writes(const publisher_t *p) {
    return atomic_load(&p->writes);
}

static tally_err_t write_out(const char *dir, const char *name, const buf_t *b, char *errstr,
                             size_t esz) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
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

/* mkdir publisher.dir/polls, write index.html; once, then only polls. */
static tally_err_t publish_index(publisher_t *p, char *errstr, size_t esz) {
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/polls", p->dir);
    if (mkdir_p(sub) != 0) {
        snprintf(errstr, esz, "publisher.dir %s: %s", p->dir, strerror(errno));
        return TALLY_ERR_IO;
    }
    if (!p->stale_swept) {
        sweep_dir(p->dir);
        sweep_dir(sub);
        p->stale_swept = 1;
    }
    buf_t idx = {0};
    pub_render_index(p->conf, now_ms(), &idx);
    tally_err_t err = write_out(p->dir, "index.html", &idx, errstr, esz);
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

/* Reads generation before totals: a change after the read bumps the
 * generation again, so it is never missed. */
static tally_err_t publish_poll(publisher_t *p, int i, char *errstr, size_t esz) {
    const poll_conf_t *pc = engine_poll(p->engine, i);
    uint64_t gen = engine_poll_generation(p->engine, i);
    uint64_t *counts = xmalloc(sizeof *counts * (size_t)pc->noptions);
    series_view_t series;
    series_view_init(&series, pc->noptions);
    /* One read: the series sums to these counts. */
    engine_poll_read(p->engine, i, counts, &series);
    uint64_t now = now_ms();
    buf_t json = {0}, html = {0};
    pub_render_json_series(pc, counts, &series, now, &json);
    series_view_free(&series);
    pub_render_html(pc, counts, now, &html);
    char name[128];
    tally_err_t rc = TALLY_OK;
    /* The HTML first: a reader that sees new JSON finds a page at least as new. */
    snprintf(name, sizeof name, "polls/%s.html", pc->id);
    rc = write_out(p->dir, name, &html, errstr, esz);
    snprintf(name, sizeof name, "polls/%s.json", pc->id);
    if (rc == TALLY_OK)
        rc = write_out(p->dir, name, &json, errstr, esz);
    buf_free(&json);
    buf_free(&html);
    free(counts);
    if (rc == TALLY_OK) {
        p->published_gen[i] = gen;
        p->last_ms[i] = mono_ms();
        p->ever[i] = 1;
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
    if (!p->index_done && publish_index(p, err, sizeof err) != TALLY_OK) {
        note_failure(p, err, 0);
        return p->backoff_ms;
    }
    for (int i = 0; i < engine_npolls(p->engine); i++) {
        if (p->ever[i] && engine_poll_generation(p->engine, i) == p->published_gen[i])
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

static struct timespec deadline_in(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000;
    ts.tv_sec += ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    return ts;
}

static void *pub_main(void *arg) {
    publisher_t *p = arg;
    int next = -1;
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        if (next > 0) {
            /* Something is waiting out its min interval: further notices
             * would only wake us early, so sleep the interval out. */
            struct timespec ts = deadline_in(next);
            while (!p->stopping && pthread_cond_timedwait(&p->cond, &p->mu, &ts) != ETIMEDOUT)
                ;
        } else if (!p->notified) {
            struct timespec ts = deadline_in(1000);
            pthread_cond_timedwait(&p->cond, &p->mu, &ts);
        }
        p->notified = 0;
        if (p->stopping)
            break;
        pthread_mutex_unlock(&p->mu);
        next = publish_round(p, 0);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    publish_round(p, 1); /* last round: nothing changed stays unpublished */
    return NULL;
}

tally_err_t pub_start(publisher_t *p, char *errstr, size_t esz) {
    if (pthread_create(&p->thread, NULL, pub_main, p) != 0) {
        snprintf(errstr, esz, "publisher: cannot start thread");
        return TALLY_ERR_IO;
    }
    p->started = 1;
    return TALLY_OK;
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
