-- Drop lapsed reservations (as a reserve does first), so the budget read next is current. Returns 1.
-- KEYS: budget, budget_leases
-- ARGV: now_ms
--#include budget_lapsed
drop_lapsed(KEYS[1], KEYS[2], ARGV[1])
return 1
