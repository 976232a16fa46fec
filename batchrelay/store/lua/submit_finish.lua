-- The end of a submit: the final counts, then `in_progress`, `scheduled` until start_at, or
-- `completed` when no line is pending. Returns the status it set, or '' when the batch was
-- stopped meanwhile (it is left as it is).
-- KEYS: pending, meta
-- ARGV: now, start_at, ...counts
-- start_at: '' for at once; counts: field, value pairs written to meta.
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if redis.call('HGET', KEYS[2], 'status') ~= STATUS.validating then return '' end
local status = STATUS.in_progress
if redis.call('SCARD', KEYS[1]) == 0 then
  status = STATUS.completed
  redis.call('HSET', KEYS[2], 'finished_at', ARGV[1])
elseif ARGV[2] ~= '' then
  status = STATUS.scheduled
  redis.call('HSET', KEYS[2], 'start_at', ARGV[2])
end
redis.call('HSET', KEYS[2], 'status', status)
return status
