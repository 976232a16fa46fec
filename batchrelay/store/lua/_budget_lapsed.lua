-- Fragment (included by the budget scripts): give back every reservation whose lease ended
-- before now_ms.
local function drop_lapsed(budget, leases, now_ms)
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms)) do
    local a = redis.call('HGET', budget, 'r:' .. t)
    if a and a ~= '0' then redis.call('HINCRBY', budget, 'reserved', '-' .. a) end
    redis.call('HDEL', budget, 'r:' .. t)
    redis.call('ZREM', leases, t)
  end
end
