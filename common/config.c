#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/ids.h"
#include "common/util.h"

/* Value types of the key tables. T_OPTIONS and T_LABEL are poll keys. */
typedef enum { T_STR, T_INT, T_BOOL, T_HOSTPORT, T_ENUM, T_OPTIONS, T_LABEL, T_TIME } key_type_t;

/* A named value of an enum-like key. */
typedef struct {
    const char *name;
    int value;
    const char *help;
} enum_def_t;

/* One row per key: the parser, the defaults and `--help-config` all read
 * this table. */
typedef struct {
    const char *section, *key;
    key_type_t type;
    const char *def;
    long min, max;
    size_t offset;
    const char *help;
} key_def_t;

#define OFF(f) offsetof(tally_config_t, f)
static const key_def_t keys[] = {
    {"server", "listen", T_HOSTPORT, "127.0.0.1:8080", 0, 0, OFF(listen),
     "address the HTTP API and results pages listen on (host:port)"},
    {"server", "threads", T_INT, "1", 1, 64, OFF(server_threads),
     "HTTP event-loop threads sharing the listening socket"},
    {"server", "max_pending", T_INT, "100000", 1, 10000000, OFF(max_pending),
     "votes waiting for the log before new ones get 503"},
    {"server", "max_header_bytes", T_INT, "8192", 1024, 1048576, OFF(server_max_header_bytes),
     "request line and header block larger than this get 431"},
    {"server", "header_timeout_ms", T_INT, "10000", 100, 3600000, OFF(server_header_timeout_ms),
     "a request's whole header must arrive within this (a deadline, not inactivity)"},
    {"server", "body_timeout_ms", T_INT, "10000", 100, 3600000, OFF(server_body_timeout_ms),
     "a request's whole body must arrive within this of the header's end"},
    {"server", "keepalive_timeout_ms", T_INT, "60000", 100, 86400000,
     OFF(server_keepalive_timeout_ms), "an idle keep-alive connection is closed after this"},
    {"server", "max_connections", T_INT, "10000", 1, 10000000, OFF(server_max_connections),
     "open client connections; at the cap the listeners pause"},
    {"server", "max_connections_per_ip", T_INT, "4096", 0, 10000000,
     OFF(server_max_connections_per_ip), "open connections per client address (0: no cap)"},
    {"server", "trusted_proxies", T_STR, "", 0, 0, OFF(server_trusted_proxies),
     "CIDR list (IPv4/IPv6) of proxies whose X-Forwarded-For names the client"},
    {"server", "sse_max_subscribers", T_INT, "10000", 0, 10000000,
     OFF(server_sse_max_subscribers),
     "open Server-Sent Events streams (over every thread), then 503; each is a connection too"},
    {"server", "sse_heartbeat_ms", T_INT, "15000", 100, 3600000, OFF(server_sse_heartbeat_ms),
     "an idle event stream gets a comment line this often (keeps proxies from closing it)"},
    {"ingest", "idempotency_window_s", T_INT, "600", 1, 604800, OFF(ingest_idempotency_window_s),
     "a vote retried with the same Idempotency-Key within this many seconds counts once"},
    {"limits", "ip_rate", T_INT, "0", 0, 10000000, OFF(limits_ip_rate),
     "votes per second per client address, then 429 (0: off)"},
    {"limits", "ip_burst", T_INT, "100", 1, 10000000, OFF(limits_ip_burst),
     "votes a client may send at once before limits.ip_rate applies"},
    {"limits", "voter_rate", T_INT, "0", 0, 1000000, OFF(limits_voter_rate),
     "votes per second per (poll, voter) at each ingest, then 429 (0: off)"},
    {"limits", "voter_burst", T_INT, "5", 1, 1000000, OFF(limits_voter_burst),
     "votes a voter may send at once before limits.voter_rate applies"},
    {"auth", "jwt_hs256_key_file", T_STR, "", 0, 0, OFF(auth_jwt_hs256_key_file),
     "shared secret (raw bytes, >= 32) verifying HS256 voter tokens"},
    {"auth", "jwt_es256_public_key_file", T_STR, "", 0, 0, OFF(auth_jwt_es256_public_key_file),
     "PEM public key (P-256) verifying ES256 voter tokens"},
    {"auth", "jwt_issuer", T_STR, "", 0, 0, OFF(auth_jwt_issuer),
     "when set, a token's iss must equal it"},
    {"auth", "jwt_audience", T_STR, "", 0, 0, OFF(auth_jwt_audience),
     "when set, a token's aud (string or array) must name it"},
    {"auth", "jwt_leeway_s", T_INT, "30", 0, 3600, OFF(auth_jwt_leeway_s),
     "clock skew allowed on exp, nbf and iat"},
    {"auth", "voter_id_key_file", T_STR, "", 0, 0, OFF(auth_voter_id_key_file),
     "key (raw bytes, >= 16) of the HMAC the log holds instead of voter ids"},
    {"log", "dir", T_STR, "run/log", 0, 0, OFF(log_dir),
     "directory of the embedded vote log (used when kafka.brokers is empty)"},
    {"log", "partitions", T_INT, "4", 1, 1024, OFF(log_partitions),
     "partitions of the embedded log; fixed once the log exists"},
    {"log", "group_commit_us", T_INT, "200", 0, 100000, OFF(log_group_commit_us),
     "how long the log writer waits to gather more votes into one fsync"},
    {"log", "group_commit_max_us", T_INT, "1000", 0, 100000, OFF(log_group_commit_max_us),
     "while votes keep arriving, the writer goes on gathering up to this long"},
    {"log", "fsync", T_BOOL, "true", 0, 1, OFF(log_fsync),
     "fsync before acknowledging; false loses acknowledged votes on power loss"},
    {"engine", "snapshot_dir", T_STR, "run/snapshots", 0, 0, OFF(snapshot_dir),
     "directory of the engine's checksummed snapshots"},
    {"engine", "snapshot_interval_ms", T_INT, "10000", 100, 86400000, OFF(snapshot_interval_ms),
     "how often each partition's state is snapshotted"},
    {"engine", "threads", T_INT, "2", 1, 256, OFF(engine_threads),
     "counter worker threads; each owns a set of log partitions"},
    {"engine", "ready_lag_ms", T_INT, "5000", 0, 86400000, OFF(engine_ready_lag_ms),
     "GET /readyz answers 503 while the engine is this far behind the log"},
    {"publisher", "dir", T_STR, "run/public", 0, 0, OFF(pub_dir),
     "directory of the published results (index.html, polls/ID.json|html)"},
    {"publisher", "min_interval_ms", T_INT, "50", 0, 3600000, OFF(pub_min_interval_ms),
     "a poll's results are rewritten at most once per this interval"},
    {"publisher", "cache_control", T_STR, "public, max-age=1, stale-while-revalidate=5", 0, 0,
     OFF(pub_cache_control),
     "Cache-Control of the results, served over HTTP and set on S3 objects (a CDN's cue)"},
    {"publisher", "s3_endpoint", T_STR, "", 0, 0, OFF(s3_endpoint),
     "S3-compatible endpoint URL (http[s]://host[:port]); non-empty mirrors publisher.dir there"},
    {"publisher", "s3_bucket", T_STR, "", 0, 0, OFF(s3_bucket),
     "bucket of the results (required with s3_endpoint)"},
    {"publisher", "s3_region", T_STR, "us-east-1", 0, 0, OFF(s3_region),
     "region named in the SigV4 signature"},
    {"publisher", "s3_prefix", T_STR, "", 0, 0, OFF(s3_prefix),
     "object names start with this folder ([A-Za-z0-9_.-/]; a '/' is put after it)"},
    {"publisher", "s3_access_key_file", T_STR, "", 0, 0, OFF(s3_access_key_file),
     "file holding the access key id (first line)"},
    {"publisher", "s3_secret_key_file", T_STR, "", 0, 0, OFF(s3_secret_key_file),
     "file holding the secret access key (first line)"},
    {"publisher", "s3_path_style", T_BOOL, "true", 0, 1, OFF(s3_path_style),
     "true: ENDPOINT/BUCKET/KEY; false: virtual-hosted BUCKET.HOST/KEY"},
    {"admin", "listen", T_HOSTPORT, "127.0.0.1:8081", 0, 0, OFF(admin_listen),
     "address of the admin API (its own listener, never server.listen)"},
    {"admin", "token_file", T_STR, "", 0, 0, OFF(admin_token_file),
     "file holding the admin API's bearer token (empty: the admin API is off)"},
    {"admin", "close_delay_ms", T_INT, "3000", 0, 3600000, OFF(admin_close_delay_ms),
     "a \"close now\" takes effect this much later, once every ingest has learned it"},
    {"admin", "final_grace_ms", T_INT, "5000", 2000, 3600000, OFF(admin_final_grace_ms),
     "a poll is made final (frozen) this long after its close"},
    {"kafka", "brokers", T_STR, "", 0, 0, OFF(kafka_brokers),
     "bootstrap brokers; non-empty switches the vote log to Kafka"},
    {"kafka", "topic", T_STR, "tally.votes", 0, 0, OFF(kafka_topic), "topic of the vote log"},
    {"kafka", "partitions", T_INT, "4", 1, 100000, OFF(kafka_partitions),
     "partitions when tally creates the topic"},
    {"kafka", "catalog_topic", T_STR, "", 0, 0, OFF(kafka_catalog_topic),
     "compacted topic of poll definitions for tally ingest (empty: <topic>-polls)"},
};
#define NKEYS (sizeof keys / sizeof keys[0])

