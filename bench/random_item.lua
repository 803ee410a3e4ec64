-- wrk: GET /v1/items/<random id in 1..BENCH_MAX_ID>, the same sequence shape for every server.
local max_id = tonumber(os.getenv("BENCH_MAX_ID") or "1000")
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/items/" .. math.random(1, max_id))
end
