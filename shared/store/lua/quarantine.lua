#!lua flags=allow-oom
-- Move documents whose write Postgres refused for their data (not a transient failure) out of
-- the dirty index into the shard's quarantine, each only if its version is still the refused one.
-- KEYS[1] the shard's dirty index   KEYS[2] the shard's quarantine (zset, score = first ms)
-- KEYS[3..n+2] the document hashes
-- ARGV[1] now (ms)   ARGV[2..] id, refused version, id, refused version, ... (in key order)
-- Reply: one status a document, in order: 1 quarantined now; 2 already in quarantine (left
--   there); 0 edited since the read (left dirty: the next flush tries the newer version);
--   -1 deleted or gone (dropped from both sets: nothing left to save).
-- Compare-on-version, as mark_clean does: an edit that lands between the failed write and this
-- call keeps its dirty mark, so it is neither lost nor quarantined blindly. The hash itself is
-- never touched here but made persistent: it is the only copy of the unsaved content.
-- allow-oom: the flusher's bookkeeping (a lease, saved versions, saved events, a quarantine
-- entry: a few bytes a document) runs even with the state Redis at maxmemory, so that flushing,
-- what makes documents clean and lets them expire, never stops when Redis is full.
local n = #KEYS - 2
local out = {}
for i = 1, n do
  local doc = KEYS[i + 2]
  local id = ARGV[2 * i]
  local refused = tonumber(ARGV[2 * i + 1])
  local f = redis.call('HMGET', doc, 'v', 'del')
  if not f[1] or f[2] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    out[i] = -1
  elseif tonumber(f[1]) ~= refused then
    out[i] = 0
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('PERSIST', doc)
    out[i] = 2 - redis.call('ZADD', KEYS[2], 'NX', ARGV[1], id)
  end
end
return out
