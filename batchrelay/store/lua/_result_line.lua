-- Fragment (result_write, results_write; after result_bytes): one line's final result, written once
-- with its count, size and ledger, and the end of the batch once no line is pending. KEYS are those
-- of result_write: results, pending, meta, attempts, ledger, fleet_ledger, fleet_counts, minutes.
-- write_line: 1, or 0 when the line already had a result (a rerun, which changes nothing). Its
-- ledger is args[from..split-1], field/increment pairs (integers as strings: Redis adds them as
-- 64-bit integers, never as floats), added to the batch's ledger and the fleet's; its tally is
-- args[split..to], pairs added to the fleet's counts (the calls by outcome). The fleet's counts also
-- get `lines SEP count`, and the batch's minute buckets (`minute SEP count`, `minute SEP cost`; the
-- minute is unix time // 60) the line and its cost. A provider's cost also goes to the fleet's counts
-- as `spend SEP day SEP provider` (pico-dollars; day = unix time // 86400, a UTC day: the dashboard's
-- spend today; one field per provider a day).
local SEP = '\31'
local function write_line(line, record, count, now, args, from, split, to)
  if redis.call('HSETNX', KEYS[1], line, record) == 0 then return 0 end
  redis.call('SREM', KEYS[2], line)
  redis.call('HDEL', KEYS[4], line)
  redis.call('HINCRBY', KEYS[3], count, 1)
  add_bytes(KEYS[3], record, 1)
  local minute = string.format('%d', math.floor(tonumber(now) / 60))
  local day = string.format('%d', math.floor(tonumber(now) / 86400))
  redis.call('HINCRBY', KEYS[7], 'lines' .. SEP .. count, 1)
  redis.call('HINCRBY', KEYS[8], minute .. SEP .. count, 1)
  for i = from, split - 1, 2 do
    redis.call('HINCRBY', KEYS[5], args[i], args[i + 1])
    redis.call('HINCRBY', KEYS[6], args[i], args[i + 1])
    if string.sub(args[i], -5) == SEP .. 'cost' then
      redis.call('HINCRBY', KEYS[8], minute .. SEP .. 'cost', args[i + 1])
      local provider = string.sub(args[i], 1, string.find(args[i], SEP, 1, true) - 1)
      redis.call('HINCRBY', KEYS[7], 'spend' .. SEP .. day .. SEP .. provider, args[i + 1])
    end
  end
  for i = split, to, 2 do redis.call('HINCRBY', KEYS[7], args[i], args[i + 1]) end
  return 1
end

-- The last line ends the batch: completed, or cancelled / expired when it was being stopped.
local function end_if_done(now)
  if redis.call('SCARD', KEYS[2]) ~= 0 then return end
  local status = redis.call('HGET', KEYS[3], 'status')
  local final = nil
  if status == STATUS.in_progress or status == STATUS.budget_exhausted or status == STATUS.paused then final = STATUS.completed
  elseif status == STATUS.cancelling then final = STATUS.cancelled
  elseif status == STATUS.expiring then final = STATUS.expired end
  if final then redis.call('HSET', KEYS[3], 'status', final, 'finished_at', now) end
end
