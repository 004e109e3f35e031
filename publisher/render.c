/* Rendering of the published results. JSON strings go through the one
 * escaping helper (common/json.h, jansson underneath) and counts are printed
 * as integers, exact over all of uint64 (jansson's integers stop at 2^63).
 * HTML is escaped text in a fixed template with inline CSS and script only
 * (no external resources, so the pages work from any static host). Titles
 * and labels come from the config or the admin API and may hold any bytes:
 * every output is valid UTF-8 whatever they hold. The scripts are constant:
 * what varies reaches them through escaped data-* attributes and the
 * results JSON, never pasted into script text.
 *
 * The results page is complete without script (the totals as of its
 * rendering); its script then keeps it current from the event stream
 * (/v1/polls/ID/events), falling back to fetching polls/ID.json with
 * If-None-Match where streams fail (a static host, a proxy), and never
 * shows a version older than one it has shown; a final page stays as it
 * is. An embargoed poll (visibility on_close, not final) shows its options
 * and state, never a count. The vote page posts to the API and says what
 * became of the vote. */
#include <stdio.h>
#include <string.h>

#include "common/ids.h"
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
    d.voter_auth = pc->voter_auth == POLL_AUTH_JWT ? VOTER_AUTH_JWT : VOTER_AUTH_NONE;
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

/* "series":{"bucket_ms":60000,"buckets":[{"t":ms,"counts":[d,...]},...]}
 * with a leading comma: the minutes with a net change, oldest first. */
