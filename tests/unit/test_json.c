/* common/utf8.c and common/json.c: the one way bytes from outside become
 * JSON strings. Checked against jansson (its UTF-8 check, its parser). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "common/json.h"
#include "common/utf8.h"

#define FFFD "\xef\xbf\xbd"

/* The oracle: jansson's UTF-8 check (json_stringn refuses invalid UTF-8). */
static int jansson_valid(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    json_decref(j);
    return j != NULL;
}

Test(utf8, agrees_with_jansson_on_every_short_sequence) {
    unsigned char s[4];
    for (int a = 0; a < 256; a++) {
        s[0] = (unsigned char)a;
        cr_assert_eq(utf8_valid((char *)s, 1), jansson_valid((char *)s, 1), "%02x", a);
        for (int b = 0; b < 256; b++) {
            s[1] = (unsigned char)b;
            cr_assert_eq(utf8_valid((char *)s, 2), jansson_valid((char *)s, 2), "%02x %02x", a, b);
        }
    }
    /* Every lead byte of a 3- or 4-byte form, every second byte, edge values
     * after it. */
    static const unsigned char tails[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90,
                                          0x9f, 0xa0, 0xbf, 0xc0, 0xf4, 0xff};
    for (int a = 0xe0; a <= 0xff; a++)
        for (int b = 0; b < 256; b++)
            for (size_t c = 0; c < sizeof tails; c++)
                for (size_t d = 0; d < sizeof tails; d++) {
                    s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = tails[c],
                    s[3] = tails[d];
                    cr_assert_eq(utf8_valid((char *)s, 3), jansson_valid((char *)s, 3),
                                 "%02x %02x %02x", a, b, tails[c]);
                    cr_assert_eq(utf8_valid((char *)s, 4), jansson_valid((char *)s, 4),
                                 "%02x %02x %02x %02x", a, b, tails[c], tails[d]);
                }
}

Test(utf8, known_forms) {
    cr_assert_eq(utf8_seq_len("\xc3\xa9", 2), 2);
    cr_assert_eq(utf8_seq_len("\xe2\x82\xac", 3), 3);     /* U+20AC */
    cr_assert_eq(utf8_seq_len("\xf0\x9f\x97\xb3", 4), 4); /* U+1F5F3 */
    cr_assert_eq(utf8_seq_len("\xf4\x8f\xbf\xbf", 4), 4); /* U+10FFFF */
    cr_assert_eq(utf8_seq_len("\xf4\x90\x80\x80", 4), 0); /* U+110000 */
    cr_assert_eq(utf8_seq_len("\xc0\xaf", 2), 0);         /* overlong '/' */
    cr_assert_eq(utf8_seq_len("\xe0\x80\xaf", 3), 0);     /* overlong '/' */
    cr_assert_eq(utf8_seq_len("\xf0\x80\x80\xaf", 4), 0); /* overlong '/' */
    cr_assert_eq(utf8_seq_len("\xed\xa0\x80", 3), 0);     /* U+D800 */
    cr_assert_eq(utf8_seq_len("\xed\x9f\xbf", 3), 3);     /* U+D7FF */
    cr_assert_eq(utf8_seq_len("\xe2\x82\xac", 2), 0);     /* cut short */
    cr_assert_eq(utf8_seq_len("\x80", 1), 0);
    cr_assert_eq(utf8_seq_len("", 1), 1); /* NUL is UTF-8 */
}

Test(utf8, put_valid_replaces_each_bad_byte) {
    buf_t b = {0};
    utf8_put_valid(&b,
                   "a\xff"
                   "b\xc0\xaf"
                   "c\xe2\x82",
                   8);
    cr_assert_str_eq(b.data, "a" FFFD "b" FFFD FFFD "c" FFFD FFFD);
    buf_free(&b);
    utf8_put_valid(&b, "", 0);
    cr_assert(b.len == 0);
    buf_free(&b);
}

