/* publisher/render.c: the JSON and HTML results and the index page. */
#include <cJSON.h>
#include <criterion/criterion.h>
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
    conf_finish(conf);
}
static void teardown(void) {
    config_free(conf);
    conf = NULL;
}

TestSuite(render, .init = setup, .fini = teardown);

static cJSON *render_json(const poll_conf_t *p, const uint64_t *counts, uint64_t ms, buf_t *b) {
    pub_render_json(p, counts, ms, b);
    cr_assert_not_null(b->data);
    cr_assert_eq(b->data[b->len - 1], '\n', "JSON ends with a newline");
    cJSON *j = cJSON_Parse(b->data);
    cr_assert_not_null(j, "not JSON: %s", b->data);
    cr_assert(cJSON_IsObject(j));
    return j;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    cr_assert(cJSON_IsNumber(v), "%s is not a number", k);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    cr_assert(cJSON_IsString(v), "%s is not a string", k);
    return v->valuestring;
}

Test(render, json_fields_and_values) {
    const poll_conf_t *p = &conf->polls[0];
    uint64_t counts[3] = {5, 0, 12};
    buf_t b = {0};
    cJSON *j = render_json(p, counts, 1700000000123ull, &b);
    cr_assert_str_eq(str(j, "poll"), "demo");
    cr_assert_str_eq(str(j, "title"), "Which act should win tonight?");
    cr_assert_str_eq(str(j, "mode"), "one-per-voter");
    cr_assert_eq(num(j, "total"), 17);
    cr_assert_str_eq(str(j, "updated_at"), "2023-11-14T22:13:20.123Z");
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(j, "options");
    cr_assert(cJSON_IsArray(opts));
    cr_assert_eq(cJSON_GetArraySize(opts), 3);
    const char *ids[] = {"red", "green", "blue"};
    const char *labels[] = {"The Red Singers", "green", "Blue Notes"};
    for (int i = 0; i < 3; i++) {
        const cJSON *o = cJSON_GetArrayItem(opts, i);
        cr_assert(cJSON_IsObject(o));
        cr_assert_str_eq(str(o, "id"), ids[i], "options are in config order");
        cr_assert_str_eq(str(o, "label"), labels[i]);
        cr_assert_eq(num(o, "votes"), (double)counts[i]);
        cr_assert_eq(cJSON_GetArraySize(o), 3, "option has exactly id, label, votes");
    }
    /* Exactly these fields, in this order. */
    const char *fields[] = {"poll", "title", "mode", "total", "options", "updated_at"};
    int k = 0;
    for (const cJSON *f = j->child; f; f = f->next, k++) {
        cr_assert_lt(k, 6);
        cr_assert_str_eq(f->string, fields[k]);
    }
    cr_assert_eq(k, 6);
    cJSON_Delete(j);
    buf_free(&b);
}

Test(render, json_modes_and_zero_totals) {
    uint64_t zero[2] = {0, 0};
    buf_t b = {0};
    cJSON *j = render_json(&conf->polls[1], zero, 0, &b);
    cr_assert_str_eq(str(j, "mode"), "changeable");
    cr_assert_eq(num(j, "total"), 0);
    cr_assert_str_eq(str(j, "updated_at"), "1970-01-01T00:00:00.000Z");
    cJSON_Delete(j);
    buf_free(&b);

    uint64_t one[1] = {3};
    j = render_json(&conf->polls[2], one, 0, &b);
    cr_assert_str_eq(str(j, "mode"), "unlimited");
    cr_assert_str_eq(str(j, "title"), "free");
    cJSON_Delete(j);
    buf_free(&b);
}

Test(render, json_escapes_titles_and_labels) {
    const poll_conf_t *p = &conf->polls[1];
    uint64_t counts[2] = {1, 2};
    buf_t b = {0};
    cJSON *j = render_json(p, counts, 0, &b);
    cr_assert_str_eq(str(j, "title"), p->title);
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(j, "options");
    cr_assert_str_eq(str(cJSON_GetArrayItem(opts, 0), "label"), "<script>alert('x')</script>");
    cr_assert_str_eq(str(cJSON_GetArrayItem(opts, 1), "label"), "\"quoted\" & <i>");
    cJSON_Delete(j);
    buf_free(&b);
}

Test(render, json_counts_are_exact_beyond_2_53) {
    /* cJSON numbers are doubles; the renderer writes raw integers. */
    const poll_conf_t *p = &conf->polls[0];
    uint64_t counts[3] = {9007199254740993ull, 1, UINT64_MAX - 9007199254740994ull};
    buf_t b = {0};
    pub_render_json(p, counts, 0, &b);
    cr_assert_not_null(strstr(b.data, "\"votes\":9007199254740993"), "%s", b.data);
    cr_assert_not_null(strstr(b.data, "\"total\":18446744073709551615"), "%s", b.data);
    cJSON *j = cJSON_Parse(b.data);
    cr_assert_not_null(j);
    cJSON_Delete(j);
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
