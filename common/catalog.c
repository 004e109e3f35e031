#include "common/catalog.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/ids.h"
#include "common/utf8.h"
#include "common/util.h"
#include "log/record.h"

/* ---- names ---- */

static const char *const vis_names[] = {"live", "on_close"};
static const char *const auth_names[] = {"none", "jwt"};
static const char *const src_names[] = {"admin", "config"};
static const char *const state_names[] = {"scheduled", "open", "closed", "final"};

const char *poll_visibility_name(poll_visibility_t v) {
    return vis_names[v == VIS_ON_CLOSE];
}
const char *poll_voter_auth_name(poll_voter_auth_t a) {
    return auth_names[a == VOTER_AUTH_JWT];
}
const char *poll_source_name(poll_source_t s) {
    return src_names[s == POLL_SRC_CONFIG];
}
const char *poll_state_name(poll_state_t s) {
    return (unsigned)s < 4 ? state_names[s] : "unknown";
}

static int name_index(const char *const *names, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], s))
            return i;
    return -1;
}

/* ---- errors ---- */

static tally_err_t fail(catalog_error_t *err, int status, const char *code, const char *field,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static tally_err_t fail(catalog_error_t *err, int status, const char *code, const char *field,
                        const char *fmt, ...) {
    if (err) {
        err->http_status = status;
        snprintf(err->code, sizeof err->code, "%s", code);
        snprintf(err->field, sizeof err->field, "%s", field ? field : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    switch (status) {
    case 400: return TALLY_ERR_CONFIG;
    case 404:
    case 409: return TALLY_ERR_STATE;
    case 503: return TALLY_ERR_UNAVAIL;
    default: return TALLY_ERR_INTERNAL;
    }
}

#define BAD(field, ...) fail(err, 400, "bad_field", field, __VA_ARGS__)

/* ---- definitions ---- */

void poll_def_free(poll_def_t *d) {
    if (!d)
        return;
    for (int i = 0; i < d->noptions; i++) {
        free(d->options[i].id);
        free(d->options[i].label);
    }
    free(d->options);
    free(d->id);
    free(d->title);
    free(d);
}

poll_def_t *poll_def_dup(const poll_def_t *d) {
    poll_def_t *n = xmalloc(sizeof *n);
    *n = *d;
    n->id = xstrdup(d->id);
    n->title = xstrdup(d->title);
    n->options = xcalloc((size_t)(d->noptions ? d->noptions : 1), sizeof *n->options);
    for (int i = 0; i < d->noptions; i++) {
        n->options[i].id = xstrdup(d->options[i].id);
        n->options[i].label = xstrdup(d->options[i].label);
    }
    return n;
}

int poll_def_equal(const poll_def_t *a, const poll_def_t *b) {
    if (strcmp(a->id, b->id) || strcmp(a->title, b->title) || a->mode != b->mode ||
        a->max_votes != b->max_votes || a->noptions != b->noptions ||
        a->visibility != b->visibility || a->voter_auth != b->voter_auth ||
        a->opens_at != b->opens_at || a->closes_at != b->closes_at ||
        a->idempotency_window_s != b->idempotency_window_s || a->created_ms != b->created_ms ||
        a->source != b->source)
        return 0;
    for (int i = 0; i < a->noptions; i++)
        if (strcmp(a->options[i].id, b->options[i].id) ||
            strcmp(a->options[i].label, b->options[i].label))
            return 0;
    return 1;
}

int poll_def_option_index(const poll_def_t *d, const char *id, size_t len) {
    for (int i = 0; i < d->noptions; i++)
        if (strlen(d->options[i].id) == len && !memcmp(d->options[i].id, id, len))
            return i;
    return -1;
}

static tally_err_t get_text(json_t *v, const char *field, size_t max, char **out,
                            catalog_error_t *err) {
    if (!json_is_string(v))
        return BAD(field, "%s must be a string", field);
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0 || n > max)
        return BAD(field, "%s must be 1-%zu bytes (%zu given)", field, max, n);
    if (memchr(s, '\0', n) || !utf8_valid(s, n))
        return BAD(field, "%s must be UTF-8 text without NUL", field);
    *out = xstrndup(s, n);
    return TALLY_OK;
}

static tally_err_t get_id(json_t *v, const char *field, char **out, catalog_error_t *err) {
    if (!json_is_string(v) || !id_valid(json_string_value(v), json_string_length(v)))
        return BAD(field, "%s must be 1-%d chars of [A-Za-z0-9_-]", field, ID_MAX_LEN);
    *out = xstrndup(json_string_value(v), json_string_length(v));
    return TALLY_OK;
}

/* A time: integer ms (> 0), an RFC3339 string, or null (unset). */
static tally_err_t get_time(json_t *v, const char *field, uint64_t *out, catalog_error_t *err) {
    if (json_is_null(v)) {
        *out = 0;
        return TALLY_OK;
    }
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        *out = (uint64_t)json_integer_value(v);
        return TALLY_OK;
    }
    uint64_t ms;
    if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v) &&
        parse_rfc3339(json_string_value(v), &ms) == 0 && ms > 0) {
        *out = ms;
        return TALLY_OK;
    }
    return BAD(field, "%s must be an RFC3339 time, integer ms since the epoch, or null", field);
}

