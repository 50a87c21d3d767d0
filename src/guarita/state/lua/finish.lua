-- Settle or release reservations, each once (`finish` in prelude.lua).
-- ARGV[1]: JSON [now override ('' = TIME), 'settle' or 'release', [[reservation hash key,
-- id, {counter: actual amount}], ...]]. The keys travel in the argument, not in KEYS:
-- encoding dozens of separate arguments cost the client more than the script itself
-- (docs/shared-state.md, "Redis Cluster").
-- Returns how many of the reservations were live.
local a = cjson.decode(ARGV[1])
return settle_all(a[3], a[2] == 'settle', now_ms(a[1]))
