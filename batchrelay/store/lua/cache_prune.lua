-- Drop the given keys' entries (`cache clear`), then what expired and the oldest over the cap.
-- Returns how many entries were dropped.
-- KEYS: cache_entries, cache_index, cache_stats
-- ARGV: keys, now_ms, ttl_ms, max_bytes
-- keys: a JSON array of cache keys to drop (may be empty).
--#include cache_evict
local n = 0
for _, key in ipairs(cjson.decode(ARGV[1])) do
  if redis.call('ZSCORE', KEYS[2], key) then
    cache_drop(KEYS[1], KEYS[2], KEYS[3], key)
    n = n + 1
  end
end
return n + cache_evict(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
