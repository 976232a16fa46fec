-- A worker process stops holding a chunk job it ran (heartbeat.py): the entry goes only while it is
-- still this worker's, never another's that took the same job id since. Returns 1 if it went.
-- KEYS: held
-- ARGV: job, holder
-- holder: the entry's value as this worker wrote it (`{worker} {batch id}`).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
