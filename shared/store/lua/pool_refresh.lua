-- Heartbeat: push back the expiry of the entries a process's live connections still own.
-- Never re-creates an entry: a match may have claimed it, and the claimed must not return.
-- KEYS[1] members (zset: user -> expiry ms)   KEYS[2] entries (hash: user -> "ticket|...")
-- ARGV[1] new expiry (ms)   ARGV[2] claimed marker key prefix (+ user id; same tag)
-- ARGV[3..] pairs of user id, ticket
-- Reply: the user ids whose entry is gone and was not claimed for that ticket (expired, or
-- pruned as a ghost): the caller may put them back.
local lost = {}
for i = 3, #ARGV, 2 do
  local user, ticket = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[2], user)
  if raw and string.sub(raw, 1, #ticket + 1) == ticket .. '|' then
    redis.call('ZADD', KEYS[1], ARGV[1], user)
  elseif not raw and redis.call('GET', ARGV[2] .. user) ~= ticket then
    lost[#lost + 1] = user
  end
end
return lost
