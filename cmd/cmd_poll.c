/* tally poll create|open|close|list|show|patch: the admin API (ingest/admin.h)
 * from the command line, over HTTP with libcurl. The address and the token
 * come from the config (admin.listen, admin.token_file), or from --admin and
 * --token-file. Output: a readable table, or the server's JSON with --json.
 * Exit 0, 1 when the server refused (its message printed) or could not be
 * reached, 2 for a usage error naming the option. */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/cmd.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/util.h"
#include "ingest/admin.h"

#define POLL_REQUEST_TIMEOUT_S 60 /* a change waits for every partition */

static const char *help_poll =
    "usage: tally poll COMMAND [ID] [options]\n"
    "\n"
    "Speaks to the admin API of a running tally run / tally engine.\n"
    "\n"
    "Commands:\n"
    "  create            define a poll (--id, --option ... or --file)\n"
    "  list              every poll with its state\n"
    "  show ID           a poll's definition, state and current totals\n"
    "  open ID           open a scheduled poll now\n"
    "  close ID          close the poll at now + admin.close_delay_ms\n"
    "  patch ID          change title, labels, schedule; append options\n"
    "\n"
    "Options (every command):\n"
    "  -c, --config FILE     take admin.listen and admin.token_file from FILE\n"
    "  -s, --set S.K=V       override a key of FILE\n"
    "      --admin URL       the admin API (e.g. http://127.0.0.1:8081)\n"
    "      --token-file F    the file holding the bearer token\n"
    "      --json            print the server's JSON instead of a table\n"
    "  -h, --help            this help; `tally poll COMMAND --help` for one\n"
    "\n"
    "Exit status: 0 ok, 1 the server refused or was not reached, 2 usage error.\n";

static const char *help_create =
    "usage: tally poll create --id ID --option ID[=LABEL] ... [options]\n"
    "       tally poll create --file poll.json [options]\n"
    "\n"
    "  --id ID              1-64 characters of [A-Za-z0-9_-]\n"
    "  --title TEXT         shown on the results page (default: the id)\n"
    "  --option ID[=LABEL]  an option, in display order; repeat for each\n"
    "  --mode MODE          one-per-voter (default) | changeable | unlimited | capped\n"
    "  --max-votes N        capped mode: the votes of a voter that count\n"
    "  --visibility V       live (default) | on_close (no counts until final)\n"
    "  --opens-at T         RFC 3339 (2026-05-16T21:00:00Z) or +N[s|m|h] from now\n"
    "  --closes-at T        likewise\n"
    "  --file F             the poll as JSON (the API's body); the options above\n"
    "                       override its fields\n"
    "Plus -c, -s, --admin, --token-file, --json (tally poll --help).\n";

static const char *help_patch =
    "usage: tally poll patch ID [options]\n"
    "\n"
    "  --title TEXT         a new title\n"
    "  --label ID=LABEL     relabel an option; repeatable\n"
    "  --option ID[=LABEL]  append an option; repeatable\n"
    "  --opens-at T         RFC 3339, +N[s|m|h], or none (until the poll is open)\n"
    "  --closes-at T        later freely; earlier only to >= now + admin.close_delay_ms\n"
    "  --visibility V       live | on_close\n"
    "  --file F             the patch as JSON (the API's body)\n"
    "Mode, max_votes and existing options never change (409).\n"
    "Plus -c, -s, --admin, --token-file, --json (tally poll --help).\n";

static const char *help_id_only =
    "usage: tally poll %s ID [-c FILE | --admin URL --token-file F] [--json]\n"
    "\n"
    "%s\n";

typedef struct {
    const char *config_path;
    const char **overrides;
    int noverrides;
    const char *admin_url, *token_file, *file;
    int json;
    const char *id;
    json_t *fields;  /* create/patch: the body's fields from options */
    json_t *options; /* --option */
    json_t *labels;  /* --label */
} poll_opts_t;

static _Noreturn void usage_error(const char *sub, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static _Noreturn void usage_error(const char *sub, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tally poll%s%s: ", sub ? " " : "", sub ? sub : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see tally poll %s%s--help)\n", sub ? sub : "", sub ? " " : "");
    va_end(ap);
    exit(EXIT_USAGE);
}

