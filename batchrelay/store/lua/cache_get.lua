-- One answer, or nil when it is not stored or its TTL has passed (it is then dropped). With
-- `count` "1" the lookup counts as a hit or a miss in the stats (a single-flight waiter's polls do not).
-- KEYS: cache_entries, cache_index, cache_stats
-- ARGV: key, now_ms, ttl_ms, count
--#include cache_evict
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
local value = nil
if at and tonumber(at) > tonumber(ARGV[2]) - tonumber(ARGV[3]) then
  value = redis.call('HGET', KEYS[1], ARGV[1])
elseif at then
  cache_drop(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[3], value and 'hits' or 'misses', 1) end
return value
