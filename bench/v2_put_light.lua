-- wrk script: the requests of ../shared/bench/etcd_v2_put.lua (PUT of a new key under
-- /v2/keys/bench/ with the form body value=<64 bytes>) at less of the load generator's CPU.
-- That script builds each request with math.random and wrk.format, and defines a
-- `response` callback, for which wrk hands every answer's status, headers and body to Lua;
-- with the loader on the same two cores as the server, that CPU is taken from the server
-- (bench/RESULTS.md, 2026-12-07). Here a key is a per-thread random base and a counter (a
-- new key each time, as with random numbers out of 10^9), the request one concatenation,
-- and answers are not passed to Lua: wrk itself counts every status >= 400 (non2xx), as the
-- shared script's summary does.
-- usage: wrk -t2 -c64 -d10s -s v2_put_light.lua http://127.0.0.1:PORT
-- env PREFIX overrides the key prefix (default /v2/keys/bench/)
local prefix = os.getenv("PREFIX") or "/v2/keys/bench/"
local body = "value=" .. string.rep("v", 64)
local counter = 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
local n, base, rest
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
  base = "PUT " .. prefix .. tostring(math.random(1, 1000000)) .. "-" .. tostring(tid or 0) .. "-"
  n = 0
  rest = " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
    "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " .. #body ..
    "\r\n\r\n" .. body
end
request = function()
  n = n + 1
  return base .. n .. rest
end
done = function(summary, latency, requests)
  io.write(string.format("SUMMARY req=%d dur_s=%.2f rps=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
