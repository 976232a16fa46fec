-- Set the batch's limit. A first limit on a batch that has already spent starts from what its
-- ledger says it spent (calls made with no limit took no reservation, so none was settled). A
-- budget_exhausted batch goes on (in_progress), or is completed when no line is pending. Returns 1
-- when the batch's waiting lines may go on (they need requeueing).
-- KEYS: budget, meta, pending, ledger
-- ARGV: max, now
if redis.call('HEXISTS', KEYS[1], 'spent') == 0 then
  local ledger, spent = redis.call('HGETALL', KEYS[4]), 0
  for i = 1, #ledger, 2 do
    if string.sub(ledger[i], -5) == '\31cost' then spent = spent + tonumber(ledger[i + 1]) end
  end
  redis.call('HSET', KEYS[1], 'spent', string.format('%d', spent))
end
redis.call('HSET', KEYS[1], 'max', ARGV[1])
redis.call('HSET', KEYS[2], 'max_cost', ARGV[1])
if redis.call('HGET', KEYS[2], 'status') ~= STATUS.budget_exhausted then return 0 end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[2], 'status', STATUS.completed, 'finished_at', ARGV[2])
  return 0
end
redis.call('HSET', KEYS[2], 'status', STATUS.in_progress)
return 1