static json_t *parse_string(const buf_t *b) {
    json_error_t e;
    json_t *j = json_loadb(b->data, b->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    cr_assert_not_null(j, "not JSON (%s): %s", e.text, b->data);
    cr_assert(json_is_string(j));
    return j;
}

Test(json, put_str_round_trips_valid_text) {
    const char s[] = "q\"b\\s/ </script> \x01\x1f\x7f\t\n é \xe2\x80\xa8 \0nul";
    buf_t b = {0};
    json_put_strn(&b, s, sizeof s - 1);
    cr_assert_null(strstr(b.data, "</"), "%s", b.data);
    for (size_t i = 0; i < b.len; i++)
        cr_assert((unsigned char)b.data[i] >= 0x20, "raw control byte at %zu: %s", i, b.data);
    json_t *j = parse_string(&b);
    cr_assert_eq(json_string_length(j), sizeof s - 1);
    cr_assert_eq(memcmp(json_string_value(j), s, sizeof s - 1), 0);
    json_decref(j);
    buf_free(&b);
}

Test(json, put_str_makes_any_bytes_valid) {
    /* Random bytes: always one valid JSON string, equal to the input where
     * the input was valid UTF-8. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    char s[64];
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)(round % 64);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            s[i] = (char)(x >> 24);
        }
        buf_t b = {0};
        buf_puts(&b, "[");
        json_put_strn(&b, s, n);
        buf_puts(&b, "]");
        json_error_t e;
        json_t *j = json_loadb(b.data, b.len, JSON_ALLOW_NUL, &e);
        cr_assert_not_null(j, "round %d: %s", round, e.text);
        const json_t *str = json_array_get(j, 0);
        cr_assert(json_is_string(str));
        if (jansson_valid(s, n))
            cr_assert(json_string_length(str) == n && !memcmp(json_string_value(str), s, n));
        json_decref(j);
        buf_free(&b);
    }
}

Test(json, error_body) {
    buf_t b = {0};
    json_put_error(&b, "bad", "no poll '\xff<\"x\">'");
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &e);
    cr_assert_not_null(j, "%s: %s", e.text, b.data);
    cr_assert_eq(json_object_size(j), 2);
    cr_assert_str_eq(json_string_value(json_object_get(j, "error")), "bad");
    cr_assert_str_eq(json_string_value(json_object_get(j, "message")), "no poll '" FFFD "<\"x\">'");
    json_decref(j);
    buf_free(&b);
}

/* ---- json_scope: the hot path's allocator ---- */

Test(json_scope, a_tree_parsed_in_a_scope_lives_in_the_threads_block) {
    const char body[] = "{\"option\":\"green\",\"voter\":\"user-1234567@example.org\"}";
    json_t *outside = json_loads(body, 0, NULL);
    cr_assert(outside);
    cr_assert(!json_scope_owns(json_string_value(json_object_get(outside, "voter"))));
    for (int round = 0; round < 3; round++) {
        json_scope_begin();
        json_t *j = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
        cr_assert(j);
        const char *v = json_string_value(json_object_get(j, "voter"));
        cr_assert_str_eq(v, "user-1234567@example.org");
        cr_assert(json_scope_owns(v), "round %d: the voter string was malloc'd", round);
        cr_assert(json_scope_owns(j));
        /* A tree from outside the scope is freed the usual way inside it. */
        if (round == 2)
            json_decref(outside);
        json_decref(j);
        json_scope_end();
    }
}

/* A tree larger than the block (its tail malloc'd), an error, and nested
 * scopes: every value read back intact (ASan checks the frees). */
Test(json_scope, what_does_not_fit_is_malloced_and_scopes_nest) {
    buf_t b = {0};
    buf_puts(&b, "[");
    for (int i = 0; i < 2000; i++)
        buf_printf(&b, "%s\"value-%06d\"", i ? "," : "", i);
    buf_puts(&b, "]");
    cr_assert_gt(b.len, (size_t)JSON_SCOPE_BYTES);
    json_scope_begin();
    json_t *outer = json_loads("{\"k\":\"outer\"}", 0, NULL);
    json_scope_begin();
    json_t *big = json_loadb(b.data, b.len, 0, NULL);
    cr_assert(big);
    cr_assert_eq(json_array_size(big), 2000);
    int owned = 0, malloced = 0;
    for (int i = 0; i < 2000; i++) {
        char want[16];
        snprintf(want, sizeof want, "value-%06d", i);
        const char *got = json_string_value(json_array_get(big, (size_t)i));
        cr_assert_str_eq(got, want);
        json_scope_owns(got) ? owned++ : malloced++;
    }
    cr_assert_gt(owned, 0);
    cr_assert_gt(malloced, 0);
    json_decref(big);
    json_error_t je;
    cr_assert_null(json_loads("{\"a\":1,\"a\":2}", JSON_REJECT_DUPLICATES, &je));
    json_scope_end();
    /* The inner scope's end reused nothing: outer is intact. */
    cr_assert_str_eq(json_string_value(json_object_get(outer, "k")), "outer");
    json_decref(outer);
    json_scope_end();
    buf_free(&b);
}

Test(json_scope, a_tree_kept_past_its_scope_aborts, .signal = SIGABRT) {
    json_scope_begin();
    json_t *j = json_loads("{\"k\":\"kept\"}", 0, NULL);
    cr_assert(j);
    json_scope_end();
}
