-- The first phase of a stop: a batch not yet finished becomes `cancelling` / `expiring`.
-- A paused batch (its `run` was interrupted) has no call in flight: its run let them finish before
-- pausing it, and nothing claims a paused batch's lines. Its lines' first tries are forgotten, so
-- the stop's next step ends them at once rather than after the grace of calls in flight.
-- Returns the status the batch has afterwards (false for an unknown batch).
-- KEYS: meta, first_try
-- ARGV: interim, now
-- interim: cancelling or expiring.
local status = redis.call('HGET', KEYS[1], 'status')
if status == STATUS.paused then
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[1], 'paused_at')
end
if status == STATUS.validating or status == STATUS.scheduled or status == STATUS.in_progress
    or status == STATUS.budget_exhausted or status == STATUS.paused then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'stop_at', ARGV[2])
  return ARGV[1]
end
return status