/* RFC 3339, or +N with s, m or h: from now. "none" (patch): unset. */
static json_t *time_arg(const char *sub, const char *opt, const char *v) {
    uint64_t ms;
    if (!strcmp(v, "none") || !strcmp(v, "null"))
        return json_null();
    if (v[0] == '+') {
        char *end;
        long n = strtol(v + 1, &end, 10);
        long mult = *end == 's' ? 1000 : *end == 'm' ? 60000 : *end == 'h' ? 3600000 : 0;
        if (end == v + 1 || n < 0 || n > 10L * 366 * 24 * 3600 || !mult || end[1])
            usage_error(sub, "%s: '%s' is not +N followed by s, m or h", opt, v);
        ms = now_ms() + (uint64_t)n * (uint64_t)mult;
    } else if (parse_rfc3339(v, &ms) != 0) {
        usage_error(sub, "%s: '%s' is not an RFC 3339 time (2026-05-16T21:00:00Z) or +N[s|m|h]",
                    opt, v);
    }
    char buf[40];
    fmt_rfc3339(ms, buf, sizeof buf);
    return json_string(buf);
}

/* id[=label] */
static json_t *option_arg(const char *sub, const char *opt, const char *v, int need_label) {
    const char *eq = strchr(v, '=');
    size_t n = eq ? (size_t)(eq - v) : strlen(v);
    if (!id_valid(v, n))
        usage_error(sub, "%s: '%s': the option id must be 1-%d characters of [A-Za-z0-9_-]", opt, v,
                    ID_MAX_LEN);
    if (need_label && !eq)
        usage_error(sub, "%s: '%s' is not ID=LABEL", opt, v);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_stringn(v, n));
    if (eq)
        json_object_set_new(o, "label", json_string(eq + 1));
    return o;
}

static void set_field(poll_opts_t *o, const char *key, json_t *v) {
    json_object_set_new(o->fields, key, v);
}

