#include "common/json.h"

#include <jansson.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

#if defined(__SANITIZE_ADDRESS__)
#define SCOPE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SCOPE_ASAN 1
#endif
#endif
#ifdef SCOPE_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* ---- the scope's allocator (json_scope_begin) ---- */

typedef struct {
    alignas(max_align_t) unsigned char mem[JSON_SCOPE_BYTES];
    size_t used; /* bytes handed out since the outermost scope began */
    size_t live; /* blocks of mem not yet freed */
    int depth;   /* scopes open */
} json_scope_t;

static _Thread_local json_scope_t scope;

static int in_scope_block(const void *p) {
    const unsigned char *b = p;
    return b >= scope.mem && b < scope.mem + sizeof scope.mem;
}

static void *scope_malloc(size_t n) {
    if (scope.depth) {
        size_t need = (n + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
        if (need >= n && need <= sizeof scope.mem - scope.used) {
            void *p = scope.mem + scope.used;
            scope.used += need;
            scope.live++;
            UNPOISON(p, n);
            return p;
        }
    }
    return malloc(n);
}

static void scope_free(void *p) {
    if (p && in_scope_block(p)) {
        tally_assert(scope.live > 0);
        scope.live--;
        return;
    }
    free(p);
}

/* Before main: jansson allocates through these in every thread (they are
 * malloc and free outside a scope). */
__attribute__((constructor)) static void scope_init(void) {
    json_set_alloc_funcs(scope_malloc, scope_free);
}

int json_scope_owns(const void *p) {
    return in_scope_block(p);
}

void json_scope_begin(void) {
    scope.depth++;
}

void json_scope_end(void) {
    tally_assert(scope.depth > 0);
    if (--scope.depth)
        return;
    /* A tree kept past its scope would be overwritten by the next one. */
    tally_assert(scope.live == 0);
    POISON(scope.mem, scope.used);
    scope.used = 0;
}

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
