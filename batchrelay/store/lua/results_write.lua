-- Several lines' final results at once (the response cache's hits of a chunk), each written as
-- result_write writes one; the batch can end once, after the last. Returns how many were new.
-- KEYS: results, pending, meta, attempts, ledger
-- ARGV: now, ...lines
-- lines: for each line, its line, record, count, the number n of ledger values that follow, and
-- those n values (field, increment pairs).
--#include result_bytes
--#include result_line
local written, i = 0, 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 3])
  written = written + write_line(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV, i + 4, i + 3 + n)
  i = i + 4 + n
end
if written > 0 then end_if_done(ARGV[1]) end
return written
