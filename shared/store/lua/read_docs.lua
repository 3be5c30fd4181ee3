-- Read documents for a flush, one shard slice in one call: each document as one consistent
-- snapshot, a co-edited one with its Yjs state and the update log after it (so the flush needs
-- no second read, and state, log and version agree).
-- KEYS[2i-1] document i's hash   KEYS[2i] its update log (all under one shard's hash tag)
-- ARGV[1] at most this many log entries a document
-- ARGV[2] the largest state read here (bytes): a larger one is left to a plain read (below)
-- Reply: for each document in order 8 entries: v, c, by, at, del, ys, yl, {id, update, ...}; nil
--   for a missing field (a missing document reads as nils and an empty log). A co-edited document
--   (`yb` set) has no `c` (the fold makes the text: shipping it too would double the reply), its
--   `ys` (nil before the seed), `yl` ("0-0" when nothing is folded yet) and its log after `yl`;
--   any other document has `c` and nil `ys`/`yl`. A state over ARGV[2] comes back as its size
--   (an integer) with no log: a script copies every value it reads into Lua and again into its
--   reply, ~1 ms of Redis's one thread for 512 KB, while a plain MULTI/EXEC read ships it as
--   stored (shared/store/update_log.py reads those documents so, a few at a time).
-- Runs on a client whose replies stay bytes (a Yjs state is not text).
-- include: log_tail
local out = {}
local n = 0
for i = 1, #KEYS, 2 do
  local f = redis.call('HMGET', KEYS[i], 'v', 'by', 'at', 'del', 'yb', 'yl')
  local c, ys = false, false
  local tail = {}
  if f[5] then
    local size = redis.call('HSTRLEN', KEYS[i], 'ys')
    if size > tonumber(ARGV[2]) then
      ys = size
    elseif size > 0 then
      ys = redis.call('HGET', KEYS[i], 'ys')
    end
    f[6] = f[6] or '0-0'
    if f[1] and ys and size <= tonumber(ARGV[2]) then
      tail = log_tail(KEYS[i + 1], f[6], ARGV[1])
    end
  elseif f[1] then
    c = redis.call('HGET', KEYS[i], 'c') or false
  end
  out[n + 1] = f[1] or false
  out[n + 2] = c
  out[n + 3] = f[2] or false
  out[n + 4] = f[3] or false
  out[n + 5] = f[4] or false
  out[n + 6] = ys
  out[n + 7] = f[6] or false
  out[n + 8] = tail
  n = n + 8
end
return out
