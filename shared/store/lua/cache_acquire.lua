-- Cache-aside miss: return the entry if someone filled it meanwhile, else try to take the short
-- loader lease. Also returns the key's generation (created if absent), which the loader hands
-- back to cache_fill so a fill that raced an invalidation is refused.
-- KEYS[1] entry   KEYS[2] lease   KEYS[3] generation
-- ARGV[1] lease token   ARGV[2] lease ms   ARGV[3] a fresh generation, used if there is none
-- ARGV[4] generation ttl ms   ARGV[5] "1" to lease even when an entry exists (early refresh)
-- Reply: {entry or nil, leased (1/0), generation}
if ARGV[5] ~= '1' then
  local entry = redis.call('GET', KEYS[1])
  if entry then return {entry, 0, ''} end
end
local gen = redis.call('GET', KEYS[3])
if not gen then
  gen = ARGV[3]
  redis.call('SET', KEYS[3], gen, 'PX', ARGV[4])
end
local leased = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
return {false, leased and 1 or 0, gen}
