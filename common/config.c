#include "common/config.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "common/ids.h"
#include "common/util.h"

typedef enum { T_STR, T_INT, T_BOOL, T_HOSTPORT } key_type_t;

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
    {"limits", "ip_rate", T_INT, "0", 0, 10000000, OFF(limits_ip_rate),
     "votes per second per client address, then 429 (0: off)"},
    {"limits", "ip_burst", T_INT, "100", 1, 10000000, OFF(limits_ip_burst),
     "votes a client may send at once before limits.ip_rate applies"},
    {"log", "dir", T_STR, "run/log", 0, 0, OFF(log_dir),
     "directory of the embedded vote log (used when kafka.brokers is empty)"},
    {"log", "partitions", T_INT, "4", 1, 1024, OFF(log_partitions),
     "partitions of the embedded log; fixed once the log exists"},
    {"log", "group_commit_us", T_INT, "200", 0, 100000, OFF(log_group_commit_us),
     "how long the log writer waits to gather more votes into one fsync"},
    {"log", "fsync", T_BOOL, "true", 0, 1, OFF(log_fsync),
     "fsync before acknowledging; false loses acknowledged votes on power loss"},
    {"engine", "snapshot_dir", T_STR, "run/snapshots", 0, 0, OFF(snapshot_dir),
     "directory of the engine's checksummed snapshots"},
    {"engine", "snapshot_interval_ms", T_INT, "10000", 100, 86400000, OFF(snapshot_interval_ms),
     "how often each partition's state is snapshotted"},
    {"engine", "threads", T_INT, "2", 1, 256, OFF(engine_threads),
     "counter worker threads; each owns a set of log partitions"},
    {"publisher", "dir", T_STR, "run/public", 0, 0, OFF(pub_dir),
     "directory of the published results (index.html, polls/ID.json|html)"},
    {"publisher", "min_interval_ms", T_INT, "50", 0, 3600000, OFF(pub_min_interval_ms),
     "a poll's results are rewritten at most once per this interval"},
    {"kafka", "brokers", T_STR, "", 0, 0, OFF(kafka_brokers),
     "bootstrap brokers; non-empty switches the vote log to Kafka"},
    {"kafka", "topic", T_STR, "tally.votes", 0, 0, OFF(kafka_topic), "topic of the vote log"},
    {"kafka", "partitions", T_INT, "4", 1, 100000, OFF(kafka_partitions),
     "partitions when tally creates the topic"},
};
#define NKEYS (sizeof keys / sizeof keys[0])

const char *poll_mode_name(poll_mode_t m) {
    switch (m) {
    case MODE_ONE_PER_VOTER: return "one-per-voter";
    case MODE_CHANGEABLE: return "changeable";
    case MODE_UNLIMITED: return "unlimited";
    }
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

static int set_typed(tally_config_t *c, const key_def_t *k, const char *value, char *errstr,
                     size_t esz) {
    void *field = (char *)c + k->offset;
    switch (k->type) {
    case T_STR:
    case T_HOSTPORT: {
        if (k->type == T_HOSTPORT) {
            const char *colon = strrchr(value, ':');
            char *end;
            long port = colon ? strtol(colon + 1, &end, 10) : -1;
            if (!colon || colon == value || colon[1] == '\0' || *end != '\0' || port < 0 ||
                port > 65535) {
                seterr(errstr, esz, "%s.%s: '%s' is not host:port", k->section, k->key, value);
                return -1;
            }
        }
        char **s = field;
        free(*s);
        *s = xstrdup(value);
        return 0;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end != '\0') {
            seterr(errstr, esz, "%s.%s: '%s' is not an integer", k->section, k->key, value);
            return -1;
        }
        if (v < k->min || v > k->max) {
            seterr(errstr, esz, "%s.%s: %ld is out of range [%ld, %ld]", k->section, k->key, v,
                   k->min, k->max);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case T_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1") ||
            !strcmp(value, "on"))
            *(int *)field = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0") ||
                 !strcmp(value, "off"))
            *(int *)field = 0;
        else {
            seterr(errstr, esz, "%s.%s: '%s' is not a boolean (true/false)", k->section, k->key,
                   value);
            return -1;
        }
        return 0;
    }
    return -1;
}

