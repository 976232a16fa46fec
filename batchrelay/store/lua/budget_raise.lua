-- Set the batch's limit. A budget_exhausted batch goes on (in_progress), or is completed when no
-- line is pending. Returns 1 when the batch's waiting lines may go on (they need requeueing).
-- KEYS: budget, meta, pending
-- ARGV: max, now
redis.call('HSET', KEYS[1], 'max', ARGV[1])
redis.call('HSET', KEYS[2], 'max_cost', ARGV[1])
if redis.call('HGET', KEYS[2], 'status') ~= STATUS.budget_exhausted then return 0 end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[2], 'status', STATUS.completed, 'finished_at', ARGV[2])
  return 0
end
redis.call('HSET', KEYS[2], 'status', STATUS.in_progress)
return 1
