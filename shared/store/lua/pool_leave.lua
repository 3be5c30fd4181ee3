-- Leave a pool (disconnect or cancel), only if the entry is still this connection's.
-- KEYS[1] members (zset: user -> expiry ms)   KEYS[2] entries (hash: user -> "ticket|...")
-- ARGV[1] user id   ARGV[2] ticket   ARGV[3] interest index key prefix (+ slug; same tag)
-- Reply: 1 removed, 0 not there (or owned by a newer connection of the same user)
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw or string.sub(raw, 1, #ARGV[2] + 1) ~= ARGV[2] .. '|' then return 0 end
local list = string.match(raw, '^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$')
for slug in string.gmatch(list, '[^,]+') do redis.call('ZREM', ARGV[3] .. slug, ARGV[1]) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
