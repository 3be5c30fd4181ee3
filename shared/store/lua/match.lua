-- Enter one language's pool and, unless the scan limit is 0, claim the best partner in it.
-- Every key below carries the pool's hash tag, so this is one script on one node, and no two
-- seekers (on any number of matcher processes) can ever claim the same user.
--
-- KEYS[1] members  (zset: user -> entry expiry ms)
-- KEYS[2] entries  (hash: user -> "ticket|joined_ms|region|wanted_region|slug,slug,...")
-- KEYS[3..] the seeker's interest indexes (zset: user -> joined ms), in ARGV[13..] order
-- ARGV[1] now (ms)                ARGV[2] the seeker's entry expiry (ms)
-- ARGV[3] seeker user id          ARGV[4] seeker ticket (one per connection)
-- ARGV[5] seeker region ('' none) ARGV[6] wanted partner region ('' any)
-- ARGV[7] scan limit: longest-waiting candidates read per interest (0: only enter the pool)
-- ARGV[8] prune limit: expired entries removed per call
-- ARGV[9] interest index key prefix (+ slug = an index; same tag)
-- ARGV[10] claimed marker key prefix (+ user id; same tag)   ARGV[11] claimed marker ttl (ms)
-- ARGV[12] requeue: '1' the match that claimed this ticket was called off (its room could not
--          be opened), so the ticket may enter again; '0' otherwise
-- ARGV[13..] the seeker's interests (slugs)
-- Reply: {'queued'} the seeker is in the pool, no partner found
--        {'claimed'} this ticket was claimed by someone else's match (the result is on its way,
--                    or already delivered): it neither enters nor is matched again
--        {'matched', partner_id, partner_ticket, shared slug, ...}
local members, entries = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local seeker, ticket = ARGV[3], ARGV[4]
local region, wanted = ARGV[5], ARGV[6]
local scan = tonumber(ARGV[7])
local prune = tonumber(ARGV[8])
local iprefix, cprefix = ARGV[9], ARGV[10]
local claim_ttl = tonumber(ARGV[11])
local requeue = ARGV[12] == '1'

local function parse(raw)
  local t, j, r, w, list = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  local slugs = {}
  for slug in string.gmatch(list, '[^,]+') do slugs[#slugs + 1] = slug end
  return {ticket = t, joined = tonumber(j), region = r, wanted = w, interests = slugs}
end

-- Remove a user's entry, its index memberships and its expiry.
local function remove(user)
  local raw = redis.call('HGET', entries, user)
  if raw then
    for _, slug in ipairs(parse(raw).interests) do redis.call('ZREM', iprefix .. slug, user) end
    redis.call('HDEL', entries, user)
  end
  redis.call('ZREM', members, user)
end

-- 1. Ghosts: entries whose connection stopped refreshing them (oldest expiry first, bounded).
local expired = redis.call('ZRANGE', members, '-inf', '(' .. now, 'BYSCORE', 'LIMIT', 0, prune)
for _, user in ipairs(expired) do remove(user) end

-- 2. A ticket a match claimed is matched: it must not enter or match again, whatever the caller
-- believes (its find_match may arrive after its match_found was delivered: that is one search,
-- not two). Only a requeue, the claiming match called off, gives the ticket back. The marker
-- names one ticket: another connection of the same user neither trips on it nor clears it.
local claimed = cprefix .. seeker
if redis.call('GET', claimed) == ticket then
  if not requeue then return {'claimed'} end
  redis.call('DEL', claimed)
end
local current = redis.call('HGET', entries, seeker)
local joined = now
if current then
  local e = parse(current)
  if e.ticket == ticket then joined = e.joined end
end
remove(seeker)

-- 3. Count each candidate's overlap over the seeker's indexes (the longest-waiting `scan` of
-- each), so the cost follows the seeker's interests, not the pool's size.
local count, since, order = {}, {}, {}
if scan > 0 then
  for i = 3, #KEYS do
    local page = redis.call('ZRANGE', KEYS[i], 0, scan - 1, 'WITHSCORES')
    for k = 1, #page, 2 do
      local user = page[k]
      if count[user] then
        count[user] = count[user] + 1
      else
        count[user] = 1
        since[user] = tonumber(page[k + 1])
        order[#order + 1] = user
      end
    end
  end
end
-- Most shared interests first; ties go to whoever waited longest, then by id (deterministic).
local function better(a, b)
  if count[a] ~= count[b] then return count[a] > count[b] end
  if since[a] ~= since[b] then return since[a] < since[b] end
  return a < b
end

-- 4. The first live candidate whose region suits both sides. Usually the best one is: one
-- linear pass finds it; only when it is unsuitable are the rest sorted and tried in order.
local function try(user)
  local until_ms = tonumber(redis.call('ZSCORE', members, user))
  if until_ms == nil or until_ms < now then
    remove(user)
    return nil
  end
  local raw = redis.call('HGET', entries, user)
  if not raw then
    redis.call('ZREM', members, user)
    return nil
  end
  local e = parse(raw)
  if (wanted ~= '' and e.region ~= wanted) or (e.wanted ~= '' and e.wanted ~= region) then
    return nil
  end
  local theirs = {}
  for _, slug in ipairs(e.interests) do theirs[slug] = true end
  local reply = {'matched', user, e.ticket}
  for i = 13, #ARGV do
    if theirs[ARGV[i]] then reply[#reply + 1] = ARGV[i] end
  end
  remove(user)
  redis.call('SET', cprefix .. user, e.ticket, 'PX', claim_ttl)
  return reply
end

if #order > 0 then
  local best = order[1]
  for i = 2, #order do
    if better(order[i], best) then best = order[i] end
  end
  local reply = try(best)
  if reply then return reply end
  table.sort(order, better)
  for _, user in ipairs(order) do
    if user ~= best then
      reply = try(user)
      if reply then return reply end
    end
  end
end

-- 5. Nobody: the seeker waits in the pool to be found.
local list = {}
for i = 13, #ARGV do list[#list + 1] = ARGV[i] end
redis.call('HSET', entries, seeker,
  ticket .. '|' .. joined .. '|' .. region .. '|' .. wanted .. '|' .. table.concat(list, ','))
redis.call('ZADD', members, expiry, seeker)
for i = 3, #KEYS do redis.call('ZADD', KEYS[i], joined, seeker) end
return {'queued'}
