-- A line's final result, written once with its counts, size and ledger (the batch's and the
-- fleet's), the fleet's counts and the batch's minute buckets; the last line ends the batch:
-- completed, or cancelled / expired when it was being stopped. Returns 1, or 0 when the line
-- already had a result (a rerun, which changes nothing).
-- KEYS: results, pending, meta, attempts, ledger, fleet_ledger, fleet_counts, minutes
-- ARGV: line, record, count, now, nledger, ...ledger
-- record: the stored result (b"1" or b"0" + JSON); count: the meta count it adds to; ledger: its
-- first nledger values are the ledger's field, increment pairs, the rest the fleet counts' (_result_line).
--#include result_bytes
--#include result_line
local split = 6 + tonumber(ARGV[5])
if write_line(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV, 6, split, #ARGV) == 0 then return 0 end
end_if_done(ARGV[4])
return 1
