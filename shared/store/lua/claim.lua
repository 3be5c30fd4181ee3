#!lua flags=allow-oom
-- Claim a shard for flushing and list its oldest dirty documents.
-- KEYS[1] the shard's dirty index        KEYS[2] the shard's flush lease
-- ARGV[1] lease token   ARGV[2] lease length (ms)   ARGV[3] how many ids at most
-- ARGV[4] only documents dirty since at or before this score (ms, or "+inf")
-- Reply: the ids, oldest first; empty when another flusher holds the lease. The lease is taken
-- only when there is something to flush.
-- Nothing is removed from the dirty index here: only mark_clean does that, after the commit.
-- allow-oom: the flusher's bookkeeping (a lease, saved versions, saved events, a quarantine
-- entry: a few bytes a document) runs even with the state Redis at maxmemory, so that flushing,
-- what makes documents clean and lets them expire, never stops when Redis is full.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {}
end
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[4], 'BYSCORE', 'LIMIT', 0, ARGV[3])
if #ids > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
elseif holder then
  -- Nothing to do here: hold no lease on an empty shard.
  redis.call('DEL', KEYS[2])
end
return ids
