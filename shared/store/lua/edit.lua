-- Apply one autosave edit: bump the version, store content and author, mark the document dirty.
-- KEYS[1] document hash          KEYS[2] the shard's dirty index (zset, score = first-dirty ms)
-- KEYS[3] the author's edit-rate key for this document (GCRA theoretical arrival time, ms)
-- KEYS[4] the document's event stream   KEYS[5] the shard's quarantine (flusher-refused docs)
-- ARGV[1] document id            ARGV[2] content
-- ARGV[3] base version or ""     ARGV[4] author user id
-- ARGV[5] now (ms)               ARGV[6] rate: emission interval (ms per edit; 0: no limit)
-- ARGV[7] rate: burst (edits allowed at once)
-- ARGV[8] event stream: MAXLEN (approximate)   ARGV[9] event stream: TTL after the last event (ms)
-- ARGV[10..] the caller's grants ("t:<tenant>", "u:<user>")
-- Reply: {status, version, saved_version}; for status -4, {-4, retry_after_ms, 0}
--   status 1 applied; 0 not in Redis (seed it from Postgres, then retry); -1 stale base version;
--   -2 deleted; -3 no access (the caller answers 404 for both, never 403); -4 rate limited;
--   -5 co-edited (a Yjs state holds its text: the caller appends a diff update instead).
-- The rate check lives here, not in a call of its own, so an edit stays one round trip and a
-- refused edit is never applied; its key shares the document's hash tag (Redis Cluster).
-- The `document.edited` event is appended here too, for the same reason: no second round trip.
-- An applied edit takes the document out of quarantine (shared/store/lua/quarantine.lua) and marks it
-- dirty: the flusher writes the new content; if that is refused too, it is quarantined again.
-- include: access
local doc = KEYS[1]
if redis.call('EXISTS', doc) == 0 then
  return {0, 0, 0}
end
local f = redis.call('HMGET', doc, 'v', 'sv', 'acl', 'del', 'ds', 'yb')
if f[4] then
  return {-2, 0, 0}
end
if not granted(f[3], 10) then
  return {-3, 0, 0}
end
-- A co-edited document's text is its Yjs state and update log: a whole-content write here would
-- overwrite them. The caller turns the content into an update instead (collab_append.lua).
if f[6] then
  return {-5, tonumber(f[1]), tonumber(f[2]) or 0}
end
local v = tonumber(f[1])
local sv = tonumber(f[2])
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= v then
  return {-1, v, sv}
end
-- A refused edit (stale above, or too early) does not move the arrival time.
local interval = tonumber(ARGV[6])
if interval > 0 then
  local now = tonumber(ARGV[5])
  local new_tat, early = gcra_next(KEYS[3], now, interval, tonumber(ARGV[7]))
  if not new_tat then
    return {-4, early, 0}
  end
  redis.call('SET', KEYS[3], new_tat, 'PX', new_tat - now)
end
v = v + 1
redis.call('HSET', doc, 'v', v, 'c', ARGV[2], 'by', ARGV[4], 'at', ARGV[5])
if not f[5] then
  redis.call('HSET', doc, 'ds', ARGV[5])
end
-- Dirty state never expires; NX keeps the first-dirty time of an already dirty document.
redis.call('PERSIST', doc)
redis.call('ZADD', KEYS[2], 'NX', ARGV[5], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'type', 'document.edited',
  'document_id', ARGV[1], 'version', v, 'by', ARGV[4], 'at', ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[9])
return {1, v, sv}