static const enum_def_t bools[] = {
    {"true", 1, NULL}, {"yes", 1, NULL}, {"1", 1, NULL},   {"on", 1, NULL}, {"false", 0, NULL},
    {"no", 0, NULL},   {"0", 0, NULL},   {"off", 0, NULL}, {NULL, 0, NULL},
};

static const enum_def_t modes[] = {
    {"one-per-voter", MODE_ONE_PER_VOTER, "the first vote of a voter counts"},
    {"changeable", MODE_CHANGEABLE, "the voter's latest vote counts"},
    {"unlimited", MODE_UNLIMITED, "every vote counts"},
    {"capped", MODE_CAPPED, "a voter's first max_votes votes count"},
    {NULL, 0, NULL},
};

static const enum_def_t visibilities[] = {
    {"live", 0, "results are published as votes count"},
    {"on_close", 1, "no counts are published until the poll is final"},
    {NULL, 0, NULL},
};

static const enum_def_t auths[] = {
    {"none", POLL_AUTH_NONE, "the body's voter is believed"},
    {"jwt", POLL_AUTH_JWT, "Authorization: Bearer token; the voter is its sub ([auth])"},
    {NULL, 0, NULL},
};

/* The keys of a [poll.ID] section, as keys[] is for the others: parsing,
 * the duplicate check and `--help-config` read it. */
typedef enum {
    PK_TITLE,
    PK_OPTIONS,
    PK_LABEL,
    PK_MODE,
    PK_VOTER_AUTH,
    PK_MAX_VOTES,
    PK_VISIBILITY,
    PK_OPENS_AT,
    PK_CLOSES_AT,
    NPOLL_KEYS
} poll_key_t;
typedef struct {
    const char *key; /* ending in '.': a prefix, the rest names an option */
    const char *shown;
    key_type_t type;
    const enum_def_t *values; /* T_ENUM */
    size_t offset;            /* in poll_conf_t, T_STR and T_ENUM */
    const char *def, *help;
} poll_key_def_t;

static const poll_key_def_t poll_keys[NPOLL_KEYS] = {
    [PK_TITLE] = {"title", "title", T_STR, NULL, offsetof(poll_conf_t, title), "the id",
                  "shown on the results page"},
    [PK_OPTIONS] = {"options", "options", T_OPTIONS, NULL, 0, "required",
                    "comma-separated option ids, in display order"},
    [PK_LABEL] = {"label.", "label.OPTION", T_LABEL, NULL, 0, "its id",
                  "display text of an option"},
    [PK_MODE] = {"mode", "mode", T_ENUM, modes, offsetof(poll_conf_t, mode), "one-per-voter",
                 "how a voter's votes count"},
    [PK_VOTER_AUTH] = {"voter_auth", "voter_auth", T_ENUM, auths,
                       offsetof(poll_conf_t, voter_auth), "none", "who vouches for the voter id"},
    [PK_MAX_VOTES] = {"max_votes", "max_votes", T_INT, NULL, offsetof(poll_conf_t, max_votes),
                      "none", "mode capped: how many of a voter's votes count (1-65535)"},
    [PK_VISIBILITY] = {"visibility", "visibility", T_ENUM, visibilities,
                       offsetof(poll_conf_t, visibility), "live", "when counts are published"},
    [PK_OPENS_AT] = {"opens_at", "opens_at", T_TIME, NULL, offsetof(poll_conf_t, opens_at),
                     "open from start", "RFC3339 time the poll opens"},
    [PK_CLOSES_AT] = {"closes_at", "closes_at", T_TIME, NULL, offsetof(poll_conf_t, closes_at),
                      "never", "RFC3339 time the poll closes"},
};

static const enum_def_t *enum_find(const enum_def_t *v, const char *name) {
    for (; v->name; v++)
        if (!strcmp(v->name, name))
            return v;
    return NULL;
}

/* "a, b, c" of an enum's names, for messages and help. */
static void enum_list(const enum_def_t *v, const char *sep, buf_t *out) {
    for (int i = 0; v[i].name; i++)
        buf_printf(out, "%s%s", i ? sep : "", v[i].name);
}

tally_err_t poll_mode_parse(const char *name, poll_mode_t *out) {
    const enum_def_t *v = enum_find(modes, name);
    if (!v)
        return TALLY_ERR_CONFIG;
    *out = (poll_mode_t)v->value;
    return TALLY_OK;
}

tally_err_t poll_auth_parse(const char *name, poll_auth_t *out) {
    const enum_def_t *v = enum_find(auths, name);
    if (!v)
        return TALLY_ERR_CONFIG;
    *out = (poll_auth_t)v->value;
    return TALLY_OK;
}

const char *poll_auth_name(poll_auth_t a) {
    for (const enum_def_t *v = auths; v->name; v++)
        if (v->value == (int)a)
            return v->name;
    return "?";
}

const char *poll_mode_name(poll_mode_t m) {
    for (const enum_def_t *v = modes; v->name; v++)
        if (v->value == (int)m)
            return v->name;
    return "?";
}

static void seterr(char *errstr, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *errstr, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, size, fmt, ap);
    va_end(ap);
}

/* ---- server.listen ---- */

static int is_host_char(int ch) {
    return isalnum(ch) || ch == '-' || ch == '.' || ch == '_';
}

