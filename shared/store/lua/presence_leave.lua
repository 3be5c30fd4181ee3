-- Leave a document (ARGV[2] set) or sweep its expired editors (ARGV[2] empty).
-- KEYS[1] the document's editors   KEYS[2] the shard's presence index
-- KEYS[3] the document's event stream
-- ARGV[1] document id   ARGV[2] user id or ""   ARGV[3] now (ms)
-- ARGV[4] event stream MAXLEN (approximate)   ARGV[5] event stream TTL (ms)
-- Reply: {emptied, editor ids...}; emptied is 1 when this call removed the last editor, which is
-- the caller's cue to enqueue an immediate flush.
-- Membership of the presence index, not the editors key (which may have expired by itself),
-- says whether the document had editors. Anyone removed: a `presence.changed` event.
local had = redis.call('ZSCORE', KEYS[2], ARGV[1])
local removed = 0
if ARGV[2] ~= '' then
  removed = redis.call('ZREM', KEYS[1], ARGV[2])
end
removed = removed + redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local left = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local reply = {0}
local ids = {}
for i = 1, #left, 2 do
  ids[#ids + 1] = left[i]
end
if #left == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if had then
    reply = {1}
    if removed == 0 then removed = 1 end  -- the editors key expired by itself: still a change
  end
else
  redis.call('ZADD', KEYS[2], left[#left], ARGV[1])
  for i = 1, #ids do
    reply[#reply + 1] = ids[i]
  end
end
if removed > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'presence.changed',
    'document_id', ARGV[1], 'by', ARGV[2], 'at', ARGV[3], 'editors', table.concat(ids, ','))
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return reply
