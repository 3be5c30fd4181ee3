-- Store the awareness entries (y-protocols: cursors, names, selections) one socket sent for a
-- document: bounded, expiring, never persisted. A late joiner reads them at once instead of
-- waiting up to 15 s for every client's next renewal.
-- KEYS[1] the document's awareness hash: Yjs client id -> "<clock> <expiry ms> <origin> <state>"
-- ARGV[1] now (ms)   ARGV[2] an entry's lifetime, and the hash's PEXPIRE (ms)
-- ARGV[3] cap: entries per document   ARGV[4] cap: bytes per state
-- ARGV[5] origin (process:socket) that now owns what it stores
-- ARGV[6] the document's relay channel   ARGV[7] the relay payload, published on it only when
--   every entry was taken (one round trip on the common path; otherwise the caller relays the
--   entries taken itself)
-- ARGV[8..] per entry, three each: client id, clock, state JSON ("null": the client is gone)
-- Reply: one status per entry: 1 stored; 2 removed (state null); 0 stale (the stored clock is
--   newer, or this socket sent this clock already); -1 the document is at its entry cap; -2 the
--   state is over the byte cap.
-- An expired entry counts as absent: any clock replaces it. A reconnecting y-websocket client
-- resends its state with the clock it had, so an equal clock from another socket takes the entry
-- over (the old socket's close then finds nothing of its own to clear).
local key = KEYS[1]
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])
local origin = ARGV[5]
local expiry = string.format('%d', now + ttl)

local function expired(value)
  local at = string.match(value, '^%d+ (%d+) ')
  return tonumber(at) <= now
end

local swept = false
local function sweep()
  swept = true
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if expired(all[i + 1]) then
      redis.call('HDEL', key, all[i])
    end
  end
end

local reply = {}
local stored = false
local all_taken = true
for i = 8, #ARGV, 3 do
  local id, clock, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local value = redis.call('HGET', key, id)
  local newer = true
  if value and not expired(value) then
    local had, owner = string.match(value, '^(%d+) %d+ (%S+) ')
    local diff = tonumber(clock) - tonumber(had)
    newer = diff > 0 or (diff == 0 and owner ~= origin)
  end
  local status
  if not newer then
    status = 0
  elseif state == 'null' then
    redis.call('HDEL', key, id)
    status = 2
  elseif #state > max_bytes then
    status = -2
  else
    status = 1
    if not value then
      -- A new client: the only time the hash grows, so the only time expired ones are swept.
      if not swept then
        sweep()
      end
      if redis.call('HLEN', key) >= cap then
        status = -1
      end
    end
    if status == 1 then
      redis.call('HSET', key, id, clock .. ' ' .. expiry .. ' ' .. origin .. ' ' .. state)
      stored = true
    end
  end
  if status <= 0 then
    all_taken = false
  end
  reply[#reply + 1] = status
end
if stored then
  redis.call('PEXPIRE', key, ttl)
end
if all_taken and #reply > 0 then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
return reply
