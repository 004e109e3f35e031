/* common/util.c: parse_rfc3339() of arbitrary strings, fmt_rfc3339() of
 * arbitrary times.
 *
 * The input, NUL-terminated, is parsed both by parse_rfc3339() and by the
 * reference below: RFC 3339 section 5.6 read from the RFC (date-time with
 * "T"/"t", "Z"/"z" or a +hh:mm/-hh:mm offset, an optional fraction of any
 * length, truncated to ms), less what a uint64 of ms since the epoch cannot
 * hold (instants before the epoch, the leap second :60), its day count from
 * civil-date arithmetic rather than timegm. Both must accept the same strings
 * and give the same instant; an accepted instant formats with fmt_rfc3339()
 * to a string that parses back to it. The first 8 bytes, read as a time in
 * ms, are formatted too: up to year 9999 the text must be RFC 3339 and parse
 * back exactly; beyond, it must still be a terminated string in the buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "fuzz.h"

/* 9999-12-31T23:59:59.999Z, the last instant with a four-digit year. */
#define MS_MAX_4DIGIT 253402300799999ull

static int ref_num(const char *s, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar, from
 * the count of whole 400-year eras (146097 days each) and the day within
 * the era of a year that starts on March 1st. */
static int64_t ref_days(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int ref_parse(const char *s, uint64_t *out) {
    int Y, M, D, h, mi, sec;
    size_t n = strlen(s);
    /* "YYYY-MM-DDTHH:MM:SS" */
    if (n < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return -1;
    if (ref_num(s, 4, &Y) || ref_num(s + 5, 2, &M) || ref_num(s + 8, 2, &D) ||
        ref_num(s + 11, 2, &h) || ref_num(s + 14, 2, &mi) || ref_num(s + 17, 2, &sec))
        return -1;
    int leap = Y % 4 == 0 && (Y % 100 != 0 || Y % 400 == 0);
    int mdays = M == 2 ? 28 + leap : (M == 4 || M == 6 || M == 9 || M == 11) ? 30 : 31;
    if (M < 1 || M > 12 || D < 1 || D > mdays || h > 23 || mi > 59 || sec > 59)
        return -1;
    const char *p = s + 19;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 3)
                frac = frac * 10 + (*p - '0');
        if (digits == 0)
            return -1;
        for (; digits < 3; digits++)
            frac *= 10;
    }
    int64_t off = 0;
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
        off = 0;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int oh, om;
        if (ref_num(p + 1, 2, &oh) || ref_num(p + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        off = (*p == '-' ? -1 : 1) * (int64_t)(oh * 3600 + om * 60);
    } else {
        return -1;
    }
    int64_t t = ref_days(Y, M, D) * 86400 + h * 3600 + mi * 60 + sec - off;
    if (t < 0)
        return -1;
    *out = (uint64_t)t * 1000 + (uint64_t)frac;
    return 0;
}

/* Parses a heap copy of exactly len+1 bytes, so ASan sees a read past the
 * terminator. */
static int parse_copy(const char *s, size_t len, uint64_t *ms) {
    char *copy = malloc(len + 1);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, s, len);
    copy[len] = '\0';
    int rc = parse_rfc3339(copy, ms);
    free(copy);
    return rc;
}

static void check_format(uint64_t ms) {
    char buf[32];
    memset(buf, 0x7f, sizeof buf);
    fmt_rfc3339(ms, buf, sizeof buf);
    FUZZ_CHECK(memchr(buf, '\0', sizeof buf) != NULL);
    if (ms > MS_MAX_4DIGIT)
        return;
    FUZZ_CHECK(strlen(buf) == 24);
    uint64_t back = 0, ref = 0;
    FUZZ_CHECK(parse_copy(buf, strlen(buf), &back) == 0);
    FUZZ_CHECK(back == ms);
    FUZZ_CHECK(ref_parse(buf, &ref) == 0 && ref == ms);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    FUZZ_CHECK(s != NULL);
    memcpy(s, data, size);
    s[size] = '\0';
    uint64_t got = 0, want = 0;
    int rc = parse_rfc3339(s, &got);
    int ref = ref_parse(s, &want);
    FUZZ_CHECK(rc == 0 || rc == -1);
    FUZZ_CHECK(rc == ref);
    if (rc == 0) {
        FUZZ_CHECK(got == want);
        check_format(got);
    }
    free(s);

    if (size >= 8) {
        uint64_t ms = 0;
        for (int i = 0; i < 8; i++)
            ms |= (uint64_t)data[i] << (8 * i);
        check_format(ms);
        check_format(ms % (MS_MAX_4DIGIT + 1));
    }
    return 0;
}
