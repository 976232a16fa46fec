-- A paused (or orphaned `in_progress`) batch goes on: `in_progress` on `queue`. Returns the status
-- it had before (false: unknown); a batch in any other status is left as it is.
-- KEYS: meta
-- ARGV: queue
local status = redis.call('HGET', KEYS[1], 'status')
if status == STATUS.paused or status == STATUS.in_progress then
  redis.call('HSET', KEYS[1], 'status', STATUS.in_progress, 'queue', ARGV[1])
  redis.call('HDEL', KEYS[1], 'paused_at')
end
return status
