-- Generic cell rate algorithm: one key per (policy, subject), holding the theoretical arrival time.
-- KEYS[1] the rate-limit key
-- ARGV[1] emission interval (ms per request)   ARGV[2] burst (requests allowed at once)
-- ARGV[3] now (ms)
-- Reply: {allowed (1/0), remaining, retry_after_ms, reset_after_ms}
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
local diff = now - allow_at
if diff < 0 then
  return {0, 0, -diff, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor(diff / interval), 0, new_tat - now}
