/* The conditional-request checks of ingest/static.c as pure functions:
 * If-None-Match lists by weak comparison (RFC 9110 8.8.3.2, 13.1.2) and
 * the three HTTP-date forms (5.6.7), against values worked out by hand. */
#include <criterion/criterion.h>
#include <string.h>

#include "ingest/ingest.h"

static int m(const char *list, const char *etag) {
    return http_etag_list_matches(list, strlen(list), etag);
}

Test(http_cache, if_none_match_matches_by_weak_comparison_in_lists_and_star) {
    const char *e = "\"1f-2a-3b\"";
    cr_assert(m("\"1f-2a-3b\"", e));
    cr_assert(m("W/\"1f-2a-3b\"", e));
    cr_assert(m("\"x\", W/\"y\",\"1f-2a-3b\"", e));
    cr_assert(m(" \t\"1f-2a-3b\" \t", e));
    cr_assert(m(",, \"1f-2a-3b\" ,", e));
    cr_assert(m("*", e));
    cr_assert(m("  *  ", e));
    cr_assert(m("\"\", \"1f-2a-3b\"", e)); /* an empty opaque tag is a tag */
}

Test(http_cache, if_none_match_malformed_or_other_matches_nothing) {
    const char *e = "\"1f-2a-3b\"";
    const char *no[] = {
        "",
        " ",
        "\"1f-2a-3c\"",
        "1f-2a-3b", /* unquoted */
        "W/1f-2a-3b",
        "w/\"1f-2a-3b\"",           /* W is case-sensitive */
        "\"1f-2a-3b",               /* unterminated */
        "\"1f-2a-3b\"\"1f-2a-3b\"", /* no comma between */
        "\"x\" junk, \"1f-2a-3b\"", /* junk anywhere spoils the whole value */
        "\"1f-2a-3b\", junk",
        "\"*\"",
        "*, \"1f-2a-3b\"", /* "*" stands alone or not at all */
        "\"1f 2a\"",       /* SP is not etagc */
        "W/",
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        cr_assert(!m(no[i], e), "'%s' must not match", no[i]);
    /* A length, not a NUL, ends the value. */
    cr_assert(!http_etag_list_matches("\"1f-2a-3b\"", 5, e));
}

Test(http_cache, http_dates_in_all_three_forms) {
    /* RFC 9110's example: 784111777 = 1994-11-06T08:49:37Z */
    const char *ok[] = {"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                        "Sun Nov  6 08:49:37 1994"};
    for (size_t i = 0; i < 3; i++) {
        int64_t t = 0;
        cr_assert(http_date_parse(ok[i], strlen(ok[i]), &t) == 0, "%s", ok[i]);
        cr_assert_eq(t, 784111777, "%s -> %lld", ok[i], (long long)t);
    }
    int64_t t;
    const char *y2k = "Tue, 29 Feb 2000 23:59:60 GMT"; /* leap day, leap second */
    cr_assert(http_date_parse(y2k, strlen(y2k), &t) == 0);
    cr_assert_eq(t, 951868800);
    const char *bad[] = {"Sun, 06 Nov 1994 08:49:37 UTC",
                         "Sun, 6 Nov 1994 08:49:37 GMT",
                         "Sun, 06 Nov 1994 08:49:37 GMT ",
                         "Sun, 06 Foo 1994 08:49:37 GMT",
                         "Sun, 32 Nov 1994 08:49:37 GMT",
                         "Sun, 06 Nov 1994 24:49:37 GMT",
                         "Sunday, 06 Nov 1994 08:49:37 GMT",
                         "Sun Nov 6 08:49:37 1994",
                         "",
                         "yesterday",
                         "Sun, 06 Nov 1994 08:49 GMT"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert(http_date_parse(bad[i], strlen(bad[i]), &t) != 0, "'%s' parsed", bad[i]);
}

Test(http_cache, http_date_format_round_trips) {
    char out[HTTP_DATE_LEN + 1];
    http_date_format(784111777, out);
    cr_assert_str_eq(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    for (int64_t t = 0; t < 4102444800LL; t += 86400 * 37 + 3607) {
        int64_t back;
        http_date_format(t, out);
        cr_assert(http_date_parse(out, strlen(out), &back) == 0, "%s", out);
        cr_assert_eq(back, t, "%s", out);
    }
}
