"""Provider health and rate limits shared by every worker, in Redis (README: "Shared health").

Before each call a worker asks `acquire` (one Lua step, one round trip): is the provider disabled
(401/403), benched (billing), cooling (429 / Retry-After), its breaker open, this model cooling
(404), the call over its rpm/tpm pace or concurrency? If it may go, the rate-limit slot is taken
in the same step. After a failure (or a probe's success) `report` updates the shared state.
A provider that has never answered well, or whose breaker is half-open, gets one probe at a time.

Rates are paced (GCRA, no burst): calls are spaced 60/rpm s apart at `headroom` of the limit, and
tokens likewise; a 429 halves the pace, which recovers linearly over `rate_recovery_s`.

Calls in flight are limited while a provider shows it may rate-limit (AIMD, `concurrency_recovery_calls`
= N): after its first answer ever it gets one call at a time until N answers (slow start), then no
limit. A 429 cuts the limit to half of the calls in flight, at least one (one when they were not
being counted), and never above the limit already set (one in the slow start), so a burst of 429s
does not halve it again and again; every N answers add one back, and `rate_recovery_s` after the
429's cooldown ends lifts it. At one call in flight no worker can send a call inside a Retry-After
window the provider has announced: that call's slot is only freed by the report that sets the
cooldown.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store.keys import Keys

Kind = Literal["success", "transient", "rate_limited", "billing", "auth", "model", "other"]

# Shared by both scripts (after `H`, `name`, `now` and `recovery` are set): a field of provider `name`,
# and the limit on its calls in flight, dropped once it has lapsed.
_LIMIT = """
local function num(key, f) return tonumber(redis.call('HGET', key, name .. ':' .. f) or '0') or 0 end
local function unlimit() redis.call('HDEL', H, name .. ':cl', name .. ':cl_n', name .. ':cl_t', name .. ':cl_ss') end
local function current_limit()
  local cl = num(H, 'cl')
  if cl > 0 and now - num(H, 'cl_t') > recovery then
    unlimit()
    return 0
  end
  return cl
end
"""

_ACQUIRE = """
local H, R, C, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, model = ARGV[1], ARGV[2]
local now, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local rpm, tpm, maxc = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease, lease_until, max_wait = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local recovery, headroom = tonumber(ARGV[11]), tonumber(ARGV[12])
local probe_s, window = tonumber(ARGV[13]), tonumber(ARGV[14])
""" + _LIMIT + """
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
local starting = false
if cl > 0 and (limit == 0 or cl <= limit) then limit, starting = math.floor(cl), num(H, 'cl_ss') == 1 end
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', C, '-inf', now)
  if redis.call('ZCARD', C) >= limit then return {0, '0.05', starting and 'starting' or 'concurrency', 0} end
end
local at = now
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
if probing then redis.call('HSET', H, name .. ':probe_until', tostring(now + probe_s)) end
if now - num(B, 'ws') > window then
  redis.call('HSET', B, name .. ':ws', tostring(now), name .. ':calls', 0, name .. ':fails', 0)
end
redis.call('HINCRBY', B, name .. ':calls', 1)
return {1, tostring(at - now), probing and 'probe' or 'ok', limit > 0 and 1 or 0}
"""

_REPORT = """
local H, R, C, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, model, now, kind = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ra, lease, text = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local bench_s, disable_s = tonumber(ARGV[8]), tonumber(ARGV[9])
local model_s, cool_s = tonumber(ARGV[10]), tonumber(ARGV[11])
local min_calls, err_rate = tonumber(ARGV[12]), tonumber(ARGV[13])
local open_s, recovery = tonumber(ARGV[14]), tonumber(ARGV[15])
local step = tonumber(ARGV[16])
""" + _LIMIT + """
local function set(f, v) redis.call('HSET', H, name .. ':' .. f, tostring(v)) end
local function later(f, u) if u > num(H, f) then set(f, u) end end
if lease ~= '' then redis.call('ZREM', C, lease) end
set('probe_until', 0)
local cl = current_limit()  -- (acquire may not have seen it lapse yet)
if kind == 'success' then
  local first = num(H, 'ok') == 0 and cl == 0 and step > 1
  set('ok', 1)
  set('half_open', 0)
  if first then  -- its first answer ever: a slow start, one call at a time, this answer its first
    set('cl', 1)
    set('cl_n', 1)
    set('cl_t', now)
    set('cl_ss', 1)
    return 1
  end
  if cl > 0 and lease ~= '' and redis.call('HINCRBY', H, name .. ':cl_n', 1) >= step then
    if num(H, 'cl_ss') == 1 then
      unlimit()
    else
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
  -- not counted); never above the limit already set, so a burst of 429s does not halve it again
  redis.call('ZREMRANGEBYSCORE', C, '-inf', now)
  local cut = math.max(1, math.floor((redis.call('ZCARD', C) + 1) / 2))
  if cl > 0 and cl < cut then cut = cl end
  set('cl', cut)
  set('cl_n', 0)
  set('cl_t', math.max(now, num(H, 'cool_until')))  -- it lapses rate_recovery_s after the cooldown
  set('cl_ss', 0)
elseif kind == 'billing' then
  later('bench_until', now + bench_s)
elseif kind == 'auth' then
  later('disabled_until', now + disable_s)
elseif kind == 'model' then
  redis.call('HSET', H, name .. '|' .. model .. ':model_until', tostring(now + model_s))
