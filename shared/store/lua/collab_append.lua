-- Append one Yjs update to a document's update log: the edit of a co-edited document. The update
-- is durable (in the log, as durable as the state Redis) before anyone is told of it.
-- KEYS[1] document hash   KEYS[2] the shard's dirty index   KEYS[3] the document's update log
-- KEYS[4] the author's edit-rate key for this document   KEYS[5] the document's event stream
-- KEYS[6] the shard's quarantine
-- ARGV[1] document id   ARGV[2] the update (bytes)   ARGV[3] origin (process:socket)
-- ARGV[4] author user id   ARGV[5] now (ms)   ARGV[6] log cap: entries   ARGV[7] log cap: bytes
-- ARGV[8] rate: ms per update (0: no limit)   ARGV[9] rate: burst
-- ARGV[10] event stream MAXLEN (approximate)   ARGV[11] event stream TTL (ms)
-- ARGV[12] at most one document.edited event per this many ms
-- ARGV[13] the document's relay channel: every api process with a socket on it hears
--   "<origin> <log id> <update>" (classic pub/sub; the log is the record, pub/sub the wake-up),
--   unless only the caller's process does (ARGV[15])
-- ARGV[14] the version the author saw ("": any; an HTTP edit's base_version)
-- ARGV[15] the caller's own relay: the control channel of an api process that holds the document's
--   channel and relays the update to its own sockets itself ("": publish whoever listens)
-- ARGV[16] the document's size cap in bytes, REDLINE_MAX_DOCUMENT_BYTES ("": none; an HTTP edit,
--   whose whole new text was measured before its diff was made)
-- ARGV[17..] the caller's grants ("t:<tenant>", "u:<user>")
-- Reply: {status, version, log id}; for -4 {-4, retry_after_ms, ""}, for -5 {-5, entries, ""}
--   1 appended; 0 not in Redis (seed it from Postgres, then retry); -1 stale: the version is
--   no longer ARGV[14] ({-1, version, ""}); -2 deleted; -3 no access;
--   -4 rate limited; -5 the log is at its cap (backpressure: nothing is lost, the flusher has
--   not caught up; retry later); -6 not seeded yet (install the seed update, then retry);
--   -7 the document would pass its size cap.
-- The checks are edit.lua's, in its order, so revoking a member stops their next keystroke.
-- include: access
local doc = KEYS[1]
if redis.call('EXISTS', doc) == 0 then
  return {0, 0, ''}
end
-- `yb` (set with the state by the seed), not `ys`: reading the state would copy it every call.
local f = redis.call('HMGET', doc, 'v', 'acl', 'del', 'ds', 'yb', 'yl', 'ea')
if f[3] then
  return {-2, 0, ''}
end
if not granted(f[2], 17) then
  return {-3, 0, ''}
end
if not f[5] then
  return {-6, 0, ''}
end
if ARGV[14] ~= '' and tonumber(ARGV[14]) ~= tonumber(f[1]) then
  return {-1, tonumber(f[1]), ''}
end
local now = tonumber(ARGV[5])
local interval = tonumber(ARGV[8])
local rate_tat = nil
if interval > 0 then
  local early
  rate_tat, early = gcra_next(KEYS[4], now, interval, tonumber(ARGV[9]))
  if not rate_tat then
    return {-4, early, ''}
  end
end
local entries = redis.call('XLEN', KEYS[3])
local bytes = tonumber(f[5]) or 0
if entries >= tonumber(ARGV[6]) or bytes + #ARGV[2] > tonumber(ARGV[7]) then
  return {-5, entries, ''}
end
-- The size cap, on the text as last folded (`c`) plus every update since and this one: what the
-- next fold's text can be at most, since an update carries each character it inserts. Deletes
-- in the log count until they are folded, so the cap errs on the side of refusing.
if ARGV[16] ~= '' and redis.call('HSTRLEN', doc, 'c') + bytes + #ARGV[2] > tonumber(ARGV[16]) then
  return {-7, 0, ''}
end
if rate_tat then
  redis.call('SET', KEYS[4], rate_tat, 'PX', rate_tat - now)
end
-- A new stream id must sort after the folded one (`yl`), or a read of the log after `yl` would
-- skip it. Ids come from the server clock and only grow within a stream, but a log trimmed away
-- and recreated (its key expired with a clean document) starts over from the clock, which may
-- have stepped back.
local id = '*'
if entries == 0 and f[6] then
  local ms, seq = string.match(f[6], '^(%d+)-(%d+)$')
  local t = redis.call('TIME')
  if ms and tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) <= tonumber(ms) then
    id = ms .. '-' .. (tonumber(seq) + 1)
  end
end
id = redis.call('XADD', KEYS[3], id, 'u', ARGV[2], 'o', ARGV[3])
local v = tonumber(f[1]) + 1
redis.call('HSET', doc, 'v', v, 'by', ARGV[4], 'at', ARGV[5], 'yb', bytes + #ARGV[2])
if not f[4] then
  redis.call('HSET', doc, 'ds', ARGV[5])
end
-- Dirty state never expires; NX keeps the first-dirty time of an already dirty document.
redis.call('PERSIST', doc)
redis.call('PERSIST', KEYS[3])
redis.call('ZADD', KEYS[2], 'NX', ARGV[5], ARGV[1])
-- A long log (a quarter of either cap) is urgent: its score moves back by URGENT_SHIFT_MS
-- (shared/domain/dirty.py), below zero, where the flusher's urgent pass looks every second. LT:
-- once moved, it stays; mark_clean puts a document still dirty back at its read time.
if entries + 1 >= tonumber(ARGV[6]) / 4 or bytes + #ARGV[2] >= tonumber(ARGV[7]) / 4 then
  redis.call('ZADD', KEYS[2], 'LT', (tonumber(f[4]) or now) - 10000000000000, ARGV[1])
end
redis.call('ZREM', KEYS[6], ARGV[1])
-- Keystrokes come tens a second: the event says "edited", throttled, not every keystroke.
if not f[7] or now - tonumber(f[7]) >= tonumber(ARGV[12]) then
  redis.call('HSET', doc, 'ea', ARGV[5])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[10], '*', 'type', 'document.edited',
    'document_id', ARGV[1], 'version', v, 'by', ARGV[4], 'at', ARGV[5])
  redis.call('PEXPIRE', KEYS[5], ARGV[11])
end
-- The caller's process skips what it published (its sockets had it at once), so when that process
-- is the channel's one subscriber, nobody would read the message: not sent. Its control channel
-- subscribed here means its one pub/sub connection is up on this server, and that connection
-- holds the document's channel (the socket joined before it sent anything; a reconnect
-- subscribes every channel again in one command). A process subscribing meanwhile reads the log
-- after its subscription, so it finds this update there. pcall: a Redis user without PUBSUB
-- NUMSUB publishes as before.
local listeners = 2
if ARGV[15] ~= '' then
  local n = redis.pcall('PUBSUB', 'NUMSUB', ARGV[13], ARGV[15])
  if type(n) == 'table' and n[4] == 1 then
    listeners = n[2]
  end
end
if listeners > 1 then
  redis.call('PUBLISH', ARGV[13], ARGV[3] .. ' ' .. id .. ' ' .. ARGV[2])
end
return {1, v, id}
