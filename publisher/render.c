/* Rendering of the published results. JSON strings go through the one
 * escaping helper (common/json.h, jansson underneath) and counts are printed
 * as integers, exact over all of uint64 (jansson's integers stop at 2^63).
 * HTML is escaped text in a fixed template with inline CSS only (no external
 * resources, so the page works from any static host). Titles and labels come
 * from the config and may hold any bytes: both outputs are valid UTF-8
 * whatever they hold. */
#include <string.h>

#include "common/json.h"
#include "common/utf8.h"
#include "publisher/publisher.h"

static uint64_t poll_total(const poll_def_t *poll, const uint64_t *counts) {
    uint64_t total = 0;
    for (int i = 0; counts && i < poll->noptions; i++)
        total += counts[i];
    return total;
}

/* A config poll as a definition, sharing its strings (no allocation). */
static poll_def_t conf_as_def(const poll_conf_t *pc) {
    poll_def_t d = {0};
    d.id = pc->id;
    d.title = pc->title;
    d.mode = pc->mode;
    d.max_votes = pc->max_votes;
    d.options = pc->options;
    d.noptions = pc->noptions;
    d.visibility = pc->visibility ? VIS_ON_CLOSE : VIS_LIVE;
    d.opens_at = pc->opens_at;
    d.closes_at = pc->closes_at;
    d.source = POLL_SRC_CONFIG;
    return d;
}

static void put_time(buf_t *out, const char *key, uint64_t ms) {
    char ts[40];
    buf_printf(out, ",\"%s\":", key);
    if (!ms) {
        buf_puts(out, "null");
        return;
    }
    fmt_rfc3339(ms, ts, sizeof ts);
    json_put_str(out, ts);
}

void pub_render_poll_json(const pub_poll_t *v, uint64_t updated_ms, buf_t *out) {
    const poll_def_t *poll = v->def;
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    buf_puts(out, "{\"poll\":");
    json_put_str(out, poll->id);
    buf_puts(out, ",\"title\":");
    json_put_str(out, poll->title);
    buf_puts(out, ",\"mode\":");
    json_put_str(out, poll_mode_name(poll->mode));
    if (poll->mode == MODE_CAPPED)
        buf_printf(out, ",\"max_votes\":%u", poll->max_votes);
    buf_puts(out, ",\"state\":");
    json_put_str(out, poll_state_name(v->state));
    buf_puts(out, ",\"visibility\":");
    json_put_str(out, poll_visibility_name(poll->visibility));
    buf_printf(out, ",\"version\":%llu", (unsigned long long)v->version);
    put_time(out, "opens_at", poll->opens_at);
    put_time(out, "closes_at", poll->closes_at);
    if (v->counts)
        buf_printf(out, ",\"total\":%llu,\"late\":%llu",
                   (unsigned long long)poll_total(poll, v->counts), (unsigned long long)v->late);
    buf_puts(out, ",\"options\":[");
    for (int i = 0; i < poll->noptions; i++) {
        buf_puts(out, i ? ",{\"id\":" : "{\"id\":");
        json_put_str(out, poll->options[i].id);
        buf_puts(out, ",\"label\":");
        json_put_str(out, poll->options[i].label);
        if (v->counts)
            buf_printf(out, ",\"votes\":%llu", (unsigned long long)v->counts[i]);
        buf_puts(out, "}");
    }
    buf_puts(out, "]");
    if (v->final_positions) {
        buf_puts(out, ",\"final_positions\":[");
        for (int p = 0; p < v->npartitions; p++)
            buf_printf(out, "%s%llu", p ? "," : "", (unsigned long long)v->final_positions[p]);
        buf_puts(out, "]");
    }
    buf_puts(out, ",\"updated_at\":");
    json_put_str(out, ts);
    buf_puts(out, "}\n");
}

void pub_render_json(const poll_conf_t *pc, const uint64_t *counts, uint64_t updated_ms,
                     buf_t *out) {
    poll_def_t d = conf_as_def(pc);
    pub_poll_t v = {.def = &d, .counts = counts, .state = POLL_OPEN};
    pub_render_poll_json(&v, updated_ms, out);
}

/* Text for an HTML element or a quoted attribute: the five specials as
 * entities, invalid UTF-8 and control characters other than tab, LF and CR
 * (which HTML forbids) as U+FFFD. */
