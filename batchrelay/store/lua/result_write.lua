-- A line's final result, written once with its counts, size and ledger; the last line ends the
-- batch: completed, or cancelled / expired when it was being stopped. Returns 1, or 0 when the line
-- already had a result (a rerun, which changes nothing).
-- KEYS: results, pending, meta, attempts, ledger
-- ARGV: line, record, count, now, ...ledger
-- record: the stored result (b"1" or b"0" + JSON); count: the meta count it adds to; ledger: field,
-- increment pairs (integers as strings: Redis adds them as 64-bit integers, never as floats).
--#include result_bytes
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
add_bytes(KEYS[3], ARGV[2], 1)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[5], ARGV[i], ARGV[i + 1]) end
if redis.call('SCARD', KEYS[2]) == 0 then
  local status = redis.call('HGET', KEYS[3], 'status')
  local final = nil
  if status == STATUS.in_progress or status == STATUS.budget_exhausted or status == STATUS.paused then final = STATUS.completed
  elseif status == STATUS.cancelling then final = STATUS.cancelled
  elseif status == STATUS.expiring then final = STATUS.expired end
  if final then redis.call('HSET', KEYS[3], 'status', final, 'finished_at', ARGV[4]) end
end
return 1
