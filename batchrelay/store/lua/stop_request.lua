-- The first phase of a stop: a batch not yet finished becomes `cancelling` / `expiring`.
-- A paused batch (its `run` was interrupted) has no call in flight: its run let them finish before
-- pausing it, and nothing claims a paused batch's lines. So its lines' first tries are forgotten
-- (the stop's next step ends them at once, not after the grace of calls in flight), and it moves
-- from its run's dropped queue to the shared one, whose workers, burst ones included, then move its
-- lane parcels on (cancelled upstream, their lines given back and stopped).
-- Returns the status the batch has afterwards (false for an unknown batch).
-- KEYS: meta, first_try
-- ARGV: interim, now, queue
-- interim: cancelling or expiring. queue: the shared queue.
local status = redis.call('HGET', KEYS[1], 'status')
if status == STATUS.paused then
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[1], 'paused_at')
  redis.call('HSET', KEYS[1], 'queue', ARGV[3])
end
if status == STATUS.validating or status == STATUS.scheduled or status == STATUS.in_progress
    or status == STATUS.budget_exhausted or status == STATUS.paused then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'stop_at', ARGV[2])
  return ARGV[1]
end
return status
