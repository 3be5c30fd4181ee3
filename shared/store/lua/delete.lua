-- Delete a document from Redis, leaving a tombstone so no later seed or edit can bring it back.
-- KEYS[1] document hash   KEYS[2] its editors   KEYS[3] the shard's dirty index
-- KEYS[4] the shard's presence index   KEYS[5] the document's event stream
-- KEYS[6] the shard's quarantine (a deleted document has nothing left to save)
-- KEYS[7] the document's update log (co-editing: nothing in it is worth saving now)
-- KEYS[8] the document's awareness states (no cursor outlives the document)
-- ARGV[1] document id     ARGV[2] tombstone TTL (ms)   ARGV[3] now (ms)   ARGV[4] deleting user
-- Reply: 1
-- The event stream keeps a final `document.deleted` entry and goes with the tombstone.
-- The tombstone keeps the document's `acl`: a DELETE whose Postgres step failed after this (a
-- 503, a process gone) is retried by its caller, and the retry needs the access rule to finish
-- it (shared/domain/documents.py). Every script checks `del` before `acl`, so it opens nothing.
local acl = redis.call('HGET', KEYS[1], 'acl')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[7], KEYS[8])
redis.call('HSET', KEYS[1], 'del', '1')
if acl then
  redis.call('HSET', KEYS[1], 'acl', acl)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'type', 'document.deleted', 'document_id', ARGV[1],
  'by', ARGV[4], 'at', ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[2])
return 1