static void parse_args(int argc, char **argv, const char *sub, poll_opts_t *o) {
    enum {
        O_ADMIN = 256,
        O_TOKEN,
        O_JSON,
        O_FILE,
        O_ID,
        O_TITLE,
        O_OPTION,
        O_LABEL,
        O_MODE,
        O_MAXV,
        O_VIS,
        O_OPENS,
        O_CLOSES
    };
    static const struct option longopts[] = {{"config", required_argument, 0, 'c'},
                                             {"set", required_argument, 0, 's'},
                                             {"help", no_argument, 0, 'h'},
                                             {"admin", required_argument, 0, O_ADMIN},
                                             {"token-file", required_argument, 0, O_TOKEN},
                                             {"json", no_argument, 0, O_JSON},
                                             {"file", required_argument, 0, O_FILE},
                                             {"id", required_argument, 0, O_ID},
                                             {"title", required_argument, 0, O_TITLE},
                                             {"option", required_argument, 0, O_OPTION},
                                             {"label", required_argument, 0, O_LABEL},
                                             {"mode", required_argument, 0, O_MODE},
                                             {"max-votes", required_argument, 0, O_MAXV},
                                             {"visibility", required_argument, 0, O_VIS},
                                             {"opens-at", required_argument, 0, O_OPENS},
                                             {"closes-at", required_argument, 0, O_CLOSES},
                                             {0, 0, 0, 0}};
    int create = !strcmp(sub, "create"), patch = !strcmp(sub, "patch");
    o->overrides = xcalloc((size_t)argc + 1, sizeof(char *));
    o->fields = json_object();
    o->options = json_array();
    o->labels = json_object();
    int ch;
    opterr = 0;
    optind = 1;
    int idx = -1;
    char optname[48];
    while ((idx = -1, ch = getopt_long(argc, argv, ":c:s:h", longopts, &idx)) != -1) {
        /* The option's name, whether its value was attached or not. */
        if (idx >= 0)
            snprintf(optname, sizeof optname, "--%s", longopts[idx].name);
        else if (ch != '?' && ch != ':')
            snprintf(optname, sizeof optname, "-%c", ch);
        else
            snprintf(optname, sizeof optname, "%.40s", argv[optind - 1]);
        const char *opt = optname;
        int editing = create || patch;
        if (ch >= O_FILE && !editing)
            usage_error(sub, "%s is an option of create and patch", opt);
        switch (ch) {
        case 'c': o->config_path = optarg; break;
        case 's': o->overrides[o->noverrides++] = optarg; break;
        case 'h':
            if (create)
                fputs(help_create, stdout);
            else if (patch)
                fputs(help_patch, stdout);
            else if (!strcmp(sub, "list"))
                printf("usage: tally poll list [-c FILE | --admin URL --token-file F] [--json]\n\n"
                       "Every poll with its state.\n");
            else
                printf(help_id_only, sub,
                       !strcmp(sub, "show")   ? "A poll's definition, state and current totals "
                                                "(also while the results are embargoed)."
                       : !strcmp(sub, "open") ? "Opens a scheduled poll now."
                                              : "Closes the poll at now + admin.close_delay_ms: "
                                                "votes stamped before that count, later ones "
                                                "get 409 poll_closed.");
            exit(0);
        case O_ADMIN: o->admin_url = optarg; break;
        case O_TOKEN: o->token_file = optarg; break;
        case O_JSON: o->json = 1; break;
        case O_FILE: o->file = optarg; break;
        case O_ID:
            if (!create)
                usage_error(sub, "--id is an option of create (give the id as the argument)");
            if (!id_valid(optarg, strlen(optarg)))
                usage_error(sub, "--id: '%s' must be 1-%d characters of [A-Za-z0-9_-]", optarg,
                            ID_MAX_LEN);
            o->id = optarg;
            set_field(o, "id", json_string(optarg));
            break;
        case O_TITLE: set_field(o, "title", json_string(optarg)); break;
        case O_OPTION: json_array_append_new(o->options, option_arg(sub, opt, optarg, 0)); break;
        case O_LABEL: {
            if (!patch)
                usage_error(sub, "--label is an option of patch (create: --option ID=LABEL)");
            json_t *l = option_arg(sub, opt, optarg, 1);
            json_object_set(o->labels, json_string_value(json_object_get(l, "id")),
                            json_object_get(l, "label"));
            json_decref(l);
            break;
        }
        case O_MODE: {
            poll_mode_t m;
            if (poll_mode_parse(optarg, &m) != TALLY_OK)
                usage_error(sub,
                            "--mode: '%s' is not one-per-voter, changeable, unlimited or "
                            "capped",
                            optarg);
            if (!create)
                usage_error(sub, "--mode: a poll's mode never changes");
            set_field(o, "mode", json_string(optarg));
            break;
        }
        case O_MAXV: {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (end == optarg || *end || n < 1 || n > 65535)
                usage_error(sub, "--max-votes: '%s' is not a number in 1-65535", optarg);
            if (!create)
                usage_error(sub, "--max-votes: a poll's cap never changes");
            set_field(o, "max_votes", json_integer(n));
            break;
        }
        case O_VIS:
            if (strcmp(optarg, "live") && strcmp(optarg, "on_close"))
                usage_error(sub, "--visibility: '%s' is not live or on_close", optarg);
            set_field(o, "visibility", json_string(optarg));
            break;
        case O_OPENS: set_field(o, "opens_at", time_arg(sub, opt, optarg)); break;
        case O_CLOSES: set_field(o, "closes_at", time_arg(sub, opt, optarg)); break;
        case ':': usage_error(sub, "option %s needs a value", opt);
        default: usage_error(sub, "unknown option '%s'", opt);
        }
    }
    int takes_id = strcmp(sub, "create") && strcmp(sub, "list");
    if (takes_id) {
        if (optind >= argc)
            usage_error(sub, "the poll id is missing");
        o->id = argv[optind++];
        if (!id_valid(o->id, strlen(o->id)))
            usage_error(sub, "'%s' is not a poll id (1-%d characters of [A-Za-z0-9_-])", o->id,
                        ID_MAX_LEN);
    }
    if (optind < argc)
        usage_error(sub, "unexpected argument '%s'", argv[optind]);
    if (create && !o->file && (!o->id || json_array_size(o->options) == 0))
        usage_error(sub, "%s is required (or --file)", !o->id ? "--id" : "--option");
    if (!o->config_path && (!o->admin_url || !o->token_file))
        usage_error(sub, "-c FILE is required unless both --admin and --token-file are given");
}

/* ---- the request ---- */

static size_t on_body(char *p, size_t size, size_t n, void *arg) {
    buf_append(arg, p, size * n);
    return size * n;
}

