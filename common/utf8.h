/* UTF-8 validity (RFC 3629) for text that leaves tally: JSON strings and
 * HTML. Request bodies are validated by jansson; this is for bytes tally
 * prints that came from elsewhere (config titles and labels, URL paths). */
#ifndef TALLY_UTF8_H
#define TALLY_UTF8_H

#include <stddef.h>

#include "common/util.h"

/* The length (1-4) of the well-formed UTF-8 sequence that starts s[0..n),
 * or 0 when there is none: a stray continuation byte, an overlong form, a
 * UTF-16 surrogate (U+D800-U+DFFF), a code point past U+10FFFF or a
 * sequence cut short. n must be > 0. */
size_t utf8_seq_len(const char *s, size_t n);

/* 1 when all of s[0..n) is well-formed UTF-8 (NUL bytes included). */
int utf8_valid(const char *s, size_t n);

/* Appends s[0..n) to out with each byte that does not start a well-formed
 * sequence replaced by U+FFFD. */
void utf8_put_valid(buf_t *out, const char *s, size_t n);

#define UTF8_REPLACEMENT "\xef\xbf\xbd" /* U+FFFD */

#endif
