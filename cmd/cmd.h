/* The tally command line: `tally CMD -c FILE [-s section.key=value ...]`. */
#ifndef TALLY_CMD_H
#define TALLY_CMD_H

#include "common/config.h"
#include "common/err.h"

/* Every exit status comes from common/err.h (tally_err_exit() maps an
 * error to one); usage errors exit with this one. */
#define EXIT_USAGE TALLY_EXIT_USAGE

typedef struct {
    const char *config_path;
    const char **overrides;
    int noverrides;
    const char *until;   /* replay --until */
    int quiet;
    unsigned writes; /* CONFIG_DIR_* the command writes: created and checked
                      * writable by cmd_load_config (cmd_parse sets 0) */
} cmd_opts_t;

/* Parses the options every command shares; prints help and exits 0 on
 * --help, prints the error and exits 2 on a bad option. */
void cmd_parse(int argc, char **argv, const char *cmd, const char *help, int allow_until,
               cmd_opts_t *o);
/* Loads the config and checks its directories (config_check_dirs with
 * o->writes), or prints the error and exits with tally_err_exit(): 2 for a
 * bad key, line or path, 1 when the system refuses a directory. */
tally_config_t *cmd_load_config(const cmd_opts_t *o);

struct engine_s;
struct vlog_s;
/* Nonzero (errstr set) when a position the engine loaded from its snapshots
 * lies past the log's end: the log lost votes the snapshots counted. */
int cmd_check_snapshot_positions(struct engine_s *e, struct vlog_s *log, char *errstr,
                                 size_t esz);

int cmd_run(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_engine(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_poll(int argc, char **argv); /* cmd_poll.c: the admin API's client */

#endif