/* The URL of admin.listen: a wildcard address is reached on loopback. */
static char *admin_url(const tally_config_t *c) {
    char host[CONFIG_LISTEN_HOST_MAX], err[512];
    int port;
    if (config_parse_listen(c->admin_listen, host, sizeof host, &port, err, sizeof err) !=
        TALLY_OK) {
        fprintf(stderr, "tally poll: admin.listen: %s\n", err);
        exit(EXIT_USAGE);
    }
    buf_t b = {0};
    int v6 = strchr(host, ':') != NULL;
    if (!strcmp(host, "0.0.0.0"))
        snprintf(host, sizeof host, "127.0.0.1");
    else if (!strcmp(host, "::"))
        snprintf(host, sizeof host, "::1");
    buf_printf(&b, "http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    return b.data;
}

/* Sends method path [body]; returns the status (0: not reached, err set). */
static long request(const char *base, const char *token, const char *method, const char *path,
                    const char *body, buf_t *out, char *err) {
    CURL *h = curl_easy_init();
    tally_assert(h);
    buf_t url = {0}, auth = {0};
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    buf_printf(&url, "%.*s%s", (int)bl, base, path);
    buf_printf(&auth, "Authorization: Bearer %s", token);
    struct curl_slist *hdrs = curl_slist_append(NULL, auth.data);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, url.data);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)POLL_REQUEST_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    err[0] = '\0';
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    long status = 0;
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    else if (!err[0])
        snprintf(err, CURL_ERROR_SIZE, "%s", curl_easy_strerror(rc));
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    memset(auth.data, 0, auth.len); /* the token */
    buf_free(&auth);
    buf_free(&url);
    return status;
}

/* ---- output ---- */

static const char *str_or(json_t *j, const char *key, const char *dflt) {
    json_t *v = json_object_get(j, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

static void print_poll(json_t *p) {
    printf("id:          %s\n", str_or(p, "id", "?"));
    printf("title:       %s\n", str_or(p, "title", ""));
    printf("state:       %s\n", str_or(p, "state", "?"));
    json_t *mv = json_object_get(p, "max_votes");
    printf("mode:        %s", str_or(p, "mode", "?"));
    if (json_is_integer(mv) && json_integer_value(mv) > 0)
        printf(" (max %lld votes)", (long long)json_integer_value(mv));
    printf("\nvisibility:  %s\n", str_or(p, "visibility", "live"));
    printf("opens at:    %s\n", str_or(p, "opens_at", "-"));
    printf("closes at:   %s\n", str_or(p, "closes_at", "-"));
    json_t *total = json_object_get(p, "total");
    if (json_is_integer(total))
        printf("total:       %lld (late %lld, early %lld)\n", (long long)json_integer_value(total),
               (long long)json_integer_value(json_object_get(p, "late")),
               (long long)json_integer_value(json_object_get(p, "early")));
    printf("%-24s %10s  %s\n", "OPTION", "VOTES", "LABEL");
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(p, "options"), i, o) {
        json_t *v = json_object_get(o, "votes");
        char votes[32] = "-";
        if (json_is_integer(v))
            snprintf(votes, sizeof votes, "%lld", (long long)json_integer_value(v));
        printf("%-24s %10s  %s\n", str_or(o, "id", "?"), votes, str_or(o, "label", ""));
    }
}

static void print_list(json_t *j) {
    printf("%-24s %-9s %-13s %4s  %-24s %-24s %s\n", "ID", "STATE", "MODE", "OPTS", "OPENS_AT",
           "CLOSES_AT", "TITLE");
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(j, "polls"), i, p) {
        printf("%-24s %-9s %-13s %4zu  %-24s %-24s %s\n", str_or(p, "id", "?"),
               str_or(p, "state", "?"), str_or(p, "mode", "?"),
               json_array_size(json_object_get(p, "options")), str_or(p, "opens_at", "-"),
               str_or(p, "closes_at", "-"), str_or(p, "title", ""));
    }
}

/* ---- the command ---- */

static char *build_body(const char *sub, poll_opts_t *o) {
    json_t *body = NULL;
    if (o->file) {
        json_error_t je;
        body = json_load_file(o->file, JSON_REJECT_DUPLICATES, &je);
        if (!body || !json_is_object(body))
            usage_error(sub, "--file %s: %s", o->file, body ? "not a JSON object" : je.text);
    } else {
        body = json_object();
    }
    json_object_update(body, o->fields);
    if (json_array_size(o->options)) {
        if (!strcmp(sub, "patch")) {
            /* appended to the poll's options: the caller fetched them */
            json_t *cur = json_object_get(body, "options");
            json_array_extend(cur, o->options);
        } else {
            json_object_set(body, "options", o->options);
        }
    }
    if (json_object_size(o->labels))
        json_object_set(body, "labels", o->labels);
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return s;
}

