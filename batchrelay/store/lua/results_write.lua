-- Several lines' final results at once (the response cache's hits of a chunk), each written as
-- result_write writes one; the batch can end once, after the last. Returns how many were new.
-- KEYS: results, pending, meta, attempts, ledger, fleet_ledger, fleet_counts, minutes
-- ARGV: now, ...lines
-- lines: for each line, its line, record, count, the number n of values that follow, the number of
-- those that are its ledger's, then the n values (field, increment pairs: ledger, then tally).
--#include result_bytes
--#include result_line
local written, i = 0, 2
while i <= #ARGV do
  local n, first = tonumber(ARGV[i + 3]), i + 5
  written = written + write_line(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[1], ARGV, first,
                                 first + tonumber(ARGV[i + 4]), first + n - 1)
  i = first + n
end
if written > 0 then end_if_done(ARGV[1]) end
return written
