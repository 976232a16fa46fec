-- Answers by key: each one stored, or false (nil to the caller) when it is not stored or its TTL
-- has passed (it is then dropped). With `count` "1" each lookup counts as a hit or a miss in the
-- stats (a single-flight waiter's polls do not). One call for a whole chunk's keys.
-- KEYS: cache_entries, cache_index, cache_stats
-- ARGV: keys, now_ms, ttl_ms, count
-- keys: a JSON array of cache keys.
--#include cache_evict
local keys, oldest = cjson.decode(ARGV[1]), tonumber(ARGV[2]) - tonumber(ARGV[3])
local out, hits = {}, 0
for i, key in ipairs(keys) do
  local at = redis.call('ZSCORE', KEYS[2], key)
  local value = false
  if at and tonumber(at) > oldest then
    value = redis.call('HGET', KEYS[1], key) or false
  elseif at then
    cache_drop(KEYS[1], KEYS[2], KEYS[3], key)
  end
  if value then hits = hits + 1 end
  out[i] = value
end
if ARGV[4] == '1' then
  if hits > 0 then redis.call('HINCRBY', KEYS[3], 'hits', hits) end
  if #keys > hits then redis.call('HINCRBY', KEYS[3], 'misses', #keys - hits) end
end
return out
