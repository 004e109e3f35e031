-- wrk script for bench/compare: POST a vote per request, each from a new
-- voter, over the polls of bench/compare's INI. Every 202 therefore adds
-- exactly one to one poll's total in any mode, which lets compare check the
-- published totals after a wrk run (wrk itself cannot verify).
--   wrk -t1 -c64 -d10s -s bench/wrk_vote.lua http://127.0.0.1:PORT -- RUNID
-- RUNID (any letters and digits) keeps voters of different runs apart.
-- Prints one JSON line (prefixed "wrk-json ") with the run's figures.

local polls = {
  {id = "demo", options = {"red", "green", "blue"}},
  {id = "mood", options = {"love", "like", "meh"}},
  {id = "applause", options = {"clap", "cheer"}},
}
local headers = {["Content-Type"] = "application/json"}
local run = string.format("w%08x", math.floor(os.time() % 4294967296))
local n = 0
local tid = 0

function setup(thread)
  thread:set("tid", tid)
  tid = tid + 1
end

function init(args)
  if args[1] then run = args[1] end
end

function request()
  n = n + 1
  local p = polls[n % #polls + 1]
  local opt = p.options[math.floor(n / #polls) % #p.options + 1]
  local body = string.format('{"option":"%s","voter":"%s-%d-%d"}', opt, run, tid, n)
  return wrk.format("POST", "/v1/polls/" .. p.id .. "/votes", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
