-- Invalidate after a write commits: drop the entry and any loader's lease, and move the
-- generation on, so a loader that read the old row before the commit cannot store it after
-- this; wake waiting readers so they load again instead of waiting for that loader.
-- KEYS[1] entry   KEYS[2] lease   KEYS[3] generation
-- ARGV[1] new generation   ARGV[2] generation ttl ms   ARGV[3] ready channel
-- Reply: 1
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], '')
return 1
