-- Join a document or heartbeat: the editor's presence lasts until ARGV[3].
-- KEYS[1] the document's editors (zset, score = expiry ms)   KEYS[2] the shard's presence index
-- KEYS[3] the document's event stream
-- ARGV[1] document id   ARGV[2] user id   ARGV[3] expiry (ms)   ARGV[4] now (ms)
-- ARGV[5] event stream MAXLEN (approximate)   ARGV[6] event stream TTL (ms)
-- Reply: the ids of the live editors.
-- A join, or the removal of expired editors, changes who is there: a `presence.changed` event
-- (editors comma-separated); a mere heartbeat adds none.
local added = redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('ZADD', KEYS[2], last[2], ARGV[1])
-- Relative to the caller's clock, with slack: the sweeper, not this TTL, decides when an editor
-- is gone; the TTL only stops an unswept key from living forever.
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - tonumber(ARGV[4]) + 60000)
local editors = redis.call('ZRANGE', KEYS[1], 0, -1)
if added + expired > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', 'presence.changed',
    'document_id', ARGV[1], 'by', ARGV[2], 'at', ARGV[4], 'editors', table.concat(editors, ','))
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return editors
