-- `retry` of one line: its error record goes, it is pending again with its billed attempts kept,
-- and the ledger gives back their cost (the line's result will carry it again). Returns 1, or 0
-- when the record changed since it was read (nothing is done).
-- KEYS: results, pending, meta, attempts, ledger, first_try
-- ARGV: line, record, count, attempts, ...ledger
-- record: the record as read; count: the meta count it leaves; attempts: JSON, '' for none;
-- ledger: field, decrement pairs.
--#include result_bytes
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
add_bytes(KEYS[3], ARGV[2], -1)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], -1)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[4]) end
redis.call('HDEL', KEYS[6], ARGV[1])
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[5], ARGV[i], ARGV[i + 1]) end
return 1
