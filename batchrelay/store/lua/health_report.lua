-- What a call to this provider came to: frees its concurrency lease and probe claim, then a
-- success grows a slow start's next round by one call (or ends it) or adds back a call in flight;
-- a failure records its text and, by kind, opens the breaker (transient), cools and halves pace and
-- calls in flight (rate_limited), benches (billing), disables (auth) or cools the model (model).
-- Returns 1.
-- KEYS: health, rate, concurrency, breaker
-- ARGV: provider, model, now, kind, retry_after, lease, text, bench_s, disable_s, model_s, cool_s, min_calls, err_rate, open_s, recovery, step
-- retry_after: 0 for none; lease: '' for none; min_calls, err_rate, open_s: the breaker's;
-- recovery: rate_recovery_s; step: concurrency_recovery_calls.
local H, R, C, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, model, now, kind = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ra, lease, text = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local bench_s, disable_s = tonumber(ARGV[8]), tonumber(ARGV[9])
local model_s, cool_s = tonumber(ARGV[10]), tonumber(ARGV[11])
local min_calls, err_rate = tonumber(ARGV[12]), tonumber(ARGV[13])
local open_s, recovery = tonumber(ARGV[14]), tonumber(ARGV[15])
local step = tonumber(ARGV[16])
--#include health_limit
local function set(f, v) redis.call('HSET', H, name .. ':' .. f, tostring(v)) end
local function later(f, u) if u > num(H, f) then set(f, u) end end
if lease ~= '' then redis.call('ZREM', C, lease) end
set('probe_until', 0)
local cl = current_limit()  -- (acquire may not have seen it lapse yet)
if kind == 'success' then
  local first = num(H, 'ok') == 0 and cl == 0 and step > 1
  set('ok', 1)
  set('half_open', 0)
  if first then  -- its first answer ever (a round of one): a slow start, its next round two calls
    set('cl', 2)
    set('cl_n', 1)
    set('cl_t', now)
    set('cl_ss', 1)
    return 1
  end
  if cl > 0 and lease ~= '' then
    local n = redis.call('HINCRBY', H, name .. ':cl_n', 1)
    if num(H, 'cl_ss') == 1 then  -- every answer adds a call to the next round: rounds double
      if n >= step then unlimit() else set('cl', cl + 1) end
    elseif n >= step then
      set('cl', cl + 1)
      set('cl_n', 0)
    end
  end
  return 1
end
set('last', text)
set('last_at', now)
if ra > 0 then later('cool_until', now + ra) end
if kind == 'transient' then
  local fails = redis.call('HINCRBY', B, name .. ':fails', 1)
  local calls = num(B, 'calls')
  if num(H, 'half_open') == 1 or (calls >= min_calls and fails / calls >= err_rate) then
    later('open_until', now + open_s)
    set('half_open', 1)
    redis.call('HSET', B, name .. ':ws', tostring(now), name .. ':calls', 0, name .. ':fails', 0)
  end
elseif kind == 'rate_limited' then
  if ra <= 0 then later('cool_until', now + cool_s) end
  local f0 = tonumber(redis.call('HGET', R, 'f0') or '1')
  local ft = tonumber(redis.call('HGET', R, 'ft') or '0')
  local factor = math.min(1, f0 + (now - ft) / (2 * recovery))
  redis.call('HSET', R, 'f0', tostring(math.max(0.05, factor / 2)), 'ft', tostring(now))
  -- and the calls in flight: half of those counted (this one too), at least one (one when they were
  -- not counted); never above the limit already set, so a burst of 429s does not halve it again.
  -- A 429 in the slow start leaves one: its rounds kept every call from leaving beside an unreported
  -- answer, and at one call in flight that holds on.
  redis.call('ZREMRANGEBYSCORE', C, '-inf', now)
  local cut = math.max(1, math.floor((redis.call('ZCARD', C) + 1) / 2))
  if cl > 0 and cl < cut then cut = cl end
  if num(H, 'cl_ss') == 1 then cut = 1 end
  unlimit()
  set('cl', cut)
  set('cl_n', 0)
  set('cl_t', math.max(now, num(H, 'cool_until')))  -- it lapses rate_recovery_s after the cooldown
elseif kind == 'billing' then
  later('bench_until', now + bench_s)
elseif kind == 'auth' then
  later('disabled_until', now + disable_s)
elseif kind == 'model' then
  redis.call('HSET', H, name .. '|' .. model .. ':model_until', tostring(now + model_s))
end
return 1