int cmd_poll(int argc, char **argv) {
    static const char *const subs[] = {"create", "open", "close", "list", "show", "patch", NULL};
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(help_poll, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *sub = argv[1];
    int known = 0;
    for (const char *const *s = subs; *s; s++)
        known |= !strcmp(*s, sub);
    if (!known) {
        fprintf(stderr,
                "tally poll: unknown command '%s' (create, open, close, list, show, "
                "patch)\n",
                sub);
        return EXIT_USAGE;
    }
    poll_opts_t o = {0};
    parse_args(argc - 1, argv + 1, sub, &o);

    char err[CURL_ERROR_SIZE > 1024 ? CURL_ERROR_SIZE : 1024];
    char *url = NULL, *token = NULL;
    tally_config_t *c = NULL;
    if (o.config_path) {
        if (config_load(o.config_path, o.overrides, o.noverrides, &c, err, sizeof err) !=
            TALLY_OK) {
            fprintf(stderr, "tally poll: config error: %s\n", err);
            return EXIT_USAGE;
        }
    } else {
        c = config_new_defaults();
    }
    url = o.admin_url ? xstrdup(o.admin_url) : admin_url(c);
    if (o.token_file) {
        free(c->admin_token_file);
        c->admin_token_file = xstrdup(o.token_file);
    }
    if (!c->admin_token_file || !c->admin_token_file[0]) {
        fprintf(stderr, "tally poll: admin.token_file is not set in %s: give --token-file\n",
                o.config_path);
        return EXIT_USAGE;
    }
    if (admin_read_token(c, &token, err, sizeof err) != TALLY_OK) {
        fprintf(stderr, "tally poll: %s\n", err);
        return EXIT_USAGE;
    }

    curl_global_init(CURL_GLOBAL_DEFAULT);
    buf_t path = {0}, resp = {0};
    const char *method = "GET";
    char *body = NULL;
    int rc = 0;
    if (!strcmp(sub, "create")) {
        method = "POST";
        buf_puts(&path, "/v1/admin/polls");
        body = build_body(sub, &o);
    } else if (!strcmp(sub, "list")) {
        buf_puts(&path, "/v1/admin/polls");
    } else {
        buf_printf(&path, "/v1/admin/polls/%s", o.id);
        if (!strcmp(sub, "open") || !strcmp(sub, "close")) {
            method = "POST";
            buf_printf(&path, "/%s", sub);
        } else if (!strcmp(sub, "patch")) {
            method = "PATCH";
            if (json_array_size(o.options)) {
                /* Appending needs the options the poll has: PATCH sends the
                 * whole list. */
                long st = request(url, token, "GET", path.data, NULL, &resp, err);
                json_t *cur = st == 200 ? json_loadb(resp.data, resp.len, 0, NULL) : NULL;
                if (!cur) {
                    fprintf(stderr, "tally poll patch: cannot read poll %s: %s\n", o.id,
                            st ? "the server refused" : err);
                    rc = 1;
                    goto out;
                }
                json_t *have = json_array();
                size_t i;
                json_t *opt;
                json_array_foreach(json_object_get(cur, "options"), i, opt) json_array_append_new(
                    have, json_pack("{sOsO}", "id", json_object_get(opt, "id"), "label",
                                    json_object_get(opt, "label")));
                json_object_set_new(o.fields, "options", have);
                json_decref(cur);
                resp.len = 0;
            }
            body = build_body(sub, &o);
        }
    }
    long status = request(url, token, method, path.data, body, &resp, err);
    if (status == 0) {
        fprintf(stderr, "tally poll %s: cannot reach the admin API at %s: %s\n", sub, url, err);
        rc = 1;
        goto out;
    }
    json_t *j = resp.len ? json_loadb(resp.data, resp.len, 0, NULL) : NULL;
    if (status >= 400) {
        fprintf(stderr, "tally poll %s: %ld %s: %s\n", sub, status,
                j ? str_or(j, "error", "error") : "error",
                j ? str_or(j, "message", "") : "(no JSON body)");
        rc = 1;
    } else if (o.json) {
        fwrite(resp.data, 1, resp.len, stdout);
        fputc('\n', stdout);
    } else if (!j) {
        fprintf(stderr, "tally poll %s: the server's answer is not JSON\n", sub);
        rc = 1;
    } else if (!strcmp(sub, "list")) {
        print_list(j);
    } else {
        print_poll(j);
    }
    if (j)
        json_decref(j);
out:
    free(body);
    buf_free(&path);
    buf_free(&resp);
    free(url);
    if (token) {
        memset(token, 0, strlen(token));
        free(token);
    }
    json_decref(o.fields);
    json_decref(o.options);
    json_decref(o.labels);
    free(o.overrides);
    config_free(c);
    curl_global_cleanup();
    return rc;
}
