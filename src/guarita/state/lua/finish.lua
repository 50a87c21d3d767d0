-- Settle or release reservations, each once (`finish` in prelude.lua).
-- KEYS: the reservation hashes. ARGV: now override, 'settle' or 'release', then per
-- reservation: its id, the number of pairs, and pairs of counter name and actual amount.
-- Returns how many of the reservations were live.
return settle_all(1, 3, ARGV[2] == 'settle', now_ms(ARGV[1]))
