-- Read co-edited documents, each as one consistent snapshot: its folded state and the log after
-- it. Several documents of one shard in one call (the flusher's batch); one for a join.
-- KEYS[2i-1] document i's hash   KEYS[2i] its update log (all under one shard's hash tag)
-- ARGV[1] at most this many log entries a document
-- Reply: for each document in order, {v, ys, yl, c, del, {id, update, id, update, ...}}; v is
--   nil for a document not in Redis; ys is nil before the seed; yl is "0-0" when nothing has
--   been folded yet.
-- include: log_tail
local out = {}
for i = 1, #KEYS, 2 do
  local f = redis.call('HMGET', KEYS[i], 'v', 'ys', 'yl', 'c', 'del')
  local after = f[3] or '0-0'
  local tail = {}
  if f[1] and f[2] then
    tail = log_tail(KEYS[i + 1], after, ARGV[1])
  end
  out[#out + 1] = {f[1] or false, f[2] or false, after, f[4] or false, f[5] or false, tail}
end
return out
