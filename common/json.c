#include "common/json.h"

#include <jansson.h>
#include <string.h>

#include "common/utf8.h"

void json_put_strn(buf_t *out, const char *s, size_t n) {
    buf_t valid = {0};
    if (!utf8_valid(s, n)) {
        utf8_put_valid(&valid, s, n);
        s = valid.data;
        n = valid.len;
    }
    /* nocheck: the bytes were just made valid UTF-8; NUL bytes are allowed
     * in a jansson string of known length and dumped as \u0000. */
    json_t *j = json_stringn_nocheck(n ? s : "", n);
    tally_assert(j); /* out of memory */
    const size_t flags = JSON_ENCODE_ANY | JSON_ESCAPE_SLASH;
    size_t need = json_dumpb(j, NULL, 0, flags);
    tally_assert(need > 0);
    buf_reserve(out, need + 1);
    size_t got = json_dumpb(j, out->data + out->len, need, flags);
    tally_assert(got == need);
    out->len += got;
    out->data[out->len] = '\0';
    json_decref(j);
    buf_free(&valid);
}

void json_put_str(buf_t *out, const char *s) {
    json_put_strn(out, s, strlen(s));
}

void json_put_error(buf_t *out, const char *code, const char *message) {
    buf_puts(out, "{\"error\":");
    json_put_str(out, code);
    buf_puts(out, ",\"message\":");
    json_put_str(out, message);
    buf_puts(out, "}");
}
