-- Store a loaded entry, unless the key was invalidated since the loader took its generation;
-- release the loader's lease either way and wake the readers waiting on the ready channel
-- (with "<generation>|<entry>", or with an empty message that tells them to look again).
-- KEYS[1] entry   KEYS[2] lease   KEYS[3] generation
-- ARGV[1] entry text ("" = only release, the load failed)   ARGV[2] ttl ms
-- ARGV[3] generation read by cache_acquire   ARGV[4] lease token   ARGV[5] ready channel
-- Reply: 1 stored, 0 not stored
if redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2])
end
if ARGV[1] == '' or redis.call('GET', KEYS[3]) ~= ARGV[3] then
  redis.call('PUBLISH', ARGV[5], '')
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[3] .. '|' .. ARGV[1])
return 1
