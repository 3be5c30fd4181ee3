-- After a Postgres commit of a folded document: keep the folded state in Redis and trim the log
-- up to the last entry folded into it. Compare-on-id, as mark_clean.lua compares versions.
-- KEYS[1] document hash   KEYS[2] the document's update log
-- ARGV[1] the last log id folded   ARGV[2] the folded state (bytes)   ARGV[3] its text
-- ARGV[4] bytes of the log entries folded   ARGV[5] TTL of an emptied log (ms; the document
--   hash's clean TTL, so both go together)
-- Reply: {status, entries left}; 1 trimmed; -1 a later fold was already kept (a retried or
--   stale flusher: nothing changes); -2 the document is gone or deleted.
-- Entries after ARGV[1] (appended while the flusher folded and wrote) stay; so do the dirty mark
-- and version, which mark_clean.lua settles next. A crash before this call repeats the fold.
local f = redis.call('HMGET', KEYS[1], 'v', 'yl', 'yb', 'del')
if not f[1] or f[4] then
  return {-2, 0}
end
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local kept = f[2] or '0-0'
if not after(ARGV[1], kept) then
  return {-1, redis.call('XLEN', KEYS[2])}
end
local ms, seq = string.match(ARGV[1], '^(%d+)-(%d+)$')
-- MINID keeps ids >= its argument: everything after the folded id stays.
redis.call('XTRIM', KEYS[2], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
local bytes = math.max((tonumber(f[3]) or 0) - tonumber(ARGV[4]), 0)
redis.call('HSET', KEYS[1], 'ys', ARGV[2], 'c', ARGV[3], 'yl', ARGV[1], 'yb', bytes)
local left = redis.call('XLEN', KEYS[2])
if left == 0 then
  -- An empty log is kept (its last id guards the next append's id) until the hash goes too.
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return {1, left}
