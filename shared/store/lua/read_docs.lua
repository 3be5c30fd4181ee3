-- Read documents for a flush, one shard's worth in one call.
-- KEYS[1..n] document hashes (all in one shard: one hash tag)
-- ARGV none
-- Reply: for each key in order, its v, c, by, at, del, yb fields: 6 entries a document, nil for
-- a missing field (a missing document reads as six nils). `yb` is set on a co-edited document
-- (its Yjs state and log are read apart, as bytes: shared/store/update_log.py); its `c` is then
-- nil too: the fold makes the text, and a batch of them would ship every text twice.
-- One call instead of n pipelined HMGETs: the flusher's Python time went mostly to packing
-- and parsing those commands.
local out = {}
local n = 0
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'v', 'c', 'by', 'at', 'del', 'yb')
  if f[6] then
    f[2] = false
  end
  for j = 1, 6 do
    out[n + j] = f[j]
  end
  n = n + 6
end
return out
