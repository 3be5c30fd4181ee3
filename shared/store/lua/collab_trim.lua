-- After a Postgres commit of folded documents: keep each one's folded state in Redis and trim its
-- log up to the last entry folded into it. Compare-on-id, as mark_clean.lua compares versions.
-- Several documents of one shard in one call.
-- KEYS[2i-1] document i's hash   KEYS[2i] its update log (all under one shard's hash tag)
-- ARGV[1] TTL of an emptied log (ms; the document hash's clean TTL, so both go together)
-- ARGV[4i-2] document i's last log id folded   ARGV[4i-1] its folded state (bytes)
-- ARGV[4i] its text   ARGV[4i+1] bytes of its log entries folded
-- Reply: for each document in order, status then entries left (2 entries a document); status
--   1 trimmed; -1 a later fold was already kept (a retried or stale flusher: nothing changes);
--   -2 the document is gone or deleted.
-- Entries after the folded id (appended while the flusher folded and wrote) stay; so do the dirty
-- mark and version, which mark_clean.lua settles next. A crash before this call repeats the fold.
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

local function trim(doc, log, folded_id, state, text, folded_bytes)
  local f = redis.call('HMGET', doc, 'v', 'yl', 'yb', 'del')
  if not f[1] or f[4] then
    return -2, 0
  end
  if not after(folded_id, f[2] or '0-0') then
    return -1, redis.call('XLEN', log)
  end
  local ms, seq = string.match(folded_id, '^(%d+)-(%d+)$')
  -- MINID keeps ids >= its argument: everything after the folded id stays.
  redis.call('XTRIM', log, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  local bytes = math.max((tonumber(f[3]) or 0) - tonumber(folded_bytes), 0)
  redis.call('HSET', doc, 'ys', state, 'c', text, 'yl', folded_id, 'yb', bytes)
  local left = redis.call('XLEN', log)
  if left == 0 then
    -- An empty log is kept (its last id guards the next append's id) until the hash goes too.
    redis.call('PEXPIRE', log, ARGV[1])
  end
  return 1, left
end

local out = {}
for i = 1, #KEYS / 2 do
  local a = 4 * i - 2
  local status, left = trim(KEYS[2 * i - 1], KEYS[2 * i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  out[2 * i - 1] = status
  out[2 * i] = left
end
return out
