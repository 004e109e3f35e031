/* Identifier rules shared by config, ingest and the log. */
#ifndef TALLY_IDS_H
#define TALLY_IDS_H

#include <stddef.h>

#define ID_MAX_LEN 64
#define VOTER_MAX_LEN 256

/* Poll and option ids: 1-64 chars of [A-Za-z0-9_-]. */
int id_valid(const char *s, size_t len);
/* Voter ids: 1-256 bytes, no control characters (C0, DEL, C1: U+0080-U+009F
 * as UTF-8; other UTF-8 allowed). */
int voter_valid(const char *s, size_t len);
/* How a message names the poll or option id s a request gave: 'id' when
 * well-formed, else a phrase, so that an error message never repeats
 * other request bytes. Returns buf (ID_QUOTE_MAX bytes). */
#define ID_QUOTE_MAX (ID_MAX_LEN + 64)
const char *id_quote(const char *s, size_t len, char buf[ID_QUOTE_MAX]);

#endif
