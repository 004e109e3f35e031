/* JSON text that tally writes by hand around numbers (results, stats,
 * replies): the one place where a string from outside (a title, a label, an
 * id from a URL, an error message) becomes a JSON string literal. Parsing and
 * every JSON tree go through jansson; so does the escaping here. */
#ifndef TALLY_JSON_H
#define TALLY_JSON_H

#include <stddef.h>

#include "common/util.h"

/* Appends s[0..n) (any bytes) to out as one JSON string literal, quotes
 * included, that is valid UTF-8 JSON whatever s holds: each byte that does
 * not start well-formed UTF-8 becomes U+FFFD, '"', '\' and control
 * characters are escaped (NUL as \u0000), and '/' is written "\/" so that
 * "</script>" cannot end an HTML script element the JSON is put in. */
void json_put_strn(buf_t *out, const char *s, size_t n);
void json_put_str(buf_t *out, const char *s); /* NUL-terminated s */

/* Appends the error body {"error":code,"message":message}. */
void json_put_error(buf_t *out, const char *code, const char *message);

#endif
