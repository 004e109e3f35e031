/* The admin API: polls created, opened, closed and patched at run time, on a
 * listener of its own (admin.listen, default 127.0.0.1:8081; never the
 * public server.listen), in the process that writes the poll history
 * (`tally run`, or `tally engine` with Kafka).
 *
 *   POST  /v1/admin/polls               {"id","title","options",...} -> 201
 *   GET   /v1/admin/polls                                           -> 200
 *   GET   /v1/admin/polls/{id}     definition, state, current totals -> 200
 *   PATCH /v1/admin/polls/{id}     title, labels, added options, schedule
 *   POST  /v1/admin/polls/{id}/open                                 -> 200
 *   POST  /v1/admin/polls/{id}/close  closes at now + admin.close_delay_ms
 *   GET   /metrics                 when the owner mounts it (admin_ops_t)
 *
 * Every request carries `Authorization: Bearer <token>`, the content of
 * admin.token_file; without that file the admin API is off. The token is
 * compared in constant time (SHA-256 of both sides, then CRYPTO_memcmp: no
 * early exit, not even on a length difference). Missing or wrong: 401 with
 * WWW-Authenticate.
 *
 * One thread, one event loop, one listener. A change blocks the loop until
 * it is durable in every partition (history_*, common/catalog.h): changes
 * are serialised anyway (each takes the next catalog seq), and nothing else
 * shares this loop. */
#ifndef TALLY_ADMIN_H
#define TALLY_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/catalog.h"
#include "common/config.h"
#include "common/err.h"
#include "ingest/http_conn.h"

typedef struct admin_s admin_t;

/* A poll's current totals, read from the engine whatever its visibility.
 * counts[noptions]; late/early may be NULL. 0, or -1 when the engine does
 * not know the poll (yet). @locality the admin thread */
typedef int (*admin_totals_fn)(void *arg, const char *poll, uint64_t *counts, int noptions,
                               uint64_t *late, uint64_t *early);

typedef struct {
    admin_totals_fn totals;
    void *totals_arg;
    /* GET /metrics on the admin listener (e.g. ingest_reply_metrics); NULL:
     * 404. */
    void (*metrics)(http_conn_t *c);
} admin_ops_t;

/* Reads and checks admin.token_file: TALLY_OK with *token (malloc'd, the
 * trimmed first line) or NULL when the admin API is off (no token file
 * configured); TALLY_ERR_CONFIG when the file is empty, unreadable, or
 * readable or writable by others (it is a password); a file readable by its
 * group is a warning. */
tally_err_t admin_read_token(const tally_config_t *c, char **token, char *errstr, size_t esz);

/* Binds admin.listen (the port is known at once: admin_port). token is
 * copied (only its hash is kept). NULL with errstr when the address cannot
 * be bound or is server.listen. ops is copied. */
admin_t *admin_new(const tally_config_t *c, const char *token, const admin_ops_t *ops, char *errstr,
                   size_t esz);
/* Hands the admin API the catalog its answers show and the writer of its
 * changes, once the start-up has read the history (until then every poll
 * route answers 503 "starting"). wait_learnable (may be NULL: an
 * in-process catalog, learned at once) blocks until every ingest can learn
 * catalog seq (Kafka: the catalog topic holds it); a close is answered
 * once the topic holds its DEFINE. Once. @locality any thread */
void admin_set_catalog(admin_t *a, catalog_live_t *live, history_t *history,
                       void (*wait_learnable)(void *arg, uint64_t seq), void *wait_arg);
/* Starts the admin thread. TALLY_OK or TALLY_ERR_IO. */
tally_err_t admin_start(admin_t *a, char *errstr, size_t esz);
/* Stops and joins the thread (an answer in progress completes). */
void admin_stop(admin_t *a);
void admin_free(admin_t *a);
int admin_port(const admin_t *a);

/* The token check on its own, for tests: 1 when authorization (the header's
 * value, any bytes) carries the token whose SHA-256 is want. */
int admin_authorized(const unsigned char want[32], const char *authorization, size_t len);

#endif
