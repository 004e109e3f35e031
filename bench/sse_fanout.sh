#!/bin/sh
# SSE fan-out and freshness (issue 11): a shorthand for the canonical run,
# `bench/compare --only sse` (exp_sse there; bench/README.md), which keeps
# its results.json and REPORT.md in a directory of its own so that
# bench/results/ keeps the full set. Prints the SSE rows of the report.
# Usage: bench/sse_fanout.sh [BUILD_DIR] [SUBSCRIBERS]
# LOAD_RATE=N: the votes/s next to the probes (default half of the measured
# maximum; 0: no load). OUT=DIR: where the results go (default a new temp dir).
set -eu
OUT=${OUT:-$(mktemp -d /tmp/tally-sse.XXXXXX)}
"$(dirname "$0")/compare" --only sse --build "${1:-build}" --sse-subscribers "${2:-10000}" \
    ${LOAD_RATE:+--sse-rate "$LOAD_RATE"} --out "$OUT"
grep -e '^| SSE fan-out' -e '^| vote p99 during SSE' -e '^| freshness p99 over SSE' "$OUT/REPORT.md"
awk '/^\*\*7\./ { on = 1 } on { print; if (/^$/ && ++blank == 2) exit }' "$OUT/REPORT.md"
echo "results: $OUT"
