/* The poll lifecycle around the engine in tally run / tally engine: catching
 * up with the log's history at start, completing a broadcast a crash cut
 * short, defining the config's polls, and the scheduler that makes closed
 * polls final. See docs/ARCHITECTURE.md, "Polls as live objects". */
#include "cmd/lifecycle.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "log/record.h"

#define SCHED_TICK_MS 250

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

tally_err_t lifecycle_catch_up(engine_t *e, vlog_t *log, char *errstr, size_t esz) {
    int np = vlog_partitions(log);
    uint64_t *ends = xcalloc((size_t)np, sizeof *ends);
    tally_err_t rc = TALLY_OK;
    if (vlog_end_positions(log, ends, errstr, esz) != 0) {
        rc = TALLY_ERR_UNAVAIL;
        goto out;
    }
    uint64_t t0 = mono_ms(), said = t0;
    for (;;) {
        int behind = 0;
        for (int p = 0; p < np; p++)
            if (engine_position(e, p) < ends[p])
                behind++;
        if (!behind)
            break;
        if (engine_failed(e)) {
            snprintf(errstr, esz, "the engine failed while catching up with the log");
            rc = TALLY_ERR_IO;
            goto out;
        }
        if (mono_ms() - said >= 5000) {
            log_info("starting: catching up with the log, %d partitions behind", behind);
            said = mono_ms();
        }
        sleep_ms(10);
    }
    log_info("starting: caught up with the log in %llu ms", (unsigned long long)(mono_ms() - t0));
out:
    free(ends);
    return rc;
}

/* Appends the control record of entry en at seq (a DEFINE of its
 * definition, or its FINAL) to the partitions that lack it. */
static tally_err_t reappend(history_t *h, const catalog_entry_t *en, unsigned kind, uint64_t seq,
                            const int *parts, int n, char *errstr, size_t esz) {
    size_t len;
    vlog_meta_t meta;
    uint8_t *rec = catalog_entry_encode(en, kind, seq, &len, &meta);
    catalog_error_t err = {0};
    tally_err_t rc =
        rec ? history_append_raw(h, rec, len, &meta, parts, n, &err) : TALLY_ERR_INTERNAL;
    if (rc != TALLY_OK)
        snprintf(errstr, esz, "re-appending seq %llu of poll %s: %s", (unsigned long long)seq,
                 en->def->id, rec ? err.message : "cannot encode");
    free(rec);
    return rc;
}

typedef struct {
    const catalog_entry_t *en;
    unsigned kind;
    uint64_t seq;
} pending_t;

