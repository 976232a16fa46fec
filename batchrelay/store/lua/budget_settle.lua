-- Settle a reservation with the billed cost, once: a repeat (a retry after a lost connection)
-- finds it gone and changes nothing. A lapsed reservation's call ran past 2 * call_timeout, which
-- the relay's own deadline does not allow. Returns 1, or 0 when there was nothing to settle.
-- KEYS: budget, budget_leases
-- ARGV: token, billed
local a = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if not a then return 0 end
if a ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. a) end
redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2]) end
return 1
