-- The lease of the `run` working a batch: `renew` extends it and `release` drops it, only for
-- its holder. Returns 1 when the lease was (still) the holder's, else 0.
-- KEYS: run_lease
-- ARGV: holder, op, ttl_ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
