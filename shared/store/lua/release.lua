-- Release a shard's flush lease if this flusher still holds it.
-- KEYS[1] the shard's flush lease
-- ARGV[1] lease token
-- Reply: 1 released, 0 held by another flusher or expired
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
