/* publisher/render.c: the JSON and HTML results and the index page. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <string.h>

#include "publisher/publisher.h"
#include "unit_helpers.h"

static tally_config_t *conf;

static void setup(void) {
    conf = config_new_defaults();
    conf_set(conf, "poll.demo", "title", "Which act should win tonight?");
    conf_set(conf, "poll.demo", "options", "red, green, blue");
    conf_set(conf, "poll.demo", "label.red", "The Red Singers");
    conf_set(conf, "poll.demo", "label.blue", "Blue Notes");
    conf_set(conf, "poll.xss", "title", "Tom & Jerry's <b>\"best\"</b> > rest");
    conf_set(conf, "poll.xss", "options", "a, b");
    conf_set(conf, "poll.xss", "label.a", "<script>alert('x')</script>");
    conf_set(conf, "poll.xss", "label.b", "\"quoted\" & <i>");
    conf_set(conf, "poll.xss", "mode", "changeable");
    conf_set(conf, "poll.free", "options", "clap");
    conf_set(conf, "poll.free", "mode", "unlimited");
    /* Titles and labels are config text: any bytes at all. */
    conf_set(conf, "poll.evil", "title", "q\"uote\\ </script><script>x()</script> \x01\x1f\x7f");
    conf_set(conf, "poll.evil", "options", "a, b, c, d");
    conf_set(conf, "poll.evil", "label.a", "bad \xff\xfe byte");
    conf_set(conf, "poll.evil", "label.b", "overlong \xc0\xaf surrogate \xed\xa0\x80 cut \xe2\x82");
    conf_set(conf, "poll.evil", "label.c",
             "tab\tnl\ncr\r \xc3\xa9t\xc3\xa9 \xf0\x9f\x97\xb3 \xe2\x80\xa8");
    conf_set(conf, "poll.evil", "label.d", "' onmouseover='x()' & \"");
    conf_finish(conf);
}
static void teardown(void) {
    config_free(conf);
    conf = NULL;
}

TestSuite(render, .init = setup, .fini = teardown);

/* Parses with jansson, which is strict: valid UTF-8, no trailing data, no
 * duplicate keys. */
static json_t *render_json(const poll_conf_t *p, const uint64_t *counts, uint64_t ms, buf_t *b) {
    pub_render_json(p, counts, ms, b);
    cr_assert_not_null(b->data);
    cr_assert_eq(b->data[b->len - 1], '\n', "JSON ends with a newline");
    json_error_t e;
    json_t *j = json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, &e);
    cr_assert_not_null(j, "not strict JSON (%s): %s", e.text, b->data);
    cr_assert(json_is_object(j));
    return j;
}

static double num(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    cr_assert(json_is_integer(v), "%s is not an integer", k);
    return (double)json_integer_value(v);
}

static const char *str(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    cr_assert(json_is_string(v), "%s is not a string", k);
    return json_string_value(v);
}

static const poll_conf_t *poll_named(const char *id) {
    const poll_conf_t *p = config_poll(conf, id, strlen(id));
    cr_assert_not_null(p, "no poll %s", id);
    return p;
}

Test(render, json_fields_and_values) {
    const poll_conf_t *p = &conf->polls[0];
    uint64_t counts[3] = {5, 0, 12};
    buf_t b = {0};
    json_t *j = render_json(p, counts, 1700000000123ull, &b);
    cr_assert_str_eq(str(j, "poll"), "demo");
    cr_assert_str_eq(str(j, "title"), "Which act should win tonight?");
    cr_assert_str_eq(str(j, "mode"), "one-per-voter");
    cr_assert_eq(num(j, "total"), 17);
    cr_assert_str_eq(str(j, "updated_at"), "2023-11-14T22:13:20.123Z");
    const json_t *opts = json_object_get(j, "options");
    cr_assert(json_is_array(opts));
    cr_assert_eq(json_array_size(opts), 3);
    const char *ids[] = {"red", "green", "blue"};
    const char *labels[] = {"The Red Singers", "green", "Blue Notes"};
    for (int i = 0; i < 3; i++) {
        const json_t *o = json_array_get(opts, i);
        cr_assert(json_is_object(o));
        cr_assert_str_eq(str(o, "id"), ids[i], "options are in config order");
        cr_assert_str_eq(str(o, "label"), labels[i]);
        cr_assert_eq(num(o, "votes"), (double)counts[i]);
        cr_assert_eq(json_object_size(o), 3, "option has exactly id, label, votes");
    }
    /* Exactly these fields, in this order. */
    const char *fields[] = {"poll",    "title",     "mode",  "state", "visibility", "version",
                            "opens_at", "closes_at", "total", "late",  "options",    "updated_at"};
    int k = 0;
    const char *key;
    const json_t *val;
    json_object_foreach(j, key, val) {
        (void)val;
        cr_assert_lt(k, 12);
        cr_assert_str_eq(key, fields[k]);
        k++;
    }
    cr_assert_eq(k, 12);
    cr_assert_str_eq(str(j, "state"), "open");
    json_decref(j);
    buf_free(&b);
}