tally_config_t *config_new_defaults(void) {
    tally_config_t *c = xcalloc(1, sizeof *c);
    char err[256];
    for (size_t i = 0; i < NKEYS; i++)
        tally_assert(set_typed(c, &keys[i], keys[i].def, err, sizeof err) == 0);
    return c;
}

static poll_conf_t *poll_get(tally_config_t *c, const char *id, char *errstr, size_t esz) {
    for (int i = 0; i < c->npolls; i++)
        if (!strcmp(c->polls[i].id, id))
            return &c->polls[i];
    if (!id_valid(id, strlen(id))) {
        seterr(errstr, esz, "[poll.%s]: poll id must be 1-64 chars of [A-Za-z0-9_-]", id);
        return NULL;
    }
    free(c->poll_index); /* rebuilt by config_validate */
    c->poll_index = NULL;
    c->poll_index_cap = 0;
    c->polls = xrealloc(c->polls, sizeof *c->polls * (size_t)(c->npolls + 1));
    poll_conf_t *p = &c->polls[c->npolls++];
    memset(p, 0, sizeof *p);
    p->id = xstrdup(id);
    p->mode = MODE_ONE_PER_VOTER;
    return p;
}

static void options_free(poll_conf_t *p) {
    for (int i = 0; i < p->noptions; i++) {
        free(p->options[i].id);
        free(p->options[i].label);
    }
    free(p->options);
    p->options = NULL;
    p->noptions = 0;
}

static int poll_set(tally_config_t *c, const char *pid, const char *key, const char *value,
                    char *errstr, size_t esz) {
    poll_conf_t *p = poll_get(c, pid, errstr, esz);
    if (!p)
        return -1;
    if (!strcmp(key, "title")) {
        free(p->title);
        p->title = xstrdup(value);
    } else if (!strcmp(key, "mode")) {
        if (!strcmp(value, "one-per-voter"))
            p->mode = MODE_ONE_PER_VOTER;
        else if (!strcmp(value, "changeable"))
            p->mode = MODE_CHANGEABLE;
        else if (!strcmp(value, "unlimited"))
            p->mode = MODE_UNLIMITED;
        else {
            seterr(errstr, esz,
                   "poll.%s.mode: '%s' is not one of one-per-voter, changeable, unlimited", pid,
                   value);
            return -1;
        }
    } else if (!strcmp(key, "options")) {
        /* Labels set before this line are kept by matching ids. */
        poll_option_t *old = p->options;
        int nold = p->noptions;
        p->options = NULL;
        p->noptions = 0;
        const char *s = value;
        int rc = 0;
        while (*s && rc == 0) {
            while (*s == ' ' || *s == '\t')
                s++;
            const char *e = strchr(s, ',');
            size_t n = e ? (size_t)(e - s) : strlen(s);
            size_t m = n;
            while (m > 0 && (s[m - 1] == ' ' || s[m - 1] == '\t'))
                m--;
            if (!id_valid(s, m)) {
                seterr(errstr, esz,
                       "poll.%s.options: option id '%.*s' must be 1-64 chars of [A-Za-z0-9_-]",
                       pid, (int)m, s);
                rc = -1;
                break;
            }
            if (poll_option_index(p, s, m) >= 0) {
                seterr(errstr, esz, "poll.%s.options: option '%.*s' is listed twice", pid, (int)m,
                       s);
                rc = -1;
                break;
            }
            if (p->noptions >= 65535) {
                seterr(errstr, esz, "poll.%s.options: more than 65535 options", pid);
                rc = -1;
                break;
            }
            p->options = xrealloc(p->options, sizeof *p->options * (size_t)(p->noptions + 1));
            poll_option_t *o = &p->options[p->noptions++];
            o->id = xstrndup(s, m);
            o->label = NULL;
            for (int i = 0; i < nold; i++)
                if (!strcmp(old[i].id, o->id) && old[i].label)
                    o->label = xstrdup(old[i].label);
            s = e ? e + 1 : s + n;
        }
        poll_conf_t tmp = {.options = old, .noptions = nold};
        options_free(&tmp);
        if (rc == 0 && p->noptions == 0) {
            seterr(errstr, esz, "poll.%s.options: no options given", pid);
            rc = -1;
        }
        return rc;
    } else if (!strncmp(key, "label.", 6)) {
        const char *oid = key + 6;
        int i = poll_option_index(p, oid, strlen(oid));
        if (i < 0) {
            seterr(errstr, esz, "poll.%s.%s: '%s' is not an option of the poll (list options first)",
                   pid, key, oid);
            return -1;
        }
        free(p->options[i].label);
        p->options[i].label = xstrdup(value);
    } else {
        seterr(errstr, esz, "poll.%s: unknown key '%s' (title, options, mode, label.OPTION)", pid,
               key);
        return -1;
    }
    return 0;
}

