-- wrk script for bench/run.py: POST one fixed JSON body and print a machine-readable summary.
-- The body is read from the file named by SWITCHYARD_BENCH_BODY, so every target gets the
-- exact same bytes. No request()/response() callbacks: those would make wrk itself slower.
local path = assert(os.getenv("SWITCHYARD_BENCH_BODY"), "SWITCHYARD_BENCH_BODY is not set")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
-- bench/admission.py: the caller key of a configured tenant.
local key = os.getenv("SWITCHYARD_BENCH_KEY")
if key then wrk.headers["Authorization"] = "Bearer " .. key end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,' ..
    '"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.1f,"p90_us":%.1f,' ..
    '"p99_us":%.1f,"max_us":%.1f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