tally_err_t config_parse_listen(const char *s, char *host, size_t hsz, int *port, char *errstr,
                                size_t esz) {
    const char *h, *he, *p;
    if (s[0] == '[') {
        h = s + 1;
        he = strchr(h, ']');
        if (!he) {
            seterr(errstr, esz, "'%.300s': no ']' after the IPv6 address", s);
            return TALLY_ERR_CONFIG;
        }
        /* An IPv6 literal, optionally with a %zone. getaddrinfo judges the
         * digits; this keeps junk and brackets out. */
        const char *zone = memchr(h, '%', (size_t)(he - h));
        const char *ae = zone ? zone : he;
        int colons = 0, ok = ae > h && (!zone || zone + 1 < he);
        for (const char *q = h; ok && q < ae; q++) {
            colons += *q == ':';
            ok = isxdigit((unsigned char)*q) || *q == ':' || *q == '.';
        }
        for (const char *q = zone ? zone + 1 : he; ok && q < he; q++)
            ok = is_host_char((unsigned char)*q);
        if (!ok || colons < 2) {
            seterr(errstr, esz, "'%.300s': '%.*s' is not an IPv6 address", s,
                   (int)(he - h > 100 ? 100 : he - h), h);
            return TALLY_ERR_CONFIG;
        }
        if (he[1] != ':') {
            seterr(errstr, esz, "'%.300s': expected :PORT after ']'", s);
            return TALLY_ERR_CONFIG;
        }
        p = he + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) {
            seterr(errstr, esz, "'%.300s' has no :PORT", s);
            return TALLY_ERR_CONFIG;
        }
        h = s;
        he = colon;
        if (memchr(h, ':', (size_t)(he - h))) {
            seterr(errstr, esz, "'%.300s': an IPv6 address goes in brackets, [ADDR]:PORT", s);
            return TALLY_ERR_CONFIG;
        }
        if (he == h) {
            seterr(errstr, esz,
                   "'%.300s': the host is empty (0.0.0.0 or [::] listen on every address)", s);
            return TALLY_ERR_CONFIG;
        }
        for (const char *q = h; q < he; q++)
            if (!is_host_char((unsigned char)*q)) {
                seterr(errstr, esz, "'%.300s': '%c' has no place in a host name", s, *q);
                return TALLY_ERR_CONFIG;
            }
        p = colon + 1;
    }
    size_t hlen = (size_t)(he - h);
    if (hlen >= hsz || hlen >= CONFIG_LISTEN_HOST_MAX) {
        seterr(errstr, esz, "'%.100s...': the host is longer than %d characters", s,
               CONFIG_LISTEN_HOST_MAX - 1);
        return TALLY_ERR_CONFIG;
    }
    size_t plen = strlen(p);
    long v = 0;
    int ok = plen >= 1 && plen <= 5;
    for (size_t i = 0; ok && i < plen; i++) {
        ok = isdigit((unsigned char)p[i]);
        v = v * 10 + (p[i] - '0');
    }
    if (!ok || v > 65535) {
        seterr(errstr, esz, "'%.300s': the port '%.20s' is not a number in 0-65535", s, p);
        return TALLY_ERR_CONFIG;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    return TALLY_OK;
}

/* ---- typed values ---- */

static tally_err_t set_typed(tally_config_t *c, const key_def_t *k, const char *value, char *errstr,
                             size_t esz) {
    void *field = (char *)c + k->offset;
    switch (k->type) {
    case T_HOSTPORT: {
        char host[CONFIG_LISTEN_HOST_MAX], why[512];
        int port;
        if (config_parse_listen(value, host, sizeof host, &port, why, sizeof why) != TALLY_OK) {
            seterr(errstr, esz, "%s.%s: %s (expected host:port or [ipv6]:port)", k->section, k->key,
                   why);
            return TALLY_ERR_CONFIG;
        }
    }
        /* fall through */
    case T_STR: {
        char **s = field;
        free(*s);
        *s = xstrdup(value);
        return TALLY_OK;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end != '\0') {
            seterr(errstr, esz, "%s.%s: '%s' is not an integer", k->section, k->key, value);
            return TALLY_ERR_CONFIG;
        }
        if (v < k->min || v > k->max) {
            seterr(errstr, esz, "%s.%s: %ld is out of range [%ld, %ld]", k->section, k->key, v,
                   k->min, k->max);
            return TALLY_ERR_CONFIG;
        }
        *(int *)field = (int)v;
        return TALLY_OK;
    }
    case T_BOOL: {
        const enum_def_t *b = enum_find(bools, value);
        if (!b) {
            seterr(errstr, esz, "%s.%s: '%s' is not a boolean (true/false)", k->section, k->key,
                   value);
            return TALLY_ERR_CONFIG;
        }
        *(int *)field = b->value;
        return TALLY_OK;
    }
    case T_ENUM:
    case T_OPTIONS:
    case T_TIME:
    case T_LABEL: break; /* poll keys only */
    }
    return TALLY_ERR_INTERNAL;
}

tally_config_t *config_new_defaults(void) {
    tally_config_t *c = xcalloc(1, sizeof *c);
    char err[256];
    for (size_t i = 0; i < NKEYS; i++)
        tally_assert(set_typed(c, &keys[i], keys[i].def, err, sizeof err) == TALLY_OK);
    return c;
}

/* ---- polls ---- */

static poll_conf_t *poll_add(tally_config_t *c, const char *id, size_t len) {
    free(c->poll_index); /* rebuilt by validate() */
    c->poll_index = NULL;
    c->poll_index_cap = 0;
    c->polls = xrealloc(c->polls, sizeof *c->polls * (size_t)(c->npolls + 1));
    poll_conf_t *p = &c->polls[c->npolls++];
    memset(p, 0, sizeof *p);
    p->id = xstrndup(id, len);
    p->mode = MODE_ONE_PER_VOTER;
    return p;
}

static void seterr_poll_id(char *errstr, size_t esz, const char *id, size_t len) {
    seterr(errstr, esz, "[poll.%.*s%s]: poll id must be 1-%d chars of [A-Za-z0-9_-] (%zu given)",
           len > 80 ? 80 : (int)len, id, len > 80 ? "..." : "", ID_MAX_LEN, len);
}

/* The poll id names, created on first use (-s and config_set). */
static poll_conf_t *poll_get(tally_config_t *c, const char *id, char *errstr, size_t esz) {
    size_t len = strlen(id);
    for (int i = 0; i < c->npolls; i++)
        if (!strcmp(c->polls[i].id, id))
            return &c->polls[i];
    if (!id_valid(id, len)) {
        seterr_poll_id(errstr, esz, id, len);
        return NULL;
    }
    return poll_add(c, id, len);
}

static void options_free(poll_option_t *o, int n) {
    for (int i = 0; i < n; i++) {
        free(o[i].id);
        free(o[i].label);
    }
    free(o);
}

static const poll_key_def_t *poll_key_find(const char *key) {
    for (int i = 0; i < NPOLL_KEYS; i++) {
        size_t n = strlen(poll_keys[i].key);
        if (poll_keys[i].key[n - 1] == '.' ? !strncmp(key, poll_keys[i].key, n)
                                           : !strcmp(key, poll_keys[i].key))
            return &poll_keys[i];
    }
    return NULL;
}

/* options = a, b, c. Labels of ids kept from an earlier list (-s) stay. */
static tally_err_t poll_set_options(poll_conf_t *p, const char *value, char *errstr, size_t esz) {
    poll_option_t *old = p->options;
    int nold = p->noptions;
    p->options = NULL;
    p->noptions = 0;
    const char *s = value;
    tally_err_t rc = TALLY_OK;
    while (*s && rc == TALLY_OK) {
        while (*s == ' ' || *s == '\t')
            s++;
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        size_t m = n;
        while (m > 0 && (s[m - 1] == ' ' || s[m - 1] == '\t'))
            m--;
        if (!id_valid(s, m)) {
            seterr(errstr, esz,
                   "poll.%s.options: option id '%.*s%s' must be 1-%d chars of [A-Za-z0-9_-]", p->id,
                   m > 80 ? 80 : (int)m, s, m > 80 ? "..." : "", ID_MAX_LEN);
            rc = TALLY_ERR_CONFIG;
        } else if (poll_option_index(p, s, m) >= 0) {
            seterr(errstr, esz, "poll.%s.options: option '%.*s' is listed twice", p->id, (int)m, s);
            rc = TALLY_ERR_CONFIG;
        } else if (p->noptions >= 65535) {
            seterr(errstr, esz, "poll.%s.options: more than 65535 options", p->id);
            rc = TALLY_ERR_CONFIG;
        } else {
            p->options = xrealloc(p->options, sizeof *p->options * (size_t)(p->noptions + 1));
            poll_option_t *o = &p->options[p->noptions++];
            o->id = xstrndup(s, m);
            o->label = NULL;
            for (int i = 0; i < nold; i++)
                if (!strcmp(old[i].id, o->id) && old[i].label)
                    o->label = xstrdup(old[i].label);
        }
        s = e ? e + 1 : s + n;
    }
    options_free(old, nold);
    if (rc == TALLY_OK && p->noptions == 0) {
        seterr(errstr, esz, "poll.%s.options: no options given", p->id);
        rc = TALLY_ERR_CONFIG;
    }
    return rc;
}

