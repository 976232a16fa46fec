-- Store one answer (replacing the key's old one), then drop what expired and the oldest while the
-- cache is over its size cap. Returns how many entries were dropped.
-- KEYS: cache_entries, cache_index, cache_stats
-- ARGV: key, value, now_ms, ttl_ms, max_bytes
-- value: the compressed entry (store/cache.py); now_ms: when it is stored (its index score).
--#include cache_evict
local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[3], 'entries', 1) end
redis.call('HINCRBY', KEYS[3], 'bytes', #ARGV[2] - old)
redis.call('HINCRBY', KEYS[3], 'stored', 1)
return cache_evict(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