static tally_err_t get_uint(json_t *v, const char *field, uint64_t lo, uint64_t hi, uint64_t *out,
                            catalog_error_t *err) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < lo ||
        (uint64_t)json_integer_value(v) > hi)
        return BAD(field, "%s must be an integer in %llu..%llu", field, (unsigned long long)lo,
                   (unsigned long long)hi);
    *out = (uint64_t)json_integer_value(v);
    return TALLY_OK;
}

static tally_err_t get_enum(json_t *v, const char *field, const char *const *names, int n, int *out,
                            catalog_error_t *err) {
    int i = json_is_string(v) ? name_index(names, n, json_string_value(v)) : -1;
    if (i < 0) {
        char list[128] = "";
        for (int k = 0; k < n; k++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "",
                     names[k]);
        return BAD(field, "%s must be one of %s", field, list);
    }
    *out = i;
    return TALLY_OK;
}

static tally_err_t get_options(json_t *v, poll_def_t *d, catalog_error_t *err) {
    if (!json_is_array(v) || json_array_size(v) == 0)
        return BAD("options", "options must be a non-empty list");
    if (json_array_size(v) > POLL_MAX_OPTIONS)
        return BAD("options", "options: more than %d", POLL_MAX_OPTIONS);
    size_t n = json_array_size(v);
    d->options = xcalloc(n, sizeof *d->options);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(v, i);
        char field[64];
        poll_option_t *opt = &d->options[i];
        d->noptions = (int)i + 1; /* freed by poll_def_free whatever happens next */
        snprintf(field, sizeof field, "options[%zu]", i);
        if (json_is_string(o)) {
            if (get_id(o, field, &opt->id, err) != TALLY_OK)
                return TALLY_ERR_CONFIG;
        } else if (json_is_object(o)) {
            const char *k;
            json_t *ov;
            json_object_foreach(o, k, ov) {
                char f[64];
                snprintf(f, sizeof f, "options[%zu].%.20s", i, k);
                if (!strcmp(k, "id")) {
                    if (get_id(ov, f, &opt->id, err) != TALLY_OK)
                        return TALLY_ERR_CONFIG;
                } else if (!strcmp(k, "label")) {
                    if (get_text(ov, f, POLL_LABEL_MAX, &opt->label, err) != TALLY_OK)
                        return TALLY_ERR_CONFIG;
                } else {
                    if (!id_valid(k, strlen(k))) /* named only when id-shaped */
                        snprintf(f, sizeof f, "options[%zu]", i);
                    return BAD(f, "%s: unknown key (id, label)", f);
                }
            }
            if (!opt->id) {
                snprintf(field, sizeof field, "options[%zu].id", i);
                return BAD(field, "%s is missing", field);
            }
        } else {
            return BAD(field, "%s must be an option id or {\"id\",\"label\"}", field);
        }
        if (!opt->label)
            opt->label = xstrdup(opt->id);
        if (poll_def_option_index(d, opt->id, strlen(opt->id)) != (int)i) {
            snprintf(field, sizeof field, "options[%zu].id", i);
            return BAD(field, "%s: option '%s' is listed twice", field, opt->id);
        }
    }
    return TALLY_OK;
}

tally_err_t poll_def_from_json(const char *json, size_t len, const poll_def_defaults_t *dflt,
                               poll_def_t **out, catalog_error_t *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return BAD("", "not JSON: %s", jerr.text);
    poll_def_t *d = xcalloc(1, sizeof *d);
    d->idempotency_window_s = dflt ? dflt->idempotency_window_s : 600;
    d->created_ms = dflt ? dflt->now_ms : 0;
    d->source = dflt ? dflt->source : POLL_SRC_ADMIN;
    tally_err_t rc = TALLY_OK;
    int have_max = 0, have_options = 0;
    if (!json_is_object(root)) {
        rc = BAD("", "a poll must be a JSON object");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        uint64_t u = 0;
        int e;
        if (!strcmp(k, "id"))
            rc = get_id(v, "id", &d->id, err);
        else if (!strcmp(k, "title"))
            rc = get_text(v, "title", POLL_TITLE_MAX, &d->title, err);
        else if (!strcmp(k, "mode")) {
            if (!json_is_string(v) || poll_mode_parse(json_string_value(v), &d->mode) != TALLY_OK)
                rc = BAD("mode", "mode must be one of one-per-voter, changeable, unlimited, "
                                 "capped");
        } else if (!strcmp(k, "max_votes")) {
            if ((rc = get_uint(v, "max_votes", 1, POLL_MAX_VOTES, &u, err)) == TALLY_OK)
                d->max_votes = (uint32_t)u;
            have_max = 1;
        } else if (!strcmp(k, "options")) {
            rc = get_options(v, d, err);
            have_options = 1;
        } else if (!strcmp(k, "visibility")) {
            if ((rc = get_enum(v, "visibility", vis_names, 2, &e, err)) == TALLY_OK)
                d->visibility = (poll_visibility_t)e;
        } else if (!strcmp(k, "voter_auth")) {
            if ((rc = get_enum(v, "voter_auth", auth_names, 2, &e, err)) == TALLY_OK)
                d->voter_auth = (poll_voter_auth_t)e;
        } else if (!strcmp(k, "source")) {
            if ((rc = get_enum(v, "source", src_names, 2, &e, err)) == TALLY_OK)
                d->source = (poll_source_t)e;
        } else if (!strcmp(k, "opens_at"))
            rc = get_time(v, "opens_at", &d->opens_at, err);
        else if (!strcmp(k, "closes_at"))
            rc = get_time(v, "closes_at", &d->closes_at, err);
        else if (!strcmp(k, "idempotency_window_s")) {
            if ((rc = get_uint(v, "idempotency_window_s", 0, 30 * 86400, &u, err)) == TALLY_OK)
                d->idempotency_window_s = (uint32_t)u;
        } else if (!strcmp(k, "created_ms")) {
            rc = get_uint(v, "created_ms", 0, UINT64_C(1) << 53, &d->created_ms, err);
        } else {
            /* Named only when id-shaped: keys may be any UTF-8. */
            int named = id_valid(k, strlen(k));
            rc = BAD(named ? k : "",
                     "unknown key%s%s%s (id, title, mode, max_votes, options, visibility, "
                     "voter_auth, opens_at, closes_at, idempotency_window_s, created_ms, "
                     "source)",
                     named ? " '" : "", named ? k : "", named ? "'" : "");
        }
        if (rc != TALLY_OK)
            goto out;
    }
    if (!d->id) {
        rc = BAD("id", "id is missing");
        goto out;
    }
    if (!have_options) {
        rc = BAD("options", "options is missing");
        goto out;
    }
    if (d->mode == MODE_CAPPED && !have_max) {
        rc = BAD("max_votes", "max_votes is required in mode capped");
        goto out;
    }
    if (d->mode != MODE_CAPPED && have_max) {
        rc = BAD("max_votes", "max_votes is only for mode capped");
        goto out;
    }
    if (d->opens_at && d->closes_at && d->closes_at <= d->opens_at) {
        rc = BAD("closes_at", "closes_at must be after opens_at");
        goto out;
    }
    if (!d->title)
        d->title = xstrdup(d->id);
out:
    json_decref(root);
    if (rc != TALLY_OK)
        poll_def_free(d);
    else
        *out = d;
    return rc;
}

