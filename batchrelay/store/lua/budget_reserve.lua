-- Reserve `amount` pico-dollars of the batch's limit for one call, after dropping lapsed
-- reservations. Returns
--    1  reserved (or the batch has no limit);
--    0  wait: the limit covers it, but not beside the reservations in flight (spent + reserved +
--       amount > max >= spent + amount). They settle at or below their amounts, so it may fit once
--       they have: nothing changes, the caller tries again shortly;
--   -1  exhausted: it cannot fit even if every reservation in flight settled at 0 (spent + amount
--       > max; spent only grows), and a batch in progress becomes budget_exhausted.
-- KEYS: budget, budget_leases, meta
-- ARGV: token, amount, now_ms, lease_ms
--#include budget_lapsed
drop_lapsed(KEYS[1], KEYS[2], ARGV[3])
-- a token already holding a reservation (a lane line's, `lane:{pid}:{line}`, reserved again after a
-- crash) keeps it: reserving it twice would hold its amount twice, and settling gives back one
if redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[1]) == 1 then return 1 end
local max = redis.call('HGET', KEYS[1], 'max')
if not max then return 1 end
max = tonumber(max)
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[2])
if spent + amount > max then
  if redis.call('HGET', KEYS[3], 'status') == STATUS.in_progress then
    redis.call('HSET', KEYS[3], 'status', STATUS.budget_exhausted)
  end
  return -1
end
if spent + reserved + amount > max then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
return 1
