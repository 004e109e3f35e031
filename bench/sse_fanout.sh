#!/bin/sh
# SSE fan-out and freshness (issue 11), one run, figures to stdout:
#   1. the closed-loop vote maximum of this tally (64 connections, 5 s);
#   2. N subscribers (default 10000) on one tally core receive each probe
#      vote's version while an open-loop vote load runs at half that maximum:
#      202 -> event at the last subscriber (p50/p99), and the load's p99;
#   3. freshness at half load: 202 -> visible in /polls/ID.json and ->
#      received over SSE (one subscriber), p99.
# tally runs on CPU 0 (server.threads = 1), the generators on CPU 1.
# Usage: bench/sse_fanout.sh [BUILD_DIR] [SUBSCRIBERS]
set -eu
BUILD=${1:-build}
SUBS=${2:-10000}
TALLY=$BUILD/tally
BENCH=$BUILD/tally-bench
DIR=$(mktemp -d /tmp/tally-sse.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DIR/tally.ini" <<INI
[server]
listen = 127.0.0.1:$PORT
threads = 1
max_connections = 30000
max_connections_per_ip = 0
sse_max_subscribers = 30000
[log]
dir = $DIR/log
[engine]
snapshot_dir = $DIR/snap
[publisher]
dir = $DIR/public
[poll.sse]
title = fan-out probe
options = p
mode = unlimited
[poll.load]
title = load
options = a, b, c, d
mode = unlimited
INI
ulimit -n "$(ulimit -Hn)"
taskset -c 0 "$TALLY" run -c "$DIR/tally.ini" -q 2>"$DIR/tally.err" &
TPID=$!
trap 'kill $TPID 2>/dev/null; wait $TPID 2>/dev/null; rm -rf "$DIR"' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.1; done
URL=http://127.0.0.1:$PORT

echo "== closed-loop maximum (64 connections, 5 s)"
taskset -c 1 "$BENCH" http -u "$URL" --config "$DIR/tally.ini" --poll load -c 64 -d 5 -q \
    --json "$DIR/max.json" >/dev/null
MAX=$(python3 -c "import json; print(int(json.load(open('$DIR/max.json'))['accepted_per_sec']))")
HALF=$((MAX / 2))
echo "max $MAX votes/s; half load $HALF votes/s"

echo "== fan-out: $SUBS subscribers, load at $HALF votes/s"
taskset -c 1 "$BENCH" http -u "$URL" --config "$DIR/tally.ini" --poll load -c 64 -r "$HALF" -d 40 -q \
    --json "$DIR/load1.json" >/dev/null &
LPID=$!
taskset -c 1 "$BENCH" sse --port "$PORT" --poll sse --subscribers "$SUBS" --probes 50 --gap-ms 200 \
    --json "$DIR/fan.json"
kill -INT $LPID 2>/dev/null || true
wait $LPID || true
python3 - "$DIR/load1.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
lat = j["latency_ms"]
print("load during fan-out: %.0f votes/s accepted (target %s), %d not answered; vote latency ms p50 %.3f p99 %.3f max %.3f"
      % (j["accepted_per_sec"], j.get("target_rate"), j["no_response"], lat["p50"], lat["p99"], lat["max"]))
PY

echo "== freshness at half load ($HALF votes/s): one subscriber"
taskset -c 1 "$BENCH" http -u "$URL" --config "$DIR/tally.ini" --poll load -c 64 -r "$HALF" -d 30 -q \
    --json "$DIR/load2.json" >/dev/null &
LPID=$!
taskset -c 1 "$BENCH" sse --port "$PORT" --poll sse --subscribers 1 --probes 200 --gap-ms 50 --json-probe
kill -INT $LPID 2>/dev/null || true
wait $LPID || true
python3 - "$DIR/load2.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
lat = j["latency_ms"]
print("load during freshness: %.0f votes/s accepted; vote latency ms p50 %.3f p99 %.3f" % (j["accepted_per_sec"], lat["p50"], lat["p99"]))
PY
