-- wrk: GET /v1/items/<random id in 1..BENCH_MAX_ID>, each connection pausing BENCH_DELAY_MS
-- between requests, so the offered load is about the same whatever else shares the machine.
local max_id = tonumber(os.getenv("BENCH_MAX_ID") or "100")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "4")
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/items/" .. math.random(1, max_id))
end
delay = function()
  return pause
end
