-- Check and reserve over several counters at once: all or none.
-- First settles the reservations this process finished since its last call (their holds
-- leave before the check), as finish.lua does.
-- KEYS: counter hash and expiry index of each limit (2n), the reservation hash, then the
--       hashes of the reservations to settle.
-- ARGV: now override ('' = TIME), id, ttl ms, n, then per limit:
--       counter name, window kind, window ms, capacity (-1 = unlimited), amount;
--       then per reservation to settle: id, number of pairs, pairs (counter, actual).
-- Returns, as one string of integers (cheaper for a client to read than an array):
-- status (1 admitted, 0 refused, -1 id live), refused index, retry ms (-1 never), now,
-- then used, held and window end (-1 none) per limit.
local now = now_ms(ARGV[1])
local id, ttl, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local rk = KEYS[2 * n + 1]
local expires = now + ttl
settle_all(2 * n + 2, 5 + 5 * n, true, now)

local existing = redis.call('HGET', rk, 'e')
if existing and tonumber(existing) > now then
  return '-1 0 0 ' .. int(now)
end

local counters, refused, retry = {}, 0, 0
for i = 1, n do
  local a = 4 + (i - 1) * 5
  local kind, len = ARGV[a + 2], tonumber(ARGV[a + 3])
  local cap, amount = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local c, x = KEYS[2 * i - 1], KEYS[2 * i]
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
    local a = 4 + (i - 1) * 5
    local s, amount = counters[i], tonumber(ARGV[a + 5])
    s.held = s.held + amount
    redis.call('HSET', s.c, 'w', int(s.start), 'h', int(s.held), 'r:' .. id, int(amount))
    redis.call('ZADD', s.x, int(expires), id)
    local life = ttl + MARGIN_MS
    if s.stop >= 0 then life = math.max(life, s.stop - now + MARGIN_MS) end
    keep(s.c, life)
    keep(s.x, life)
    local j = #record
    record[j + 1], record[j + 2] = 'c' .. i, ARGV[a + 1]
    record[j + 3], record[j + 4] = 'k' .. i, s.c
    record[j + 5], record[j + 6] = 't' .. i, ARGV[a + 2]
  end
  redis.call('HSET', rk, unpack(record))
  redis.call('PEXPIRE', rk, int(ttl + MARGIN_MS))
end

local reply = {refused == 0 and 1 or 0, refused, int(retry), int(now)}
for i = 1, n do
  local s = counters[i]
  local j = #reply
  reply[j + 1], reply[j + 2], reply[j + 3] = int(s.used), int(s.held), int(s.stop)
end
return table.concat(reply, ' ')
