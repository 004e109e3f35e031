#!/bin/bash
# bench/ingest_vs_nginx.sh: tally's durable vote ingest vs nginx `return 202`,
# per core. Both servers pinned to CPU 0, wrk on CPU 1; the figure is the
# server's CPU time per request (utime+stime of the whole process, all
# threads, from /proc/PID/stat) and requests/s. Runs alternate tally, nginx.
usage() {
    cat <<'U'
usage: bench/ingest_vs_nginx.sh [--tally BIN] [--conns "64 256 2000"] [--runs N]
                                [--secs S] [--set key=value]...
  --tally BIN   tally binary (default build/tally)
  --conns LIST  keep-alive connection counts (default "64 256 2000")
  --runs N      alternating tally/nginx runs per count (default 3)
  --secs S      seconds per wrk run (default 8)
  --set K=V     extra `tally run -s` override (repeatable), e.g. log.fsync=false
Prints one line per run: server conns req/s cpu_us_per_req loadavg.
Needs wrk, nginx (nginx-light), taskset.
U
}
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TALLY=$ROOT/build/tally CONNS="64 256 2000" RUNS=3 SECS=8 SETS=""
while [ $# -gt 0 ]; do
    case $1 in
    --tally) TALLY=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --set) SETS="$SETS -s $2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
TMP=$(mktemp -d)
SRV=""
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { awk '{ print $14 + $15 }' /proc/$1/stat; } # utime + stime, all threads
HZ=$(getconf CLK_TCK)

cat >"$TMP/tally.ini" <<'I'
[poll.p]
options = red, green, blue
mode = unlimited
I
# Distinct voters per request: one-per-voter would refuse repeats anyway.
cat >"$TMP/post.lua" <<'L'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/polls/p/votes",
    nil, '{"voter":"v' .. n .. '-' .. math.random(1e9) .. '","option":"green"}')
end
L

start_tally() {
    PORT=$(free_port)
    rm -rf "$TMP/t"; mkdir -p "$TMP/t"
    # shellcheck disable=SC2086
    taskset -c 0 "$TALLY" run -q -c "$TMP/tally.ini" -s server.listen=127.0.0.1:$PORT \
        -s server.threads=1 -s server.max_connections=10000 -s log.dir="$TMP/t/log" \
        -s engine.snapshot_dir="$TMP/t/snap" -s publisher.dir="$TMP/t/pub" $SETS \
        >"$TMP/t.log" 2>&1 &
    SRV=$!
}
start_nginx() {
    PORT=$(free_port)
    mkdir -p "$TMP/n"
    cat >"$TMP/n/nginx.conf" <<N
worker_processes 1;
daemon off;
pid $TMP/n/nginx.pid;
error_log $TMP/n/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  client_body_temp_path $TMP/n/body;
  server {
    listen 127.0.0.1:$PORT;
    location / { default_type application/json; return 202 '{"ok":true}'; }
  }
}
N
    taskset -c 0 nginx -p "$TMP/n" -c "$TMP/n/nginx.conf" >/dev/null 2>&1 &
    SRV=$!
}
measure() { # name conns
    wait_port "$PORT" || { echo "$1 did not start" >&2; cat "$TMP/t.log" >&2 || true; exit 1; }
    pid=$SRV
    [ "$1" = nginx ] && { sleep 0.3; pid=$(pgrep -P "$SRV" | head -1); }
    # warm up, then measure
    taskset -c 1 wrk -t1 -c"$2" -d1s -s "$TMP/post.lua" "http://127.0.0.1:$PORT/" >/dev/null 2>&1
    c0=$(cpu_ticks $SRV); [ "$pid" != "$SRV" ] && c0=$((c0 + $(cpu_ticks $pid)))
    out=$(taskset -c 1 wrk -t1 -c"$2" -d"${SECS}s" -s "$TMP/post.lua" "http://127.0.0.1:$PORT/")
    c1=$(cpu_ticks $SRV); [ "$pid" != "$SRV" ] && c1=$((c1 + $(cpu_ticks $pid)))
    reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
    non2xx=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
    la=$(cut -d' ' -f1-3 /proc/loadavg)
    awk -v n="$1" -v c="$2" -v r="$reqs" -v s="$SECS" -v d=$((c1 - c0)) -v hz="$HZ" \
        -v bad="${non2xx:-0}" -v la="$la" \
        'BEGIN { printf "%-6s %5d %9.0f req/s %6.2f us/req  non2xx=%s  load %s\n",
                 n, c, r / s, d / hz * 1e6 / r, bad, la }'
    kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=""
}
echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD) $TALLY$SETS"
for c in $CONNS; do
    for _ in $(seq "$RUNS"); do
        start_tally; measure tally "$c"
        start_nginx; measure nginx "$c"
    done
done
