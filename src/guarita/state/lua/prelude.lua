-- Shared by the counter scripts (prepended to each): the clock, windows, and the lazy
-- purge of expired holds. Amounts are integer millionths; numbers go back to Redis
-- through int(), because Lua's tostring would write 1e+15 where Redis wants digits.

local MARGIN_MS = 1000 -- keys outlive the last moment they matter by this much

local function int(n)
  return string.format('%d', n)
end

-- The time in ms: Redis's own clock, or the one a test passes in ARGV[1].
local function now_ms(override)
  if override ~= '' then
    return tonumber(override)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Days since 1970-01-01 <-> (year, month, day), proleptic Gregorian (H. Hinnant's algorithms).
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return year, month
end

local function days_from_civil(year, month, day)
  if month <= 2 then year = year - 1 end
  local era = math.floor(year / 400)
  local yoe = year - era * 400
  local mp = month > 2 and month - 3 or month + 9
  local doy = math.floor((153 * mp + 2) / 5) + day - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Start and end (ms) of the window holding `now`: kind 'f' is a fixed window of `len` ms
-- aligned to the epoch, 'M' a UTC calendar month, 'c' (concurrent) one endless window (0, -1).
local function bounds(kind, len, now)
  if kind == 'f' then
    local start = now - now % len
    return start, start + len
  elseif kind == 'M' then
    local year, month = civil_from_days(math.floor(now / 86400000))
    local start = days_from_civil(year, month, 1) * 86400000
    if month == 12 then year, month = year + 1, 1 else month = month + 1 end
    return start, days_from_civil(year, month, 1) * 86400000
  end
  return 0, -1
end

-- Bring counter hash `c` (fields w: window start, u: used, h: held, r:<id>: a hold) and
-- its expiry index `x` (zset of hold ids by expiry) to the window starting at `start`.
-- A new window starts empty: the holds of the last one settle into it, not into this one.
-- Holds past their expiry stop counting. Returns used, held.
local function touch(c, x, start, now)
  local w, used, held = unpack(redis.call('HMGET', c, 'w', 'u', 'h'))
  if w and tonumber(w) ~= start then
    redis.call('DEL', c, x)
    return 0, 0
  end
  used, held = tonumber(used) or 0, tonumber(held) or 0
  local freed = 0
  while true do
    local expired = redis.call('ZRANGEBYSCORE', x, '-inf', now, 'LIMIT', 0, 256)
    if #expired == 0 then break end
    local fields = {}
    for i, id in ipairs(expired) do fields[i] = 'r:' .. id end
    for _, amount in ipairs(redis.call('HMGET', c, unpack(fields))) do
      freed = freed + (tonumber(amount) or 0)
    end
    redis.call('HDEL', c, unpack(fields))
    redis.call('ZREM', x, unpack(expired))
  end
  if freed > 0 then
    held = held - freed
    redis.call('HSET', c, 'h', int(held))
  end
  return used, held
end

-- Set key k to expire in `ttl` ms unless it already lives longer.
local function keep(k, ttl)
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, int(ttl))
  end
end

-- Settle (`settle` true) or release reservation `id`, whose hash is `rk`, once: its holds
-- leave their counters and, when it is live and settled, become usage (`actual[counter]`,
-- else the amount held; a concurrent hold is only released). Returns 1 if it was live.
-- The counters are read from the reservation hash (they share its hash tag when the caller
-- follows the Cluster rule in docs/shared-state.md).
local function finish(rk, id, settle, actual, now)
  local fields = redis.call('HGETALL', rk)
  if #fields == 0 then
    return 0
  end
  local record = {}
  for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
  local live = tonumber(record.e) > now
  for i = 1, tonumber(record.n) do
    local c = record['k' .. i]
    local amount = redis.call('HGET', c, 'r:' .. id)
    if amount then -- absent: the window rolled over, or the hold expired and was purged
      redis.call('HDEL', c, 'r:' .. id)
      redis.call('HINCRBY', c, 'h', int(-tonumber(amount)))
      redis.call('ZREM', c .. ':x', id)
      if live and settle and record['t' .. i] ~= 'c' then
        redis.call('HINCRBY', c, 'u', int(tonumber(actual[record['c' .. i]] or amount)))
      end
    end
  end
  redis.call('DEL', rk)
  return live and 1 or 0
end

-- Settle the reservations listed in `batch` (decoded JSON): per reservation its hash
-- key, its id and a map of counter name to actual amount, or false to release it (as
-- all of them are when `settle` is false). Returns how many were live.
local function settle_all(batch, settle, now)
  local live = 0
  for _, entry in ipairs(batch) do
    local actual = entry[3]
    live = live + finish(entry[1], entry[2], settle and actual ~= false, actual or {}, now)
  end
  return live
end
