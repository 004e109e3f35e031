/* libFuzzer harness for the HTTP connection's parser glue: arbitrary bytes
 * into a detached connection (no socket), fed in pieces whose sizes come
 * from the input itself, answered by a handler that echoes, defers, errors
 * or starts an event stream depending on the path. Deterministic; allocates nothing that outlives a
 * run. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ingest/http_conn.h"

typedef struct {
    http_conn_t *deferred;
} fuzz_state_t;

static void handler(void *arg, http_conn_t *c, const http_req_t *r) {
    fuzz_state_t *st = arg;
    if (r->path_len > 1 && r->path[1] == 'd') {
        st->deferred = c;
        http_conn_defer(c);
    } else if (r->path_len > 1 && r->path[1] == 's') {
        /* An event stream: no more requests are read on it; the chunk
         * echoes Last-Event-ID, which is absent or at most 64 bytes. */
        if (r->last_event_id && (r->last_event_id_len == 0 || r->last_event_id_len > 64))
            __builtin_trap();
        http_conn_stream_start(c, "text/event-stream", NULL);
        http_chunk_t *k = http_chunk_new(r->last_event_id_len + 1);
        if (r->last_event_id_len)
            memcpy(k->data, r->last_event_id, r->last_event_id_len);
        k->data[r->last_event_id_len] = '\n';
        http_conn_stream_send(c, k, 1);
        http_chunk_unref(k);
    } else if (r->path_len > 1 && r->path[1] == 'e') {
        char msg[128];
        size_t n = r->body_len < sizeof msg - 1 ? r->body_len : sizeof msg - 1;
        memcpy(msg, r->body, n);
        msg[n] = '\0';
        http_conn_reply_error(c, 400, "fuzz", msg, NULL);
    } else {
        http_conn_reply(c, 200, "text/plain", NULL, r->body, r->body_len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_state_t st = {0};
    http_conn_cfg_t cfg = {.max_header_bytes = 1024,
                           .header_timeout_ms = 1000,
                           .body_timeout_ms = 1000,
                           .keepalive_timeout_ms = 1000,
                           .handler = handler,
                           .arg = &st};
    http_conn_t *c = http_conn_new_detached(&cfg);
    /* The first byte picks the piece size, so splits get explored too. */
    size_t step = size ? (size_t)data[0] % 64 + 1 : 1;
    size_t off = size ? 1 : 0;
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        long took = http_conn_feed(c, data + off, n);
        if (took <= 0) {
            if (took == 0 && st.deferred) { /* paused: answer, then go on */
                http_conn_t *d = st.deferred;
                st.deferred = NULL;
                http_conn_reply(d, 202, NULL, NULL, "ok", 2);
                continue;
            }
            break;
        }
        off += (size_t)took;
        size_t olen;
        http_conn_output(c, &olen);
        if (olen > 65536)
            http_conn_output_clear(c);
    }
    if (st.deferred)
        http_conn_reply(st.deferred, 202, NULL, NULL, "ok", 2);
    http_conn_free(c);
    return 0;
}
