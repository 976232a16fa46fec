-- A scheduled batch that is due becomes in_progress. Returns 1 for the one caller that moved it
-- (it enqueues the chunks), 0 for everyone else.
-- KEYS: meta
-- ARGV: now
if redis.call('HGET', KEYS[1], 'status') ~= STATUS.scheduled then return 0 end
local start_at = tonumber(redis.call('HGET', KEYS[1], 'start_at') or '0')
if start_at > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', STATUS.in_progress, 'started_at', ARGV[1])
return 1
