-- Delete a document from Redis, leaving a tombstone so no later seed or edit can bring it back.
-- KEYS[1] document hash   KEYS[2] its editors   KEYS[3] the shard's dirty index
-- KEYS[4] the shard's presence index
-- ARGV[1] document id     ARGV[2] tombstone TTL (ms)
-- Reply: 1
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'del', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
