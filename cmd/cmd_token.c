/* tally token issue: signs a voter token the way an operator's login service
 * would (common/jwt.h), for demos, tests and operators without one. */
#include <getopt.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "common/ids.h"
#include "common/jwt.h"
#include "common/util.h"

#define TTL_MAX_S (366LL * 86400)

static const char token_help[] =
    "usage: tally token issue -c FILE --sub ID [--poll P] [--ttl 10m]\n"
    "                         [--alg HS256|ES256] [--key FILE] [-s S.K=V ...]\n"
    "\n"
    "Prints a signed voter token (JWT) on stdout: sub, iat, exp, and iss / aud\n"
    "when auth.jwt_issuer / auth.jwt_audience are set, so that tally accepts it.\n"
    "\n"
    "  -c, --config FILE   the configuration ([auth] keys)\n"
    "  -s, --set S.K=V     override one config key; repeatable\n"
    "      --sub ID        the voter (1-256 bytes, no control characters)\n"
    "      --poll P        restrict the token to poll P\n"
    "      --ttl T         lifetime: N[s|m|h|d] (default 10m, at most 366d)\n"
    "      --alg A         HS256 (default; the secret auth.jwt_hs256_key_file, or --key)\n"
    "                      or ES256 (--key: the PEM private key of the P-256 pair whose\n"
    "                      public half is auth.jwt_es256_public_key_file)\n"
    "      --key FILE      the signing key\n"
    "  -h, --help          this help\n"
    "\n"
    "Exit status: 0 ok, 1 signing failed, 2 usage or configuration error.\n";

/* "90", "90s", "10m", "2h", "1d" into seconds; -1 when not one. */
static long long parse_ttl(const char *s) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v <= 0 || v > TTL_MAX_S)
        return -1;
    long long mul = 1;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mul = 60, end++;
    else if (*end == 'h')
        mul = 3600, end++;
    else if (*end == 'd')
        mul = 86400, end++;
    if (*end || v > TTL_MAX_S / mul)
        return -1;
    return v * mul;
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "tally token issue: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see tally token issue --help)\n");
    return EXIT_USAGE;
}

static int token_issue(int argc, char **argv) {
    enum { O_SUB = 256, O_POLL, O_TTL, O_ALG, O_KEY };
    static const struct option longopts[] = {{"config", required_argument, 0, 'c'},
                                             {"set", required_argument, 0, 's'},
                                             {"help", no_argument, 0, 'h'},
                                             {"sub", required_argument, 0, O_SUB},
                                             {"poll", required_argument, 0, O_POLL},
                                             {"ttl", required_argument, 0, O_TTL},
                                             {"alg", required_argument, 0, O_ALG},
                                             {"key", required_argument, 0, O_KEY},
                                             {0, 0, 0, 0}};
    const char *config = NULL, *sub = NULL, *poll = NULL, *key = NULL, *alg = "HS256";
    const char **overrides = xcalloc((size_t)argc + 1, sizeof *overrides);
    int noverrides = 0, rc = EXIT_USAGE;
    long long ttl = 600;
    tally_config_t *c = NULL;
    uint8_t *keybytes = NULL;
    size_t keylen = 0;
    char *tok = NULL, *claims = NULL;
    json_t *j = NULL;
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":c:s:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 's': overrides[noverrides++] = optarg; break;
        case 'h':
            fputs(token_help, stdout);
            rc = 0;
            goto out;
        case O_SUB: sub = optarg; break;
        case O_POLL: poll = optarg; break;
        case O_TTL:
            if ((ttl = parse_ttl(optarg)) < 0) {
                rc = usage_error("--ttl '%s' is not N[s|m|h|d] within 366 days", optarg);
                goto out;
            }
            break;
        case O_ALG: alg = optarg; break;
        case O_KEY: key = optarg; break;
        case ':': rc = usage_error("option %s needs a value", argv[optind - 1]); goto out;
        default: rc = usage_error("unknown option '%s'", argv[optind - 1]); goto out;
        }
    }
    if (optind < argc) {
        rc = usage_error("unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (!config) {
        rc = usage_error("%s is required", "-c FILE");
        goto out;
    }
    if (!sub || !voter_valid(sub, strlen(sub))) {
        rc = usage_error("%s", sub ? "--sub must be 1-256 bytes without control characters"
                                   : "--sub ID is required");
        goto out;
    }
    if (poll && !id_valid(poll, strlen(poll))) {
        rc = usage_error("--poll '%s' is not a poll id (1-64 chars of [A-Za-z0-9_-])", poll);
        goto out;
    }
    int es = !strcmp(alg, "ES256");
    if (!es && strcmp(alg, "HS256")) {
        rc = usage_error("--alg '%s': HS256 or ES256", alg);
        goto out;
    }
    char err[1024];
    if (config_load(config, overrides, noverrides, &c, err, sizeof err) != TALLY_OK) {
        fprintf(stderr, "tally: config error: %s\n", err);
        goto out;
    }
    if (es && !key) {
        rc = usage_error("%s", "--alg ES256 needs --key FILE (the PEM private key)");
        goto out;
    }
    if (!key && !c->auth_jwt_hs256_key_file[0]) {
        rc = usage_error("%s", "auth.jwt_hs256_key_file is not set (or pass --key FILE)");
        goto out;
    }
    const char *path = key ? key : c->auth_jwt_hs256_key_file;
    if (jwt_read_key_file(key ? "--key" : "auth.jwt_hs256_key_file", path, 65536, &keybytes,
                          &keylen, err, sizeof err) != TALLY_OK) {
        fprintf(stderr, "tally token issue: %s\n", err);
        goto out;
    }
    if (!es && keylen < JWT_HS256_MIN_KEY) {
        fprintf(stderr, "tally token issue: %s: the HS256 key is %zu bytes, at least %d needed\n",
                path, keylen, JWT_HS256_MIN_KEY);
        goto out;
    }
    long long now = (long long)(now_ms() / 1000);
    j = json_object();
    json_object_set_new(j, "sub", json_string(sub));
    json_object_set_new(j, "iat", json_integer(now));
    json_object_set_new(j, "exp", json_integer(now + ttl));
    if (c->auth_jwt_issuer[0])
        json_object_set_new(j, "iss", json_string(c->auth_jwt_issuer));
    if (c->auth_jwt_audience[0])
        json_object_set_new(j, "aud", json_string(c->auth_jwt_audience));
    if (poll)
        json_object_set_new(j, "poll", json_string(poll));
    claims = json_dumps(j, JSON_COMPACT);
    tally_err_t serr =
        es ? jwt_sign_es256((const char *)keybytes, keylen, claims, &tok, err, sizeof err)
           : jwt_sign_hs256(keybytes, keylen, claims, &tok, err, sizeof err);
    if (serr != TALLY_OK) {
        fprintf(stderr, "tally token issue: %s: %s\n", path, err);
        rc = serr == TALLY_ERR_CONFIG ? EXIT_USAGE : 1;
        goto out;
    }
    printf("%s\n", tok);
    rc = 0;
out:
    if (keybytes)
        OPENSSL_cleanse(keybytes, keylen);
    free(keybytes);
    free(tok);
    free(claims);
    json_decref(j);
    config_free(c);
    free(overrides);
    return rc;
}

int cmd_token(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "issue"))
        return token_issue(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        fputs(token_help, stdout);
        return 0;
    }
    fprintf(stderr, "tally token: expected the subcommand 'issue'\n\n%s", token_help);
    return EXIT_USAGE;
}
