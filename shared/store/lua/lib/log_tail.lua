-- Included (shared/store/scripts.py `lua_source`) by the scripts that read a co-edited document
-- for a caller: collab_read.lua and read_docs.lua.

-- A co-edited document's update log after the folded id `after`, at most `count` entries, flat:
-- {id, update, id, update, ...} (an entry's `u` field; `o`, its origin, is left out).
local function log_tail(log, after, count)
  local tail = {}
  local n = 0
  for _, entry in ipairs(redis.call('XRANGE', log, '(' .. after, '+', 'COUNT', count)) do
    local fields = entry[2]
    local update = ''
    for j = 1, #fields, 2 do
      if fields[j] == 'u' then update = fields[j + 1] end
    end
    tail[n + 1] = entry[1]
    tail[n + 2] = update
    n = n + 2
  end
  return tail
end