poll_def_t *poll_def_from_conf(const poll_conf_t *pc, const poll_def_defaults_t *dflt) {
    poll_def_t *d = xcalloc(1, sizeof *d);
    d->id = xstrdup(pc->id);
    d->title = xstrdup(pc->title ? pc->title : pc->id);
    d->mode = pc->mode;
    d->max_votes = pc->mode == MODE_CAPPED ? pc->max_votes : 0;
    d->noptions = pc->noptions;
    d->options = xcalloc((size_t)(pc->noptions ? pc->noptions : 1), sizeof *d->options);
    for (int i = 0; i < pc->noptions; i++) {
        d->options[i].id = xstrdup(pc->options[i].id);
        d->options[i].label =
            xstrdup(pc->options[i].label ? pc->options[i].label : pc->options[i].id);
    }
    d->visibility = pc->visibility == 1 ? VIS_ON_CLOSE : VIS_LIVE;
    /* [poll.X] voter_auth (config.h poll_auth_t) is the definition's. */
    d->voter_auth = pc->voter_auth == POLL_AUTH_JWT ? VOTER_AUTH_JWT : VOTER_AUTH_NONE;
    d->opens_at = pc->opens_at;
    d->closes_at = pc->closes_at;
    d->idempotency_window_s = dflt ? dflt->idempotency_window_s : 600;
    d->created_ms = dflt ? dflt->now_ms : 0;
    d->source = POLL_SRC_CONFIG;
    return d;
}

static json_t *time_json(uint64_t ms) {
    return ms ? json_integer((json_int_t)ms) : json_null();
}

char *poll_def_to_json(const poll_def_t *d) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(d->id));
    json_object_set_new(o, "title", json_string(d->title));
    json_object_set_new(o, "mode", json_string(poll_mode_name(d->mode)));
    if (d->mode == MODE_CAPPED)
        json_object_set_new(o, "max_votes", json_integer(d->max_votes));
    json_t *opts = json_array();
    for (int i = 0; i < d->noptions; i++)
        json_array_append_new(
            opts, json_pack("{s:s,s:s}", "id", d->options[i].id, "label", d->options[i].label));
    json_object_set_new(o, "options", opts);
    json_object_set_new(o, "visibility", json_string(poll_visibility_name(d->visibility)));
    json_object_set_new(o, "voter_auth", json_string(poll_voter_auth_name(d->voter_auth)));
    json_object_set_new(o, "opens_at", time_json(d->opens_at));
    json_object_set_new(o, "closes_at", time_json(d->closes_at));
    json_object_set_new(o, "idempotency_window_s", json_integer(d->idempotency_window_s));
    json_object_set_new(o, "created_ms", json_integer((json_int_t)d->created_ms));
    json_object_set_new(o, "source", json_string(poll_source_name(d->source)));
    /* jansson keeps insertion order: the text is canonical. */
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    tally_assert(s);
    char *r = xstrdup(s);
    free(s);
    return r;
}

poll_state_t poll_def_state_at(const poll_def_t *d, int final, uint64_t t) {
    if (final)
        return POLL_FINAL;
    if (d->opens_at && t < d->opens_at)
        return POLL_SCHEDULED;
    if (d->closes_at && t >= d->closes_at)
        return POLL_CLOSED;
    return POLL_OPEN;
}

