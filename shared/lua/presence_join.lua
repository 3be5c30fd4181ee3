-- Join a document or heartbeat: the editor's presence lasts until ARGV[3].
-- KEYS[1] the document's editors (zset, score = expiry ms)   KEYS[2] the shard's presence index
-- ARGV[1] document id   ARGV[2] user id   ARGV[3] expiry (ms)   ARGV[4] now (ms)
-- Reply: the ids of the live editors.
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('ZADD', KEYS[2], last[2], ARGV[1])
-- Relative to the caller's clock, with slack: the sweeper, not this TTL, decides when an editor
-- is gone; the TTL only stops an unswept key from living forever.
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - tonumber(ARGV[4]) + 60000)
return redis.call('ZRANGE', KEYS[1], 0, -1)
