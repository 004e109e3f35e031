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
# LOAD_RATE=N overrides the half-of-maximum load (0: no load at all).
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
HALF=${LOAD_RATE:-$((MAX / 2))}
echo "max $MAX votes/s; load for the runs below $HALF votes/s"

# The server's own view of the vote latency (append -> answer), from the
# histogram in /metrics: the generators share CPU 1 with the fan-out client,
# so their latencies include their own scheduling delays.
ackq() { # $1 before, $2 after: p50/p99 of the votes between the two scrapes
python3 - "$1" "$2" <<'PY'
import re, sys
def buckets(path):
    out = {}
    for m in re.finditer(r'^tally_ingest_ack_latency_seconds_bucket\{le="([^"]+)"\} (\d+)$', open(path).read(), re.M):
        out[float(m.group(1))] = int(m.group(2))
    return out
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
les = sorted(b)
d = [(le, b[le] - a.get(le, 0)) for le in les]
n = d[-1][1]
def q(p):
    for le, c in d:
        if c >= p * n:
            return le
print("server-side ack latency of %d votes: p50 <= %g ms, p99 <= %g ms (histogram bounds)" % (n, q(0.5) * 1e3, q(0.99) * 1e3))
PY
}

echo "== fan-out: $SUBS subscribers, load at $HALF votes/s"
curl -s "$URL/metrics" > "$DIR/m0"
LPID=
if [ "$HALF" -gt 0 ]; then
taskset -c 1 "$BENCH" http -u "$URL" --config "$DIR/tally.ini" --poll load -c 64 -r "$HALF" -d 40 -q \
    --json "$DIR/load1.json" >/dev/null &
LPID=$!
fi
taskset -c 1 "$BENCH" sse --port "$PORT" --poll sse --subscribers "$SUBS" --probes 50 --gap-ms 200 \
    --json "$DIR/fan.json"
curl -s "$URL/metrics" > "$DIR/m1"
ackq "$DIR/m0" "$DIR/m1"
[ -z "$LPID" ] && exit 0
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
curl -s "$URL/metrics" > "$DIR/m2"
taskset -c 1 "$BENCH" sse --port "$PORT" --poll sse --subscribers 1 --probes 200 --gap-ms 50 --json-probe
curl -s "$URL/metrics" > "$DIR/m3"
ackq "$DIR/m2" "$DIR/m3"
kill -INT $LPID 2>/dev/null || true
wait $LPID || true
python3 - "$DIR/load2.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
lat = j["latency_ms"]
print("load during freshness: %.0f votes/s accepted; vote latency ms p50 %.3f p99 %.3f" % (j["accepted_per_sec"], lat["p50"], lat["p99"]))
PY
