-- Install a document's first Yjs state (the seed update of its text) before its first update.
-- KEYS[1] document hash
-- ARGV[1] the seed update (bytes)   ARGV[2] the version whose text the seed was built from
-- Reply: 1 installed; 2 already seeded (by another process: use the stored state); 0 not in
--   Redis (seed the document from Postgres first); -1 the version moved on (an HTTP edit came
--   between the read and this call: build the seed again from the new text); -2 deleted.
-- Only from that one version: two seeds of different texts under the one seed client id would
-- never converge, and every process builds the same bytes from the same text.
local f = redis.call('HMGET', KEYS[1], 'v', 'ys', 'del')
if not f[1] then
  return 0
end
if f[3] then
  return -2
end
if f[2] then
  return 2
end
if tonumber(f[1]) ~= tonumber(ARGV[2]) then
  return -1
end
redis.call('HSET', KEYS[1], 'ys', ARGV[1], 'yv', ARGV[2], 'yb', 0)
return 1
