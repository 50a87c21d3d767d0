-- wrk script: POST a small non-streamed chat completion, then print one JSON summary line.
--
-- Environment:
--   BENCH_API_KEY   sent as "Authorization: Bearer <key>" when set (the gateway's key;
--                   the fake upstream ignores it)
--   BENCH_MODEL     the model to ask for (default "bench-model")
--   BENCH_CACHE_BYPASS  when set, every request sends "x-guarita-cache: bypass"
--
-- The last line of output is `BENCH_JSON {...}` with latencies in microseconds, so that
-- run_gateway.py does not have to parse wrk's human-readable report.

local model = os.getenv("BENCH_MODEL") or "bench-model"
local key = os.getenv("BENCH_API_KEY")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
if os.getenv("BENCH_CACHE_BYPASS") then
  wrk.headers["x-guarita-cache"] = "bypass"
end
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user",'
  .. '"content":"Say hello in one short sentence."}],"max_tokens":16,"temperature":0}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
