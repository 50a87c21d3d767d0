-- INCRBY, and a TTL if the key has none yet. KEYS: the key. ARGV: by, ttl ms (0 = none).
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return value
