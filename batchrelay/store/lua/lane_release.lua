-- A parcel lets go of lines: each one it still holds is no longer held and its reservation
-- `lane:{pid}:{line}` is settled at 0 (the lane billed nothing for it); one still pending keeps its
-- attempts (the attempts hash: the synchronous relay's `earlier`, and a stop's record, list the
-- lane's) and is tried from now on (first_try; `now` '': the batch is stopping, and the line is
-- stopped at once, its first try forgotten: no call of it is in flight). With `job`, those pending lines become chunk `job`
-- in the chunk map, which the caller then enqueues: if that is cut off, the sweeper finds the chunk
-- without a job. A stopping batch's chunk is not enqueued: claims take nothing from it, and the next
-- lifecycle.advance stops its lines (had the batch not been stopping, the sweeper puts it back).
-- `abandoned` (a fleet_counts field, or ''): the lines let go of are counted there (lines whose
-- upstream batch had not ended: it may still bill them).
-- Returns the pending lines released.
-- KEYS: pending, lane_held, attempts, first_try, chunks, budget, budget_leases, fleet_counts
-- ARGV: pid, job, now, abandoned, ...lines
-- lines: for each line its line number and its attempts as JSON ('' keeps those it has).
--#include lane_settle
local pid, back, let_go = ARGV[1], {}, 0
for i = 5, #ARGV, 2 do
  local line = ARGV[i]
  if redis.call('HGET', KEYS[2], line) == pid then
    redis.call('HDEL', KEYS[2], line)
    let_go = let_go + 1
    settle(KEYS[6], KEYS[7], 'lane:' .. pid .. ':' .. line, '0')
    if redis.call('SISMEMBER', KEYS[1], line) == 1 then
      if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[3], line, ARGV[i + 1]) end
      if ARGV[3] == '' then redis.call('HDEL', KEYS[4], line)  -- the batch stopping: no call is in flight,
      else redis.call('HSET', KEYS[4], line, ARGV[3]) end       -- so its stop need not wait out the grace
      back[#back + 1] = line
    end
  end
end
if ARGV[4] ~= '' and let_go > 0 then redis.call('HINCRBY', KEYS[8], ARGV[4], let_go) end
if ARGV[2] ~= '' and #back > 0 then
  local before = redis.call('HGET', KEYS[5], ARGV[2])  -- the same id twice in one ms: both sets of lines
  redis.call('HSET', KEYS[5], ARGV[2], (before and (before .. ',') or '') .. table.concat(back, ','))
end
return back
