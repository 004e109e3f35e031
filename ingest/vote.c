#include "ingest/vote.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"

static int fail(vote_error_t *err, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(vote_error_t *err, int status, const char *code, const char *fmt, ...) {
    err->status = status;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* jansson's own error text quotes the bytes near the error ("near '...'"),
 * which may be anything: only its error code and position are used. */
static int fail_json(vote_error_t *err, const json_error_t *je, const char *body, size_t len) {
    int at = je->position;
    switch (json_error_code(je)) {
    case json_error_invalid_utf8:
        return fail(err, 400, "malformed_json", "the body is not valid UTF-8 (byte %d)", at);
    case json_error_null_character:
        return fail(err, 400, "malformed_json", "a string contains \\u0000 (byte %d)", at);
    case json_error_duplicate_key:
        return fail(err, 400, "malformed_json", "a key appears twice in one object (byte %d)", at);
    case json_error_end_of_input_expected:
        return fail(err, 400, "malformed_json", "text after the JSON value (byte %d)", at);
    case json_error_numeric_overflow:
        return fail(err, 400, "malformed_json", "a number is out of range (byte %d)", at);
    case json_error_stack_overflow:
        return fail(err, 400, "malformed_json", "the JSON is nested too deeply (byte %d)", at);
    case json_error_premature_end_of_input:
        for (size_t i = 0; i < len; i++)
            if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r' && body[i] != '\n')
                return fail(err, 400, "malformed_json", "the JSON ends early (byte %d)", at);
        return fail(err, 400, "malformed_json", "the body is empty; send a JSON object");
    default: return fail(err, 400, "malformed_json", "the body is not valid JSON (byte %d)", at);
    }
}

static const char *type_name(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The first field other than "option" and "voter", named only when it is
 * id-shaped (keys may be any UTF-8). */
static int fail_unknown_field(vote_error_t *err, json_t *root) {
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        (void)val;
        if (strcmp(key, "option") != 0 && strcmp(key, "voter") != 0)
            break;
    }
    if (key && id_valid(key, strlen(key)))
        return fail(err, 400, "unknown_field",
                    "unknown field '%s': a vote has only \"option\" and \"voter\"", key);
    return fail(err, 400, "unknown_field", "a vote has only the fields \"option\" and \"voter\"");
}

static int check_body(const poll_conf_t *p, json_t *root, uint64_t ts_ms, vote_record_t *rec,
                      char *scratch, vote_error_t *err) {
    if (!json_is_object(root))
        return fail(err, 400, "invalid_body", "the body must be a JSON object, not %s",
                    type_name(root));
    json_t *opt = json_object_get(root, "option");
    json_t *voter = json_object_get(root, "voter");
    if (json_object_size(root) > (size_t)(opt != NULL) + (voter != NULL))
        return fail_unknown_field(err, root);
    if (!opt)
        return fail(err, 400, "missing_field", "'option' is required");
    if (!json_is_string(opt))
        return fail(err, 400, "invalid_field", "'option' must be a string, not %s", type_name(opt));
    const char *os = json_string_value(opt);
    size_t olen = json_string_length(opt);
    if (!id_valid(os, olen))
        return fail(err, 400, "invalid_field", "'option' must be 1-%d characters of [A-Za-z0-9_-]",
                    ID_MAX_LEN);
    const char *vs = NULL;
    size_t vlen = 0;
    if (voter && !json_is_null(voter)) {
        if (!json_is_string(voter))
            return fail(err, 400, "invalid_field", "'voter' must be a string, not %s",
                        type_name(voter));
        vs = json_string_value(voter);
        vlen = json_string_length(voter);
        if (!voter_valid(vs, vlen))
            return fail(err, 400, "invalid_field",
                        "'voter' must be 1-%d bytes without control characters", VOTER_MAX_LEN);
    } else if (p->mode != MODE_UNLIMITED && p->voter_auth != POLL_AUTH_JWT) {
        /* On a jwt poll the token's sub is the voter: the route fills it. */
        return fail(err, 400, "missing_field", "'voter' is required in %s mode",
                    poll_mode_name(p->mode));
    }
    int oi = poll_option_index(p, os, olen);
    if (oi < 0) /* os is id-shaped: safe to repeat */
        return fail(err, 422, "unknown_option", "poll '%s' has no option '%s'", p->id, os);
    if (vs)
        memcpy(scratch, vs, vlen);
    *rec = (vote_record_t){
        .ts_ms = ts_ms,
        .poll = p->id,
        .poll_len = strlen(p->id),
        .option = p->options[oi].id,
        .option_len = olen,
        .voter = vs ? scratch : NULL,
        .voter_len = vlen,
    };
    return 0;
}

int vote_parse_idem_key(const char *s, size_t len, vote_record_t *rec, vote_error_t *err) {
    if (!s)
        return 0;
    while (len && (*s == ' ' || *s == '\t'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0 || len > RECORD_MAX_KEY)
        return fail(err, 400, "invalid_header",
                    "Idempotency-Key must be 1-%d characters of "
                    "[A-Za-z0-9._-] (one header)",
                    RECORD_MAX_KEY);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return fail(err, 400, "invalid_header",
                        "Idempotency-Key holds a character outside [A-Za-z0-9._-] (at %zu)", i);
    }
    rec->key = s;
    rec->key_len = len;
    rec->flags |= RECORD_F_IDEM;
    return 0;
}

int vote_parse(const poll_conf_t *p, const char *body, size_t len, uint64_t ts_ms,
               vote_record_t *rec, char *scratch, size_t scratch_size, vote_error_t *err) {
    tally_assert(scratch_size >= VOTE_SCRATCH_MIN);
    if (len > VOTE_BODY_MAX)
        return fail(err, 413, "body_too_large", "the body is %zu bytes; the limit is %d", len,
                    VOTE_BODY_MAX);
    /* RFC 8259 section 8.1 allows ignoring a BOM; a vote API need not. */
    if (len >= 3 && !memcmp(body, "\xef\xbb\xbf", 3))
        return fail(err, 400, "malformed_json", "the body starts with a byte order mark");
    json_error_t je;
    json_scope_begin(); /* the tree lives within this call */
    json_t *root = json_loadb(len ? body : "", len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    int rc = root ? check_body(p, root, ts_ms, rec, scratch, err) : fail_json(err, &je, body, len);
    json_decref(root);
    json_scope_end();
    return rc;
}