Test(render, json_modes_and_zero_totals) {
    uint64_t zero[2] = {0, 0};
    buf_t b = {0};
    json_t *j = render_json(&conf->polls[1], zero, 0, &b);
    cr_assert_str_eq(str(j, "mode"), "changeable");
    cr_assert_eq(num(j, "total"), 0);
    cr_assert_str_eq(str(j, "updated_at"), "1970-01-01T00:00:00.000Z");
    json_decref(j);
    buf_free(&b);

    uint64_t one[1] = {3};
    j = render_json(&conf->polls[2], one, 0, &b);
    cr_assert_str_eq(str(j, "mode"), "unlimited");
    cr_assert_str_eq(str(j, "title"), "free");
    json_decref(j);
    buf_free(&b);
}

Test(render, json_escapes_titles_and_labels) {
    const poll_conf_t *p = &conf->polls[1];
    uint64_t counts[2] = {1, 2};
    buf_t b = {0};
    json_t *j = render_json(p, counts, 0, &b);
    cr_assert_str_eq(str(j, "title"), p->title);
    const json_t *opts = json_object_get(j, "options");
    cr_assert_str_eq(str(json_array_get(opts, 0), "label"), "<script>alert('x')</script>");
    cr_assert_str_eq(str(json_array_get(opts, 1), "label"), "\"quoted\" & <i>");
    cr_assert_null(strstr(b.data, "</script"), "'</' is escaped: %s", b.data);
    json_decref(j);
    buf_free(&b);
}

Test(render, json_counts_are_exact_beyond_2_53) {
    /* Doubles are exact to 2^53, jansson's integers to 2^63: the renderer
     * prints every uint64 exactly. */
    const poll_conf_t *p = &conf->polls[0];
    uint64_t counts[3] = {9007199254740993ull, 1, UINT64_MAX - 9007199254740994ull};
    buf_t b = {0};
    pub_render_json(p, counts, 0, &b);
    cr_assert_not_null(strstr(b.data, "\"votes\":9007199254740993"), "%s", b.data);
    cr_assert_not_null(strstr(b.data, "\"total\":18446744073709551615"), "%s", b.data);
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, JSON_DECODE_INT_AS_REAL, &e);
    cr_assert_not_null(j, "%s", e.text);
    json_decref(j);
    buf_free(&b);
}

Test(render, json_appends_to_buffer) {
    buf_t b = {0};
    buf_puts(&b, "prefix:");
    uint64_t counts[1] = {1};
    pub_render_json(&conf->polls[2], counts, 0, &b);
    cr_assert_eq(strncmp(b.data, "prefix:{", 8), 0);
    buf_free(&b);
}

Test(render, html_escape_every_special) {
    buf_t b = {0};
    html_escape(&b, "a<b>&\"'z");
    cr_assert_str_eq(b.data, "a&lt;b&gt;&amp;&quot;&#39;z");
    buf_free(&b);
    html_escape(&b, "");
    cr_assert(b.data == NULL || b.len == 0);
    html_escape(&b, "plain ünïcödé");
    cr_assert_str_eq(b.data, "plain ünïcödé");
    buf_free(&b);
}

