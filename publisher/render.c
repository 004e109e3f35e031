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

static uint64_t poll_total(const poll_conf_t *poll, const uint64_t *counts) {
    uint64_t total = 0;
    for (int i = 0; i < poll->noptions; i++)
        total += counts[i];
    return total;
}

/* "series":{"bucket_ms":60000,"buckets":[{"t":ms,"counts":[d,...]},...]}
 * with a leading comma: the minutes with a net change, oldest first. */
static void put_series(buf_t *out, const series_view_t *s) {
    buf_printf(out, ",\"series\":{\"bucket_ms\":%d,\"buckets\":[", SERIES_BUCKET_MS);
    for (size_t r = 0; r < s->n; r++) {
        buf_printf(out, "%s{\"t\":%llu,\"counts\":[", r ? "," : "",
                   (unsigned long long)s->t_ms[r]);
        for (int o = 0; o < s->noptions; o++)
            buf_printf(out, "%s%lld", o ? "," : "",
                       (long long)s->counts[r * (size_t)s->noptions + (size_t)o]);
        buf_puts(out, "]}");
    }
    buf_puts(out, "]}");
}

void pub_render_json(const poll_conf_t *poll, const uint64_t *counts, uint64_t updated_ms,
                     buf_t *out) {
    pub_render_json_series(poll, counts, NULL, updated_ms, out);
}

void pub_render_json_series(const poll_conf_t *poll, const uint64_t *counts,
                            const series_view_t *series, uint64_t updated_ms, buf_t *out) {
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    buf_puts(out, "{\"poll\":");
    json_put_str(out, poll->id);
    buf_puts(out, ",\"title\":");
    json_put_str(out, poll->title);
    buf_puts(out, ",\"mode\":");
    json_put_str(out, poll_mode_name(poll->mode));
    buf_printf(out, ",\"total\":%llu,\"options\":[", (unsigned long long)poll_total(poll, counts));
    for (int i = 0; i < poll->noptions; i++) {
        buf_puts(out, i ? ",{\"id\":" : "{\"id\":");
        json_put_str(out, poll->options[i].id);
        buf_puts(out, ",\"label\":");
        json_put_str(out, poll->options[i].label);
        buf_printf(out, ",\"votes\":%llu}", (unsigned long long)counts[i]);
    }
    buf_puts(out, "]");
    if (series)
        put_series(out, series);
    buf_puts(out, ",\"updated_at\":");
    json_put_str(out, ts);
    buf_puts(out, "}\n");
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

void pub_render_html(const poll_conf_t *poll, const uint64_t *counts, uint64_t updated_ms,
                     buf_t *out) {
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    uint64_t total = poll_total(poll, counts);
    buf_puts(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                  "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
                  "<meta http-equiv=\"refresh\" content=\"2\"><title>");
    html_escape(out, poll->title);
    buf_printf(out, " - results</title><style>%s</style></head><body>\n<h1>", css);
    html_escape(out, poll->title);
    buf_puts(out, "</h1>\n");
    for (int i = 0; i < poll->noptions; i++) {
        double pct = total ? 100.0 * (double)counts[i] / (double)total : 0.0;
        buf_puts(out, "<div class=\"opt\"><div class=\"lbl\"><span>");
        html_escape(out, poll->options[i].label);
        buf_printf(out,
                   "</span><span>%llu (%.1f%%)</span></div><div class=\"bar\"><div "
                   "class=\"fill\" style=\"width:%.2f%%\"></div></div></div>\n",
                   (unsigned long long)counts[i], pct, pct);
    }
    buf_printf(out,
               "<p class=\"meta\">Total: <strong>%llu</strong> votes &middot; mode: %s &middot; "
               "as of <time datetime=\"%s\">%s</time> &middot; <a href=\"%s.json\">JSON</a> "
               "&middot; <a href=\"../index.html\">all polls</a></p>\n</body></html>\n",
               (unsigned long long)total, poll_mode_name(poll->mode), ts, ts, poll->id);
}

void pub_render_index(const tally_config_t *c, uint64_t updated_ms, buf_t *out) {
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    buf_printf(out,
               "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
               "<title>Polls</title><style>%s</style></head><body>\n<h1>Polls</h1>\n<ul>\n",
               css);
    for (int i = 0; i < c->npolls; i++) {
        buf_printf(out, "<li><a href=\"polls/%s.html\">", c->polls[i].id);
        html_escape(out, c->polls[i].title);
        buf_puts(out, "</a></li>\n");
    }
    buf_printf(out, "</ul>\n<p class=\"meta\">as of %s</p>\n</body></html>\n", ts);
}
