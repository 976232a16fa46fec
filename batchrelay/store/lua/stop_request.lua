-- The first phase of a stop: a batch not yet finished becomes `cancelling` / `expiring`.
-- Returns the status the batch has afterwards (false for an unknown batch).
-- KEYS: meta
-- ARGV: interim, now
-- interim: cancelling or expiring.
local status = redis.call('HGET', KEYS[1], 'status')
if status == STATUS.validating or status == STATUS.scheduled or status == STATUS.in_progress
    or status == STATUS.budget_exhausted or status == STATUS.paused then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'stop_at', ARGV[2])
  return ARGV[1]
end
return status