#define CONFLICT(field, ...) fail(err, 409, "incompatible", field, __VA_ARGS__)

tally_err_t poll_def_check_successor(const poll_def_t *cur, int cur_final, const poll_def_t *next,
                                     uint64_t now, uint64_t close_delay_ms, catalog_error_t *err) {
    if (strcmp(cur->id, next->id))
        return CONFLICT("id", "id cannot change");
    if (cur_final && !poll_def_equal(cur, next))
        return fail(err, 409, "poll_final", "", "poll %s is final: it never changes again",
                    cur->id);
    if (cur->mode != next->mode)
        return CONFLICT("mode", "poll %s: mode cannot change (%s)", cur->id,
                        poll_mode_name(cur->mode));
    if (cur->max_votes != next->max_votes)
        return CONFLICT("max_votes", "poll %s: max_votes cannot change (%u)", cur->id,
                        cur->max_votes);
    if (cur->voter_auth != next->voter_auth)
        return CONFLICT("voter_auth", "poll %s: voter_auth cannot change (%s)", cur->id,
                        poll_voter_auth_name(cur->voter_auth));
    if (next->noptions < cur->noptions)
        return CONFLICT("options", "poll %s: options cannot be removed (only appended)", cur->id);
    for (int i = 0; i < cur->noptions; i++)
        if (strcmp(cur->options[i].id, next->options[i].id)) {
            char f[32];
            snprintf(f, sizeof f, "options[%d].id", i);
            return CONFLICT(f, "poll %s: %s must stay '%s' (options may only be appended)", cur->id,
                            f, cur->options[i].id);
        }
    poll_state_t st = poll_def_state_at(cur, 0, now);
    if (next->opens_at != cur->opens_at && st != POLL_SCHEDULED)
        return CONFLICT("opens_at", "poll %s: opens_at cannot move once the poll has opened",
                        cur->id);
    if (next->closes_at != cur->closes_at) {
        if (st == POLL_CLOSED)
            return CONFLICT("closes_at", "poll %s: closes_at cannot move once the poll closed",
                            cur->id);
        int earlier = next->closes_at && (!cur->closes_at || next->closes_at < cur->closes_at);
        if (earlier && next->closes_at < now + close_delay_ms)
            return CONFLICT("closes_at",
                            "poll %s: closes_at may move earlier only to at least now + "
                            "admin.close_delay_ms (%llu ms)",
                            cur->id, (unsigned long long)close_delay_ms);
    }
    return TALLY_OK;
}

/* ---- entries and versions ---- */

catalog_entry_t *catalog_entry_new(poll_def_t *def, uint64_t def_seq) {
    catalog_entry_t *en = xcalloc(1, sizeof *en);
    en->def = def;
    en->def_seq = def_seq;
    en->seed = record_poll_seed(def->id, strlen(def->id));
    atomic_init(&en->refs, 1);
    return en;
}

catalog_entry_t *catalog_entry_finalized(const catalog_entry_t *en, uint64_t final_seq,
                                         uint64_t final_at) {
    catalog_entry_t *f = catalog_entry_new(poll_def_dup(en->def), en->def_seq);
    f->final = 1;
    f->final_seq = final_seq;
    f->final_at = final_at;
    return f;
}

void catalog_entry_ref(catalog_entry_t *en) {
    atomic_fetch_add(&en->refs, 1);
}

void catalog_entry_unref(catalog_entry_t *en) {
    if (en && atomic_fetch_sub(&en->refs, 1) == 1) {
        poll_def_free(en->def);
        free(en);
    }
}

struct catalog_s {
    uint64_t seq;
    catalog_entry_t **polls;
    int npolls;
    int *index; /* open addressing: poll index + 1, 0 empty */
    size_t mask;
};

static size_t id_hash(const char *id, size_t len) {
    return (size_t)record_poll_seed(id, len);
}

static void index_build(catalog_t *c) {
    size_t cap = 8;
    while (cap < (size_t)c->npolls * 2)
        cap *= 2;
    c->index = xcalloc(cap, sizeof *c->index);
    c->mask = cap - 1;
    for (int i = 0; i < c->npolls; i++) {
        const char *id = c->polls[i]->def->id;
        size_t j = id_hash(id, strlen(id)) & c->mask;
        while (c->index[j])
            j = (j + 1) & c->mask;
        c->index[j] = i + 1;
    }
}

catalog_t *catalog_new_empty(void) {
    catalog_t *c = xcalloc(1, sizeof *c);
    index_build(c);
    return c;
}

catalog_t *catalog_with(const catalog_t *base, catalog_entry_t *en, uint64_t seq) {
    catalog_t *c = xcalloc(1, sizeof *c);
    const catalog_entry_t *old = catalog_find(base, en->def->id, strlen(en->def->id));
    c->npolls = base->npolls + (old ? 0 : 1);
    c->polls = xmalloc(sizeof *c->polls * (size_t)c->npolls);
    for (int i = 0; i < base->npolls; i++) {
        c->polls[i] = base->polls[i] == old ? en : base->polls[i];
        catalog_entry_ref(c->polls[i]);
    }
    if (!old) {
        c->polls[base->npolls] = en;
        catalog_entry_ref(en);
    }
    c->seq = seq > base->seq ? seq : base->seq;
    index_build(c);
    return c;
}