/* Sets key k of poll p. *option_out: the option a label named. */
static tally_err_t poll_set(poll_conf_t *p, const poll_key_def_t *k, const char *key,
                            const char *value, int *option_out, char *errstr, size_t esz) {
    void *field = (char *)p + k->offset;
    switch (k->type) {
    case T_STR: {
        char **s = field;
        free(*s);
        *s = xstrdup(value);
        return TALLY_OK;
    }
    case T_ENUM: {
        const enum_def_t *v = enum_find(k->values, value);
        if (!v) {
            buf_t names = {0};
            enum_list(k->values, ", ", &names);
            seterr(errstr, esz, "poll.%s.%s: '%s' is not one of %s", p->id, key, value, names.data);
            buf_free(&names);
            return TALLY_ERR_CONFIG;
        }
        /* Each enum key names its own type. */
        if (k->values == auths)
            *(poll_auth_t *)field = (poll_auth_t)v->value;
        else if (k->values == modes)
            *(poll_mode_t *)field = (poll_mode_t)v->value;
        else
            *(int *)field = v->value;
        return TALLY_OK;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long n = strtol(value, &end, 10);
        if (errno || end == value || *end || n < 1 || n > 65535) {
            seterr(errstr, esz, "poll.%s.%s: '%s' is not an integer in 1..65535", p->id, key,
                   value);
            return TALLY_ERR_CONFIG;
        }
        *(uint32_t *)field = (uint32_t)n;
        return TALLY_OK;
    }
    case T_TIME: {
        uint64_t ms;
        if (parse_rfc3339(value, &ms) != 0 || ms == 0) {
            seterr(errstr, esz, "poll.%s.%s: '%s' is not an RFC3339 time", p->id, key, value);
            return TALLY_ERR_CONFIG;
        }
        *(uint64_t *)field = ms;
        return TALLY_OK;
    }
    case T_OPTIONS: return poll_set_options(p, value, errstr, esz);
    case T_LABEL: {
        const char *oid = key + strlen(k->key);
        int i = poll_option_index(p, oid, strlen(oid));
        if (i < 0) {
            seterr(errstr, esz,
                   "poll.%s.%s: '%s' is not an option of the poll (list options first)", p->id, key,
                   oid);
            return TALLY_ERR_CONFIG;
        }
        free(p->options[i].label);
        p->options[i].label = xstrdup(value);
        *option_out = i;
        return TALLY_OK;
    }
    case T_BOOL:
    case T_HOSTPORT: break; /* not poll keys */
    }
    return TALLY_ERR_INTERNAL;
}

static void seterr_poll_key(char *errstr, size_t esz, const poll_conf_t *p, const char *key) {
    buf_t names = {0};
    for (int i = 0; i < NPOLL_KEYS; i++)
        buf_printf(&names, "%s%s", i ? ", " : "", poll_keys[i].shown);
    seterr(errstr, esz, "poll.%s: unknown key '%s' (%s)", p->id, key, names.data);
    buf_free(&names);
}

static const key_def_t *key_find(const char *section, const char *key) {
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].section, section) && !strcmp(keys[i].key, key))
            return &keys[i];
    return NULL;
}

tally_err_t config_set(tally_config_t *c, const char *section, const char *key, const char *value,
                       char *errstr, size_t esz) {
    if (!strncmp(section, "poll.", 5)) {
        poll_conf_t *p = poll_get(c, section + 5, errstr, esz);
        if (!p)
            return TALLY_ERR_CONFIG;
        const poll_key_def_t *k = poll_key_find(key);
        if (!k) {
            seterr_poll_key(errstr, esz, p, key);
            return TALLY_ERR_CONFIG;
        }
        int option;
        return poll_set(p, k, key, value, &option, errstr, esz);
    }
    const key_def_t *k = key_find(section, key);
    if (k)
        return set_typed(c, k, value, errstr, esz);
    if (!strcmp(section, "kafka")) {
        /* Anything else is librdkafka's: it checks the name and value when
         * the client is created. */
        for (int i = 0; i < c->nkafka_props; i++)
            if (!strcmp(c->kafka_props[i].key, key)) {
                free(c->kafka_props[i].value);
                c->kafka_props[i].value = xstrdup(value);
                return TALLY_OK;
            }
        c->kafka_props = xrealloc(c->kafka_props, sizeof(kv_t) * (size_t)(c->nkafka_props + 1));
        c->kafka_props[c->nkafka_props].key = xstrdup(key);
        c->kafka_props[c->nkafka_props].value = xstrdup(value);
        c->nkafka_props++;
        return TALLY_OK;
    }
    int known_section = 0;
    buf_t sections = {0};
    for (size_t i = 0; i < NKEYS; i++) {
        if (!strcmp(keys[i].section, section))
            known_section = 1;
        if (i == 0 || strcmp(keys[i].section, keys[i - 1].section))
            buf_printf(&sections, "%s, ", keys[i].section);
    }
    if (known_section)
        seterr(errstr, esz, "unknown key '%s.%s'", section, key);
    else
        seterr(errstr, esz, "unknown section '[%.100s]' (%spoll.ID)", section, sections.data);
    buf_free(&sections);
    return TALLY_ERR_CONFIG;
}

/* ---- the file ----
 * inih reads through ini_read(), from memory, so that
 *  - errors name the physical line, and NUL bytes (which inih's fgets-style
 *    reader would cut the line at) are refused with theirs;
 *  - section names survive whole: inih copies a name into 50 bytes, so two
 *    long poll ids would merge into one poll. The reader recognises a
 *    section line as inih will (mirroring its rules: comments, then
 *    continuation lines, then '[' up to ']' or an inline comment), keeps the
 *    name, and hands inih a short alias, SECTION_ALIAS and an index. A name
 *    reaching on_ini() without the alias would mean the two disagree: that
 *    is an error, never a guess;
 *  - an indented line continues the value of the key above it (inih's lines
 *    are at most 199 characters); inih passes the key of a continuation in
 *    a 50-byte copy too, so on_ini() uses its own. */
#define SECTION_ALIAS '\x01'

typedef struct {
    char *name; /* as written between the brackets */
    int line;
    int poll; /* index in c->polls of a [poll.ID] section, else -1 */
} section_t;

typedef struct {
    int decl_line;        /* of the [poll.ID] line */
    int line[NPOLL_KEYS]; /* where each key was set, 0 not yet; PK_LABEL unused */
    int *label_line;      /* per option */
} poll_seen_t;

