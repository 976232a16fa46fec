-- A lease on a parcel (lane_lease) or on a lane's create (lane_creating, passed as lane_lease): taken
-- when free, renewed when `holder` has it (`ttl_ms`), given up with ttl_ms = 0 (only by its holder).
-- Returns 1 when `holder` has it now, else 0.
-- KEYS: lane_lease
-- ARGV: holder, ttl_ms
local cur = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
  if cur == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
