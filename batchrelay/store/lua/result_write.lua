-- A line's final result, written once with its counts, size and ledger; the last line ends the
-- batch: completed, or cancelled / expired when it was being stopped. Returns 1, or 0 when the line
-- already had a result (a rerun, which changes nothing).
-- KEYS: results, pending, meta, attempts, ledger
-- ARGV: line, record, count, now, ...ledger
-- record: the stored result (b"1" or b"0" + JSON); count: the meta count it adds to; ledger: field,
-- increment pairs (integers as strings: Redis adds them as 64-bit integers, never as floats).
--#include result_bytes
--#include result_line
if write_line(ARGV[1], ARGV[2], ARGV[3], ARGV, 5, #ARGV) == 0 then return 0 end
end_if_done(ARGV[4])
return 1