typedef struct {
    tally_config_t *c;
    const char *name; /* the file, in messages */
    const char *data;
    size_t len, pos;
    int line;     /* physical line last read */
    int cont;     /* that line is a continuation, for inih */
    int have_key; /* inih's prev_name is set: a key line since the section line */
    section_t *sections;
    int nsections;
    poll_seen_t *seen; /* per poll declared in the file, parallel to c->polls */
    int nseen;
    char err[600];
    int err_line;
    buf_t last_key, last_value;
} parse_ctx_t;

static void ctx_fail(parse_ctx_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ctx_fail(parse_ctx_t *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
    va_end(ap);
    ctx->err_line = ctx->line;
}

/* A [section] line: remembers the whole name; declares a poll. 0 or -1. */
static int section_open(parse_ctx_t *ctx, const char *name, size_t n) {
    int poll = -1;
    if (n >= 5 && !memcmp(name, "poll.", 5)) {
        const char *id = name + 5;
        size_t idlen = n - 5;
        if (!id_valid(id, idlen)) {
            seterr_poll_id(ctx->err, sizeof ctx->err, id, idlen);
            ctx->err_line = ctx->line;
            return -1;
        }
        const poll_conf_t *p = config_poll(ctx->c, id, idlen);
        if (p) {
            ctx_fail(ctx, "[poll.%s]: declared twice (first at line %d): a poll is one section",
                     p->id, ctx->seen[p - ctx->c->polls].decl_line);
            return -1;
        }
        poll_add(ctx->c, id, idlen);
        poll = ctx->c->npolls - 1;
        tally_assert(poll == ctx->nseen); /* only sections declare polls in a file */
        ctx->seen = xrealloc(ctx->seen, sizeof *ctx->seen * (size_t)(ctx->nseen + 1));
        memset(&ctx->seen[ctx->nseen++], 0, sizeof *ctx->seen);
        ctx->seen[poll].decl_line = ctx->line;
    }
    ctx->sections = xrealloc(ctx->sections, sizeof *ctx->sections * (size_t)(ctx->nsections + 1));
    section_t *s = &ctx->sections[ctx->nsections++];
    s->name = xstrndup(name, n);
    s->line = ctx->line;
    s->poll = poll;
    return 0;
}

static int ini_isspace(char ch) {
    return isspace((unsigned char)ch);
}

static char *ini_read(char *str, int num, void *stream) {
    parse_ctx_t *ctx = stream;
    if (ctx->err_line || ctx->pos >= ctx->len)
        return NULL; /* stop at the first error */
    const char *s = ctx->data + ctx->pos;
    size_t left = ctx->len - ctx->pos;
    const char *nl = memchr(s, '\n', left);
    size_t n = nl ? (size_t)(nl - s) + 1 : left; /* with its newline */
    ctx->pos += n;
    ctx->line++;
    const char *nul = memchr(s, '\0', n);
    if (nul) {
        ctx_fail(ctx, "NUL byte in column %zu: not a text file", (size_t)(nul - s) + 1);
        return NULL;
    }
    if (n - (nl != NULL) > (size_t)num - 2) {
        ctx_fail(ctx,
                 "line longer than %d characters: continue the value on the next line, "
                 "indented",
                 num - 2);
        return NULL;
    }
    memcpy(str, s, n);
    str[n] = '\0';

    /* What inih will make of the line, in its order. */
    const char *start = str;
    if (ctx->line == 1 && n >= 3 && !memcmp(str, "\xEF\xBB\xBF", 3))
        start += 3;
    while (*start && ini_isspace(*start))
        start++;
    ctx->cont = 0;
    if (*start == '\0' || *start == ';' || *start == '#')
        return str; /* blank or comment */
    if (ctx->have_key && start > str) {
        ctx->cont = 1;
        return str;
    }
    if (*start != '[')
        return str;
    const char *e = start + 1;
    int was_space = 0;
    while (*e && *e != ']' && !(was_space && *e == ';')) {
        was_space = ini_isspace(*e);
        e++;
    }
    if (*e != ']')
        return str; /* inih reports it */
    if (section_open(ctx, start + 1, (size_t)(e - start - 1)) != 0)
        return NULL;
    snprintf(str, (size_t)num, "[%c%d]\n", SECTION_ALIAS, ctx->nsections - 1);
    ctx->have_key = 0;
    return str;
}

/* A key line (or its continuation) of a [poll.ID] section: each key once. */
static tally_err_t on_poll_key(parse_ctx_t *ctx, int pi, const char *key, const char *value,
                               int cont) {
    poll_conf_t *p = &ctx->c->polls[pi];
    poll_seen_t *seen = &ctx->seen[pi];
    const poll_key_def_t *k = poll_key_find(key);
    if (!k) {
        seterr_poll_key(ctx->err, sizeof ctx->err, p, key);
        return TALLY_ERR_CONFIG;
    }
    int kind = (int)(k - poll_keys);
    int option = -1;
    if (!cont && kind != PK_LABEL && seen->line[kind]) {
        seterr(ctx->err, sizeof ctx->err, "poll.%s.%s: set twice (first at line %d)", p->id, key,
               seen->line[kind]);
        return TALLY_ERR_CONFIG;
    }
    if (!cont && kind == PK_LABEL) {
        const char *oid = key + strlen(k->key);
        int i = poll_option_index(p, oid, strlen(oid));
        if (i >= 0 && seen->label_line[i]) {
            seterr(ctx->err, sizeof ctx->err, "poll.%s.%s: set twice (first at line %d)", p->id,
                   key, seen->label_line[i]);
            return TALLY_ERR_CONFIG;
        }
    }
    tally_err_t rc = poll_set(p, k, key, value, &option, ctx->err, sizeof ctx->err);
    if (rc != TALLY_OK)
        return rc;
    if (kind == PK_OPTIONS) {
        free(seen->label_line);
        seen->label_line = xcalloc((size_t)p->noptions, sizeof *seen->label_line);
    }
    if (kind == PK_LABEL && !cont)
        seen->label_line[option] = ctx->line;
    else if (!cont)
        seen->line[kind] = ctx->line;
    return TALLY_OK;
}

static int on_ini(void *user, const char *section, const char *name, const char *value) {
    parse_ctx_t *ctx = user;
    int cont = ctx->cont;
    if (!cont)
        ctx->have_key = name[0] != '\0'; /* as inih's prev_name */
    if (ctx->err_line)
        return 1;
    const section_t *sect = NULL;
    if (section[0]) {
        char *end;
        long si = section[0] == SECTION_ALIAS ? strtol(section + 1, &end, 10) : -1;
        if (si < 0 || si >= ctx->nsections || *end != '\0') {
            ctx_fail(ctx, "section line [%.60s] not understood", section);
            return 0;
        }
        sect = &ctx->sections[si];
    }
    if (cont) {
        /* Continuation: options join with a comma (unless the line above
         * ended in one), text with a space. */
        int list = !strcmp(ctx->last_key.data, poll_keys[PK_OPTIONS].key);
        size_t n = ctx->last_value.len;
        while (n > 0 && ini_isspace(ctx->last_value.data[n - 1]))
            n--;
        if (!list)
            buf_puts(&ctx->last_value, " ");
        else if (n == 0 || ctx->last_value.data[n - 1] != ',')
            buf_puts(&ctx->last_value, ",");
        buf_puts(&ctx->last_value, value);
    } else {
        ctx->last_key.len = 0;
        buf_puts(&ctx->last_key, name);
        ctx->last_value.len = 0;
        buf_puts(&ctx->last_value, value);
    }
    tally_err_t rc;
    if (sect && sect->poll >= 0)
        rc = on_poll_key(ctx, sect->poll, ctx->last_key.data, ctx->last_value.data, cont);
    else
        rc = config_set(ctx->c, sect ? sect->name : "", ctx->last_key.data, ctx->last_value.data,
                        ctx->err, sizeof ctx->err);
    if (rc != TALLY_OK) {
        ctx->err_line = ctx->line;
        return 0;
    }
    return 1;
}

/* Votes look their poll up by id: a hash index (twice the polls, linear
 * probing) instead of a scan, built once the polls are known. */
static void poll_index_build(tally_config_t *c) {
    free(c->poll_index);
    size_t cap = 8;
    while (cap < 2 * (size_t)c->npolls)
        cap *= 2;
    c->poll_index = xcalloc(cap, sizeof *c->poll_index);
    c->poll_index_cap = cap;
    for (int i = 0; i < c->npolls; i++) {
        size_t h = XXH3_64bits(c->polls[i].id, strlen(c->polls[i].id)) & (cap - 1);
        while (c->poll_index[h])
            h = (h + 1) & (cap - 1);
        c->poll_index[h] = i + 1;
    }
}

#define CACHE_CONTROL_MAX 512

/* The S3 keys that need no file: an endpoint URL we can sign for, a
 * bucket, a region, a prefix that needs no escaping in an object name. */
static tally_err_t validate_s3(const tally_config_t *c, const char *where, char *errstr,
                               size_t esz) {
    const char *ep = c->s3_endpoint;
    if (!ep || !ep[0])
        return TALLY_OK;
    if (strncmp(ep, "http://", 7) && strncmp(ep, "https://", 8)) {
        seterr(errstr, esz, "%s: publisher.s3_endpoint '%.200s': expected http://HOST[:PORT] or "
               "https://HOST[:PORT]", where, ep);
        return TALLY_ERR_CONFIG;
    }
    const char *host = strstr(ep, "://") + 3;
    if (!host[0] || host[0] == '/' || strpbrk(host, "?#@ \t")) {
        seterr(errstr, esz, "%s: publisher.s3_endpoint '%.200s': no host, or a query, fragment, "
               "user or space in it", where, ep);
        return TALLY_ERR_CONFIG;
    }
    static const struct {
        const char *key;
        size_t offset;
    } required[] = {
        {"publisher.s3_bucket", OFF(s3_bucket)},
        {"publisher.s3_region", OFF(s3_region)},
        {"publisher.s3_access_key_file", OFF(s3_access_key_file)},
        {"publisher.s3_secret_key_file", OFF(s3_secret_key_file)},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        const char *v = *(char **)((char *)c + required[i].offset);
        if (!v || !v[0]) {
            seterr(errstr, esz, "%s: %s is required when publisher.s3_endpoint is set", where,
                   required[i].key);
            return TALLY_ERR_CONFIG;
        }
    }
    /* Bucket names per S3's rules (lower case, digits, '-' and '.'), so
     * they fit a host name and a path without escaping. */
    size_t bl = strlen(c->s3_bucket);
    int ok = bl >= 3 && bl <= 63;
    for (size_t i = 0; ok && i < bl; i++) {
        char ch = c->s3_bucket[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.';
    }
    if (!ok) {
        seterr(errstr, esz, "%s: publisher.s3_bucket '%.100s': 3-63 characters of [a-z0-9.-]",
               where, c->s3_bucket);
        return TALLY_ERR_CONFIG;
    }
    for (const char *q = c->s3_region; *q; q++)
        if (!(isalnum((unsigned char)*q) || *q == '-' || *q == '_')) {
            seterr(errstr, esz, "%s: publisher.s3_region '%.100s': letters, digits, '-' only",
                   where, c->s3_region);
            return TALLY_ERR_CONFIG;
        }
    for (const char *q = c->s3_prefix; *q; q++)
        if (!(isalnum((unsigned char)*q) || strchr("_.-/", *q)) || (*q == '.' && q[1] == '.')) {
            seterr(errstr, esz, "%s: publisher.s3_prefix '%.200s': only [A-Za-z0-9_.-/] and no "
                   "'..'", where, c->s3_prefix);
            return TALLY_ERR_CONFIG;
        }
    return TALLY_OK;
}

/* Fills defaults and checks cross-key rules; where names the source. */
static tally_err_t validate(tally_config_t *c, const parse_ctx_t *ctx, const char *where,
                            char *errstr, size_t esz) {
    poll_index_build(c);
    if (validate_s3(c, where ? where : "config", errstr, esz) != TALLY_OK)
        return TALLY_ERR_CONFIG;
    /* It goes into HTTP headers as it is. */
    const char *cc = c->pub_cache_control;
    int cc_ok = strlen(cc) <= CACHE_CONTROL_MAX;
    for (const char *q = cc; cc_ok && *q; q++)
        cc_ok = (unsigned char)*q >= 0x20 && *q != 0x7f;
    if (!cc_ok) {
        seterr(errstr, esz, "%s: publisher.cache_control: at most %d bytes, no control characters",
               where ? where : "config", CACHE_CONTROL_MAX);
        return TALLY_ERR_CONFIG;
    }
    for (int i = 0; i < c->npolls; i++) {
        poll_conf_t *p = &c->polls[i];
        if (p->noptions == 0) {
            if (ctx && i < ctx->nseen)
                seterr(errstr, esz, "%s:%d: poll.%s: 'options' is required", where,
                       ctx->seen[i].decl_line, p->id);
            else
                seterr(errstr, esz, "%s%spoll.%s: 'options' is required", where ? where : "",
                       where ? ": " : "", p->id);
            return TALLY_ERR_CONFIG;
        }
        if (p->voter_auth == POLL_AUTH_JWT && !c->auth_jwt_hs256_key_file[0] &&
            !c->auth_jwt_es256_public_key_file[0]) {
            seterr(errstr, esz,
                   "%s%spoll.%s: voter_auth = jwt needs auth.jwt_hs256_key_file or "
                   "auth.jwt_es256_public_key_file",
                   where ? where : "", where ? ": " : "", p->id);
            return TALLY_ERR_CONFIG;
        }
        const char *bad = NULL;
        if (p->mode == MODE_CAPPED && !p->max_votes)
            bad = "'max_votes' is required in mode capped";
        else if (p->mode != MODE_CAPPED && p->max_votes)
            bad = "'max_votes' is only for mode capped";
        else if (p->opens_at && p->closes_at && p->closes_at <= p->opens_at)
            bad = "'closes_at' must be after 'opens_at'";
        if (bad) {
            seterr(errstr, esz, "%s%spoll.%s: %s", where ? where : "", where ? ": " : "", p->id,
                   bad);
            return TALLY_ERR_CONFIG;
        }
        if (!p->title)
            p->title = xstrdup(p->id);
        for (int j = 0; j < p->noptions; j++)
            if (!p->options[j].label)
                p->options[j].label = xstrdup(p->options[j].id);
    }
    return TALLY_OK;
}

tally_err_t config_validate(tally_config_t *c, char *errstr, size_t esz) {
    return validate(c, NULL, NULL, errstr, esz);
}

/* Applies one -s section.key=value. */
static tally_err_t apply_override(tally_config_t *c, const char *o, char *errstr, size_t esz) {
    const char *eq = strchr(o, '=');
    char sect[256], key[256];
    const char *dot = NULL;
    if (eq) {
        /* poll sections hold a dot themselves: poll.ID.key */
        dot = strchr(o, '.');
        if (dot && dot < eq && !strncmp(o, "poll.", 5))
            dot = memchr(dot + 1, '.', (size_t)(eq - dot - 1));
    }
    if (!eq || !dot || dot > eq || dot == o || dot + 1 == eq || (size_t)(dot - o) >= sizeof sect ||
        (size_t)(eq - dot - 1) >= sizeof key) {
        seterr(errstr, esz, "-s %s: expected section.key=value", o);
        return TALLY_ERR_CONFIG;
    }
    snprintf(sect, sizeof sect, "%.*s", (int)(dot - o), o);
    snprintf(key, sizeof key, "%.*s", (int)(eq - dot - 1), dot + 1);
    char err[512];
    if (config_set(c, sect, key, eq + 1, err, sizeof err) != TALLY_OK) {
        seterr(errstr, esz, "-s %s: %s", o, err);
        return TALLY_ERR_CONFIG;
    }
    return TALLY_OK;
}

static void ctx_free(parse_ctx_t *ctx) {
    for (int i = 0; i < ctx->nsections; i++)
        free(ctx->sections[i].name);
    free(ctx->sections);
    for (int i = 0; i < ctx->nseen; i++)
        free(ctx->seen[i].label_line);
    free(ctx->seen);
    buf_free(&ctx->last_key);
    buf_free(&ctx->last_value);
}

static tally_err_t load(const char *name, const char *data, size_t len,
                        const char *const *overrides, int noverrides, tally_config_t **out,
                        char *errstr, size_t esz) {
    tally_config_t *c = config_new_defaults();
    parse_ctx_t ctx = {.c = c, .name = name, .data = data, .len = len};
    tally_err_t rc = TALLY_ERR_CONFIG;
    if (data) {
        int line = ini_parse_stream(ini_read, &ctx, on_ini, &ctx);
        if (line != 0 && (!ctx.err_line || line < ctx.err_line)) {
            seterr(errstr, esz, "%s:%d: syntax error (expected [section] or key = value)", name,
                   line);
            goto out;
        }
        if (ctx.err_line) {
            seterr(errstr, esz, "%s:%d: %s", name, ctx.err_line, ctx.err);
            goto out;
        }
    }
    for (int i = 0; i < noverrides; i++)
        if (apply_override(c, overrides[i], errstr, esz) != TALLY_OK)
            goto out;
    rc = validate(c, data ? &ctx : NULL, data ? name : "config", errstr, esz);
out:
    ctx_free(&ctx);
    if (rc != TALLY_OK) {
        config_free(c);
        c = NULL;
    }
    *out = c;
    return rc;
}

tally_err_t config_load_string(const char *name, const char *data, size_t len,
                               const char *const *overrides, int noverrides, tally_config_t **out,
                               char *errstr, size_t esz) {
    return load(name, data ? data : "", len, overrides, noverrides, out, errstr, esz);
}

/* A configuration is a page of text; anything this big is something else. */
#define CONFIG_FILE_MAX (16 << 20)

tally_err_t config_load(const char *path, const char *const *overrides, int noverrides,
                        tally_config_t **out, char *errstr, size_t esz) {
    *out = NULL;
    if (!path)
        return load("config", NULL, 0, overrides, noverrides, out, errstr, esz);
    buf_t text = {0};
    tally_err_t rc = TALLY_ERR_CONFIG;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(errstr, esz, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        seterr(errstr, esz, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        seterr(errstr, esz, "%s: is a directory, not a configuration file", path);
        goto out;
    }
    for (;;) {
        buf_reserve(&text, 65536);
        ssize_t r = read(fd, text.data + text.len, text.cap - text.len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            seterr(errstr, esz, "%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        text.len += (size_t)r;
        if (text.len > CONFIG_FILE_MAX) {
            seterr(errstr, esz, "%s: larger than %d MiB: not a tally configuration", path,
                   CONFIG_FILE_MAX >> 20);
            goto out;
        }
    }
    rc = load(path, text.data ? text.data : "", text.len, overrides, noverrides, out, errstr, esz);
out:
    if (fd >= 0)
        close(fd);
    buf_free(&text);
    return rc;
}

void config_free(tally_config_t *c) {
    if (!c)
        return;
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].type == T_STR || keys[i].type == T_HOSTPORT)
            free(*(char **)((char *)c + keys[i].offset));
    for (int i = 0; i < c->nkafka_props; i++) {
        free(c->kafka_props[i].key);
        free(c->kafka_props[i].value);
    }
    free(c->kafka_props);
    for (int i = 0; i < c->npolls; i++) {
        free(c->polls[i].id);
        free(c->polls[i].title);
        options_free(c->polls[i].options, c->polls[i].noptions);
    }
    free(c->polls);
    free(c->poll_index);
    free(c);
}

const char *config_catalog_topic(const tally_config_t *c, char *buf, size_t size) {
    if (c->kafka_catalog_topic && c->kafka_catalog_topic[0])
        snprintf(buf, size, "%s", c->kafka_catalog_topic);
    else
        snprintf(buf, size, "%s-polls", c->kafka_topic);
    return buf;
}

static int poll_is(const poll_conf_t *p, const char *id, size_t len) {
    return strlen(p->id) == len && !memcmp(p->id, id, len);
}

const poll_conf_t *config_poll(const tally_config_t *c, const char *id, size_t len) {
    if (c->poll_index) {
        size_t m = c->poll_index_cap - 1;
        for (size_t h = XXH3_64bits(id, len) & m; c->poll_index[h]; h = (h + 1) & m)
            if (poll_is(&c->polls[c->poll_index[h] - 1], id, len))
                return &c->polls[c->poll_index[h] - 1];
        return NULL;
    }
    for (int i = 0; i < c->npolls; i++)
        if (strlen(c->polls[i].id) == len && !memcmp(c->polls[i].id, id, len))
            return &c->polls[i];
    return NULL;
}

int poll_option_index(const poll_conf_t *p, const char *id, size_t len) {
    for (int i = 0; i < p->noptions; i++)
        if (strlen(p->options[i].id) == len && !memcmp(p->options[i].id, id, len))
            return i;
    return -1;
}

/* ---- directories ---- */

typedef struct {
    const char *key;
    size_t offset;
    unsigned flag; /* CONFIG_DIR_*, 0: never written by the check */
    char *canon;
} dir_use_t;

/* 1 when a is b or lies inside it: by canonical name, and by inode so that
 * a bind mount of b is b. */
static int path_within(const char *a, const char *b) {
    size_t n = strlen(b);
    if (!strcmp(b, "/") || (!strncmp(a, b, n) && (a[n] == '\0' || a[n] == '/')))
        return 1;
    struct stat sb, sa;
    if (stat(b, &sb) != 0)
        return 0;
    buf_t prefix = {0};
    buf_puts(&prefix, a);
    int within = 0;
    for (;;) {
        if (stat(prefix.data, &sa) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino) {
            within = 1;
            break;
        }
        char *slash = strrchr(prefix.data, '/');
        if (!slash || slash == prefix.data)
            break;
        *slash = '\0';
    }
    buf_free(&prefix);
    return within;
}

static tally_err_t errno_class(int e) {
    return e == ENOTDIR || e == ELOOP || e == ENAMETOOLONG || e == ENOENT || e == EEXIST
               ? TALLY_ERR_CONFIG
               : TALLY_ERR_IO;
}

/* Creates dir if missing and proves it writable with a file of its own. */
static tally_err_t dir_prepare(const char *key, const char *dir, char *errstr, size_t esz) {
    struct stat st;
    if (mkdir_p(dir) != 0 || stat(dir, &st) != 0) {
        int e = errno;
        seterr(errstr, esz, "%s %s: cannot create: %s", key, dir, strerror(e));
        return errno_class(e);
    }
    if (!S_ISDIR(st.st_mode)) {
        seterr(errstr, esz, "%s %s: not a directory", key, dir);
        return TALLY_ERR_CONFIG;
    }
    buf_t probe = {0};
    buf_printf(&probe, "%s/.tally-write-check-XXXXXX", dir);
    int fd = mkstemp(probe.data);
    int e = errno;
    if (fd >= 0) {
        close(fd);
        unlink(probe.data);
    }
    buf_free(&probe);
    if (fd < 0) {
        seterr(errstr, esz, "%s %s: not writable: %s", key, dir, strerror(e));
        return TALLY_ERR_IO;
    }
    return TALLY_OK;
}

tally_err_t config_check_dirs(const tally_config_t *c, unsigned writes, char *errstr, size_t esz) {
    enum { D_LOG, D_SNAP, D_PUB, ND };
    dir_use_t d[ND] = {
        [D_LOG] = {"log.dir", OFF(log_dir), CONFIG_DIR_LOG, NULL},
        [D_SNAP] = {"engine.snapshot_dir", OFF(snapshot_dir), CONFIG_DIR_SNAPSHOT, NULL},
        [D_PUB] = {"publisher.dir", OFF(pub_dir), 0, NULL},
    };
    int file_log = !(c->kafka_brokers && c->kafka_brokers[0]);
    tally_err_t rc = TALLY_OK;
    for (int i = 0; i < ND && rc == TALLY_OK; i++) {
        const char *v = *(char **)((char *)c + d[i].offset);
        struct stat st;
        if (i == D_LOG && !file_log)
            continue;
        if (!v || !v[0]) {
            seterr(errstr, esz, "%s is empty: it must name a directory", d[i].key);
            rc = TALLY_ERR_CONFIG;
        } else if (!(d[i].canon = path_canonical(v))) {
            int e = errno;
            /* Missing parts are fine: ENOENT is a symlink to nowhere. */
            seterr(errstr, esz, "%s %s: %s", d[i].key, v,
                   e == ENOTDIR  ? "not a directory (a part of it is a file)"
                   : e == ENOENT ? "passes through a dangling symbolic link"
                                 : strerror(e));
            rc = errno_class(e);
        } else if (stat(d[i].canon, &st) == 0 && !S_ISDIR(st.st_mode)) {
            seterr(errstr, esz, "%s %s: not a directory", d[i].key, v);
            rc = TALLY_ERR_CONFIG;
        }
    }
    static const struct {
        int a, b;
        const char *why;
    } apart[] = {
        {D_PUB, D_LOG, "results are served to the public; the log holds voter ids"},
        {D_PUB, D_SNAP, "results are served to the public; snapshots hold voter ids"},
    };
    for (size_t i = 0; rc == TALLY_OK && i < sizeof apart / sizeof apart[0]; i++) {
        const dir_use_t *a = &d[apart[i].a], *b = &d[apart[i].b];
        if (!a->canon || !b->canon)
            continue;
        if (path_within(a->canon, b->canon) || path_within(b->canon, a->canon)) {
            seterr(errstr, esz, "%s %s must not be, contain or lie inside %s %s (%s)", a->key,
                   a->canon, b->key, b->canon, apart[i].why);
            rc = TALLY_ERR_CONFIG;
        }
    }
    if (rc == TALLY_OK && d[D_LOG].canon && d[D_SNAP].canon &&
        path_within(d[D_LOG].canon, d[D_SNAP].canon) &&
        path_within(d[D_SNAP].canon, d[D_LOG].canon)) {
        seterr(errstr, esz,
               "engine.snapshot_dir and log.dir are the same directory, %s: each store owns its "
               "directory and removes its own stale temporary files",
               d[D_LOG].canon);
        rc = TALLY_ERR_CONFIG;
    }
    for (int i = 0; rc == TALLY_OK && i < ND; i++)
        if (d[i].canon && (d[i].flag & writes))
            rc = dir_prepare(d[i].key, *(char **)((char *)c + d[i].offset), errstr, esz);
    for (int i = 0; i < ND; i++)
        free(d[i].canon);
    return rc;
}

/* ---- S3 key files ---- */

#define SECRET_MAX 4096

tally_err_t config_read_secret(const char *key, const char *path, buf_t *out, char *errstr,
                               size_t esz) {
    char tmp[SECRET_MAX + 2];
    out->len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        seterr(errstr, esz, "%s %s: %s", key, path, fd < 0 ? strerror(e) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return TALLY_ERR_CONFIG;
    }
    size_t n = 0;
    ssize_t r;
    while (n < sizeof tmp && (r = read(fd, tmp + n, sizeof tmp - n)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            seterr(errstr, esz, "%s %s: cannot read: %s", key, path, strerror(errno));
            close(fd);
            return TALLY_ERR_CONFIG;
        }
        n += (size_t)r;
    }
    close(fd);
    size_t a = 0, e = 0;
    while (e < n && tmp[e] != '\n' && tmp[e] != '\r')
        e++;
    while (a < e && isspace((unsigned char)tmp[a]))
        a++;
    while (e > a && isspace((unsigned char)tmp[e - 1]))
        e--;
    tally_err_t rc = TALLY_OK;
    if (e == a || e - a > SECRET_MAX) {
        seterr(errstr, esz, "%s %s: %s", key, path,
               e == a ? "empty: its first line must hold the key" : "longer than 4096 bytes");
        rc = TALLY_ERR_CONFIG;
    } else {
        for (size_t i = a; i < e && rc == TALLY_OK; i++)
            if ((unsigned char)tmp[i] < 0x20 || tmp[i] == 0x7f) {
                seterr(errstr, esz, "%s %s: the key holds a control character", key, path);
                rc = TALLY_ERR_CONFIG;
            }
    }
    if (rc == TALLY_OK)
        buf_append(out, tmp + a, e - a);
    explicit_bzero(tmp, sizeof tmp);
    return rc;
}

tally_err_t config_check_s3(const tally_config_t *c, char *errstr, size_t esz) {
    if (!c->s3_endpoint || !c->s3_endpoint[0])
        return TALLY_OK;
    buf_t key = {0};
    tally_err_t rc = config_read_secret("publisher.s3_access_key_file", c->s3_access_key_file,
                                        &key, errstr, esz);
    if (rc == TALLY_OK)
        rc = config_read_secret("publisher.s3_secret_key_file", c->s3_secret_key_file, &key,
                                errstr, esz);
    if (key.data)
        explicit_bzero(key.data, key.cap);
    buf_free(&key);
    return rc;
}

/* ---- help ---- */

void config_print_help(FILE *out) {
    fprintf(out, "Configuration keys (INI; override any with -s section.key=value):\n");
    const char *sect = "";
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(sect, keys[i].section)) {
            sect = keys[i].section;
            fprintf(out, "  [%s]\n", sect);
        }
        fprintf(out, "    %-22s default %-16s %s\n", keys[i].key,
                keys[i].def[0] ? keys[i].def : "\"\"", keys[i].help);
    }
    fprintf(out,
            "    (any other kafka.* key is passed to librdkafka unchanged)\n"
            "  [poll.ID]                one section per poll, declared once, each key set "
            "once;\n"
            "                           ID is 1-%d chars of [A-Za-z0-9_-]\n",
            ID_MAX_LEN);
    for (int i = 0; i < NPOLL_KEYS; i++) {
        const poll_key_def_t *k = &poll_keys[i];
        fprintf(out, "    %-22s default %-16s %s", k->shown, k->def, k->help);
        if (k->values) {
            buf_t names = {0};
            enum_list(k->values, " | ", &names);
            fprintf(out, ": %s", names.data);
            buf_free(&names);
        }
        fputc('\n', out);
        for (const enum_def_t *v = k->values; v && v->name; v++)
            fprintf(out, "      %-20s %s\n", v->name, v->help);
    }
    fprintf(out, "Other sections may repeat; a later key wins, as -s does. An indented line\n"
                 "continues the value above it (lines are at most 198 characters).\n"
                 "Directories: log.dir, engine.snapshot_dir and publisher.dir must not be empty;\n"
                 "publisher.dir must not be, contain or lie inside log.dir or engine.snapshot_dir\n"
                 "(it is served to the public), and engine.snapshot_dir must not be log.dir.\n");
}
