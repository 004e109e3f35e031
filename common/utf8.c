#include "common/utf8.h"

/* Well-formed sequences, RFC 3629 section 4 (Unicode table 3-7): the second
 * byte's range depends on the first, which rules out overlong forms,
 * surrogates and code points past U+10FFFF. */
size_t utf8_seq_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || u[1] < lo || u[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((u[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

int utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(s + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

void utf8_put_valid(buf_t *out, const char *s, size_t n) {
    size_t run = 0; /* start of the pending valid run */
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(s + i, n - i);
        if (k) {
            i += k;
            continue;
        }
        if (i > run)
            buf_append(out, s + run, i - run);
        buf_puts(out, UTF8_REPLACEMENT);
        run = ++i;
    }
    if (n > run)
        buf_append(out, s + run, n - run);
}