Test(render, html_escapes_title_and_labels) {
    const poll_conf_t *p = &conf->polls[1];
    uint64_t counts[2] = {1, 3};
    buf_t b = {0};
    pub_render_html(p, counts, 1700000000123ull, &b);
    const char *h = b.data;
    cr_assert_null(strstr(h, "<script"), "raw <script> in:\n%s", h);
    cr_assert_null(strstr(h, "<b>"), "raw <b> from the title");
    cr_assert_null(strstr(h, "<i>"), "raw <i> from a label");
    cr_assert_null(strstr(h, "Jerry's"), "raw quote from the title");
    cr_assert_not_null(strstr(h, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    cr_assert_not_null(strstr(h, "&quot;quoted&quot; &amp; &lt;i&gt;"));
    cr_assert_not_null(
        strstr(h, "<title>Tom &amp; Jerry&#39;s &lt;b&gt;&quot;best&quot;&lt;/b&gt; &gt; rest"));
    cr_assert_not_null(
        strstr(h, "<h1>Tom &amp; Jerry&#39;s &lt;b&gt;&quot;best&quot;&lt;/b&gt; &gt; rest</h1>"));
    buf_free(&b);
}

Test(render, html_counts_percentages_and_meta) {
    const poll_conf_t *p = &conf->polls[0];
    uint64_t counts[3] = {1, 0, 3};
    buf_t b = {0};
    pub_render_html(p, counts, 1700000000123ull, &b);
    const char *h = b.data;
    cr_assert_eq(strncmp(h, "<!DOCTYPE html>", 15), 0);
    cr_assert_not_null(strstr(h, "</html>"));
    cr_assert_not_null(strstr(h, "<span>1 (25.0%)</span>"), "%s", h);
    cr_assert_not_null(strstr(h, "<span>0 (0.0%)</span>"));
    cr_assert_not_null(strstr(h, "<span>3 (75.0%)</span>"));
    cr_assert_not_null(strstr(h, "width:25.00%"));
    cr_assert_not_null(strstr(h, "Total: <strong>4</strong>"));
    cr_assert_not_null(strstr(h, "mode: one-per-voter"));
    cr_assert_not_null(strstr(h, "2023-11-14T22:13:20.123Z"));
    cr_assert_not_null(strstr(h, "href=\"demo.json\""));
    cr_assert_not_null(strstr(h, "href=\"../index.html\""));
    /* Labels appear in config order. */
    const char *r = strstr(h, "The Red Singers"), *g = strstr(h, "<span>green</span>"),
               *bl = strstr(h, "Blue Notes");
    cr_assert(r && g && bl && r < g && g < bl);
    /* No external resources. */
    cr_assert_null(strstr(h, "http://"));
    cr_assert_null(strstr(h, "https://"));
    cr_assert_null(strstr(h, "<script"));
    buf_free(&b);
}

Test(render, html_zero_total_has_no_nan) {
    uint64_t counts[3] = {0, 0, 0};
    buf_t b = {0};
    pub_render_html(&conf->polls[0], counts, 0, &b);
    cr_assert_null(strstr(b.data, "nan"));
    cr_assert_null(strstr(b.data, "inf"));
    cr_assert_not_null(strstr(b.data, "<span>0 (0.0%)</span>"));
    cr_assert_not_null(strstr(b.data, "Total: <strong>0</strong>"));
    buf_free(&b);
}

Test(render, index_lists_every_poll) {
    buf_t b = {0};
    pub_render_index(conf, 1700000000123ull, &b);
    const char *h = b.data;
    const char *prev = h;
    for (int i = 0; i < conf->npolls; i++) {
        char link[128];
        snprintf(link, sizeof link, "<a href=\"polls/%s.html\">", conf->polls[i].id);
        const char *at = strstr(h, link);
        cr_assert_not_null(at, "index lacks %s:\n%s", link, h);
        cr_assert(at >= prev, "polls out of config order");
        prev = at;
    }
    cr_assert_not_null(strstr(h, ">Which act should win tonight?</a>"));
    cr_assert_not_null(
        strstr(h, ">Tom &amp; Jerry&#39;s &lt;b&gt;&quot;best&quot;&lt;/b&gt; &gt; rest</a>"));
    cr_assert_not_null(strstr(h, ">free</a>"));
    cr_assert_null(strstr(h, "<b>"));
    cr_assert_not_null(strstr(h, "2023-11-14T22:13:20.123Z"));
    int items = 0;
    for (const char *s = h; (s = strstr(s, "<li>")); s++)
        items++;
    cr_assert_eq(items, conf->npolls);
    buf_free(&b);
}

Test(render, index_without_polls) {
    tally_config_t *empty = config_new_defaults();
    buf_t b = {0};
    pub_render_index(empty, 0, &b);
    cr_assert_not_null(strstr(b.data, "<ul>\n</ul>"));
    cr_assert_null(strstr(b.data, "<li>"));
    buf_free(&b);
    config_free(empty);
}

/* ---- titles and labels with any bytes ---- */

/* jansson's own UTF-8 check, independent of the renderer's. */
static int valid_utf8(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    json_decref(j);
    return j != NULL;
}

/* C0 controls, and DEL when del != 0 (HTML forbids it; JSON does not). */
static void assert_no_controls(const char *s, size_t n, const char *allowed, int del,
                               const char *what) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 || (del && c == 0x7f)) && !(c && strchr(allowed, c)))
            cr_assert_fail("%s: raw control byte 0x%02x at %zu", what, c, i);
    }
}

