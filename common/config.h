/* tally's configuration: one INI file (parsed by inih) plus `-s
 * section.key=value` overrides. Every key is described once, in the table in
 * config.c, with its type, default, bounds and help; `tally --help-config`
 * prints that table. */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "common/util.h"

typedef enum {
    MODE_ONE_PER_VOTER = 0, /* the first vote of a voter counts */
    MODE_CHANGEABLE = 1,    /* the voter's latest vote counts */
    MODE_UNLIMITED = 2,     /* every vote counts */
    MODE_CAPPED = 3,        /* a voter's first max_votes votes count */
} poll_mode_t;

const char *poll_mode_name(poll_mode_t m);
/* The mode a name ("one-per-voter", ...) stands for: TALLY_OK, or
 * TALLY_ERR_CONFIG and *out untouched. From the same table as parsing. */
tally_err_t poll_mode_parse(const char *name, poll_mode_t *out);

typedef struct {
    char *id;
    char *label; /* defaults to the id */
} poll_option_t;

/* Who may vote in a poll. */
typedef enum {
    POLL_AUTH_NONE = 0, /* the body's "voter" is believed */
    POLL_AUTH_JWT = 1,  /* the voter is the "sub" of a signed token (common/jwt.h) */
} poll_auth_t;

const char *poll_auth_name(poll_auth_t a);
tally_err_t poll_auth_parse(const char *name, poll_auth_t *out);

typedef struct {
    char *id;
    char *title;
    poll_mode_t mode;
    poll_auth_t voter_auth;
    poll_option_t *options;
    int noptions;
    uint32_t max_votes;           /* mode capped: 1..65535 */
    int visibility;               /* 0 live, 1 on_close (catalog.h poll_visibility_t) */
    uint64_t opens_at, closes_at; /* ms since the epoch, 0: unset */
} poll_conf_t;

typedef struct {
    char *key, *value;
} kv_t;

typedef struct {
    /* [server] */
    char *listen;              /* host:port */
    int server_threads;
    int max_pending;           /* 503 above this many unacknowledged appends */
    int server_max_header_bytes;
    int server_header_timeout_ms;  /* the whole header, from its first byte */
    int server_body_timeout_ms;    /* the whole body, from the header's end */
    int server_keepalive_timeout_ms;
    int server_max_connections;
    int server_max_connections_per_ip; /* 0: no cap */
    char *server_trusted_proxies;  /* CIDR list whose X-Forwarded-For is believed */
    int server_sse_max_subscribers; /* event streams over every thread */
    int server_sse_heartbeat_ms;
    /* [ingest] */
    int ingest_idempotency_window_s; /* a retried Idempotency-Key counts once within this */
    /* [limits] */
    int limits_ip_rate;            /* votes per second per client; 0: off */
    int limits_ip_burst;
    int limits_voter_rate;         /* votes per second per (poll, voter); 0: off */
    int limits_voter_burst;
    /* [auth] */
    char *auth_jwt_hs256_key_file;        /* shared secret, raw bytes */
    char *auth_jwt_es256_public_key_file; /* PEM */
    char *auth_jwt_issuer;                /* "": iss unchecked */
    char *auth_jwt_audience;              /* "": aud unchecked */
    int auth_jwt_leeway_s;
    char *auth_voter_id_key_file;         /* "": voter ids logged as sent */
    /* [log] */
    char *log_dir;
    int log_partitions;
    int log_group_commit_us;   /* first wait to gather a group commit */
    int log_group_commit_max_us; /* ... extended while votes keep arriving */
    int log_fsync;             /* 0 only for benchmarks of the non-durable path */
    /* [engine] */
    char *snapshot_dir;
    int snapshot_interval_ms;
    int engine_threads;
    int engine_ready_lag_ms;   /* /readyz: 503 while the engine lags more */
    /* [publisher] */
    char *pub_dir;
    int pub_min_interval_ms;
    char *pub_cache_control;   /* Cache-Control of results, over HTTP and on S3 */
    char *s3_endpoint;         /* non-empty: mirror publisher.dir to S3 */
    char *s3_bucket;
    char *s3_region;
    char *s3_prefix;
    char *s3_access_key_file;
    char *s3_secret_key_file;
    int s3_path_style;         /* bucket in the path (1) or in the host name (0) */
    /* [admin] */
    char *admin_listen;        /* the admin API's own listener, never server.listen */
    char *admin_token_file;    /* "": the admin API is off */
    int admin_close_delay_ms;  /* "close now" takes effect this much later */
    int admin_final_grace_ms;  /* CONTROL_FINAL this long after closes_at */
    /* [kafka] */
    char *kafka_brokers;       /* non-empty selects the Kafka log */
    char *kafka_topic;
    char *kafka_catalog_topic; /* "" means "<kafka_topic>-polls" (config_catalog_topic) */
    int kafka_partitions;
    kv_t *kafka_props;         /* every other key, handed to librdkafka */
    int nkafka_props;
    /* [poll.ID] */
    poll_conf_t *polls;
    int npolls;
    int *poll_index; /* open-addressing hash of polls (index+1; 0 empty) */
    size_t poll_index_cap;
} tally_config_t;

