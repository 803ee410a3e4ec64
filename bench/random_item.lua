-- wrk: GET /v1/items/<random id in 1..BENCH_MAX_ID>, the same sequence shape for every server.
-- BENCH_AUTHORIZATION, when set, is sent as the Authorization header (bench/token_auth.py).
local max_id = tonumber(os.getenv("BENCH_MAX_ID") or "1000")
local authorization = os.getenv("BENCH_AUTHORIZATION")
local headers = authorization and { Authorization = authorization } or nil
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/items/" .. math.random(1, max_id), headers)
end