#define FFFD "\xef\xbf\xbd"

Test(render, json_hostile_titles_and_labels_are_valid_json) {
    const poll_conf_t *p = poll_named("evil");
    uint64_t counts[4] = {1, 2, 3, 4};
    buf_t b = {0};
    json_t *j = render_json(p, counts, 0, &b);
    cr_assert(valid_utf8(b.data, b.len), "not UTF-8: %s", b.data);
    assert_no_controls(b.data, b.len - 1, "", 0, "JSON text");
    cr_assert_null(strstr(b.data, "</"), "'</' must be escaped: %s", b.data);
    /* Valid UTF-8 comes back byte for byte, controls and all. */
    cr_assert_str_eq(str(j, "title"), p->title);
    const json_t *opts = json_object_get(j, "options");
    cr_assert_eq(json_array_size(opts), 4);
    cr_assert_str_eq(str(json_array_get(opts, 0), "label"), "bad " FFFD FFFD " byte");
    cr_assert_str_eq(str(json_array_get(opts, 1), "label"),
                     "overlong " FFFD FFFD " surrogate " FFFD FFFD FFFD " cut " FFFD FFFD);
    cr_assert_str_eq(str(json_array_get(opts, 2), "label"), p->options[2].label);
    cr_assert_str_eq(str(json_array_get(opts, 3), "label"), "' onmouseover='x()' & \"");
    cr_assert_eq(num(j, "total"), 10);
    json_decref(j);
    buf_free(&b);
}

Test(render, html_hostile_titles_and_labels_are_safe) {
    const poll_conf_t *p = poll_named("evil");
    uint64_t counts[4] = {1, 2, 3, 4};
    buf_t b = {0};
    pub_render_html(p, counts, 0, &b);
    const char *h = b.data;
    cr_assert(valid_utf8(h, b.len), "not UTF-8:\n%s", h);
    assert_no_controls(h, b.len, "\t\n\r", 1, "HTML");
    cr_assert_null(strstr(h, "<script"), "%s", h);
    cr_assert_null(strstr(h, "</script"), "%s", h);
    cr_assert_null(strstr(h, "' onmouseover"), "a quote from a label broke out");
    cr_assert_not_null(strstr(h, "&#39; onmouseover=&#39;x()&#39; &amp; &quot;"));
    cr_assert_not_null(strstr(h, "<title>q&quot;uote\\ &lt;/script&gt;&lt;script&gt;x()"
                                 "&lt;/script&gt; " FFFD FFFD FFFD " - results</title>"),
                       "%s", h);
    cr_assert_not_null(strstr(h, "bad " FFFD FFFD " byte"));
    cr_assert_not_null(
        strstr(h, "overlong " FFFD FFFD " surrogate " FFFD FFFD FFFD " cut " FFFD FFFD "<"));
    /* Tab, newline, CR and real UTF-8 pass through. */
    cr_assert_not_null(strstr(h, "tab\tnl\ncr\r \xc3\xa9t\xc3\xa9 \xf0\x9f\x97\xb3 \xe2\x80\xa8"));
    buf_free(&b);

    pub_render_index(conf, 0, &b);
    cr_assert(valid_utf8(b.data, b.len), "index not UTF-8:\n%s", b.data);
    assert_no_controls(b.data, b.len, "\t\n\r", 1, "index");
    cr_assert_null(strstr(b.data, "<script"));
    buf_free(&b);
}

