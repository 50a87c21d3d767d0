-- Check and reserve over several counters at once, all or none, for each of several
-- reservations in turn (the ones a process asked for at the same moment: one round trip
-- for all of them). First settles or releases the reservations this process finished
-- since its last call (their holds leave before the checks), as finish.lua does.
-- ARGV[1]: JSON [now override ('' = TIME),
--   [[id, ttl ms, reservation hash key, plan index, [amount per limit, ...]], ...],
--   [[reservation hash key, id, {counter: actual} or false to release], ...],
--   plans: [[[counter name, counter hash key, window kind, window ms,
--             capacity (-1 = unlimited)], ...], ...]]
-- (reserves on the same limits, as a key's calls are, share one plan: sent once).
-- One argument, not KEYS and dozens of ARGV: see finish.lua. A counter's expiry index is
-- its hash key .. ':x'.
-- Returns, as one string of integers (cheaper for a client to read than an array): now,
-- then per reservation: status (1 admitted, 0 refused, -1 id live), refused index, retry
-- ms (-1 never), then used, held and window end (-1 none) per limit.
local a = cjson.decode(ARGV[1])
local now = now_ms(a[1])
settle_all(a[3], true, now)

local function reserve(id, ttl, rk, limits, amounts, reply)
  local n = #limits
  local expires = now + ttl
  local existing = redis.call('HGET', rk, 'e')
  if existing and tonumber(existing) > now then
    reply[#reply + 1] = '-1 0 0'
    for _ = 1, n do reply[#reply + 1] = '0 0 -1' end
    return
  end
  local counters, refused, retry = {}, 0, 0
  for i = 1, n do
    local l = limits[i]
    local kind, len, cap, amount = l[3], l[4], l[5], amounts[i]
    local c = l[2]
    local x = c .. ':x'
    local start, stop = bounds(kind, len, now)
    local used, held = touch(c, x, start, now)
    counters[i] = {c = c, x = x, start = start, stop = stop, used = used, held = held}
    if cap >= 0 and used + held + amount > cap then
      if refused == 0 then refused = i end
      local wait
      if amount > cap then
        wait = -1
      elseif kind == 'c' then
        local first = redis.call('ZRANGE', x, 0, 0, 'WITHSCORES')
        wait = first[2] and tonumber(first[2]) - now or 0
      else
        wait = stop - now
      end
      if wait == -1 or retry == -1 then retry = -1 else retry = math.max(retry, wait) end
    end
  end
  if refused == 0 then
    redis.call('DEL', rk)
    local record = {'e', int(expires), 'n', n}
    for i = 1, n do
      local l = limits[i]
      local s, amount = counters[i], amounts[i]
      s.held = s.held + amount
      redis.call('HSET', s.c, 'w', int(s.start), 'h', int(s.held), 'r:' .. id, int(amount))
      redis.call('ZADD', s.x, int(expires), id)
      local life = ttl + MARGIN_MS
      if s.stop >= 0 then life = math.max(life, s.stop - now + MARGIN_MS) end
      keep(s.c, life)
      keep(s.x, life)
      local j = #record
      record[j + 1], record[j + 2] = 'c' .. i, l[1]
      record[j + 3], record[j + 4] = 'k' .. i, s.c
      record[j + 5], record[j + 6] = 't' .. i, l[3]
    end
    redis.call('HSET', rk, unpack(record))
    redis.call('PEXPIRE', rk, int(ttl + MARGIN_MS))
  end
  reply[#reply + 1] = (refused == 0 and '1 ' or '0 ') .. refused .. ' ' .. int(retry)
  for i = 1, n do
    local s = counters[i]
    reply[#reply + 1] = int(s.used) .. ' ' .. int(s.held) .. ' ' .. int(s.stop)
  end
end

local reply = {int(now)}
for _, r in ipairs(a[2]) do
  reserve(r[1], r[2], r[3], a[4][r[4]], r[5], reply)
end
return table.concat(reply, ' ')
