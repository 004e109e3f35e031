/* tally-bench: load generator and benchmarks of tally. See bench/README.md. */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"
#include "common/util.h"

static const char *usage =
    "usage: tally-bench COMMAND [options]   (tally-bench COMMAND --help for its options)\n"
    "\n"
    "Commands:\n"
    "  http     HTTP load on a running tally: throughput, latency percentiles, status\n"
    "           codes; --verify DIR checks the published totals, --fresh-poll ID\n"
    "           measures how soon an accepted vote shows in them\n"
    "  engine   the counter engine in-process: votes/s per thread, state per voter\n"
    "  replay   `tally replay` over a generated log: records/s\n"
    "  restart  `tally run` on a state of N voters: time until it serves the totals\n"
    "  sse      event-stream fan-out on a running tally: 202 -> event at the last of N\n"
    "           subscribers, and -> visible in the JSON\n"
    "\n"
    "bench/compare runs them side by side with nginx and redis and writes\n"
    "bench/results/REPORT.md.\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return BENCH_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return 0;
    }
    tally_log_quiet = 1; /* the core's info lines are not bench output */
    if (!strcmp(cmd, "http"))
        return bench_http_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "engine"))
        return bench_engine_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "replay"))
        return bench_replay_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "restart"))
        return bench_restart_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "sse"))
        return bench_sse_main(argc - 1, argv + 1);
    fprintf(stderr, "tally-bench: unknown command '%s'\n\n%s", cmd, usage);
    return BENCH_EXIT_USAGE;
}
