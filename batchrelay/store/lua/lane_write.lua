-- A block of a parcel's answers, each line written once as results_write writes it (a line already
-- answered, by the lane before a crash or by a synchronous provider after a release, counts
-- nothing), then no longer held by the parcel (a line another parcel holds now stays its), and its
-- reservation `lane:{pid}:{line}` settled: at the lane's part of the line's ledger cost (the ledger
-- cost fields of the parcel's lane) when the write was new, else at 0. One script, so a crash
-- leaves either all of it or none. Returns how many lines were new.
-- KEYS: results, pending, meta, attempts, ledger, fleet_ledger, fleet_counts, minutes, lane_held, budget, budget_leases, lane_parcel
-- ARGV: now, pid, ...lines
-- lines: as results_write takes them (line, record, count, n, the number of ledger values, n values).
--#include result_bytes
--#include result_line
--#include lane_settle
local now, pid = ARGV[1], ARGV[2]
local lane = redis.call('HGET', KEYS[12], 'lane')
local own = lane and (lane .. SEP) or nil
local cost = SEP .. 'cost'
local written, i = 0, 3
while i <= #ARGV do
  local line, n, first = ARGV[i], tonumber(ARGV[i + 3]), i + 5
  local split = first + tonumber(ARGV[i + 4])
  local new = write_line(line, ARGV[i + 1], ARGV[i + 2], now, ARGV, first, split, first + n - 1)
  local billed = 0
  if new == 1 and own then
    for j = first, split - 1, 2 do
      local f = ARGV[j]
      if string.sub(f, 1, #own) == own and string.sub(f, -#cost) == cost then billed = billed + tonumber(ARGV[j + 1]) end
    end
  end
  if redis.call('HGET', KEYS[9], line) == pid then redis.call('HDEL', KEYS[9], line) end
  settle(KEYS[10], KEYS[11], 'lane:' .. pid .. ':' .. line, string.format('%d', billed))
  written = written + new
  i = first + n
end
if written > 0 then end_if_done(now) end
return written
