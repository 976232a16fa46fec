-- A compare-and-set on the webhook outbox: the entry moves to a new score only if it still has
-- the score it was read with. Returns 1 for the one caller that moved it, 0 for the others.
-- KEYS: webhooks
-- ARGV: batch, seen, score
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
