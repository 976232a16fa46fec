-- A single-flight lease its holder keeps: renewed for `ms` more while `token` holds it, or given
-- up (`ms` 0). Returns 1 while the caller held it, 0 when it had lapsed or another took it.
-- KEYS: cache_lease
-- ARGV: token, ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
