/* tally-bench: the load generator and benchmarks of tally.
 *   tally-bench http     HTTP load on a running tally (or anything that
 *                        answers POST /v1/polls/ID/votes), with --verify
 *   tally-bench engine   the counter engine in-process
 *   tally-bench replay   `tally replay` over a generated log
 * Shared helpers live in bench_util.c. */
#ifndef BENCH_BENCH_H
#define BENCH_BENCH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bench/hist.h"
#include "common/config.h"

#define BENCH_EXIT_FAIL 1   /* could not run, or the result was wrong */
#define BENCH_EXIT_USAGE 2  /* bad option */
#define BENCH_EXIT_VERIFY 3 /* --verify: the published totals did not match */

int bench_http_main(int argc, char **argv);
int bench_engine_main(int argc, char **argv);
int bench_replay_main(int argc, char **argv);
int bench_restart_main(int argc, char **argv);
int bench_sse_main(int argc, char **argv);

/* "2000", "10k", "1M", "2.5M", "1e6": a non-negative count. 0 or -1. */
/* getopt_long's error paths, the same for every subcommand: each prints
 * "tally-bench CMD: ..." and returns -1. */
int bench_opt_fail(const char *cmd, int ch, char **argv);  /* ':' or unknown */
int bench_opt_bad(const char *cmd, const char *why, const char *value);
int bench_opt_rest(const char *cmd, int argc, char **argv); /* 0: no extra argument */
int bench_parse_count(const char *s, uint64_t *out);
/* A count (as bench_parse_count) within lo..hi into *out. 0, or -1 with *out
 * untouched: the one range check behind the numeric options. */
int bench_parse_int(const char *s, int lo, int hi, int *out);
/* A finite double. 0 or -1. */
int bench_parse_double(const char *s, double *out);

/* The polls a bench works with: from tally's INI (config_load, so the file
 * `tally run` uses gives the same polls, options and modes), or, without a
 * file, one poll per id in polls_csv with options_csv and mode. NULL with
 * errstr on a bad file or flag. */
tally_config_t *bench_load_polls(const char *config_path, const char *polls_csv,
                                 const char *options_csv, const char *mode, char *errstr,
                                 size_t esz);
/* Parses a mode name. 0 or -1. */
int bench_parse_mode(const char *s, poll_mode_t *m);

/* Prints "p50 1.234  p90 ..." of a ns histogram in ms. */
void bench_print_latency(FILE *out, const char *label, const hist_t *h);
/* JSON reports are jansson trees. A number is written as an integer when it
 * is one (below 2^53), otherwise as a real; NaN and infinities as null. */
json_t *bench_json_num(double v);
/* Sets key of object o (new references; s any bytes, made valid UTF-8).
 * bench_json_set returns child, borrowed. */
void bench_json_set_num(json_t *o, const char *key, double v);
void bench_json_set_str(json_t *o, const char *key, const char *s);
json_t *bench_json_set(json_t *o, const char *key, json_t *child);
/* {"count":..,"p50":..,"p90":..,"p99":..,"p99_9":..,"max":..,"mean":..} in
 * ms; the caller owns the new object. */
json_t *bench_json_latency(const hist_t *h);
/* Writes the item to path ("-": stdout), pretty-printed; frees nothing. 0
 * or -1. */
int bench_json_write(const char *path, const json_t *item);

/* Resident set size of this process, bytes (0 if unknown). */
uint64_t bench_rss_bytes(void);
/* A random-ish 64-bit seed from the clock and pid. */
uint64_t bench_seed(void);

#endif
