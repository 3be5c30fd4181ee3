-- Move a document's version past Postgres's when Postgres holds its version from another history.
-- The state Redis can lose its last second of writes (AOF everysec) after a flush committed them:
-- it comes back at an older version and reissues versions Postgres already holds, with other
-- text. The flush's guarded write skips such a row (Postgres never goes backwards), and without
-- this the edits made since the restart, acknowledged, would be marked clean and lost. The next
-- flush writes the document as Redis holds it, as every client sees it now; what Postgres held
-- of the lost second is the loss AOF everysec allows.
-- KEYS[1] document hash   KEYS[2] the shard's dirty index
-- ARGV[1] document id   ARGV[2] Postgres's version   ARGV[3] the version the flush wrote
-- ARGV[4] now (ms)
-- Reply: the new version, or 0 when nothing moved: the document is gone, or it is past
--   Postgres's version (the next flush writes it), or level with it after the flush wrote an
--   older version (a stale flusher's: the flush that reads this version compares its text).
-- The caller found, in the same transaction as its write, that Postgres's row is at a later
-- version than the one written, or at the same version with other text (one history gives one
-- text a version).
local f = redis.call('HMGET', KEYS[1], 'v', 'del', 'ds')
if not f[1] or f[2] then
  return 0
end
local v, pg, written = tonumber(f[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if v > pg or (v == pg and pg ~= written) then
  return 0
end
v = pg + 1
redis.call('HSET', KEYS[1], 'v', v)
if not f[3] then
  redis.call('HSET', KEYS[1], 'ds', ARGV[4])
end
-- Dirty state never expires; NX keeps the first-dirty time of an already dirty document.
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[1])
return v
