/* S3-compatible publishing: mirrors what the publisher writes to
 * publisher.dir into a bucket (publisher.s3_*), as objects PREFIX/NAME with
 * the file's Content-Type and publisher.cache_control.
 *
 * The uploader is a thread of its own with one slot per object name holding
 * the newest content handed to it (s3_put): a burst of versions of one
 * object is coalesced, the newest wins, older ones are never sent after it.
 * An object whose content equals what was last uploaded under its name
 * (SHA-256) is not sent again. Failures (server down, bad credentials, a
 * timeout) are retried with backoff, 100 ms doubling to 10 s, for as long
 * as it takes; the publisher, the engine and ingest never wait for S3.
 *
 * Requests are signed by libcurl (CURLOPT_AWS_SIGV4, "aws:amz:REGION:s3")
 * with the payload's SHA-256 (OpenSSL EVP) in x-amz-content-sha256. */
#ifndef TALLY_S3_H
#define TALLY_S3_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"

typedef struct s3_s s3_t;

/* Starts an uploader for c's publisher.s3_* keys (reads the key files).
 * *out is NULL when publisher.s3_endpoint is empty (S3 is off: TALLY_OK).
 * TALLY_ERR_CONFIG with errstr if a key file cannot be read. c must
 * outlive it. */
tally_err_t s3_new(const tally_config_t *c, s3_t **out, char *errstr, size_t esz);

/* Hands the uploader the newest content of object name (relative to
 * publisher.dir, e.g. "polls/demo.json"); data is copied. Never blocks on
 * the network. s NULL: nothing. @locality any thread */
void s3_put(s3_t *s, const char *name, const void *data, size_t len);

/* Stops the thread after a last attempt at everything still pending that
 * gives up at the first failure (and allows each PUT 2 s), so a stop never
 * waits out an unreachable server's retries. Then frees s. NULL: nothing. */
void s3_free(s3_t *s);

/* The process's S3 upload counters (tally runs at most one uploader; all
 * zero while S3 is off), for /v1/stats and metrics
 * (tally_s3_upload_failures_total). Readable from any thread at any time:
 * counters are atomics, last_error is copied under a lock. */
typedef struct {
    int enabled;            /* an uploader was started in this process */
    uint64_t uploads_ok;    /* PUTs answered 2xx */
    uint64_t failures;      /* PUTs that failed (network or non-2xx), retried */
    uint64_t unchanged;     /* contents not sent: equal to the last upload */
    uint64_t pending;       /* objects waiting to be (re)uploaded now */
    uint64_t last_error_ms; /* wall-clock ms of the last failure, 0 none */
    char last_error[256];   /* the last failure, "" none */
} s3_stats_t;
void s3_stats(s3_stats_t *out);

#endif
