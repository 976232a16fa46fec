-- The last phase of a stop when no line was left to end it: `cancelling` -> `cancelled`,
-- `expiring` -> `expired`. Does nothing if the batch moved on meanwhile. Returns 1.
-- KEYS: meta
-- ARGV: interim, final, now
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
end
return 1
