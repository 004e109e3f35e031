/* tally: exact vote counting for live polls. See README.md. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "common/util.h"

int cmd_log(int argc, char **argv);   /* cmd_log.c */
int cmd_token(int argc, char **argv); /* cmd_token.c */

static const char *usage =
    "usage: tally COMMAND -c FILE [-s section.key=value ...]\n"
    "\n"
    "Commands:\n"
    "  run      HTTP ingest + vote log + counter engine + publisher in one process\n"
    "  ingest   HTTP ingest only, appending to Kafka (kafka.brokers); run many\n"
    "  engine   counter engine + publisher only, consuming Kafka; run one\n"
    "  replay   rebuild every poll's totals from the whole vote log (tally run stopped)\n"
    "  log      verify | salvage: check a damaged embedded log, copy its intact frames\n"
    "\n"
    "Options (every command):\n"
    "  -c, --config FILE        INI configuration (see config/tally.ini)\n"
    "  -s, --set S.K=V          override one config key; repeatable\n"
    "  -q, --quiet              only warnings and errors on stderr\n"
    "  -h, --help               this help; `tally COMMAND --help` for a command's\n"
    "      --help-config        every configuration key with its default\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error.\n";

void cmd_parse(int argc, char **argv, const char *cmd, const char *help, int allow_until,
               cmd_opts_t *o) {
    static const struct option longopts[] = {
        {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},         {"quiet", no_argument, 0, 'q'},
        {"until", required_argument, 0, 'u'},  {"help-config", no_argument, 0, 'H'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->overrides = xcalloc((size_t)argc + 1, sizeof(char *));
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":c:s:hq", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': o->config_path = optarg; break;
        case 's': o->overrides[o->noverrides++] = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'h': fputs(help, stdout); exit(0);
        case 'H': config_print_help(stdout); exit(0);
        case 'u':
            if (!allow_until) {
                fprintf(stderr, "tally %s: --until is an option of replay\n", cmd);
                exit(EXIT_USAGE);
            }
            o->until = optarg;
            break;
        case ':':
            fprintf(stderr, "tally %s: option %s needs a value\n", cmd, argv[optind - 1]);
            exit(EXIT_USAGE);
        default:
            fprintf(stderr, "tally %s: unknown option '%s' (see tally %s --help)\n", cmd,
                    argv[optind - 1], cmd);
            exit(EXIT_USAGE);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tally %s: unexpected argument '%s'\n", cmd, argv[optind]);
        exit(EXIT_USAGE);
    }
    if (!o->config_path) {
        fprintf(stderr, "tally %s: -c FILE is required (see tally %s --help)\n", cmd, cmd);
        exit(EXIT_USAGE);
    }
    tally_log_quiet = o->quiet;
}

tally_config_t *cmd_load_config(const cmd_opts_t *o) {
    char err[1024];
    tally_config_t *c = NULL;
    tally_err_t rc = config_load(o->config_path, o->overrides, o->noverrides, &c, err, sizeof err);
    if (rc == TALLY_OK)
        rc = config_check_dirs(c, o->writes, err, sizeof err);
    if (rc == TALLY_OK)
        rc = config_check_s3(c, err, sizeof err);
    if (rc != TALLY_OK) {
        fprintf(stderr, "tally: %s%s\n", rc == TALLY_ERR_CONFIG ? "config error: " : "", err);
        config_free(c);
        exit(tally_err_exit(rc));
    }
    return c;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "--help-config")) {
        config_print_help(stdout);
        return 0;
    }
    if (!strcmp(cmd, "run"))
        return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "ingest"))
        return cmd_ingest(argc - 1, argv + 1);
    if (!strcmp(cmd, "engine"))
        return cmd_engine(argc - 1, argv + 1);
    if (!strcmp(cmd, "replay"))
        return cmd_replay(argc - 1, argv + 1);
    if (!strcmp(cmd, "log"))
        return cmd_log(argc - 1, argv + 1);
    if (!strcmp(cmd, "token"))
        return cmd_token(argc - 1, argv + 1);
    if (!strcmp(cmd, "poll"))
        return cmd_poll(argc - 1, argv + 1);
    fprintf(stderr, "tally: unknown command '%s'\n\n%s", cmd, usage);
    return EXIT_USAGE;
}
