/* ingest/vote.c: vote_parse() of arbitrary bytes, and common/json.c's
 * json_put_strn() of the same bytes.
 *
 * The config is fixed and built once: three polls with the same options,
 * one per mode. Properties:
 * - vote_parse() returns 0 or -1; a refusal has a status of 400, 413 or 422,
 *   a known code and a non-empty printable-ASCII message that
 *   json_put_error() turns into an error body jansson reads back strictly;
 * - an acceptance is a body of at most VOTE_BODY_MAX bytes that jansson,
 *   strict and on its own, reads as an object of exactly the accepted
 *   "option" and "voter" strings; the record points into the config and the
 *   caller's scratch, satisfies common/ids.h and encodes and decodes back;
 * - the modes agree: a body is accepted in one-per-voter mode exactly when
 *   in changeable mode, and then also in unlimited mode;
 * - json_put_strn() of any bytes is one JSON string jansson reads, equal to
 *   the input whenever the input is valid UTF-8;
 * - vote_parse_idem_key() of the same bytes (as a header value) accepts
 *   exactly 1-64 characters of [A-Za-z0-9._-] between spaces and tabs, sets
 *   the key and its flag, and otherwise refuses with 400 invalid_header.
 * Deterministic (jansson's hash seed is fixed); nothing outlives a run but
 * the config. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "common/config.h"
#include "common/ids.h"
#include "common/json.h"
#include "fuzz.h"
#include "ingest/vote.h"
#include "log/record.h"

static tally_config_t *conf;
static const poll_conf_t *polls[3]; /* one-per-voter, changeable, unlimited */

static void setup(void) {
    json_object_seed(1); /* before any jansson object */
    conf = config_new_defaults();
    static const char *const ids[] = {"one", "chg", "free"};
    static const char *const modes[] = {"one-per-voter", "changeable", "unlimited"};
    char err[256], sect[32];
    for (int i = 0; i < 3; i++) {
        snprintf(sect, sizeof sect, "poll.%s", ids[i]);
        FUZZ_CHECK(config_set(conf, sect, "options", "red, green, b_1-x", err, sizeof err) == 0);
        FUZZ_CHECK(config_set(conf, sect, "mode", modes[i], err, sizeof err) == 0);
    }
    FUZZ_CHECK(config_validate(conf, err, sizeof err) == 0);
    for (int i = 0; i < 3; i++) {
        polls[i] = config_poll(conf, ids[i], strlen(ids[i]));
        FUZZ_CHECK(polls[i] != NULL);
    }
}

static int known_code(const vote_error_t *e) {
    static const struct {
        int status;
        const char *code;
    } codes[] = {{400, "malformed_json"}, {400, "invalid_body"},  {400, "missing_field"},
                 {400, "invalid_field"},  {400, "unknown_field"}, {413, "body_too_large"},
                 {422, "unknown_option"}, {400, "invalid_header"}};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        if (e->status == codes[i].status && e->code && !strcmp(e->code, codes[i].code))
            return 1;
    return 0;
}

static void check_refusal(const vote_error_t *e) {
    FUZZ_CHECK(known_code(e));
    size_t n = strnlen(e->message, sizeof e->message);
    FUZZ_CHECK(n > 0 && n < sizeof e->message);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(e->message[i] >= 0x20 && e->message[i] < 0x7f);
    buf_t b = {0};
    json_put_error(&b, e->code, e->message);
    json_error_t je;
    json_t *j = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &je);
    FUZZ_CHECK(json_is_object(j) && json_object_size(j) == 2);
    FUZZ_CHECK(!strcmp(json_string_value(json_object_get(j, "error")), e->code));
    FUZZ_CHECK(!strcmp(json_string_value(json_object_get(j, "message")), e->message));
    json_decref(j);
    buf_free(&b);
}

static int same(const json_t *s, const char *p, size_t n) {
    return json_is_string(s) && json_string_length(s) == n && !memcmp(json_string_value(s), p, n);
}

