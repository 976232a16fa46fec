-- Fragment (included by the cache scripts that add or prune answers): drop entries whose TTL has
-- passed (the index scores each key by when it was stored, ms), then the oldest while the stored
-- bytes are over the cap. The stats hash keeps the bytes and entry count in step with the entries.
local function cache_drop(entries, index, stats, key)
  local size = redis.call('HSTRLEN', entries, key)
  redis.call('HDEL', entries, key)
  if redis.call('ZREM', index, key) == 1 then redis.call('HINCRBY', stats, 'entries', -1) end
  return redis.call('HINCRBY', stats, 'bytes', -size)
end

local function cache_evict(entries, index, stats, now_ms, ttl_ms, max_bytes)
  local n = 0
  local gone = redis.call('ZRANGEBYSCORE', index, '-inf', now_ms - ttl_ms, 'LIMIT', 0, 1000)
  for _, key in ipairs(gone) do
    cache_drop(entries, index, stats, key)
    n = n + 1
  end
  local bytes = tonumber(redis.call('HGET', stats, 'bytes') or '0')
  while bytes > max_bytes do
    local oldest = redis.call('ZRANGE', index, 0, 0)
    if #oldest == 0 then break end
    bytes = cache_drop(entries, index, stats, oldest[1])
    n = n + 1
  end
  if n > 0 then redis.call('HINCRBY', stats, 'evicted', n) end
  return n
end
