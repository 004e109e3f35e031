#!/bin/bash
# bench/per_request_counts.sh tally|nginx BIN CONNS SECS [tally -s KEY=VAL ...]
# The server pinned to CPU 0, wrk on CPU 1; prints, per request, the
# server's CPU time (perf task-clock), context switches and syscalls by
# tracepoint, TCP segments (/proc/net/snmp: both ends, as all of it is on
# loopback; 2.00 = no pure ACKs) and each thread's user and system CPU. Counts
# stay readable on a shared machine where CPU-us do not.
# Needs perf (linux-perf), wrk, nginx-light, taskset. BIN unused for nginx.
[ $# -ge 4 ] || { sed -n 2,8p "$0" >&2; exit 2; }
KIND=$1 BIN=$2 C=$3 SECS=$4; shift 4
T=$(mktemp -d)
cat >$T/tally.ini <<'I'
[poll.p]
options = red, green, blue
mode = unlimited
I
cat >$T/post.lua <<'L'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/polls/p/votes",
    nil, '{"voter":"v' .. n .. '-' .. math.random(1e9) .. '","option":"green"}')
end
L
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
if [ $KIND = tally ]; then
taskset -c 0 $BIN run -q -c $T/tally.ini -s server.listen=127.0.0.1:$PORT -s server.threads=1 -s server.max_connections=10000 -s log.dir=$T/log -s engine.snapshot_dir=$T/snap -s publisher.dir=$T/pub "$@" > $T/t.log 2>&1 &
SRV=$!; PID=$SRV
else
mkdir -p $T/n
cat >$T/n/nginx.conf <<N
worker_processes 1;
daemon off;
pid $T/n/nginx.pid;
error_log $T/n/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  client_body_temp_path $T/n/body;
  server {
    listen 127.0.0.1:$PORT;
    location / { default_type application/json; return 202 '{"status":"accepted","poll":"demo","option":"xxxxx"}'; }
  }
}
N
taskset -c 0 nginx -p $T/n -c $T/n/nginx.conf >/dev/null 2>&1 &
SRV=$!; sleep 0.3; PID=$(pgrep -P $SRV | head -1); [ -z "$PID" ] && PID=$SRV
fi
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c$C -d1s -s $T/post.lua http://127.0.0.1:$PORT/ >/dev/null
EV=task-clock,context-switches
for s in sendto recvfrom read write writev epoll_wait epoll_ctl futex fdatasync pwrite64 clock_nanosleep newstat pread64 ioctl; do EV=$EV,syscalls:sys_enter_$s; done
threads() { for t in /proc/$PID/task/*; do echo "${t##*/} $(tr ' ' _ <$t/comm) $(awk '{print $14, $15}' $t/stat)"; done; }
threads | sort >$T/th0
segs() { awk '/^Tcp:/ && ++n == 2 { print $12 }' /proc/net/snmp; }
SEG0=$(segs)
perf stat -x, -e $EV -p $PID -o $T/stat -- sleep $SECS & PP=$!
out=$(taskset -c 1 wrk -t1 -c$C -d${SECS}s -s $T/post.lua http://127.0.0.1:$PORT/)
wait $PP
threads | sort >$T/th1
SEG1=$(segs)
reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
echo "$KIND conns $C: $(awk -v r=$reqs -v s=$SECS 'BEGIN{printf "%.0f req/s", r/s}')"
grep -v '^#' $T/stat | awk -F, -v r=$reqs 'NF>2 && $1+0>0 {n=$3; sub("syscalls:sys_enter_","",n); if (n=="task-clock") printf "  %s %.2f us/req\n", n, $1*1000/r; else printf "  %s %.3f/req\n", n, $1/r}'
HZ=$(getconf CLK_TCK)
awk -v a=$SEG0 -v b=$SEG1 -v r=$reqs 'BEGIN { printf "  tcp segments %.2f/req\n", (b - a) / r }'
join $T/th0 $T/th1 | awk -v r=$reqs -v hz=$HZ '{u=($6-$3)/hz/r*1e6; s=($7-$4)/hz/r*1e6; if (u+s>=0.01) printf "  thread %s (%s) user %.2f sys %.2f us/req\n", $2, $1, u, s}'
kill $SRV; wait $SRV 2>/dev/null
rm -rf $T
