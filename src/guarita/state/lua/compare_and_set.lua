-- Write a value only if it is the one expected: one atomic step however many processes try.
-- KEYS: the key. ARGV: '1' if the key must be absent (then ARGV[2] is ignored) else '0',
-- the expected value, the new value, ttl ms (0 = none). Returns 1 if written, else 0.
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then -- also when absent: GET gave false
  return 0
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
