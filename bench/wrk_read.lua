-- wrk script for bench/compare's read storm: GET one results file with
-- If-None-Match set to the server's current ETag, as a CDN revalidating (or
-- a page polling) does, and count the answers by status. An answer's ETag
-- is sent with the connection's next request, so after a change (a 200)
-- the client is back to 304s.
--   wrk -t1 -c64 -d10s -s bench/wrk_read.lua http://127.0.0.1:PORT -- PATH ETAG [DELAY_MS]
-- DELAY_MS: each connection waits that long before its next request, so
-- the read rate is about connections * 1000 / DELAY_MS (an open-ish loop).
-- Prints one JSON line (prefixed "wrk-json ") with the run's figures.

local path, etag, wait_ms = "/polls/demo.json", nil, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  path = args[1] or path
  etag = args[2]
  wait_ms = tonumber(args[3] or "0")
  n304, nother = 0, 0
end

function request()
  return wrk.format("GET", path, {["If-None-Match"] = etag})
end

function delay()
  return wait_ms
end

-- A client that revalidates: the next request names the version it got.
function response(status, headers, body)
  if status == 304 then n304 = n304 + 1 else nother = nother + 1 end
  if headers["ETag"] then etag = headers["ETag"] end
end

function done(summary, latency, requests)
  local a, b = 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("n304")
    b = b + t:get("nother")
  end
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"n304":%d,"nother":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max, a, b))
end
