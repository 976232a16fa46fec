-- A `run` stopped by a signal: its batch, if still `in_progress`, becomes `paused` (claims take
-- nothing from it until it is resumed). Returns the status the batch has afterwards (false: unknown).
-- KEYS: meta
-- ARGV: now
local status = redis.call('HGET', KEYS[1], 'status')
if status == STATUS.in_progress then
  redis.call('HSET', KEYS[1], 'status', STATUS.paused, 'paused_at', ARGV[1])
  return STATUS.paused
end
return status