static int pending_cmp(const void *a, const void *b) {
    const pending_t *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

tally_err_t lifecycle_repair(engine_t *e, history_t *h, const catalog_t *cat, char *errstr,
                             size_t esz) {
    int np = engine_npartitions(e);
    uint64_t top = catalog_seq(cat);
    int n = catalog_npolls(cat);
    pending_t *pend = xcalloc((size_t)(2 * n + 1), sizeof *pend);
    int *parts = xcalloc((size_t)np, sizeof *parts);
    tally_err_t rc = TALLY_OK;
    for (int p = 0; p < np; p++) {
        uint64_t have = engine_partition_seq(e, p);
        if (have >= top)
            continue;
        int k = 0;
        for (int i = 0; i < n; i++) {
            const catalog_entry_t *en = catalog_at(cat, i);
            if (en->def_seq > have)
                pend[k++] = (pending_t){en, CONTROL_DEFINE, en->def_seq};
            if (en->final && en->final_seq > have)
                pend[k++] = (pending_t){en, CONTROL_FINAL, en->final_seq};
        }
        qsort(pend, (size_t)k, sizeof *pend, pending_cmp);
        log_warn("partition %d lacks the poll history after seq %llu (of %llu; a change was cut "
                 "short by a crash): appending %d record%s",
                 p, (unsigned long long)have, (unsigned long long)top, k, k == 1 ? "" : "s");
        parts[0] = p;
        for (int j = 0; j < k && rc == TALLY_OK; j++)
            rc = reappend(h, pend[j].en, pend[j].kind, pend[j].seq, parts, 1, errstr, esz);
        if (rc != TALLY_OK)
            break;
    }
    free(parts);
    free(pend);
    return rc;
}

tally_err_t lifecycle_config_polls(const tally_config_t *c, history_t *h, catalog_live_t *live,
                                   char *errstr, size_t esz) {
    for (int i = 0; i < c->npolls; i++) {
        const poll_conf_t *pc = &c->polls[i];
        const catalog_t *cat = catalog_live_get(live);
        const catalog_entry_t *en = catalog_find(cat, pc->id, strlen(pc->id));
        if (en && en->def_seq) {
            const poll_def_t *d = en->def;
            const char *field = NULL;
            char why[256] = "";
            if (d->mode != pc->mode) {
                field = "mode";
                snprintf(why, sizeof why, "the history says %s, the config %s",
                         poll_mode_name(d->mode), poll_mode_name(pc->mode));
            } else if (d->mode == MODE_CAPPED && d->max_votes != pc->max_votes) {
                field = "max_votes";
                snprintf(why, sizeof why, "the history says %u, the config %u", d->max_votes,
                         pc->max_votes);
            } else if ((d->voter_auth == VOTER_AUTH_JWT) != (pc->voter_auth == POLL_AUTH_JWT)) {
                field = "voter_auth";
                snprintf(why, sizeof why, "the history says %s, the config %s",
                         poll_voter_auth_name(d->voter_auth), poll_auth_name(pc->voter_auth));
            } else {
                for (int k = 0; k < pc->noptions && k < d->noptions && !field; k++)
                    if (strcmp(pc->options[k].id, d->options[k].id)) {
                        field = "options";
                        snprintf(why, sizeof why,
                                 "option %d is '%s' in the history, '%s' in the "
                                 "config",
                                 k + 1, d->options[k].id, pc->options[k].id);
                    }
            }
            if (field) {
                snprintf(errstr, esz,
                         "config poll %s disagrees with the log's history: %s (%s); the "
                         "history wins: fix [poll.%s] (or remove it: the log defines the poll)",
                         pc->id, field, why, pc->id);
                return TALLY_ERR_CONFIG;
            }
            if (pc->noptions > d->noptions) {
                /* Options appended in the config: a compatible change, as
                 * the admin API's PATCH would make it (no recount). */
                if (en->final) {
                    log_warn("config poll %s: options added to a final poll are ignored", pc->id);
                    continue;
                }
                poll_def_t *next = poll_def_dup(d);
                next->options =
                    xrealloc(next->options, sizeof *next->options * (size_t)pc->noptions);
                for (int k = d->noptions; k < pc->noptions; k++) {
                    next->options[k].id = xstrdup(pc->options[k].id);
                    next->options[k].label = xstrdup(pc->options[k].label);
                }
                next->noptions = pc->noptions;
                catalog_error_t err = {0};
                if (history_update(h, next, now_ms(), 0, NULL, &err) != TALLY_OK) {
                    snprintf(errstr, esz, "config poll %s: appending its new options: %s", pc->id,
                             err.message);
                    return err.http_status == 409 ? TALLY_ERR_CONFIG : TALLY_ERR_UNAVAIL;
                }
                log_info("config poll %s: %d option%s appended to its history", pc->id,
                         pc->noptions - d->noptions, pc->noptions - d->noptions == 1 ? "" : "s");
                continue;
            }
            int differs = strcmp(d->title, pc->title) != 0 || d->opens_at != pc->opens_at ||
                          d->closes_at != pc->closes_at || (int)d->visibility != pc->visibility;
            for (int k = 0; k < pc->noptions && !differs; k++)
                differs = strcmp(d->options[k].label, pc->options[k].label) != 0;
            if (differs)
                log_warn("config poll %s: title, labels, schedule or visibility differ from the "
                         "log's history, which wins (change them through the admin API)",
                         pc->id);
            continue;
        }
        poll_def_defaults_t dflt = {(uint32_t)c->ingest_idempotency_window_s, now_ms(),
                                    POLL_SRC_CONFIG};
        catalog_error_t err = {0};
        if (history_create(h, poll_def_from_conf(pc, &dflt), NULL, &err) != TALLY_OK) {
            snprintf(errstr, esz, "defining config poll %s in the log: %s", pc->id, err.message);
            return TALLY_ERR_UNAVAIL;
        }
        log_info("config poll %s defined in the log's history", pc->id);
    }
    return TALLY_OK;
}

/* ---- the FINAL scheduler ---- */

struct lifecycle_sched_s {
    history_t *h;
    catalog_live_t *live;
    uint64_t grace_ms;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;
    uint64_t finals;
};

/* Makes every poll final whose close is final_grace_ms past. */
static void sched_round(lifecycle_sched_t *s) {
    /* A change whose append failed is completed even when no other comes
     * (a failed create has no live entry to make final). */
    catalog_error_t serr = {0};
    if (history_settle(s->h, &serr) != TALLY_OK) {
        log_warn("history: %s (retrying)", serr.message);
        return;
    }
    const catalog_t *cat = catalog_live_get(s->live);
    uint64_t now = now_ms();
    int n = catalog_npolls(cat);
    char **due = NULL;
    int ndue = 0;
    for (int i = 0; i < n; i++) {
        const catalog_entry_t *en = catalog_at(cat, i);
        if (en->def_seq && !en->final && en->def->closes_at &&
            now >= en->def->closes_at + s->grace_ms) {
            due = xrealloc(due, sizeof *due * (size_t)(ndue + 1));
            due[ndue++] = xstrdup(en->def->id);
        }
    }
    for (int i = 0; i < ndue; i++) {
        catalog_error_t err = {0};
        tally_err_t rc = history_final(s->h, due[i], now_ms(), s->grace_ms, NULL, &err);
        if (rc == TALLY_OK) {
            s->finals++;
            log_info("poll %s is final", due[i]);
        } else if (strcmp(err.code, "poll_final") != 0 && strcmp(err.code, "not_due") != 0) {
            log_warn("poll %s: cannot write its FINAL yet: %s (retrying)", due[i], err.message);
        }
        free(due[i]);
    }
    free(due);
}

static void *sched_main(void *arg) {
    lifecycle_sched_t *s = arg;
    thread_name("lifecycle");
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        pthread_mutex_unlock(&s->mu);
        sched_round(s);
        pthread_mutex_lock(&s->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SCHED_TICK_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        if (!s->stopping)
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

lifecycle_sched_t *lifecycle_sched_start(history_t *h, catalog_live_t *live, uint64_t grace_ms) {
    lifecycle_sched_t *s = xcalloc(1, sizeof *s);
    s->h = h;
    s->live = live;
    s->grace_ms = grace_ms;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->th, NULL, sched_main, s) != 0) {
        log_error("cannot start the FINAL scheduler thread");
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        return NULL;
    }
    return s;
}

void lifecycle_sched_stop(lifecycle_sched_t *s) {
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