int config_set(tally_config_t *c, const char *section, const char *key, const char *value,
               char *errstr, size_t esz) {
    if (!strncmp(section, "poll.", 5))
        return poll_set(c, section + 5, key, value, errstr, esz);
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].section, section) && !strcmp(keys[i].key, key))
            return set_typed(c, &keys[i], value, errstr, esz);
    if (!strcmp(section, "kafka")) {
        /* Anything else is librdkafka's: it checks the name and value when
         * the client is created. */
        for (int i = 0; i < c->nkafka_props; i++)
            if (!strcmp(c->kafka_props[i].key, key)) {
                free(c->kafka_props[i].value);
                c->kafka_props[i].value = xstrdup(value);
                return 0;
            }
        c->kafka_props = xrealloc(c->kafka_props, sizeof(kv_t) * (size_t)(c->nkafka_props + 1));
        c->kafka_props[c->nkafka_props].key = xstrdup(key);
        c->kafka_props[c->nkafka_props].value = xstrdup(value);
        c->nkafka_props++;
        return 0;
    }
    int known_section = 0;
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].section, section))
            known_section = 1;
    if (known_section)
        seterr(errstr, esz, "unknown key '%s.%s'", section, key);
    else
        seterr(errstr, esz,
               "unknown section '[%s]' (server, log, engine, publisher, kafka, poll.ID)", section);
    return -1;
}

/* inih reads through parse_ctx_t's reader so that the handler knows the
 * physical line: errors name it, and an indented line continues the value of
 * the key above it (inih's lines are at most 199 characters). */
typedef struct {
    tally_config_t *c;
    FILE *f;
    int line;      /* physical line last read */
    int cont;      /* that line is an indented continuation */
    int too_long;  /* that line did not fit inih's buffer */
    char err[512];
    int err_line;
    char last_section[256], last_key[256];
    buf_t last_value;
} parse_ctx_t;

static char *ini_read(char *str, int num, void *stream) {
    parse_ctx_t *ctx = stream;
    if (ctx->err_line)
        return NULL; /* stop at the first error */
    if (!fgets(str, num, ctx->f))
        return NULL;
    ctx->line++;
    size_t n = strlen(str);
    if (n == (size_t)num - 1 && str[n - 1] != '\n' && !feof(ctx->f)) {
        snprintf(ctx->err, sizeof ctx->err,
                 "line longer than %d characters: continue the value on the next line, "
                 "indented",
                 num - 2);
        ctx->err_line = ctx->line;
        return NULL;
    }
    ctx->cont = (str[0] == ' ' || str[0] == '\t') && strspn(str, " \t\r\n") != n;
    return str;
}

