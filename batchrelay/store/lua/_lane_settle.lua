-- Fragment (lane_write, lane_release): settle the budget reservation `token` of a lane line once.
-- Its amount leaves `reserved`; `billed` (pico-dollars as a string: Redis adds it as a 64-bit
-- integer) goes to `spent` when the batch has a limit, also when the reservation is gone (it lapsed,
-- or a crash came between take and reserve): `spent` then still counts every lane answer written.
local function settle(budget, leases, token, billed)
  local a = redis.call('HGET', budget, 'r:' .. token)
  if a then
    if a ~= '0' then redis.call('HINCRBY', budget, 'reserved', '-' .. a) end
    redis.call('HDEL', budget, 'r:' .. token)
    redis.call('ZREM', leases, token)
  end
  if billed ~= '0' and redis.call('HEXISTS', budget, 'max') == 1 then
    redis.call('HINCRBY', budget, 'spent', billed)
  end
end
