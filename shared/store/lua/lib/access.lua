-- Included (shared/store/scripts.py `lua_source`) by the scripts that write a document for a
-- caller: edit.lua and collab_append.lua. One access rule, one rate check.

-- Does any of the caller's grants, ARGV[first..], open a document whose acl is `acl`?
local function granted(acl, first)
  local padded = ' ' .. (acl or '') .. ' '
  for i = first, #ARGV do
    if string.find(padded, ' ' .. ARGV[i] .. ' ', 1, true) then
      return true
    end
  end
  return false
end

-- GCRA, as in gcra.lua, without storing: the new theoretical arrival time to SET (PX tat - now)
-- once the write is sure, or nil and the milliseconds until a retry may succeed.
local function gcra_next(key, now, interval, burst)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local early = new_tat - burst * interval - now
  if early > 0 then
    return nil, early
  end
  return new_tat, 0
end
