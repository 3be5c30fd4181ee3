-- Read documents for a flush, one shard slice in one call: each document as one consistent
-- snapshot, a co-edited one with its Yjs state and the update log after it (so the flush needs
-- no second read, and state, log and version agree).
-- KEYS[2i-1] document i's hash   KEYS[2i] its update log (all under one shard's hash tag)
-- ARGV[1] at most this many log entries a document
-- Reply: for each document in order 8 entries: v, c, by, at, del, ys, yl, {id, update, ...}; nil
--   for a missing field (a missing document reads as nils and an empty log). A co-edited document
--   (`yb` set) has no `c` (the fold makes the text: shipping it too would double the reply), its
--   `ys` (nil before the seed), `yl` ("0-0" when nothing is folded yet) and its log after `yl`;
--   any other document has `c` and nil `ys`/`yl`.
-- Runs on a client whose replies stay bytes (a Yjs state is not text).
local out = {}
local n = 0
for i = 1, #KEYS, 2 do
  local f = redis.call('HMGET', KEYS[i], 'v', 'c', 'by', 'at', 'del', 'yb', 'ys', 'yl')
  local tail = {}
  if f[6] then
    f[2] = false
    f[8] = f[8] or '0-0'
    if f[1] and f[7] then
      local m = 0
      for _, entry in ipairs(redis.call('XRANGE', KEYS[i + 1], '(' .. f[8], '+', 'COUNT', ARGV[1])) do
        local fields = entry[2]
        local update = ''
        for j = 1, #fields, 2 do
          if fields[j] == 'u' then update = fields[j + 1] end
        end
        tail[m + 1] = entry[1]
        tail[m + 2] = update
        m = m + 2
      end
    end
  end
  for j = 1, 5 do
    out[n + j] = f[j] or false
  end
  out[n + 6] = f[7] or false
  out[n + 7] = f[8] or false
  out[n + 8] = tail
  n = n + 8
end
return out
