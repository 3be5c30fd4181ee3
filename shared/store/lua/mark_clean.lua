#!lua flags=allow-oom
-- After a Postgres commit, settle each written document: a co-edited one first keeps its fold
-- (its folded state and text, its log trimmed up to the last entry folded: compare-on-id), then
-- each is marked clean if its version is still the one written.
-- KEYS[1] the shard's dirty index; for document i: KEYS[3i-1] its hash, KEYS[3i] its event stream,
--   KEYS[3i+1] its update log (all under the shard's hash tag)
-- ARGV[1] TTL for clean entries and an emptied log (ms)   ARGV[2] when the flush read the
--   documents (ms)   ARGV[3] now (ms)   ARGV[4] event stream MAXLEN (approximate)
-- ARGV[5] event stream TTL (ms)
-- ARGV[7i-1..7i+5] document i: id, written version, then its fold or five empty strings: the last
--   log id folded, the folded state (bytes), its text, the bytes of log entries folded, and the
--   folded id the fold started from (the document's `yl` when the flusher read it)
-- Reply: how many documents became clean.
-- A document edited since the read keeps its dirty mark: the next flush takes it. Its unsaved
-- changes date from after the read, so its first-dirty time moves to the read time (otherwise a
-- document under constant editing would look ever older). saved_version only moves forward, and
-- each move is a `document.saved {version}` event (all streams share the shard's hash tag).
-- Log entries after the folded id (appended while the flusher folded and wrote) stay, and keep
-- the document dirty (they bumped its version). A crash before this call repeats the fold.
-- allow-oom: the flusher's bookkeeping (a lease, saved versions, saved events, a quarantine
-- entry: a few bytes a document) runs even with the state Redis at maxmemory, so that flushing,
-- what makes documents clean and lets them expire, never stops when Redis is full. A fold kept
-- there frees more than it takes: the log entries it drops hold every update its state and text
-- grow by.
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

-- A fold written to Postgres, to keep: unless a later fold is kept already (a retried or stale
-- flusher: nothing changes), drop the log entries it holds and return the hash fields that keep
-- its state and text (the caller sets them with its own). `f` is the hash as read below.
local function keep_fold(log, f, folded_id, state, text, folded_bytes, base_id)
  local yl = f[4] or '0-0'
  if not after(folded_id, yl) then
    return {}
  end
  local removed = tonumber(folded_bytes)
  if yl ~= base_id then
    -- Another fold that started from the same entries (a flush job beside the cron pass, or a
    -- second flusher) trimmed part of them first: count only what is left of them. Subtracting
    -- them twice would zero `yb` while entries after the fold remain, and a GET, trusting `yb`,
    -- would answer this fold's text at their version.
    removed = bytes_upto(log, folded_id)
  end
  local ms, seq = string.match(folded_id, '^(%d+)-(%d+)$')
  -- MINID keeps ids >= its argument: everything after the folded id stays.
  redis.call('XTRIM', log, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  local bytes = math.max((tonumber(f[5]) or 0) - removed, 0)
  return {'ys', state, 'c', text, 'yl', folded_id, 'yb', bytes}
end

local n = (#KEYS - 1) / 3
local cleaned = 0
for i = 1, n do
  local doc, events, log = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local a = 7 * i - 1
  local id = ARGV[a]
  local written = tonumber(ARGV[a + 1])
  local f = redis.call('HMGET', doc, 'v', 'sv', 'del', 'yl', 'yb', 'ds')
  if not f[1] or f[3] then
    -- Deleted (tombstone or gone): nothing left to save.
    redis.call('ZREM', KEYS[1], id)
  else
    local set = {}
    if ARGV[a + 2] ~= '' then
      set = keep_fold(log, f, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
    end
    local sv = tonumber(f[2]) or 0
    if written > sv then
      set[#set + 1] = 'sv'
      set[#set + 1] = written
      redis.call('XADD', events, 'MAXLEN', '~', ARGV[4], '*', 'type', 'document.saved',
        'document_id', id, 'version', written, 'at', ARGV[3])
      redis.call('PEXPIRE', events, ARGV[5])
    end
    local clean = tonumber(f[1]) == written
    if not clean and written > sv then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
      set[#set + 1] = 'ds'
      set[#set + 1] = ARGV[2]
    end
    if #set > 0 then
      redis.call('HSET', doc, unpack(set))
    end
    if clean then
      redis.call('ZREM', KEYS[1], id)
      if f[6] then
        redis.call('HDEL', doc, 'ds')
      end
      redis.call('PEXPIRE', doc, ARGV[1])
      if ARGV[a + 2] ~= '' then
        -- Clean: every entry is folded (a later one would have bumped the version), and the
        -- emptied log is kept (its last id guards the next append's id) until the hash goes.
        redis.call('PEXPIRE', log, ARGV[1])
      end
      cleaned = cleaned + 1
    end
  end
end
return cleaned