catalog_t *catalog_with_seq(const catalog_t *base, uint64_t seq) {
    catalog_t *c = catalog_dup(base);
    if (seq > c->seq)
        c->seq = seq;
    return c;
}

catalog_t *catalog_dup(const catalog_t *base) {
    catalog_t *c = xcalloc(1, sizeof *c);
    c->npolls = base->npolls;
    c->polls = xmalloc(sizeof *c->polls * (size_t)(c->npolls ? c->npolls : 1));
    for (int i = 0; i < c->npolls; i++) {
        c->polls[i] = base->polls[i];
        catalog_entry_ref(c->polls[i]);
    }
    c->seq = base->seq;
    index_build(c);
    return c;
}

void catalog_free(catalog_t *c) {
    if (!c)
        return;
    for (int i = 0; i < c->npolls; i++)
        catalog_entry_unref(c->polls[i]);
    free(c->polls);
    free(c->index);
    free(c);
}

uint64_t catalog_seq(const catalog_t *c) {
    return c->seq;
}
int catalog_npolls(const catalog_t *c) {
    return c->npolls;
}
const catalog_entry_t *catalog_at(const catalog_t *c, int i) {
    return c->polls[i];
}

const catalog_entry_t *catalog_find(const catalog_t *c, const char *id, size_t len) {
    size_t j = id_hash(id, len) & c->mask;
    for (int k; (k = c->index[j]) != 0; j = (j + 1) & c->mask) {
        const char *s = c->polls[k - 1]->def->id;
        if (strlen(s) == len && !memcmp(s, id, len))
            return c->polls[k - 1];
    }
    return NULL;
}

/* ---- the live catalog ---- */

typedef struct retired_s {
    catalog_t *c;
    uint64_t at_ms;
    struct retired_s *next;
} retired_t;

struct catalog_live_s {
    _Atomic(catalog_t *) cur;
    pthread_mutex_t mu; /* swaps and the retired list */
    retired_t *retired;
};