static int on_ini(void *user, const char *section, const char *name, const char *value) {
    parse_ctx_t *ctx = user;
    if (ctx->err_line)
        return 1;
    const char *v = value;
    if (ctx->cont && !strcmp(ctx->last_section, section) && !strcmp(ctx->last_key, name)) {
        /* Continuation: options join with a comma, text with a space. */
        buf_puts(&ctx->last_value, strcmp(name, "options") ? " " : ",");
        buf_puts(&ctx->last_value, value);
        v = ctx->last_value.data;
    } else {
        snprintf(ctx->last_section, sizeof ctx->last_section, "%s", section);
        snprintf(ctx->last_key, sizeof ctx->last_key, "%s", name);
        ctx->last_value.len = 0;
        buf_puts(&ctx->last_value, value);
    }
    if (config_set(ctx->c, section, name, v, ctx->err, sizeof ctx->err) != 0) {
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

int config_validate(tally_config_t *c, char *errstr, size_t esz) {
    poll_index_build(c);
    for (int i = 0; i < c->npolls; i++) {
        poll_conf_t *p = &c->polls[i];
        if (p->noptions == 0) {
            seterr(errstr, esz, "poll.%s: 'options' is required", p->id);
            return -1;
        }
        if (!p->title)
            p->title = xstrdup(p->id);
        for (int j = 0; j < p->noptions; j++)
            if (!p->options[j].label)
                p->options[j].label = xstrdup(p->options[j].id);
    }
    return 0;
}

tally_config_t *config_load(const char *path, const char *const *overrides, int noverrides,
                            char *errstr, size_t esz) {
    tally_config_t *c = config_new_defaults();
    parse_ctx_t ctx = {.c = c};
    if (path) {
        ctx.f = fopen(path, "r");
        if (!ctx.f) {
            seterr(errstr, esz, "%s: %s", path, strerror(errno));
            goto fail;
        }
        int line = ini_parse_stream(ini_read, &ctx, on_ini, &ctx);
        fclose(ctx.f);
        buf_free(&ctx.last_value);
        if (line != 0 && (!ctx.err_line || line < ctx.err_line)) {
            seterr(errstr, esz, "%s:%d: syntax error (expected [section] or key = value)", path,
                   line);
            goto fail;
        }
        if (ctx.err_line) {
            seterr(errstr, esz, "%s:%d: %s", path, ctx.err_line, ctx.err);
            goto fail;
        }
    }
    for (int i = 0; i < noverrides; i++) {
        const char *o = overrides[i];
        const char *eq = strchr(o, '=');
        char sect[256], key[256];
        const char *dot = NULL;
        if (eq) {
            /* poll sections hold a dot themselves: poll.ID.key */
            dot = strchr(o, '.');
            if (dot && dot < eq && !strncmp(o, "poll.", 5))
                dot = memchr(dot + 1, '.', (size_t)(eq - dot - 1));
        }
        if (!eq || !dot || dot > eq || dot == o || dot + 1 == eq ||
            (size_t)(dot - o) >= sizeof sect || (size_t)(eq - dot - 1) >= sizeof key) {
            seterr(errstr, esz, "-s %s: expected section.key=value", o);
            goto fail;
        }
        snprintf(sect, sizeof sect, "%.*s", (int)(dot - o), o);
        snprintf(key, sizeof key, "%.*s", (int)(eq - dot - 1), dot + 1);
        char err[512];
        if (config_set(c, sect, key, eq + 1, err, sizeof err) != 0) {
            seterr(errstr, esz, "-s %s: %s", o, err);
            goto fail;
        }
    }
    char verr[512];
    if (config_validate(c, verr, sizeof verr) != 0) {
        seterr(errstr, esz, "%s: %s", path ? path : "config", verr);
        goto fail;
    }
    return c;
fail:
    config_free(c);
    return NULL;
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
        options_free(&c->polls[i]);
    }
    free(c->polls);
    free(c->poll_index);
    free(c);
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
    fprintf(out, "    (any other kafka.* key is passed to librdkafka unchanged)\n"
                 "  [poll.ID]               one section per poll; ID is 1-64 chars of [A-Za-z0-9_-]\n"
                 "    title                  shown on the results page (default: the id)\n"
                 "    options                comma-separated option ids, in display order\n"
                 "    label.OPTION           display text of an option (default: its id)\n"
                 "    mode                   one-per-voter (default) | changeable | unlimited\n");
}
