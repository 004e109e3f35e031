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

/* A scope for jansson trees that live within one call on the hot path (a
 * vote body: ingest/vote.c): between json_scope_begin() and json_scope_end()
 * every jansson allocation of the calling thread comes from a block of
 * JSON_SCOPE_BYTES the thread owns, and freeing it costs nothing; what does
 * not fit is malloc'd as usual. So parsing a vote allocates nothing (jansson
 * made 12 malloc and 12 free calls for one). Every tree built inside must be
 * freed before json_scope_end() (it asserts so: a value kept past the scope
 * would point into memory the next scope reuses). Scopes nest; the block is
 * reused when the outermost one ends. Outside a scope, and in every other
 * thread, jansson allocates with malloc. @locality the calling thread */
#define JSON_SCOPE_BYTES 16384
void json_scope_begin(void);
void json_scope_end(void);
/* 1 when p lies in the calling thread's scope block (for tests). */
int json_scope_owns(const void *p);

#endif
