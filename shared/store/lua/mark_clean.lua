#!lua flags=allow-oom
-- After a Postgres commit: mark each written document clean if its version is still the one written.
-- KEYS[1] the shard's dirty index   KEYS[2..n+1] document hashes   KEYS[n+2..2n+1] their event streams
-- ARGV[1] TTL for clean entries (ms)   ARGV[2] when the flush read the documents (ms)
-- ARGV[3] now (ms)   ARGV[4] event stream MAXLEN (approximate)   ARGV[5] event stream TTL (ms)
-- ARGV[6..] id, written version, id, written version, ... (in the order of the document hashes)
-- Reply: how many documents became clean.
-- A document edited since the read keeps its dirty mark: the next flush takes it. Its unsaved
-- changes date from after the read, so its first-dirty time moves to the read time (otherwise a
-- document under constant editing would look ever older). saved_version only moves forward, and
-- each move is a `document.saved {version}` event (all streams share the shard's hash tag).
-- allow-oom: the flusher's bookkeeping (a lease, saved versions, saved events, a quarantine
-- entry: a few bytes a document) runs even with the state Redis at maxmemory, so that flushing,
-- what makes documents clean and lets them expire, never stops when Redis is full.
local n = (#KEYS - 1) / 2
local cleaned = 0
for i = 1, n do
  local doc = KEYS[i + 1]
  local events = KEYS[n + 1 + i]
  local id = ARGV[4 + 2 * i]
  local written = tonumber(ARGV[5 + 2 * i])
  local f = redis.call('HMGET', doc, 'v', 'sv', 'del')
  if not f[1] or f[3] then
    -- Deleted (tombstone or gone): nothing left to save.
    redis.call('ZREM', KEYS[1], id)
  else
    local sv = tonumber(f[2]) or 0
    if written > sv then
      redis.call('HSET', doc, 'sv', written)
      redis.call('XADD', events, 'MAXLEN', '~', ARGV[4], '*', 'type', 'document.saved',
        'document_id', id, 'version', written, 'at', ARGV[3])
      redis.call('PEXPIRE', events, ARGV[5])
    end
    if tonumber(f[1]) ~= written then
      if written > sv then
        redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
        redis.call('HSET', doc, 'ds', ARGV[2])
      end
    else
      redis.call('ZREM', KEYS[1], id)
      redis.call('HDEL', doc, 'ds')
      redis.call('PEXPIRE', doc, ARGV[1])
      cleaned = cleaned + 1
    end
  end
end
return cleaned
