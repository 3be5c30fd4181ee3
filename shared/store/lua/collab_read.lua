-- Read a co-edited document as one consistent snapshot: its folded state and the log after it.
-- KEYS[1] document hash   KEYS[2] the document's update log
-- ARGV[1] at most this many log entries
-- Reply: {v, ys, yl, c, del, {id, update, id, update, ...}}; v is nil for a document not in
--   Redis; ys is nil before the seed; yl is "0-0" when nothing has been folded yet.
local f = redis.call('HMGET', KEYS[1], 'v', 'ys', 'yl', 'c', 'del')
local after = f[3] or '0-0'
local tail = {}
if f[1] and f[2] then
  local n = 0
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '(' .. after, '+', 'COUNT', ARGV[1])) do
    local fields = entry[2]
    local update = ''
    for j = 1, #fields, 2 do
      if fields[j] == 'u' then update = fields[j + 1] end
    end
    tail[n + 1] = entry[1]
    tail[n + 2] = update
    n = n + 2
  end
end
return {f[1] or false, f[2] or false, after, f[4] or false, f[5] or false, tail}
