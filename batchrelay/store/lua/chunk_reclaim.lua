-- A chunk job held by a worker process whose heartbeat lapsed (heartbeat.py): it is no longer held,
-- the old job leaves arq's queue (it never runs again, even when its in-progress key lapses), and
-- its lines still pending become chunk `new` in the chunk map, which the caller enqueues (if that
-- is cut off, the sweeper finds the chunk without a job). Returns the new chunk's lines (none when
-- every line is done), or nil when the holder beat again or the entry changed since it was read.
-- With `own` = 1 the caller is the holder itself, which knows it no longer runs the chunk: its
-- release was lost (a Redis failover to a replica that lacked it), so its heartbeat is not asked.
-- KEYS: held, worker, chunks, pending, arq_job, queue
-- ARGV: job_id, holder, new_id, own
-- worker: the holder's heartbeat; arq_job: arq's key of the old job; queue: the arq queue it is on.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return nil end
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return nil end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[1])
local raw = redis.call('HGET', KEYS[3], ARGV[1])
local lines = {}
if not raw then return lines end  -- its lines were already handed on (a deferral)
redis.call('HDEL', KEYS[3], ARGV[1])
for n in string.gmatch(raw, '[^,]+') do
  if redis.call('SISMEMBER', KEYS[4], n) == 1 then lines[#lines + 1] = n end
end
if #lines > 0 then redis.call('HSET', KEYS[3], ARGV[3], table.concat(lines, ',')) end
return lines