/* ---- the lifecycle fields ---- */

static json_t *render_view(const pub_poll_t *v, buf_t *b) {
    pub_render_poll_json(v, 1700000000123ull, b);
    json_error_t e;
    json_t *j = json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, &e);
    cr_assert_not_null(j, "not strict JSON (%s): %s", e.text, b->data);
    return j;
}

Test(render, json_carries_state_version_times_late_and_final_positions) {
    poll_option_t opts[2] = {{"a", "A"}, {"b", "B"}};
    poll_def_t d = {.id = "duel", .title = "Duel", .mode = MODE_CAPPED, .max_votes = 20,
                    .options = opts, .noptions = 2, .closes_at = 1700000000000ull};
    uint64_t counts[2] = {5, 7}, finals[3] = {10, 20, 30};
    pub_poll_t v = {.def = &d, .counts = counts, .state = POLL_FINAL, .version = 99, .late = 4,
                    .final_positions = finals, .npartitions = 3};
    buf_t b = {0};
    json_t *j = render_view(&v, &b);
    cr_assert_str_eq(str(j, "state"), "final");
    cr_assert_eq(num(j, "version"), 99);
    cr_assert_eq(num(j, "late"), 4);
    cr_assert_eq(num(j, "total"), 12);
    cr_assert_eq(num(j, "max_votes"), 20);
    cr_assert_str_eq(str(j, "mode"), "capped");
    cr_assert_str_eq(str(j, "closes_at"), "2023-11-14T22:13:20.000Z");
    cr_assert(json_is_null(json_object_get(j, "opens_at")));
    json_t *fp = json_object_get(j, "final_positions");
    cr_assert_eq(json_array_size(fp), 3);
    cr_assert_eq(json_integer_value(json_array_get(fp, 2)), 30);
    json_decref(j);
    buf_free(&b);
    buf_t h = {0};
    pub_render_poll_html(&v, 0, &h);
    cr_assert_not_null(strstr(h.data, "final"));
    cr_assert_null(strstr(h.data, "http-equiv=\"refresh\""), "a final page does not refresh");
    buf_free(&h);
}

Test(render, on_close_before_final_shows_the_poll_and_state_but_no_counts) {
    poll_option_t opts[2] = {{"a", "A"}, {"b", "B"}};
    poll_def_t d = {.id = "secret", .title = "Secret", .mode = MODE_ONE_PER_VOTER,
                    .options = opts, .noptions = 2, .visibility = VIS_ON_CLOSE};
    pub_poll_t v = {.def = &d, .counts = NULL, .state = POLL_CLOSED, .version = 3};
    buf_t b = {0};
    json_t *j = render_view(&v, &b);
    cr_assert_str_eq(str(j, "state"), "closed");
    cr_assert_str_eq(str(j, "visibility"), "on_close");
    cr_assert_null(json_object_get(j, "total"));
    cr_assert_null(json_object_get(j, "late"));
    cr_assert_null(json_object_get(j, "final_positions"));
    json_t *o = json_array_get(json_object_get(j, "options"), 1);
    cr_assert_str_eq(str(o, "label"), "B");
    cr_assert_null(json_object_get(o, "votes"));
    json_decref(j);
    buf_free(&b);
    buf_t h = {0};
    pub_render_poll_html(&v, 0, &h);
    cr_assert_null(strstr(h.data, "Total:"));
    cr_assert_not_null(strstr(h.data, "once the poll is final"));
    buf_free(&h);
}

Test(render, index_lists_each_polls_state) {
    poll_option_t opts[1] = {{"a", "A"}};
    poll_def_t d1 = {.id = "one", .title = "One", .options = opts, .noptions = 1};
    poll_def_t d2 = {.id = "two", .title = "Two", .options = opts, .noptions = 1};
    pub_poll_t v[2] = {{.def = &d1, .state = POLL_SCHEDULED}, {.def = &d2, .state = POLL_FINAL}};
    buf_t b = {0};
    pub_render_index_polls(v, 2, 0, &b);
    cr_assert_not_null(strstr(b.data, "polls/one.html\">One</a> <span class=\"state\">scheduled"));
    cr_assert_not_null(strstr(b.data, "polls/two.html\">Two</a> <span class=\"state\">final"));
    buf_free(&b);
}
