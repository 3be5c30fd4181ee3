-- Leave a document (ARGV[2] set) or sweep its expired editors (ARGV[2] empty).
-- KEYS[1] the document's editors   KEYS[2] the shard's presence index
-- ARGV[1] document id   ARGV[2] user id or ""   ARGV[3] now (ms)
-- Reply: {emptied, editor ids...}; emptied is 1 when this call removed the last editor, which is
-- the caller's cue to enqueue an immediate flush.
-- Membership of the presence index, not the editors key (which may have expired by itself),
-- says whether the document had editors.
local had = redis.call('ZSCORE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local left = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
if #left == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if had then return {1} end
  return {0}
end
redis.call('ZADD', KEYS[2], left[#left], ARGV[1])
local reply = {0}
for i = 1, #left, 2 do
  reply[#reply + 1] = left[i]
end
return reply
