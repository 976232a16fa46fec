-- May a call go to this provider now? Checks disabled, benched, cooling, breaker open, model
-- cooling, one probe at a time, calls in flight (in the slow start: its rounds) and the rpm/tpm pace
-- (GCRA), and if it may go takes its rate slot and concurrency lease in the same step. Returns
-- {ok (1/0), wait seconds, reason, leased (1 when the concurrency lease was taken)}.
-- KEYS: health, rate, concurrency, breaker
-- ARGV: provider, model, now, tokens, rpm, tpm, max_concurrency, lease, lease_until, max_wait, recovery, headroom, probe_s, window, gather
-- rpm, tpm, max_concurrency: 0 for no limit; lease: a fresh token; recovery: rate_recovery_s;
-- window: the breaker's window in seconds; gather: how long a slow-start round takes calls before
-- they all go.
local H, R, C, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, model = ARGV[1], ARGV[2]
local now, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local rpm, tpm, maxc = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease, lease_until, max_wait = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local recovery, headroom = tonumber(ARGV[11]), tonumber(ARGV[12])
local probe_s, window, gather = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
--#include health_limit
if num(H, 'disabled_until') > now then return {0, tostring(num(H, 'disabled_until') - now), 'disabled', 0} end
for _, f in ipairs({'bench_until', 'cool_until', 'open_until'}) do
  local u = num(H, f)
  if u > now then return {0, tostring(u - now), f, 0} end
end
local mu = tonumber(redis.call('HGET', H, name .. '|' .. model .. ':model_until') or '0') or 0
if mu > now then return {0, tostring(mu - now), 'model_until', 0} end
local probing = num(H, 'ok') == 0 or num(H, 'half_open') == 1
if probing and num(H, 'probe_until') > now then return {0, '0.05', 'probing', 0} end
local limit, cl = maxc, current_limit()
local below = cl > 0 and (maxc == 0 or cl < maxc)
if below then limit = math.floor(cl) end
-- a slow start below max_concurrency; once it reaches it, max_concurrency alone holds
local starting = below and num(H, 'cl_ss') == 1
local at, go, taken = now, 0, 0
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', C, '-inf', now)
  if starting then
    -- The slow start goes in rounds: a round takes up to `limit` calls for `gather` seconds, then they
    -- all go together, and the next round opens only once every one of them has been answered (or its
    -- lease has lapsed). So no call leaves while one sent before it may have come back a 429 that is
    -- not reported yet: none lands inside a Retry-After window.
    -- The waits scale with how long the last round took (a fast provider's rounds follow each other in
    -- milliseconds, a slow one's are looked at every `gather` seconds), never above `gather`: lines
    -- that look again within a round's gathering all get their chance to join it.
    go, taken = num(H, 'cl_go'), num(H, 'cl_k')
    if go <= now then
      if redis.call('ZCARD', C) > 0 then
        return {0, tostring(math.max(0.002, math.min(gather, (now - go) / 2))), 'starting', 0}
      end
      go, taken = now + (go > 0 and math.max(0.01, math.min(gather, (now - go) / 2)) or gather), 0
    elseif taken >= limit then
      return {0, tostring(go - now + 0.002), 'starting', 0}
    end
    at = go
  elseif redis.call('ZCARD', C) >= limit then
    return {0, '0.05', 'concurrency', 0}
  end
end
if rpm > 0 or tpm > 0 then
  local f0 = tonumber(redis.call('HGET', R, 'f0') or '1')
  local ft = tonumber(redis.call('HGET', R, 'ft') or '0')
  local factor = math.min(1, f0 + (now - ft) / (2 * recovery)) * headroom
  if rpm > 0 then at = math.max(at, tonumber(redis.call('HGET', R, 'tat_r') or '0')) end
  if tpm > 0 then at = math.max(at, tonumber(redis.call('HGET', R, 'tat_t') or '0')) end
  if at - now > max_wait then return {0, tostring(at - now), 'rate', 0} end
  if rpm > 0 then redis.call('HSET', R, 'tat_r', tostring(at + 60 / (rpm * factor))) end
  if tpm > 0 then redis.call('HSET', R, 'tat_t', tostring(at + tokens * 60 / (tpm * factor))) end
end
if limit > 0 then redis.call('ZADD', C, lease_until, lease) end
if starting then redis.call('HSET', H, name .. ':cl_go', tostring(go), name .. ':cl_k', taken + 1) end
if probing then redis.call('HSET', H, name .. ':probe_until', tostring(now + probe_s)) end
if now - num(B, 'ws') > window then
  redis.call('HSET', B, name .. ':ws', tostring(now), name .. ':calls', 0, name .. ':fails', 0)
end
redis.call('HINCRBY', B, name .. ':calls', 1)
return {1, tostring(at - now), probing and 'probe' or 'ok', limit > 0 and 1 or 0}
