-- After a Postgres commit of folded documents: keep each one's folded state in Redis and trim its
-- log up to the last entry folded into it. Compare-on-id, as mark_clean.lua compares versions.
-- Several documents of one shard in one call.
-- KEYS[2i-1] document i's hash   KEYS[2i] its update log (all under one shard's hash tag)
-- ARGV[1] TTL of an emptied log (ms; the document hash's clean TTL, so both go together)
-- ARGV[5i-3] document i's last log id folded   ARGV[5i-2] its folded state (bytes)
-- ARGV[5i-1] its text   ARGV[5i] bytes of its log entries folded
-- ARGV[5i+1] the folded id its fold started from (the document's `yl` when the flusher read it)
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

-- The bytes of the log's entries up to `upto`: what this trim removes.
local function bytes_upto(log, upto)
  local n = 0
  for _, entry in ipairs(redis.call('XRANGE', log, '-', upto)) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'u' then n = n + #fields[j + 1] end
    end
  end
  return n
end

local function trim(doc, log, folded_id, state, text, folded_bytes, base_id)
  local f = redis.call('HMGET', doc, 'v', 'yl', 'yb', 'del')
  if not f[1] or f[4] then
    return -2, 0
  end
  if not after(folded_id, f[2] or '0-0') then
    return -1, redis.call('XLEN', log)
  end
  local removed = tonumber(folded_bytes)
  if (f[2] or '0-0') ~= base_id then
    -- Another fold that started from the same entries (a flush job beside the cron pass, or a
    -- second flusher) trimmed part of them first: count only what is left of them. Subtracting
    -- them twice would zero `yb` while entries after the fold remain, and a GET, trusting `yb`,
    -- would answer this fold's text at their version.
    removed = bytes_upto(log, folded_id)
  end
  local ms, seq = string.match(folded_id, '^(%d+)-(%d+)$')
  -- MINID keeps ids >= its argument: everything after the folded id stays.
  redis.call('XTRIM', log, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  local bytes = math.max((tonumber(f[3]) or 0) - removed, 0)
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
  local a = 5 * i - 3
  local status, left = trim(
    KEYS[2 * i - 1], KEYS[2 * i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  )
  out[2 * i - 1] = status
  out[2 * i] = left
end
return out
