/* ingest/static.c: the conditional-request parsers, If-None-Match lists
 * (http_etag_list_matches) and HTTP-dates (http_date_parse), of arbitrary
 * bytes.
 *
 * The first byte picks the check, the rest is the field value.
 * If-None-Match: the value is matched against an ETag made of the input's
 * first quoted string; a value that matches must then be well-formed by a
 * reference reading of RFC 9110's grammar (written here, separately: a
 * comma-separated list, OWS around, of [W/] DQUOTE *etagc DQUOTE, or a lone
 * "*"), and the tag must be in it. Appending ", <tag>" to a well-formed
 * value must match. HTTP-date: an accepted date formats with
 * http_date_format() to an IMF-fixdate that parses back to the same second;
 * and a value containing a NUL or a control byte is never accepted. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "ingest/ingest.h"

static int ows(char c) {
    return c == ' ' || c == '\t';
}

/* 1 if s is a well-formed If-None-Match value; tags are collected. */
static int ref_wellformed(const char *s, size_t n, int *has_tag, const char *tag) {
    size_t i = 0, tl = strlen(tag);
    size_t a = 0, b = n;
    while (a < b && ows(s[a]))
        a++;
    while (b > a && ows(s[b - 1]))
        b--;
    if (b - a == 1 && s[a] == '*') {
        *has_tag = 1;
        return 1;
    }
    int elems = 0;
    i = a;
    while (i < b) {
        /* one element, maybe empty */
        size_t e = i;
        int inq = 0;
        while (e < b && (inq || s[e] != ',')) {
            if (s[e] == '"')
                inq = !inq;
            e++;
        }
        size_t x = i, y = e;
        while (x < y && ows(s[x]))
            x++;
        while (y > x && ows(s[y - 1]))
            y--;
        if (y > x) {
            size_t q = x;
            if (y - q >= 2 && s[q] == 'W' && s[q + 1] == '/')
                q += 2;
            if (y - q < 2 || s[q] != '"' || s[y - 1] != '"')
                return 0;
            for (size_t k = q + 1; k < y - 1; k++) {
                unsigned char ch = (unsigned char)s[k];
                if (!(ch == 0x21 || (ch >= 0x23 && ch != 0x7f)))
                    return 0;
            }
            if (y - q == tl && !memcmp(s + q, tag, tl))
                *has_tag = 1;
            elems++;
        }
        i = e < b ? e + 1 : e;
    }
    return elems > 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] & 1) {
        int64_t t;
        if (http_date_parse(s, n, &t) == 0) {
            FUZZ_CHECK(memchr(s, '\0', n) == NULL);
            for (size_t i = 0; i < n; i++)
                FUZZ_CHECK((unsigned char)s[i] >= 0x20 && s[i] != 0x7f);
            char out[HTTP_DATE_LEN + 1];
            http_date_format(t, out);
            int64_t back = -1;
            if (t >= -62135596800LL && t <= 253402300799LL) { /* years 1-9999 */
                FUZZ_CHECK(http_date_parse(out, strlen(out), &back) == 0);
                FUZZ_CHECK(back == t);
            }
        }
        return 0;
    }
    /* The tag: the first quoted run of etagc in the input, else a fixed one. */
    char tag[256] = "\"abc\"";
    const char *q = memchr(s, '"', n);
    if (q) {
        const char *e = q + 1;
        while (e < s + n && e - q < 250 &&
               ((unsigned char)*e == 0x21 || ((unsigned char)*e >= 0x23 && *e != 0x7f)))
            e++;
        if (e < s + n && *e == '"') {
            memcpy(tag, q, (size_t)(e - q + 1));
            tag[e - q + 1] = '\0';
        }
    }
    int has = 0;
    int wf = ref_wellformed(s, n, &has, tag);
    int got = http_etag_list_matches(s, n, tag);
    FUZZ_CHECK(got == (wf && has));
    if (wf && n + strlen(tag) + 3 < 4400) {
        char *ext = malloc(n + strlen(tag) + 3);
        memcpy(ext, s, n);
        size_t l = n;
        /* A lone "*" takes no list after it. */
        int lone_star = 0;
        {
            size_t a = 0, b = n;
            while (a < b && ows(s[a]))
                a++;
            while (b > a && ows(s[b - 1]))
                b--;
            lone_star = b - a == 1 && s[a] == '*';
        }
        if (!lone_star) {
            ext[l++] = ',';
            memcpy(ext + l, tag, strlen(tag));
            l += strlen(tag);
            FUZZ_CHECK(http_etag_list_matches(ext, l, tag));
        }
        free(ext);
    }
    return 0;
}
