-- Settle or release a reservation, once. Reads the counters from the reservation hash
-- (they share its hash tag when the caller follows the Cluster rule in docs/shared-state.md).
-- KEYS: the reservation hash. ARGV: now override, id, 'settle' or 'release', then pairs of
-- counter name and actual amount. Returns 1 if the reservation was live, else 0.
local now = now_ms(ARGV[1])
local id, settle = ARGV[2], ARGV[3] == 'settle'
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return 0
end
local record = {}
for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
local live = tonumber(record.e) > now

local actual = {}
for i = 4, #ARGV, 2 do actual[ARGV[i]] = ARGV[i + 1] end

for i = 1, tonumber(record.n) do
  local c = record['k' .. i]
  local amount = redis.call('HGET', c, 'r:' .. id)
  if amount then -- absent: the window rolled over, or the hold expired and was purged
    redis.call('HDEL', c, 'r:' .. id)
    redis.call('HINCRBY', c, 'h', int(-tonumber(amount)))
    redis.call('ZREM', c .. ':x', id)
    if live and settle and record['t' .. i] ~= 'c' then
      redis.call('HINCRBY', c, 'u', actual[record['c' .. i]] or amount)
    end
  end
end
redis.call('DEL', KEYS[1])
return live and 1 or 0