static void put_series(buf_t *out, const series_view_t *s) {
    buf_printf(out, ",\"series\":{\"bucket_ms\":%d,\"buckets\":[", SERIES_BUCKET_MS);
    for (size_t r = 0; r < s->n; r++) {
        buf_printf(out, "%s{\"t\":%llu,\"counts\":[", r ? "," : "", (unsigned long long)s->t_ms[r]);
        for (int o = 0; o < s->noptions; o++)
            buf_printf(out, "%s%lld", o ? "," : "",
                       (long long)s->counts[r * (size_t)s->noptions + (size_t)o]);
        buf_puts(out, "]}");
    }
    buf_puts(out, "]}");
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
    /* The series would tell the counts: withheld with them. */
    if (v->counts && v->series)
        put_series(out, v->series);
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

void pub_render_json(const poll_conf_t *poll, const uint64_t *counts, uint64_t updated_ms,
                     uint64_t version, buf_t *out) {
    pub_render_json_series(poll, counts, NULL, updated_ms, version, out);
}

void pub_render_json_series(const poll_conf_t *pc, const uint64_t *counts,
                            const series_view_t *series, uint64_t updated_ms, uint64_t version,
                            buf_t *out) {
    poll_def_t d = conf_as_def(pc);
    pub_poll_t v = {
        .def = &d, .counts = counts, .series = series, .state = POLL_OPEN, .version = version};
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
    "height:1.4rem;overflow:hidden}.fill{background:#2b6cb0;height:100%;transition:width .3s}"
    ".meta{color:#666;font-size:.9rem;margin-top:1.5rem}a{color:#2b6cb0}"
    "#chart{width:100%;height:auto;margin-top:1rem;background:#fafafa;border-radius:4px}"
    ".choices{display:grid;gap:.6rem}.choice{font-size:1.15rem;padding:.9rem;border-radius:8px;"
    "border:2px solid #2b6cb0;background:#fff;color:#2b6cb0;font-weight:600;cursor:pointer}"
    ".choice:active{background:#2b6cb0;color:#fff}label.voter{display:block;margin:1rem 0;"
    "font-size:.9rem;color:#444}label.voter input{display:block;width:100%;box-sizing:border-box;"
    "font-size:1rem;padding:.5rem;margin-top:.3rem}.answer{min-height:1.5rem;padding:.6rem;"
    "border-radius:6px}.answer.ok{background:#e6fffa;color:#234e52}.answer.err{background:#fff5f5;"
    "color:#822727}.answer.wait{color:#666}";

/* The page scripts (sources: constant, see the top of this file). */
static const char results_js[] =
    "(function () {\n"
    "  'use strict';\n"
    "  var body = document.body, poll = body.getAttribute('data-poll');\n"
    "  var shown = Number(body.getAttribute('data-version')) || 0;\n"
    "  var etag = null, timer = null, es = null, COLORS = ['#2b6cb0', '#c05621', '#2f855a', "
    "'#805ad5', '#b83280', '#2c7a7b', '#975a16', '#4a5568'];\n"
    "  /* The SVG namespace (a name, not a resource), spelt so the page holds no URL. */\n"
    "  var SVGNS = ['http:', '', 'www.w3.org', '2000', 'svg'].join('/'), JSON_URL = "
    "body.getAttribute('data-json'), drawn = false;\n"
    "  function el(tag, cls) { var e = document.createElement(tag); if (cls) e.className = cls; "
    "return e; }\n"
    "  function svg(tag, attrs) { var e = document.createElementNS(SVGNS, tag); for (var k in "
    "attrs) e.setAttribute(k, attrs[k]); return e; }\n"
    "  function status(s) { var e = document.getElementById('live'); if (e) e.textContent = s; }\n"
    "  function pct(n, t) { return t ? 100 * n / t : 0; }\n"
    "  function bars(d) {\n"
    "    var box = document.getElementById('bars'), total = d.total || 0;\n"
    "    d.options.forEach(function (o, i) {\n"
    "      var row = box.querySelector('[data-opt=\"' + o.id + '\"]');\n"
    "      if (!row) {\n"
    "        row = el('div', 'opt'); row.setAttribute('data-opt', o.id);\n"
    "        var l = el('div', 'lbl'), a = el('span'), b = el('span'), bar = el('div', 'bar'), f "
    "= el('div', 'fill');\n"
    "        a.textContent = o.label; l.appendChild(a); l.appendChild(b); bar.appendChild(f);\n"
    "        row.appendChild(l); row.appendChild(bar); box.appendChild(row);\n"
    "      }\n"
    "      var p = pct(o.votes, total);\n"
    "      row.querySelector('.lbl span:last-child').textContent = o.votes + ' (' + p.toFixed(1) "
    "+ '%)';\n"
    "      var fill = row.querySelector('.fill');\n"
    "      fill.style.width = p.toFixed(2) + '%';\n"
    "      fill.style.background = COLORS[i % COLORS.length];\n"
    "    });\n"
    "    var t = document.getElementById('total'); if (t) t.textContent = total;\n"
    "    var u = document.getElementById('updated'); if (u && d.updated_at) { u.textContent = "
    "d.updated_at; u.setAttribute('datetime', d.updated_at); }\n"
    "  }\n"
    "  /* The per-minute series: one line per option, minutes without votes at 0. */\n"
    "  function chart(d) {\n"
    "    var box = document.getElementById('chart');\n"
    "    if (!box) return;\n"
    "    var s = d.series, W = 600, H = 180, P = 28;\n"
    "    while (box.firstChild) box.removeChild(box.firstChild);\n"
    "    if (!s || !s.buckets || !s.buckets.length) {\n"
    "      var n = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#888', "
    "'font-size': 14 });\n"
    "      n.textContent = s ? 'no votes per minute yet' : 'no per-minute series in these "
    "results';\n"
    "      box.appendChild(n); return;\n"
    "    }\n"
    "    var step = s.bucket_ms || 60000, byT = {}, t0 = Infinity, t1 = -Infinity;\n"
    "    s.buckets.forEach(function (b) { byT[b.t] = b.counts; if (b.t < t0) t0 = b.t; if (b.t > "
    "t1) t1 = b.t; });\n"
    "    if (t1 - t0 > 119 * step) t0 = t1 - 119 * step;\n"
    "    var pts = [], max = 1;\n"
    "    for (var t = t0; t <= t1; t += step) pts.push(byT[t] || []);\n"
    "    pts.forEach(function (c) { c.forEach(function (v) { if (v > max) max = v; }); });\n"
    "    var nx = Math.max(pts.length - 1, 1);\n"
    "    box.appendChild(svg('line', { x1: P, y1: H - P, x2: W - 4, y2: H - P, stroke: '#bbb' "
    "}));\n"
    "    var top = svg('text', { x: 2, y: 14, fill: '#666', 'font-size': 11 }); top.textContent "
    "= max; box.appendChild(top);\n"
    "    var zero = svg('text', { x: 2, y: H - P, fill: '#666', 'font-size': 11 }); "
    "zero.textContent = '0'; box.appendChild(zero);\n"
    "    [t0, t1].forEach(function (t, k) {\n"
    "      var lab = svg('text', { x: k ? W - 4 : P, y: H - 8, fill: '#666', 'font-size': 11, "
    "'text-anchor': k ? 'end' : 'start' });\n"
    "      lab.textContent = new Date(t).toISOString().substr(11, 5); box.appendChild(lab);\n"
    "    });\n"
    "    d.options.forEach(function (o, i) {\n"
    "      var xy = pts.map(function (c, k) {\n"
    "        var x = P + (W - 4 - P) * (pts.length > 1 ? k / nx : 0.5), y = H - P - (H - P - 16) "
    "* (c[i] || 0) / max;\n"
    "        return x.toFixed(1) + ',' + y.toFixed(1);\n"
    "      });\n"
    "      if (xy.length === 1) xy.push(xy[0]);\n"
    "      box.appendChild(svg('polyline', { points: xy.join(' '), fill: 'none', stroke: "
    "COLORS[i % COLORS.length], 'stroke-width': 2, 'data-opt': o.id }));\n"
    "    });\n"
    "  }\n"
    "  /* Never an older version than the one shown: events and fetches race. */\n"
    "  function apply(d) {\n"
    "    if (!d || d.poll !== poll || typeof d.version !== 'number') return false;\n"
    "    if (d.version < shown || (d.version === shown && drawn)) return false;\n"
    "    shown = d.version; drawn = true;\n"
    "    body.setAttribute('data-version', String(shown));\n"
    "    var st = document.getElementById('state'); if (st && d.state) st.textContent = d.state;\n"
    "    if (d.state) body.setAttribute('data-state', d.state);\n"
    "    /* An embargoed poll (visibility on_close) has no counts until final,\n"
    "     * and its stream carries the state alone. */\n"
    "    if (!d.options || typeof d.total !== 'number') return true;\n"
    "    bars(d); chart(d);\n"
    "    return true;\n"
    "  }\n"
    "  window.tallyApply = apply;\n"
    "  function fetchJson() {\n"
    "    var h = {}; if (etag) h['If-None-Match'] = etag;\n"
    "    return fetch(JSON_URL, { cache: 'no-cache', headers: h }).then(function (r) {\n"
    "      if (r.status === 304 || !r.ok) return null;\n"
    "      etag = r.headers.get('ETag');\n"
    "      return r.json();\n"
    "    }).then(function (d) { if (d) apply(d); }).catch(function () { });\n"
    "  }\n"
    "  function fallback() {\n"
    "    if (timer) return;\n"
    "    status('polling every 2 s');\n"
    "    timer = setInterval(fetchJson, 2000);\n"
    "    fetchJson();\n"
    "  }\n"
    "  function live() {\n"
    "    if (!window.EventSource) { fallback(); return; }\n"
    "    es = new EventSource('/v1/polls/' + encodeURIComponent(poll) + '/events');\n"
    "    es.onmessage = function (e) {\n"
    "      try { apply(JSON.parse(e.data)); } catch (x) { }\n"
    "      status('live');\n"
    "      if (timer) { clearInterval(timer); timer = null; }\n"
    "    };\n"
    "    /* EventSource reconnects by itself (resuming with Last-Event-ID); until\n"
    "     * an event arrives again the JSON is fetched instead. */\n"
    "    es.onerror = function () { fallback(); };\n"
    "  }\n"
    "  /* A final poll's results never change again. */\n"
    "  if (body.getAttribute('data-state') === 'final') { status('final'); return; }\n"
    "  fetchJson();\n"
    "  live();\n"
    "})();\n";

static const char vote_js[] =
    "(function () {\n"
    "  'use strict';\n"
    "  var body = document.body, poll = body.getAttribute('data-poll');\n"
    "  var form = document.getElementById('vote'), out = document.getElementById('answer');\n"
    "  var input = document.getElementById('voter'), token = null, busy = false;\n"
    "  /* A voter id of this browser, kept across visits; the voter may change it. */\n"
    "  var KEY = 'tally.voter';\n"
    "  var voter = null;\n"
    "  try { voter = localStorage.getItem(KEY); } catch (e) { }\n"
    "  if (!voter) {\n"
    "    var r = new Uint8Array(8); (window.crypto || {}).getRandomValues ? "
    "crypto.getRandomValues(r) : r.forEach(function (v, i) { r[i] = Math.random() * 256; });\n"
    "    voter = 'web-' + Array.prototype.map.call(r, function (b) { return ('0' + "
    "b.toString(16)).slice(-2); }).join('');\n"
    "    try { localStorage.setItem(KEY, voter); } catch (e) { }\n"
    "  }\n"
    "  input.value = voter;\n"
    "  input.addEventListener('change', function () { try { localStorage.setItem(KEY, "
    "input.value); } catch (e) { } });\n"
    "  /* A token handed over in the fragment (#token=...) is sent as a bearer\n"
    "   * token and taken out of the address bar (fragments never reach servers). */\n"
    "  var m = /(?:^#|&)token=([^&]*)/.exec(location.hash);\n"
    "  if (m) {\n"
    "    token = decodeURIComponent(m[1]);\n"
    "    if (history.replaceState) history.replaceState(null, '', location.pathname + "
    "location.search);\n"
    "  }\n"
    "  function say(cls, text) { out.className = 'answer ' + cls; out.textContent = text; }\n"
    "  function answer(r, j, label) {\n"
    "    var msg = j && typeof j.message === 'string' ? j.message : '';\n"
    "    var retry = r.headers.get('Retry-After');\n"
    "    if (r.status === 202) say('ok', 'Thank you! Your vote for ' + label + ' is in.');\n"
    "    else if (r.status === 409) say('err', 'This poll is closed.' + (msg ? ' (' + msg + ')' "
    ": ''));\n"
    "    else if (r.status === 429) say('err', 'Too many votes from here: try again' + (retry ? "
    "' in ' + retry + ' s.' : ' shortly.'));\n"
    "    else if (r.status === 503) say('err', 'The server is busy: please retry in a moment.');\n"
    "    else say('err', 'Your vote was not taken: ' + (msg || 'error ' + r.status) + '.');\n"
    "  }\n"
    "  form.addEventListener('submit', function (ev) {\n"
    "    ev.preventDefault();\n"
    "    var b = ev.submitter || document.activeElement;\n"
    "    if (busy || !b || !b.value) return;\n"
    "    var label = b.getAttribute('data-label') || b.value, v = input.value.trim();\n"
    "    var h = { 'Content-Type': 'application/json' };\n"
    "    if (token) h.Authorization = 'Bearer ' + token;\n"
    "    var vote = { option: b.value };\n"
    "    if (v) vote.voter = v;\n"
    "    busy = true; say('wait', 'Sending your vote...');\n"
    "    fetch('/v1/polls/' + encodeURIComponent(poll) + '/votes', { method: 'POST', headers: h, "
    "body: JSON.stringify(vote) })\n"
    "      .then(function (r) { return r.text().then(function (t) { var j = null; try { j = "
    "JSON.parse(t); } catch (e) { } answer(r, j, label); }); })\n"
    "      .catch(function () { say('err', 'Could not reach the server: check your connection "
    "and try again.'); })\n"
    "      .then(function () { busy = false; });\n"
    "  });\n"
    "})();\n";

/* <head> up to and including <body ...>: data-* carry what the script
 * needs (escaped like any attribute). */
static void page_head(buf_t *out, const poll_def_t *poll, const char *what, const char *json_url,
                      uint64_t version, const char *state) {
    buf_puts(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                  "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>");
    html_escape(out, poll->title);
    buf_printf(out, " - %s</title><style>%s</style></head>\n<body data-poll=\"", what, css);
    html_escape(out, poll->id);
    buf_puts(out, "\" data-json=\"");
    html_escape(out, json_url);
    buf_printf(out, "\" data-version=\"%llu\"", (unsigned long long)version);
    if (state)
        buf_printf(out, " data-state=\"%s\"", state);
    buf_puts(out, ">\n<h1>");
    html_escape(out, poll->title);
    buf_puts(out, "</h1>\n");
}

/* The options with their counts, or (counts NULL: embargoed) their labels
 * only. */
static void put_bars(buf_t *out, const poll_def_t *poll, const uint64_t *counts) {
    uint64_t total = poll_total(poll, counts);
    buf_puts(out, "<div id=\"bars\">\n");
    for (int i = 0; i < poll->noptions; i++) {
        buf_puts(out, "<div class=\"opt\" data-opt=\"");
        html_escape(out, poll->options[i].id);
        buf_puts(out, "\"><div class=\"lbl\"><span>");
        html_escape(out, poll->options[i].label);
        if (!counts) {
            buf_puts(out, "</span></div></div>\n");
            continue;
        }
        double pct = total ? 100.0 * (double)counts[i] / (double)total : 0.0;
        buf_printf(out,
                   "</span><span>%llu (%.1f%%)</span></div><div class=\"bar\"><div "
                   "class=\"fill\" style=\"width:%.2f%%\"></div></div></div>\n",
                   (unsigned long long)counts[i], pct, pct);
    }
    buf_puts(out, "</div>\n");
}

void pub_render_poll_html(const pub_poll_t *v, uint64_t updated_ms, buf_t *out) {
    const poll_def_t *poll = v->def;
    char ts[40], json_url[ID_MAX_LEN + 8];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    snprintf(json_url, sizeof json_url, "%s.json", poll->id);
    const char *state = poll_state_name(v->state);
    page_head(out, poll, "results", json_url, v->version, state);
    buf_printf(out, "<p class=\"state\">state: <span id=\"state\">%s</span></p>\n", state);
    put_bars(out, poll, v->counts);
    if (v->counts) {
        buf_puts(out, "<svg id=\"chart\" viewBox=\"0 0 600 180\" role=\"img\" "
                      "aria-label=\"votes per minute\"></svg>\n");
        buf_printf(out,
                   "<p class=\"meta\">Total: <strong id=\"total\">%llu</strong> votes &middot; ",
                   (unsigned long long)poll_total(poll, v->counts));
    } else {
        buf_puts(out, "<p class=\"meta\">Results are published once the poll is final "
                      "&middot; ");
    }
    buf_printf(out,
               "mode: %s &middot; as of <time id=\"updated\" datetime=\"%s\">%s</time> &middot; "
               "<span id=\"live\">static</span> &middot; <a href=\"%s.json\">JSON</a> &middot; "
               "<a href=\"../vote/%s.html\">vote</a> &middot; <a href=\"../index.html\">all "
               "polls</a></p>\n<script>%s</script>\n</body></html>\n",
               poll_mode_name(poll->mode), ts, ts, poll->id, poll->id, results_js);
}

void pub_render_html(const poll_conf_t *pc, const uint64_t *counts, uint64_t updated_ms,
                     uint64_t version, buf_t *out) {
    poll_def_t d = conf_as_def(pc);
    pub_poll_t v = {.def = &d, .counts = counts, .state = POLL_OPEN, .version = version};
    pub_render_poll_html(&v, updated_ms, out);
}

void pub_render_poll_vote(const poll_def_t *poll, buf_t *out) {
    char json_url[ID_MAX_LEN + 16];
    snprintf(json_url, sizeof json_url, "../polls/%s.json", poll->id);
    page_head(out, poll, "vote", json_url, 0, NULL);
    buf_puts(out, "<form id=\"vote\"><div class=\"choices\">\n");
    for (int i = 0; i < poll->noptions; i++) {
        buf_puts(out, "<button class=\"choice\" type=\"submit\" name=\"option\" value=\"");
        html_escape(out, poll->options[i].id);
        buf_puts(out, "\" data-label=\"");
        html_escape(out, poll->options[i].label);
        buf_puts(out, "\">");
        html_escape(out, poll->options[i].label);
        buf_puts(out, "</button>\n");
    }
    buf_printf(out,
               "</div>\n<label class=\"voter\">Your voter id%s<input id=\"voter\" "
               "name=\"voter\" maxlength=\"256\" autocomplete=\"off\" spellcheck=\"false\">"
               "</label></form>\n<p id=\"answer\" class=\"answer\" role=\"status\" "
               "aria-live=\"polite\"></p>\n",
               poll->mode == MODE_UNLIMITED ? " (optional)" : "");
    buf_printf(out,
               "<p class=\"meta\">mode: %s &middot; <a href=\"../polls/%s.html\">live results</a> "
               "&middot; <a href=\"../index.html\">all polls</a></p>\n<script>%s</script>\n"
               "</body></html>\n",
               poll_mode_name(poll->mode), poll->id, vote_js);
}

void pub_render_vote(const poll_conf_t *pc, buf_t *out) {
    poll_def_t d = conf_as_def(pc);
    pub_render_poll_vote(&d, out);
}

void pub_render_index_polls(const pub_poll_t *polls, int n, uint64_t updated_ms, buf_t *out) {
    char ts[40];
    fmt_rfc3339(updated_ms, ts, sizeof ts);
    buf_printf(out,
               "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
               "<title>Polls</title><style>%s</style></head><body>\n<h1>Polls</h1>\n"
               "<p>Pick a poll to vote from this phone or browser; open its live results "
               "to watch them move.</p>\n"
               "<ul>\n",
               css);
    for (int i = 0; i < n; i++) {
        const poll_def_t *d = polls[i].def;
        const char *st = poll_state_name(polls[i].state);
        /* An open poll's title leads to its vote page (what a newcomer came
         * for); the others' to their results. */
        if (polls[i].state == POLL_OPEN) {
            buf_printf(out, "<li><a class=\"vote\" href=\"vote/%s.html\">", d->id);
            html_escape(out, d->title);
            buf_printf(out,
                       "</a> <span class=\"state\">%s</span> &middot; <a "
                       "href=\"polls/%s.html\">live results</a></li>\n",
                       st, d->id);
        } else {
            buf_printf(out, "<li><a href=\"polls/%s.html\">", d->id);
            html_escape(out, d->title);
            buf_printf(out, "</a> <span class=\"state\">%s</span></li>\n", st);
        }
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