catalog_live_t *catalog_live_new(catalog_t *initial) {
    catalog_live_t *l = xcalloc(1, sizeof *l);
    atomic_init(&l->cur, initial ? initial : catalog_new_empty());
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void catalog_live_free(catalog_live_t *l) {
    if (!l)
        return;
    catalog_free(atomic_load(&l->cur));
    for (retired_t *r = l->retired, *n; r; r = n) {
        n = r->next;
        catalog_free(r->c);
        free(r);
    }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

const catalog_t *catalog_live_get(catalog_live_t *l) {
    return atomic_load_explicit(&l->cur, memory_order_acquire);
}

void catalog_live_swap(catalog_live_t *l, catalog_t *next) {
    pthread_mutex_lock(&l->mu);
    uint64_t now = mono_ms();
    catalog_t *old = atomic_exchange_explicit(&l->cur, next, memory_order_acq_rel);
    retired_t *r = xmalloc(sizeof *r);
    *r = (retired_t){old, now, l->retired};
    l->retired = r;
    /* Free what every reader has long finished with (newest first). */
    for (retired_t **pp = &l->retired; *pp;) {
        if (now - (*pp)->at_ms >= CATALOG_GRACE_MS) {
            retired_t *d = *pp;
            *pp = d->next;
            catalog_free(d->c);
            free(d);
        } else {
            pp = &(*pp)->next;
        }
    }
    pthread_mutex_unlock(&l->mu);
}

/* ---- the history writer ---- */

/* One control append's wait: acks counted under the writer's mutex. Its
 * address, tagged with 1, is the append's opaque. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending, failed;
    int *ok; /* [npartitions]: acknowledged durable */
} ackwait_t;

typedef struct {
    ackwait_t *w;
    int partition;
} ackslot_t;

static vlog_ack_cb *ack_next;

void history_ack_init(vlog_ack_cb *next) {
    ack_next = next;
}

void history_log_ack(void *opaque, vlog_err_t err) {
    if (!((uintptr_t)opaque & 1)) {
        if (ack_next)
            ack_next(opaque, err);
        return;
    }
    ackslot_t *s = (ackslot_t *)((uintptr_t)opaque & ~(uintptr_t)1);
    ackwait_t *w = s->w;
    pthread_mutex_lock(&w->mu);
    if (err == VLOG_OK)
        w->ok[s->partition] = 1;
    else
        w->failed = 1;
    w->pending--;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

#define HISTORY_CLOCK_SKEW_MS 1000

struct history_s {
    vlog_t *log;
    catalog_live_t *live;
    int timeout_ms;
    pthread_mutex_t mu;      /* one change at a time */
    history_learn_fn *learn; /* other processes' ingests (Kafka), or NULL */
    void *learn_arg;
    /* A change whose append failed (some partitions may hold it): appended
     * again before any other change, or a later seq would reach partitions
     * that lack this one, and no start could repair them (it re-appends
     * only what is above a partition's highest seq). */
    struct {
        uint8_t *rec; /* NULL: none */
        size_t len;
        vlog_meta_t meta; /* key: en's id */
        catalog_entry_t *en;
        uint64_t seq;
    } debt;
};

void history_set_learner(history_t *h, history_learn_fn *fn, void *arg) {
    pthread_mutex_lock(&h->mu);
    h->learn = fn;
    h->learn_arg = arg;
    pthread_mutex_unlock(&h->mu);
}

history_t *history_new(vlog_t *log, catalog_live_t *live, int timeout_ms) {
    history_t *h = xcalloc(1, sizeof *h);
    h->log = log;
    h->live = live;
    h->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
    pthread_mutex_init(&h->mu, NULL);
    return h;
}

void history_free(history_t *h) {
    if (!h)
        return;
    free(h->debt.rec);
    catalog_entry_unref(h->debt.en);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

/* Appends rec to partitions[0..n) and waits for all acks, retrying the
 * partitions that failed until timeout. */
static tally_err_t append_all(history_t *h, const uint8_t *rec, size_t len, const vlog_meta_t *meta,
                              const int *parts, int n, catalog_error_t *err) {
    int np = vlog_partitions(h->log);
    ackwait_t w;
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.ok = xcalloc((size_t)np, sizeof *w.ok);
    ackslot_t *slots = xcalloc((size_t)np, sizeof *slots);
    int *want = xcalloc((size_t)np, sizeof *want);
    for (int i = 0; i < n; i++)
        want[parts ? parts[i] : i] = 1;
    uint64_t deadline = mono_ms() + (uint64_t)h->timeout_ms;
    tally_err_t rc = TALLY_OK;
    for (;;) {
        w.pending = 0;
        w.failed = 0;
        int missing = 0;
        for (int p = 0; p < np; p++) {
            if (!want[p] || w.ok[p])
                continue;
            missing++;
            slots[p] = (ackslot_t){&w, p};
            pthread_mutex_lock(&w.mu);
            w.pending++;
            pthread_mutex_unlock(&w.mu);
            vlog_err_t e =
                vlog_append(h->log, p, rec, len, meta, (void *)((uintptr_t)&slots[p] | 1));
            if (e != VLOG_OK) {
                pthread_mutex_lock(&w.mu);
                w.pending--;
                w.failed = 1;
                pthread_mutex_unlock(&w.mu);
            }
        }
        if (!missing)
            break;
        /* Every accepted append is acknowledged exactly once: wait for all
         * of them, even past the deadline, since slots live on this stack. */
        pthread_mutex_lock(&w.mu);
        while (w.pending > 0)
            pthread_cond_wait(&w.cv, &w.mu);
        int failed = w.failed;
        pthread_mutex_unlock(&w.mu);
        if (!failed)
            break;
        if (mono_ms() >= deadline) {
            rc = fail(err, 503, "unavailable", "",
                      "the log did not take the change on every partition: it is kept, and "
                      "written before any other change (or at the next start)");
            break;
        }
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    free(want);
    free(slots);
    free(w.ok);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

tally_err_t history_append_raw(history_t *h, const uint8_t *rec, size_t len,
                               const vlog_meta_t *meta, const int *partitions, int n,
                               catalog_error_t *err) {
    pthread_mutex_lock(&h->mu);
    tally_err_t rc = append_all(h, rec, len, meta, partitions, n, err);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

uint8_t *catalog_entry_encode(const catalog_entry_t *en, unsigned kind, uint64_t seq, size_t *len,
                              vlog_meta_t *meta) {
    char *body = kind == CONTROL_DEFINE ? poll_def_to_json(en->def) : NULL;
    control_record_t c = {
        .kind = kind,
        .ts_ms = now_ms(),
        .seq = seq,
        .at_ms = kind == CONTROL_FINAL ? en->final_at : 0,
        .poll = en->def->id,
        .poll_len = strlen(en->def->id),
        .body = body,
        .body_len = body ? strlen(body) : 0,
    };
    uint8_t *rec = NULL;
    *len = 0;
    /* Filed under the poll id: one poll's history in order for any tool. */
    *meta = (vlog_meta_t){.key = en->def->id, .key_len = c.poll_len, .ts_ms = c.ts_ms};
    if (c.body_len <= CONTROL_MAX_BODY) {
        rec = xmalloc(CONTROL_HDR_LEN + c.poll_len + c.body_len);
        *len = control_encode(&c, rec);
        tally_assert(*len > 0);
    }
    free(body);
    return rec;
}

/* Under h->mu: writes en (DEFINE or FINAL at seq) everywhere, then swaps. */
/* Under h->mu: appends the change that failed earlier to every partition
 * (one that has it already ignores it: a seq applies once) and then makes
 * it the live entry; 503 while the log still refuses it. */
static tally_err_t pay_debt(history_t *h, catalog_error_t *err) {
    if (!h->debt.rec)
        return TALLY_OK;
    catalog_error_t why = {0};
    if (append_all(h, h->debt.rec, h->debt.len, &h->debt.meta, NULL, vlog_partitions(h->log),
                   &why) != TALLY_OK)
        return fail(err, 503, "unavailable", "",
                    "an earlier change of poll %s (seq %llu) is not yet in every partition of "
                    "the log, and it comes first; retry",
                    h->debt.en->def->id, (unsigned long long)h->debt.seq);
    log_info("history: the change of poll %s (seq %llu) that failed earlier is in the log now",
             h->debt.en->def->id, (unsigned long long)h->debt.seq);
    const catalog_t *cur = catalog_live_get(h->live);
    catalog_live_swap(h->live, catalog_with(cur, h->debt.en, h->debt.seq));
    free(h->debt.rec);
    catalog_entry_unref(h->debt.en);
    h->debt.rec = NULL;
    h->debt.en = NULL;
    return TALLY_OK;
}

/* Under h->mu: logs en (taken) as the change at seq and swaps it in. A
 * failure keeps the record as the debt (pay_debt), so the seq stays taken
 * and the catalog's polls as they were (or a narrowing's stricter view). */
static tally_err_t commit(history_t *h, catalog_entry_t *en, unsigned kind, uint64_t seq,
                          catalog_entry_t **out, catalog_error_t *err) {
    const catalog_t *cur = catalog_live_get(h->live);
    size_t len;
    vlog_meta_t meta;
    uint8_t *rec = catalog_entry_encode(en, kind, seq, &len, &meta);
    tally_err_t rc;
    if (!rec) {
        rc = BAD("", "the poll's definition is over %d bytes", CONTROL_MAX_BODY);
        goto out;
    }
    rc = append_all(h, rec, len, &meta, NULL, vlog_partitions(h->log), err);
    if (rc == TALLY_OK) {
        free(rec);
        catalog_live_swap(h->live, catalog_with(cur, en, seq));
        if (out) {
            catalog_entry_ref(en);
            *out = en;
        }
    } else {
        tally_assert(!h->debt.rec);
        catalog_entry_ref(en);
        h->debt.rec = rec;
        h->debt.len = len;
        h->debt.meta = meta; /* its key is en's id, held */
        h->debt.en = en;
        h->debt.seq = seq;
    }
out:
    catalog_entry_unref(en);
    return rc;
}

tally_err_t history_settle(history_t *h, catalog_error_t *err) {
    pthread_mutex_lock(&h->mu);
    tally_err_t rc = pay_debt(h, err);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

tally_err_t history_create(history_t *h, poll_def_t *def, catalog_entry_t **out,
                           catalog_error_t *err) {
    pthread_mutex_lock(&h->mu);
    tally_err_t rc = pay_debt(h, err);
    const catalog_t *cur = catalog_live_get(h->live);
    const catalog_entry_t *old = catalog_find(cur, def->id, strlen(def->id));
    if (rc != TALLY_OK) {
        poll_def_free(def);
    } else if (old && old->def_seq) {
        rc = fail(err, 409, "poll_exists", "id", "poll %s exists", def->id);
        poll_def_free(def);
    } else {
        uint64_t seq = catalog_seq(cur) + 1;
        rc = commit(h, catalog_entry_new(def, seq), CONTROL_DEFINE, seq, out, err);
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* Puts old back as the view of every ingest (after a pending view that
 * is not to be logged). */
static void put_back(history_t *h, catalog_entry_t *old) {
    const catalog_t *now = catalog_live_get(h->live);
    catalog_live_swap(h->live, catalog_with(now, old, catalog_seq(now)));
    if (h->learn)
        h->learn(h->learn_arg, old, NULL);
}

/* Under h->mu, before a change that narrows voting (a close or closes_at
 * moved earlier; opens_at moved later) is logged: every ingest takes it
 * first, on the current definition and seq, so that it refuses what it
 * stamps outside the new window before any DEFINE carrying it is in the
 * log. The other order (log, then learn) let ingest answer 202 to votes
 * stamped after the cut (before the new opening) while the write was slow;
 * landing behind the DEFINE, the engine judged them late (early) and never
 * counted them.
 *
 * This process's ingest learns at the swap of the live catalog; other
 * processes' (tally ingest with Kafka) from the learner, which returns the
 * time from which they all judge by the change. A vote judged by the old
 * view was stamped before that time: when it is at or after the cut (a
 * slow broker, a wait for h->mu past admin.close_delay_ms), the cut moves
 * to it + the delay; the ingests then refuse a little early, which loses
 * nothing. When it is at or after the old opening, the poll opened under
 * the old view: the later opening is refused (409) and the old view put
 * back. A learner that fails puts the old view back and nothing is logged.
 * A failed write leaves the stricter view (the next start completes a
 * partly written change; a refused vote never reached the log). */
static tally_err_t learn_narrowing_first(history_t *h, const catalog_t *cur, catalog_entry_t *old,
                                         poll_def_t *next, uint64_t now, uint64_t entered_mono,
                                         uint64_t close_delay_ms, catalog_error_t *err) {
    const poll_def_t *d = old->def;
    int closes_earlier = next->closes_at && (!d->closes_at || next->closes_at < d->closes_at);
    int opens_later = d->opens_at && next->opens_at > d->opens_at;
    if (!closes_earlier && !opens_later)
        return TALLY_OK;
    poll_def_t *view = poll_def_dup(d);
    if (closes_earlier)
        view->closes_at = next->closes_at;
    if (opens_later)
        view->opens_at = next->opens_at;
    catalog_entry_t *pend = catalog_entry_new(view, old->def_seq);
    /* cur and old may be freed from here on (a learner slower than
     * CATALOG_GRACE_MS): old is held; cur is not read again. */
    catalog_entry_ref(old);
    catalog_live_swap(h->live, catalog_with(cur, pend, catalog_seq(cur)));
    cur = NULL;
    tally_err_t rc = TALLY_OK;
    uint64_t learned_mono = mono_ms();
    if (h->learn && h->learn(h->learn_arg, pend, &learned_mono) != 0) {
        /* Unknown whether any other ingest has it: they get the current
         * definition again (a stricter view meanwhile loses nothing). */
        put_back(h, old);
        rc = fail(err, 503, "unavailable", "",
                  "poll %s: the change could not reach every ingest (the catalog topic did "
                  "not acknowledge it); nothing changed, retry",
                  d->id);
        goto out;
    }
    /* The caller's clock reading plus the time spent until every ingest
     * has the change: the same clock the cut was computed from. */
    uint64_t learned = now + (learned_mono - entered_mono);
    /* Other processes stamp votes by their own clocks, ahead of this one by
     * up to the allowance (docs/ARCHITECTURE.md, clock assumption). */
    if (h->learn)
        learned += HISTORY_CLOCK_SKEW_MS;
    if (opens_later && learned >= d->opens_at) {
        put_back(h, old);
        rc = fail(err, 409, "incompatible", "opens_at",
                  "poll %s: it opened before the later opens_at reached every ingest: it stays "
                  "open (close it instead)",
                  d->id);
        goto out;
    }
    if (closes_earlier && learned >= next->closes_at) {
        uint64_t cut = learned + (close_delay_ms ? close_delay_ms : 1);
        log_warn("history: poll %s: its cut reached ingest %llu ms late: moving it to %llu ms "
                 "from now",
                 d->id, (unsigned long long)(learned - next->closes_at),
                 (unsigned long long)(cut - learned));
        next->closes_at = cut; /* the ingests keep the earlier one until it is logged */
    }
out:
    catalog_entry_unref(pend);
    catalog_entry_unref(old);
    return rc;
}

/* 400 when def's DEFINE would not fit a control record: judged before
 * anything is learned (a narrowing learned, then refused, would stay). */
static tally_err_t def_fits(const poll_def_t *def, catalog_error_t *err) {
    char *body = poll_def_to_json(def);
    size_t n = strlen(body);
    free(body);
    if (n > CONTROL_MAX_BODY)
        return BAD("", "the poll's definition is over %d bytes", CONTROL_MAX_BODY);
    return TALLY_OK;
}

/* 1 when the debt is a change of poll id (under h->mu). */
static int debt_of(const history_t *h, const char *id) {
    return h->debt.rec && !strcmp(h->debt.en->def->id, id);
}

tally_err_t history_update(history_t *h, poll_def_t *def, uint64_t now, uint64_t close_delay_ms,
                           catalog_entry_t **out, catalog_error_t *err) {
    uint64_t entered = mono_ms();
    pthread_mutex_lock(&h->mu);
    /* def was built from the poll as it was before its failed change (the
     * caller did not history_settle first): judged against the completed
     * one it could undo it. */
    int changed = debt_of(h, def->id);
    tally_err_t rc = pay_debt(h, err);
    const catalog_t *cur = catalog_live_get(h->live);
    const catalog_entry_t *old = catalog_find(cur, def->id, strlen(def->id));
    if (rc != TALLY_OK) {
        poll_def_free(def);
    } else if (changed) {
        rc = fail(err, 409, "poll_changed", "",
                  "poll %s: an earlier change of it was completed first; read it and retry",
                  def->id);
        poll_def_free(def);
    } else if (!old || !old->def_seq) {
        rc = fail(err, 404, "no_such_poll", "id", "no poll %s", def->id);
        poll_def_free(def);
    } else if ((rc = poll_def_check_successor(old->def, old->final, def, now, close_delay_ms,
                                              err)) != TALLY_OK ||
               (rc = def_fits(def, err)) != TALLY_OK ||
               (rc = learn_narrowing_first(h, cur, (catalog_entry_t *)old, def, now, entered,
                                           close_delay_ms, err)) != TALLY_OK) {
        poll_def_free(def);
    } else {
        /* cur may be gone: the live version has its seq. */
        uint64_t seq = catalog_seq(catalog_live_get(h->live)) + 1;
        rc = commit(h, catalog_entry_new(def, seq), CONTROL_DEFINE, seq, out, err);
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

tally_err_t history_final(history_t *h, const char *id, uint64_t now, uint64_t grace_ms,
                          catalog_entry_t **out, catalog_error_t *err) {
    pthread_mutex_lock(&h->mu);
    /* A failed close is logged before its FINAL: a FINAL no DEFINE
     * explains would leave the log saying final, never closed. */
    tally_err_t rc = pay_debt(h, err);
    const catalog_t *cur = catalog_live_get(h->live);
    const catalog_entry_t *old = catalog_find(cur, id, strlen(id));
    if (rc != TALLY_OK)
        ;
    else if (!old || !old->def_seq)
        rc = fail(err, 404, "no_such_poll", "id", "no poll %s", id);
    else if (old->final)
        rc = fail(err, 409, "poll_final", "", "poll %s is final already", id);
    else if (!old->def->closes_at)
        rc = fail(err, 409, "incompatible", "closes_at", "poll %s has no closes_at", id);
    else if (now < old->def->closes_at + grace_ms)
        /* Judged here, under the lock: the caller's view may be older than
         * a change that moved the cut (or put a later one back). */
        rc = fail(err, 409, "not_due", "closes_at", "poll %s: its final is not due yet", id);
    else {
        uint64_t seq = catalog_seq(cur) + 1;
        rc = commit(h, catalog_entry_finalized(old, seq, old->def->closes_at), CONTROL_FINAL, seq,
                    out, err);
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}
