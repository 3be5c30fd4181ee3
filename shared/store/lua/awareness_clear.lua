-- A collab socket closed: remove the awareness entries it still owns, so the others can be told
-- those clients are gone.
-- KEYS[1] the document's awareness hash: Yjs client id -> "<clock> <expiry ms> <origin> <state>"
-- ARGV[1] the socket's origin (process:socket)   ARGV[2..] the client ids it announced
-- Reply: {client id, clock, ...} of each entry removed. An entry another socket took over since
--   (a reconnect of the same client) is left alone and not in the reply.
local reply = {}
for i = 2, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    local clock, owner = string.match(value, '^(%d+) %d+ (%S+) ')
    if owner == ARGV[1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      reply[#reply + 1] = ARGV[i]
      reply[#reply + 1] = clock
    end
  end
end
return reply
