/* tally's configuration: one INI file (parsed by inih) plus `-s
 * section.key=value` overrides. Every key is described once, in the table in
 * config.c, with its type, default, bounds and help; `tally --help-config`
 * prints that table. */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    MODE_ONE_PER_VOTER = 0, /* the first vote of a voter counts */
    MODE_CHANGEABLE = 1,    /* the voter's latest vote counts */
    MODE_UNLIMITED = 2,     /* every vote counts */
} poll_mode_t;

const char *poll_mode_name(poll_mode_t m);

typedef struct {
    char *id;
    char *label; /* defaults to the id */
} poll_option_t;

typedef struct {
    char *id;
    char *title;
    poll_mode_t mode;
    poll_option_t *options;
    int noptions;
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
    /* [limits] */
    int limits_ip_rate;            /* votes per second per client; 0: off */
    int limits_ip_burst;
    /* [log] */
    char *log_dir;
    int log_partitions;
    int log_group_commit_us;   /* max wait to gather a group commit */
    int log_fsync;             /* 0 only for benchmarks of the non-durable path */
    /* [engine] */
    char *snapshot_dir;
    int snapshot_interval_ms;
    int engine_threads;
    /* [publisher] */
    char *pub_dir;
    int pub_min_interval_ms;
    /* [kafka] */
    char *kafka_brokers;       /* non-empty selects the Kafka log */
    char *kafka_topic;
    int kafka_partitions;
    kv_t *kafka_props;         /* every other key, handed to librdkafka */
    int nkafka_props;
    /* [poll.ID] */
    poll_conf_t *polls;
    int npolls;
    int *poll_index; /* open-addressing hash of polls (index+1; 0 empty) */
    size_t poll_index_cap;
} tally_config_t;

/* Loads path, then applies overrides ("section.key=value"). On error fills
 * errstr with a message naming the file and line or the override and the key,
 * and returns NULL. */
tally_config_t *config_load(const char *path, const char *const *overrides, int noverrides,
                            char *errstr, size_t errstr_size);
/* Defaults only, no polls; for tests and tools. */
tally_config_t *config_new_defaults(void);
/* Sets one key, as a file line would. 0 or -1 with errstr. */
int config_set(tally_config_t *c, const char *section, const char *key, const char *value,
               char *errstr, size_t errstr_size);
/* Checks cross-key rules (polls have options, labels name options). */
int config_validate(tally_config_t *c, char *errstr, size_t errstr_size);
void config_free(tally_config_t *c);

const poll_conf_t *config_poll(const tally_config_t *c, const char *id, size_t len);
int poll_option_index(const poll_conf_t *p, const char *id, size_t len);

/* Prints every key with default and help, for --help. */
void config_print_help(FILE *out);

#endif
