/* common/catalog.c: poll_def_from_json() of arbitrary bytes (the admin
 * API's request bodies and the log's DEFINE bodies).
 *
 * A definition that parses has every invariant the engine relies on: an id
 * and option ids of [A-Za-z0-9_-] within bounds, no repeated option, labels
 * and title set and valid UTF-8, max_votes only in capped mode and then in
 * 1..65535, closes_at after opens_at. Its canonical JSON parses back to an
 * equal definition and prints the same again (so a DEFINE body means one
 * thing to every partition), it is its own successor, and the parser never
 * reads outside the input. A refusal names an HTTP 400 and a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/catalog.h"
#include "common/ids.h"
#include "common/utf8.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    poll_def_defaults_t dflt = {600, 1, POLL_SRC_ADMIN};
    poll_def_t *d = NULL;
    catalog_error_t err = {0};
    tally_err_t rc = poll_def_from_json((const char *)data, size, &dflt, &d, &err);
    if (rc != TALLY_OK) {
        FUZZ_CHECK(d == NULL);
        FUZZ_CHECK(err.http_status == 400);
        FUZZ_CHECK(err.message[0] != '\0');
        return 0;
    }
    FUZZ_CHECK(id_valid(d->id, strlen(d->id)));
    FUZZ_CHECK(d->title && utf8_valid(d->title, strlen(d->title)));
    FUZZ_CHECK(d->noptions >= 1 && d->noptions <= POLL_MAX_OPTIONS);
    for (int i = 0; i < d->noptions; i++) {
        FUZZ_CHECK(id_valid(d->options[i].id, strlen(d->options[i].id)));
        FUZZ_CHECK(d->options[i].label &&
                   utf8_valid(d->options[i].label, strlen(d->options[i].label)));
        FUZZ_CHECK(poll_def_option_index(d, d->options[i].id, strlen(d->options[i].id)) == i);
    }
    if (d->mode == MODE_CAPPED)
        FUZZ_CHECK(d->max_votes >= 1 && d->max_votes <= POLL_MAX_VOTES);
    else
        FUZZ_CHECK(d->max_votes == 0);
    FUZZ_CHECK(!d->opens_at || !d->closes_at || d->closes_at > d->opens_at);
    char *j = poll_def_to_json(d);
    poll_def_t *back = NULL;
    FUZZ_CHECK(poll_def_from_json(j, strlen(j), NULL, &back, &err) == TALLY_OK);
    FUZZ_CHECK(poll_def_equal(d, back));
    char *j2 = poll_def_to_json(back);
    FUZZ_CHECK(!strcmp(j, j2));
    FUZZ_CHECK(poll_def_check_successor(d, 0, back, 0, 0, &err) == TALLY_OK);
    free(j);
    free(j2);
    poll_def_free(back);
    poll_def_free(d);
    return 0;
}