static void check_acceptance(const poll_conf_t *p, const uint8_t *data, size_t size,
                             const vote_record_t *rec, const char *scratch) {
    FUZZ_CHECK(size <= VOTE_BODY_MAX);
    FUZZ_CHECK(rec->poll == p->id && rec->poll_len == strlen(p->id));
    int k = poll_option_index(p, rec->option, rec->option_len);
    FUZZ_CHECK(k >= 0 && rec->option == p->options[k].id);
    FUZZ_CHECK(id_valid(rec->option, rec->option_len));
    if (rec->voter) {
        FUZZ_CHECK(rec->voter == scratch && voter_valid(rec->voter, rec->voter_len));
    } else {
        FUZZ_CHECK(p->mode == MODE_UNLIMITED && rec->voter_len == 0);
    }
    /* An independent, strict reading of the same bytes. */
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    FUZZ_CHECK(json_is_object(j));
    const json_t *opt = json_object_get(j, "option"), *voter = json_object_get(j, "voter");
    FUZZ_CHECK(json_object_size(j) == 1u + (voter != NULL));
    FUZZ_CHECK(same(opt, rec->option, rec->option_len));
    if (rec->voter)
        FUZZ_CHECK(same(voter, rec->voter, rec->voter_len));
    else
        FUZZ_CHECK(voter == NULL || json_is_null(voter));
    json_decref(j);
    FUZZ_CHECK(!(size >= 3 && !memcmp(data, "\xef\xbb\xbf", 3)));
    uint8_t buf[RECORD_MAX_LEN];
    size_t n = record_encode(rec, buf);
    FUZZ_CHECK(n > 0);
    vote_record_t back;
    FUZZ_CHECK(record_decode(buf, n, &back) == 0);
    FUZZ_CHECK(back.ts_ms == rec->ts_ms && back.option_len == rec->option_len &&
               back.voter_len == rec->voter_len &&
               !memcmp(back.option, rec->option, rec->option_len) &&
               (rec->voter_len == 0 || !memcmp(back.voter, rec->voter, rec->voter_len)));
}

static void check_escape(const uint8_t *data, size_t size) {
    buf_t b = {0};
    json_put_strn(&b, (const char *)data, size);
    json_error_t je;
    json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    FUZZ_CHECK(json_is_string(j));
    json_t *oracle = json_stringn((const char *)data, size); /* NULL: not UTF-8 */
    if (oracle)
        FUZZ_CHECK(json_equal(j, oracle));
    json_decref(oracle);
    json_decref(j);
    buf_free(&b);
}

static int key_char(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static void check_idem_key(const uint8_t *data, size_t size) {
    /* The oracle: trim, then every byte a key character, 1..64 of them. */
    size_t b = 0, e = size;
    while (b < e && (data[b] == ' ' || data[b] == '\t'))
        b++;
    while (e > b && (data[e - 1] == ' ' || data[e - 1] == '\t'))
        e--;
    int want = e > b && e - b <= RECORD_MAX_KEY;
    for (size_t i = b; want && i < e; i++)
        want = key_char(data[i]);
    vote_record_t rec = {0};
    vote_error_t err;
    int rc = vote_parse_idem_key((const char *)data, size, &rec, &err);
    FUZZ_CHECK(rc == (want ? 0 : -1));
    if (rc == 0) {
        FUZZ_CHECK(rec.key == (const char *)data + b && rec.key_len == e - b);
        FUZZ_CHECK(rec.flags & RECORD_F_IDEM);
    } else {
        FUZZ_CHECK(err.status == 400 && !strcmp(err.code, "invalid_header"));
        check_refusal(&err);
        FUZZ_CHECK(strstr(err.message, "Idempotency-Key") != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!conf)
        setup();
    int ok[3];
    for (int i = 0; i < 3; i++) {
        vote_record_t rec;
        vote_error_t err;
        char scratch[VOTE_SCRATCH_MIN];
        int rc = vote_parse(polls[i], (const char *)data, size, 1700000000123ull, &rec, scratch,
                            sizeof scratch, &err);
        FUZZ_CHECK(rc == 0 || rc == -1);
        ok[i] = rc == 0;
        if (ok[i])
            check_acceptance(polls[i], data, size, &rec, scratch);
        else
            check_refusal(&err);
    }
    FUZZ_CHECK(ok[0] == ok[1]);
    FUZZ_CHECK(!ok[0] || ok[2]);
    check_escape(data, size);
    check_idem_key(data, size);
    return 0;
}
