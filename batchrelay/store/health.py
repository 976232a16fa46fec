"""Provider health and rate limits shared by every worker, in Redis (README: "Shared health").

Before each call a worker asks `acquire` (one Lua step, one round trip): is the provider disabled
(401/403), benched (billing), cooling (429 / Retry-After), its breaker open, this model cooling
(404), the call over its rpm/tpm pace or concurrency? If it may go, the rate-limit slot is taken
in the same step. After a failure (or a probe's success) `report` updates the shared state.
A provider that has never answered well, or whose breaker is half-open, gets one probe at a time.

Rates are paced (GCRA, no burst): calls are spaced 60/rpm s apart at `headroom` of the limit, and
tokens likewise; a 429 halves the pace, which recovers linearly over `rate_recovery_s`.

Calls in flight are limited while a provider shows it may rate-limit (AIMD, `concurrency_recovery_calls`
= N). After its first answer ever comes a slow start in rounds: a round's calls (2, then 4, 8, ...:
every answer adds one to the next round) gather for up to `ROUND_GATHER_S` and go together, and the next
round opens once all of them have answered; it ends after N answers (no limit), at `max_concurrency`
(that alone), or at a 429 (one call). A 429 cuts the limit to half of the calls in flight, at least
one (one when they were not being counted), and never above the limit already set, so a burst of
429s does not halve it again and again; every N answers add one back, and `rate_recovery_s` after
the 429's cooldown ends lifts it. At one call in flight, and in the slow start's rounds, no worker
sends a call inside a Retry-After window the provider has announced: no call leaves while one sent
before it may have come back a 429 not yet reported.

Each counted call holds a lease in the provider's concurrency set that lapses `lease_s` after it was
last renewed. A process renews the leases of all its calls in flight every `lease_s / RENEWALS`
(one round trip for all of them), so a live call keeps its slot however long it takes, and the
slots of a process killed mid-call are free again within `lease_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError

from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store.store import Store

log = logging.getLogger("batchrelay.store.health")

Kind = Literal["success", "transient", "rate_limited", "billing", "auth", "model", "other"]

STATE_FIELDS = ("disabled_until", "bench_until", "open_until", "cool_until")
STATE_NAMES = {"disabled_until": "disabled", "bench_until": "benched", "open_until": "breaker open",
               "cool_until": "cooling"}
RENEWALS = 5  # renewal rounds per lease_s: a few missed (a stalled loop, a Redis hiccup) cost no slot
# A slow-start round takes calls at most this long before they all go, and lines waiting for a round look
# again at most this often (both shorter after fast rounds: health_acquire.lua), so each gets its chance
# to join one.
ROUND_GATHER_S = 0.05


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
    """The shared health and rate state of every provider in a store (lua/health_*.lua)."""

    def __init__(self, store: Store, cfg: HealthConfig) -> None:
        self.store, self.redis, self.keys, self.cfg = store, store.redis, store.keys, cfg
        # what this process learnt and has not yet written to Redis: provider -> blocked until
        self._local: dict[str, tuple[float, str]] = {}
        self._leases: dict[str, set[str]] = {}  # provider -> leases of this process's calls in flight
        self._renewing: asyncio.Task[None] | None = None
        # acquires asked while one is on its way to Redis: they go together next (one round trip)
        self._asking: list[tuple[ProviderConfig, str, int, str, asyncio.Future[tuple[bool, float, str, bool]]]] = []
        self._sending = False

    def block_locally(self, provider: str, seconds: float, reason: str) -> None:
        """Seen by this process's next call at once, before the report's round trip lands in Redis."""
        until = time.time() + seconds
        if until > self._local.get(provider, (0.0, ""))[0]:
            self._local[provider] = (until, reason)

    def blocked_locally(self, provider: str) -> Unavailable | None:
        until, reason = self._local.get(provider, (0.0, ""))
        left = until - time.time()
        return Unavailable(provider, left, reason) if left > 0 else None

    def _hold(self, provider: str, lease: str) -> None:
        self._leases.setdefault(provider, set()).add(lease)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew(), name="batchrelay-lease-renewal")

    def _drop(self, permit: Permit) -> None:
        held = self._leases.get(permit.provider)
        if held is not None:
            held.discard(permit.lease)
            if not held:
                del self._leases[permit.provider]
        if not self._leases:
            self._stop_renewing()

    def _stop_renewing(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_s / RENEWALS)
            try:
                await self.renew()
            except (RedisError, OSError) as e:  # the next round tries again, before any lease lapses
                log.warning("could not renew the leases of calls in flight: %s", e)

    async def renew(self) -> None:
        """Push back the lapse of every lease this process holds, in one round trip. A lease given back
        meanwhile stays gone (XX: only members still there are updated)."""
        until = time.time() + self.cfg.lease_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for provider, held in self._leases.items():
                pipe.zadd(self.keys.concurrency(provider), dict.fromkeys(held, until), xx=True)
            await pipe.execute()

    async def close(self) -> None:
        """Renew no more: the leases still held lapse after lease_s, as a killed process's do."""
        self._leases.clear()
        self._stop_renewing()

    async def release(self, permit: Permit) -> None:
        """Give back a permit that was not used: its concurrency lease and its probe claim."""
        if permit.lease:
            self._drop(permit)
        async with self.redis.pipeline(transaction=False) as pipe:
            if permit.lease:
                pipe.zrem(self.keys.concurrency(permit.provider), permit.lease)
            if permit.probe:
                pipe.hset(self.keys.health, f"{permit.provider}:probe_until", "0")
            await pipe.execute()

    async def acquire(self, p: ProviderConfig, model: str, tokens: int) -> Permit | Unavailable:
        """A call's permit. The calls of this process that ask while an acquire is on its way to Redis
        go together as soon as it is back: one round trip for all of them, each still its own atomic
        step, in the order they asked (a lone call goes at once, alone)."""
        lease = uuid.uuid4().hex  # kept only while the provider's concurrency is limited
        if self._sending:
            asked: asyncio.Future[tuple[bool, float, str, bool]] = asyncio.get_running_loop().create_future()
            self._asking.append((p, model, tokens, lease, asked))
            ok, wait, why, leased = await asked
        else:
            self._sending = True
            try:
                ok, wait, why, leased = await self.store.scripts.acquire(
                    self.keys, p, self.cfg, model=model, tokens=tokens, now=time.time(), lease=lease,
                    gather=ROUND_GATHER_S)
            finally:
                self._send_asked()
        if not ok:
            return Unavailable(p.name, wait, STATE_NAMES.get(why, why))
        if leased:
            self._hold(p.name, lease)
        return Permit(p.name, model, lease if leased else "", wait, why == "probe")

    def _send_asked(self) -> None:
        """Those that asked meanwhile go now, together; or nobody is sending any more."""
        if not self._asking:
            self._sending = False
            return
        asking, self._asking = self._asking, []
        task = asyncio.ensure_future(self._acquire_many(asking))
        task.add_done_callback(lambda _: self._send_asked())

    async def _acquire_many(self, asking: list[tuple[ProviderConfig, str, int, str,
                                                     asyncio.Future[tuple[bool, float, str, bool]]]]) -> None:
        try:
            got = await self.store.scripts.acquire_many(self.keys, self.cfg, [a[:4] for a in asking],
                                                        now=time.time(), gather=ROUND_GATHER_S)
        except Exception as e:  # Redis unreachable: each caller gets the error, as its own call would
            got = [e] * len(asking)
        except BaseException:
            for *_, asked in asking:
                asked.cancel()
            raise
        for (*_, asked), one in zip(asking, got, strict=True):
            if asked.done():
                continue  # its line was cancelled meanwhile (a lease taken lapses, as a killed call's)
            if isinstance(one, Exception):
                asked.set_exception(one)
            else:
                asked.set_result(one)

    @staticmethod
    def worth_reporting(permit: Permit | None, kind: Kind) -> bool:
        return kind != "success" or permit is None or permit.probe or bool(permit.lease)

    async def report(self, p: ProviderConfig, permit: Permit | None, model: str, kind: Kind, *,
                     retry_after: float | None = None, text: str = "") -> None:
        """Failures always; successes only when they matter (a probe, or a lease to give back)."""
        if not self.worth_reporting(permit, kind):
            return
        if permit is not None and permit.lease:
            self._drop(permit)
        await self.store.scripts.report(self.keys, p.name, self.cfg, model=model, now=time.time(), kind=kind,
                                        retry_after=retry_after or 0, lease=permit.lease if permit else "",
                                        text=text[:300])

    async def clear(self, provider: str, *, cooling: bool = False) -> None:
        """`providers check` found it working again: lift bench and disable (`cooling`: a lane's
        cooldown after its parcels could not be sent, and its breaker, too)."""
        fields = ["bench_until", "disabled_until"] + (["cool_until", "open_until"] if cooling else [])
        await self.redis.hdel(self.keys.health, *(f"{provider}:{f}" for f in fields))  # type: ignore[misc]

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
