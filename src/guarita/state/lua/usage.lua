-- The counters of some limits now. KEYS: counter hash and expiry index per limit.
-- ARGV: now override, n, then window kind and window ms per limit.
-- Returns, as one string of integers: now, then used, held and window end (-1 none) per limit.
local now = now_ms(ARGV[1])
local reply = {int(now)}
for i = 1, tonumber(ARGV[2]) do
  local start, stop = bounds(ARGV[2 * i + 1], tonumber(ARGV[2 * i + 2]), now)
  local used, held = touch(KEYS[2 * i - 1], KEYS[2 * i], start, now)
  local j = #reply
  reply[j + 1], reply[j + 2], reply[j + 3] = int(used), int(held), int(stop)
end
return table.concat(reply, ' ')