end
return 1
"""

STATE_FIELDS = ("disabled_until", "bench_until", "open_until", "cool_until")
STATE_NAMES = {"disabled_until": "disabled", "bench_until": "benched", "open_until": "breaker open",
               "cool_until": "cooling"}


@dataclass(frozen=True, slots=True)
class Permit:
    provider: str
    model: str
    lease: str
    wait_s: float
    probe: bool


@dataclass(frozen=True, slots=True)
class Unavailable:
    provider: str
    wait_s: float  # until it may be tried again; -1 never (disabled)
    reason: str


class Health:
    """The shared health and rate state of every provider, for one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, cfg: HealthConfig) -> None:
        self.redis, self.keys, self.cfg = redis, keys, cfg
        self._acquire = redis.register_script(_ACQUIRE)
        self._report = redis.register_script(_REPORT)
        # what this process learnt and has not yet written to Redis: provider -> blocked until
        self._local: dict[str, tuple[float, str]] = {}

    def block_locally(self, provider: str, seconds: float, reason: str) -> None:
        """Seen by this process's next call at once, before the report's round trip lands in Redis."""
        until = time.time() + seconds
        if until > self._local.get(provider, (0.0, ""))[0]:
            self._local[provider] = (until, reason)

    def blocked_locally(self, provider: str) -> Unavailable | None:
        until, reason = self._local.get(provider, (0.0, ""))
        left = until - time.time()
        return Unavailable(provider, left, reason) if left > 0 else None

    async def release(self, permit: Permit) -> None:
        """Give back a permit that was not used: its concurrency lease and its probe claim."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if permit.lease:
                pipe.zrem(self.keys.concurrency(permit.provider), permit.lease)
            if permit.probe:
                pipe.hset(self.keys.health, f"{permit.provider}:probe_until", "0")
            await pipe.execute()

    def _keys(self, provider: str) -> list[str]:
        k = self.keys
        return [k.health, k.rate(provider), k.concurrency(provider), k.breaker]

    async def acquire(self, p: ProviderConfig, model: str, tokens: int) -> Permit | Unavailable:
        now = time.time()
        lease = uuid.uuid4().hex  # kept only while the provider's concurrency is limited
        limits = p.limits
        ok, wait, why, tracked = await self._acquire(keys=self._keys(p.name), args=[
            p.name, model, now, tokens, limits.rpm or 0, limits.tpm or 0, p.max_concurrency or 0, lease,
            now + self.cfg.lease_s, self.cfg.max_wait_s, self.cfg.rate_recovery_s, self.cfg.rate_headroom,
            self.cfg.probe_s, self.cfg.breaker_window_s])
        why = why.decode() if isinstance(why, bytes) else str(why)
        if not ok:
            return Unavailable(p.name, float(wait), STATE_NAMES.get(why, why))
        return Permit(p.name, model, lease if tracked else "", float(wait), why == "probe")

    @staticmethod
    def worth_reporting(permit: Permit | None, kind: Kind) -> bool:
        return kind != "success" or permit is None or permit.probe or bool(permit.lease)

    async def report(self, p: ProviderConfig, permit: Permit | None, model: str, kind: Kind, *,
                     retry_after: float | None = None, text: str = "") -> None:
        """Failures always; successes only when they matter (a probe, or a lease to give back)."""
        if not self.worth_reporting(permit, kind):
            return
        c = self.cfg
        await self._report(keys=self._keys(p.name), args=[
            p.name, model, time.time(), kind, retry_after or 0, permit.lease if permit else "", text[:300],
            c.bench_s, c.disable_s, c.model_cooldown_s, c.cooldown_s, c.breaker_min_calls, c.breaker_error_rate,
            c.breaker_open_s, c.rate_recovery_s, c.concurrency_recovery_calls])

    async def clear(self, provider: str) -> None:
        """`providers check` found it working again: lift bench and disable."""
        await self.redis.hdel(self.keys.health, f"{provider}:bench_until", f"{provider}:disabled_until")  # type: ignore[misc]

    async def snapshot(self, names: list[str]) -> dict[str, dict[str, Any]]:
        raw = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(self.keys.health)).items()}  # type: ignore[misc]
        return {n: describe(n, raw, time.time(), self.cfg.rate_recovery_s) for n in names}


def describe(name: str, raw: dict[str, str], now: float, recovery_s: float = 60.0) -> dict[str, Any]:
    """One provider's state for people: the strongest reason it is unavailable, or ok; and how many
    calls it may have in flight while that is limited (its slow start, or after a 429)."""
    for f in STATE_FIELDS:
        until = float(raw.get(f"{name}:{f}", 0) or 0)
        if until > now:
            return {"state": STATE_NAMES[f], "for_s": round(until - now, 1), "last": raw.get(f"{name}:last"),
                    **_recovering(name, raw, now, recovery_s)}
    cooling_models = sorted(k.split("|", 1)[1].rsplit(":", 1)[0] for k, v in raw.items()
                            if k.startswith(f"{name}|") and float(v or 0) > now)
    state = "ok"
    if raw.get(f"{name}:ok") != "1":
        state = "untried"
    elif raw.get(f"{name}:half_open") == "1":
        state = "half-open"
    out: dict[str, Any] = {"state": state, "last": raw.get(f"{name}:last")}
    if cooling_models:
        out["cooling_models"] = cooling_models
    return {**out, **_recovering(name, raw, now, recovery_s)}


def _recovering(name: str, raw: dict[str, str], now: float, recovery_s: float) -> dict[str, int]:
    """The limit on calls in flight, while it holds (it lapses recovery_s after it was last set)."""
    limit = int(float(raw.get(f"{name}:cl", 0) or 0))
    if not limit or now - float(raw.get(f"{name}:cl_t", 0) or 0) > recovery_s:
        return {}
    return {"concurrency_limit": limit}
