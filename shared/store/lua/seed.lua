-- Load a document's Postgres row into Redis unless Redis already holds it (or its tombstone).
-- KEYS[1] document hash
-- ARGV[1] TTL for the clean entry (ms)   ARGV[2..] field, value, field, value, ...
-- Reply: 1 seeded, 0 Redis already had the document (its copy is never older than Postgres)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
