-- POST one fixed JSON body (WRK_BODY) with extra headers (WRK_HEADERS, "name: value" per line),
-- then print one JSON line of results that bench/loadgen.py parses.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

-- WRK_SESSIONS: MCP session ids ("a,b,c"); requests take them in turn, as many agents with a session each would.
-- Each request then gets its own JSON-RPC id (the body's "__WRK_ID__"): with 64 connections over 64 sessions a
-- slow request can still be in flight when its session comes round again, and two requests of one session in
-- flight with one id are one request too many (the server answers one of them).
local sessions = {}
for id in string.gmatch(os.getenv("WRK_SESSIONS") or "", "[^,]+") do sessions[#sessions + 1] = id end
if #sessions > 0 then
  local turn = 0
  local sent = 0
  local template = wrk.body
  request = function()
    turn = turn % #sessions + 1
    sent = sent + 1
    wrk.headers["mcp-session-id"] = sessions[turn]
    local body = string.gsub(template, '"__WRK_ID__"', tostring(sent))
    return wrk.format(nil, nil, nil, body)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