void html_escape(buf_t *out, const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = utf8_seq_len(s + i, n - i);
        switch (k == 1 ? c : 0x100) {
        case '&': buf_puts(out, "&amp;"); break;
        case '<': buf_puts(out, "&lt;"); break;
        case '>': buf_puts(out, "&gt;"); break;
        case '"': buf_puts(out, "&quot;"); break;
        case '\'': buf_puts(out, "&#39;"); break;
        case '\t':
        case '\n':
        case '\r': buf_append(out, s + i, 1); break;
        default:
            if (k == 0 || (k == 1 && (c < 0x20 || c == 0x7f)))
                buf_puts(out, UTF8_REPLACEMENT);
            else
                buf_append(out, s + i, k);
        }
        i += k ? k : 1;
    }
}

static const char *css =
    "body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.6rem}.opt{margin:.9rem 0}.lbl{display:flex;"
    "justify-content:space-between;font-weight:600}.bar{background:#eee;border-radius:4px;"
    "height:1.4rem;overflow:hidden}.fill{background:#2b6cb0;height:100%}"
    ".meta{color:#666;font-size:.9rem;margin-top:1.5rem}a{color:#2b6cb0}";

void pub_render_poll_html(const pub_poll_t *v, uint64_t updated_ms, buf_t *out) {
    const poll_def_t *poll = v->def;
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    uint64_t total = poll_total(poll, v->counts);
    /* A final page never changes: it need not refresh itself. */
    buf_printf(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
                    "%s<title>",
               v->state == POLL_FINAL ? "" : "<meta http-equiv=\"refresh\" content=\"2\">");
    html_escape(out, poll->title);
    buf_printf(out, " - results</title><style>%s</style></head><body>\n<h1>", css);
    html_escape(out, poll->title);
    buf_printf(out, "</h1>\n<p class=\"state\">%s</p>\n", poll_state_name(v->state));
    for (int i = 0; i < poll->noptions; i++) {
        buf_puts(out, "<div class=\"opt\"><div class=\"lbl\"><span>");
        html_escape(out, poll->options[i].label);
        if (!v->counts) {
            buf_puts(out, "</span></div></div>\n");
            continue;
        }
        double pct = total ? 100.0 * (double)v->counts[i] / (double)total : 0.0;
        buf_printf(out,
                   "</span><span>%llu (%.1f%%)</span></div><div class=\"bar\"><div "
                   "class=\"fill\" style=\"width:%.2f%%\"></div></div></div>\n",
                   (unsigned long long)v->counts[i], pct, pct);
    }
    if (v->counts)
        buf_printf(out, "<p class=\"meta\">Total: <strong>%llu</strong> votes &middot; ",
                   (unsigned long long)total);
    else
        buf_puts(out, "<p class=\"meta\">Results are published once the poll is final "
                      "&middot; ");
    buf_printf(out,
               "mode: %s &middot; state: %s &middot; as of <time datetime=\"%s\">%s</time> "
               "&middot; <a href=\"%s.json\">JSON</a> &middot; <a href=\"../index.html\">all "
               "polls</a></p>\n</body></html>\n",
               poll_mode_name(poll->mode), poll_state_name(v->state), ts, ts, poll->id);
}

void pub_render_html(const poll_conf_t *pc, const uint64_t *counts, uint64_t updated_ms,
                     buf_t *out) {
    poll_def_t d = conf_as_def(pc);
    pub_poll_t v = {.def = &d, .counts = counts, .state = POLL_OPEN};
    pub_render_poll_html(&v, updated_ms, out);
}

void pub_render_index_polls(const pub_poll_t *polls, int n, uint64_t updated_ms, buf_t *out) {
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    buf_printf(out,
               "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
               "<title>Polls</title><style>%s</style></head><body>\n<h1>Polls</h1>\n<ul>\n",
               css);
    for (int i = 0; i < n; i++) {
        buf_printf(out, "<li><a href=\"polls/%s.html\">", polls[i].def->id);
        html_escape(out, polls[i].def->title);
        buf_printf(out, "</a> <span class=\"state\">%s</span></li>\n",
                   poll_state_name(polls[i].state));
    }
    buf_printf(out, "</ul>\n<p class=\"meta\">as of %s</p>\n</body></html>\n", ts);
}

void pub_render_index(const tally_config_t *c, uint64_t updated_ms, buf_t *out) {
    pub_poll_t *v = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *v);
    poll_def_t *d = xcalloc((size_t)(c->npolls ? c->npolls : 1), sizeof *d);
    for (int i = 0; i < c->npolls; i++) {
        d[i] = conf_as_def(&c->polls[i]);
        v[i] = (pub_poll_t){.def = &d[i], .state = POLL_OPEN};
    }
    pub_render_index_polls(v, c->npolls, updated_ms, out);
    free(v);
    free(d);
}
