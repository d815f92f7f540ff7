-- wrk script: POST /ping as a different user each request (1,000 users per wrk thread),
-- with the claim the auth proxy would set.
--   wrk -t2 -c32 -d10s --latency -s scripts/wrk-ping.lua http://127.0.0.1:8080
-- WRK_DELAY_MS=N makes each connection wait N ms after each answer: a paced load (about
-- connections * 1000 / N pings/s while answers are fast) instead of as fast as possible.
local n = 0
local body = '{"status":"1"}'
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "")
if pause and pause > 0 then
  delay = function() return pause end
end

request = function()
  n = n + 1
  local user = "wrk-" .. (n % 1000)
  return wrk.format("POST", "/ping", {
    ["X-User-Claim"] = '{"userid":"' .. user .. '","clientid":"wrk"}',
    ["Content-Type"] = "application/json",
  }, body)
end

-- Say how many answers were not 2xx, so a run that only measured refusals is visible.
-- (No response() callback: it would cost wrk a Lua call per reply.)
done = function(summary)
  local non2xx = summary.errors.status or 0
  io.write(string.format("wrk-ping: %d requests, %d non-2xx, %d socket errors\n",
    summary.requests, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
