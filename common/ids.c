#include "common/ids.h"

#include <stdio.h>

int id_valid(const char *s, size_t len) {
    if (len == 0 || len > ID_MAX_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

const char *id_quote(const char *s, size_t len, char buf[ID_QUOTE_MAX]) {
    if (id_valid(s, len))
        snprintf(buf, ID_QUOTE_MAX, "'%.*s'", (int)len, s);
    else
        snprintf(buf, ID_QUOTE_MAX, "named so (an id is 1-%d of A-Z a-z 0-9 _ -)", ID_MAX_LEN);
    return buf;
}

int voter_valid(const char *s, size_t len) {
    if (len == 0 || len > VOTER_MAX_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return 0;
        /* U+0080-U+009F (C1 controls, as UTF-8 C2 80..C2 9F): a voter id
         * shown in a tool or a log must not carry NEL or CSI. */
        if (c == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 &&
            (unsigned char)s[i + 1] <= 0x9f)
            return 0;
    }
    return 1;
}