/* Loads path, then applies overrides ("section.key=value"), then validates.
 * On success *out owns a new config (config_free it). On error *out is NULL,
 * errstr names the file and line or the override and the key, and the result
 * is TALLY_ERR_CONFIG (a file that cannot be read is a configuration error
 * too). path NULL: the defaults and the overrides only.
 *
 * File rules beyond inih's: a NUL byte anywhere is an error; every
 * [poll.ID] section is declared once and sets each of its keys once (the
 * other sections may repeat, a later key wins, as with -s); section names of
 * any length are kept whole (inih itself keeps 49 bytes). */
tally_err_t config_load(const char *path, const char *const *overrides, int noverrides,
                        tally_config_t **out, char *errstr, size_t errstr_size);
/* The same from len bytes in memory, which need not end in NUL; name stands
 * for the file in messages. Touches no file: the fuzz harness' entry. */
tally_err_t config_load_string(const char *name, const char *data, size_t len,
                               const char *const *overrides, int noverrides, tally_config_t **out,
                               char *errstr, size_t errstr_size);
/* Defaults only, no polls; for tests and tools. */
tally_config_t *config_new_defaults(void);
/* Sets one key, as a file line would (a later value replaces an earlier
 * one). TALLY_OK, or TALLY_ERR_CONFIG with errstr. */
tally_err_t config_set(tally_config_t *c, const char *section, const char *key, const char *value,
                       char *errstr, size_t errstr_size);
/* Checks cross-key rules (polls have options) and fills defaults (titles and
 * labels). TALLY_OK or TALLY_ERR_CONFIG. */
tally_err_t config_validate(tally_config_t *c, char *errstr, size_t errstr_size);
void config_free(tally_config_t *c);

/* The directories of a config, checked before a command touches them:
 * every one in use (log.dir only with the file log) is non-empty and, where
 * it exists, a directory; publisher.dir, which is served to the public, is
 * not, does not contain and does not lie inside log.dir or
 * engine.snapshot_dir (compared as canonical paths: symlinks and ".."
 * resolved, not-yet-created parts included, bind mounts by inode); and
 * engine.snapshot_dir is not log.dir (each store removes its own stale
 * temporary files and owns its directory). Those are TALLY_ERR_CONFIG.
 * The directories in `writes` (CONFIG_DIR_* bits) are then created if
 * missing and checked writable by creating and removing a file: a refusal
 * by the system is TALLY_ERR_IO. publisher.dir is never in `writes`: results
 * are derived, so the publisher starts without it and retries. */
enum { CONFIG_DIR_LOG = 1, CONFIG_DIR_SNAPSHOT = 2 };
tally_err_t config_check_dirs(const tally_config_t *c, unsigned writes, char *errstr,
                              size_t errstr_size);

/* S3 publishing (publisher.s3_endpoint set): both key files are readable
 * and hold a key. Reads files, so it is not part of config_load (whose
 * string form touches no file); commands call it with config_check_dirs.
 * TALLY_OK (also when S3 is off) or TALLY_ERR_CONFIG naming the key. */
tally_err_t config_check_s3(const tally_config_t *c, char *errstr, size_t errstr_size);
/* The secret in path for key (e.g. "publisher.s3_secret_key_file"): the
 * file's first line without surrounding whitespace, at most 4 KiB, not
 * empty. On success out holds it (the caller buf_free()s and should wipe
 * it); TALLY_ERR_CONFIG with errstr naming the key and the path. */
tally_err_t config_read_secret(const char *key, const char *path, buf_t *out,
                               char *errstr, size_t errstr_size);

/* server.listen: "HOST:PORT" or "[IPV6]:PORT", PORT 0-65535 (0: any free
 * port). Fills host (without brackets, NUL-terminated, host_size >=
 * CONFIG_LISTEN_HOST_MAX) and *port. A pure function: names are resolved
 * when the socket is bound. TALLY_OK or TALLY_ERR_CONFIG with errstr. */
#define CONFIG_LISTEN_HOST_MAX 256
tally_err_t config_parse_listen(const char *listen, char *host, size_t host_size, int *port,
                                char *errstr, size_t errstr_size);

/* kafka.catalog_topic, or "<kafka.topic>-polls" when it is empty, into buf. */
const char *config_catalog_topic(const tally_config_t *c, char *buf, size_t size);

const poll_conf_t *config_poll(const tally_config_t *c, const char *id, size_t len);
int poll_option_index(const poll_conf_t *p, const char *id, size_t len);

/* Prints every key with default and help, for --help. */
void config_print_help(FILE *out);

#endif
