"""The Lua scripts (store/lua/*.lua): loaded once, registered once per Redis client, and each called
through one typed wrapper here.

Every multi-key state change is one script, so it is atomic. A script's file opens with what it
does and its `-- KEYS:` and `-- ARGV:` (a last `...name` takes field/value pairs); `Script` passes
both by name in that order, so the order is written once, in the script. Key names are the `Keys`
methods that build them. `--#include NAME` puts in the shared fragment lua/_NAME.lua, and
`STATUS.name` is a batch status, spelled by `Status` when the script is loaded (an unknown name
fails the load, not a call).
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, ClassVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store.cache_scripts import CacheScripts
from batchrelay.store.keys import Keys
from batchrelay.store.status import Status

SCRIPTS = ("batch_start_due", "budget_purge", "budget_raise", "budget_reserve", "budget_settle", "cache_get",
           "cache_lease", "cache_prune", "cache_put", "chunk_reclaim", "chunk_release", "health_acquire",
           "health_report", "result_write", "results_write", "retry_reopen_line", "stop_finish", "stop_request",
           "submit_claim_ids", "submit_finish", "webhook_claim",
           "batch_pause", "batch_resume", "run_lease",  # these three: resume.py
           "lane_lease", "lane_record", "lane_release", "lane_set", "lane_take", "lane_write")  # lanes.py

_HEADER = re.compile(r"^-- (KEYS|ARGV): (.+)$", re.MULTILINE)
_INCLUDE = re.compile(r"^--#include (\w+)$", re.MULTILINE)
_STATUS = re.compile(r"\bSTATUS\.(\w+)")


@dataclass(frozen=True, slots=True)
class Lua:
    """One script's source, ready to register, and the names of its KEYS and ARGV in order."""

    name: str
    text: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    pairs: str | None  # the name of its trailing field/value pairs, if it takes any


def _read(name: str) -> str:
    return files("batchrelay.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _status(m: re.Match[str]) -> str:
    try:
        return f"'{Status(m[1])}'"
    except ValueError:
        raise ValueError(f"Lua names an unknown batch status: STATUS.{m[1]}") from None


@functools.cache
def load(name: str) -> Lua:
    """lua/NAME.lua with its fragments and status names filled in; ValueError if its header is missing."""
    text = _read(name)
    header = dict(_HEADER.findall(text))
    if set(header) != {"KEYS", "ARGV"}:
        raise ValueError(f"lua/{name}.lua must open with `-- KEYS: ...` and `-- ARGV: ...` lines")
    keys, argv = ([n.strip() for n in header[h].split(",")] for h in ("KEYS", "ARGV"))
    pairs = argv.pop()[3:] if argv[-1].startswith("...") else None
    text = _STATUS.sub(_status, _INCLUDE.sub(lambda m: _read(f"_{m[1]}"), text))
    return Lua(name, text, tuple(keys), tuple(argv), pairs)


def _flat(pairs: Mapping[str, Any]) -> list[Any]:
    return [x for field, value in pairs.items() for x in (field, value)]


class Script:
    """One script registered on one client, called with its KEYS and ARGV by name."""

    def __init__(self, redis: Redis, lua: Lua) -> None:
        self.lua = lua
        self._names = frozenset(lua.keys), frozenset(lua.argv)
        self._script = redis.register_script(lua.text)

    async def __call__(self, keys: Mapping[str, str], args: Mapping[str, Any], pairs: Iterable[Any] = (),
                       client: Pipeline | None = None) -> Any:
        if client is not None:  # queued by its sha alone (see `queue`); the reply comes from the pipeline
            self.queue(client, keys, args, pairs)
            return None
        lua = self.lua
        self._check(keys, args)
        return await self._script(keys=[keys[k] for k in lua.keys], args=[*(args[a] for a in lua.argv), *pairs])

    def _check(self, keys: Mapping[str, str], args: Mapping[str, Any]) -> None:
        if keys.keys() != self._names[0] or args.keys() != self._names[1]:
            raise TypeError(f"{self.lua.name}.lua takes KEYS {self.lua.keys} and ARGV {self.lua.argv}, "
                            f"not {tuple(keys)} and {tuple(args)}")

    def queue(self, pipe: Pipeline, keys: Mapping[str, str], args: Mapping[str, Any],
              pairs: Iterable[Any] = ()) -> None:
        """Queue a call on `pipe` by its sha alone: no SCRIPT EXISTS round trip before the pipeline
        (which a script registered on it costs); a NoScriptError in its reply means it did not run
        (`Scripts.load_all`, then queue it again)."""
        self._check(keys, args)
        lua = self.lua
        pipe.evalsha(self._script.sha, len(lua.keys), *(keys[k] for k in lua.keys), *(args[a] for a in lua.argv),
                     *pairs)

    async def load(self) -> None:
        await self._script.registered_client.script_load(self.lua.text)


def _text(reply: Any) -> str:
    """A script's string reply (bytes from a client without decode_responses)."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _ledger(increments: Mapping[str, int], sign: int = 1) -> list[str]:
    """Ledger field/amount pairs; amounts as strings, so Redis adds them as 64-bit integers."""
    return _flat({f: str(sign * n) for f, n in increments.items()})


def _lines(lines: Iterable[tuple[int, bytes, str, Mapping[str, int], Mapping[str, int]]]) -> list[Any]:
    """results_write's (and lane_write's) `...lines`: line, record, count, n, ledger values, n values."""
    flat: list[Any] = []
    for line, record, count, ledger, tally in lines:
        values, more = _ledger(ledger), _ledger(tally)
        flat += [line, record, count, len(values) + len(more), len(values), *values, *more]
    return flat


class Scripts(CacheScripts):
    """Every script, registered once on one Redis client (`Scripts.of`), behind typed wrappers."""

    _registered: ClassVar[weakref.WeakKeyDictionary[Redis, Scripts]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, redis: Redis) -> Scripts:
        scripts = cls._registered.get(redis)
        if scripts is None:
            scripts = cls._registered[redis] = cls(redis)
        return scripts

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._s = {name: Script(redis, load(name)) for name in SCRIPTS}

    async def load_all(self) -> None:
        """Load every script into Redis again: after a restart lost them, before queuing calls by sha."""
        for script in self._s.values():
            await script.load()

    # the batch record (store.py, submit.py)

    @staticmethod
    def _result_keys(k: Keys, batch_id: str) -> dict[str, str]:
        return {"results": k.results(batch_id), "pending": k.pending(batch_id), "meta": k.meta(batch_id),
                "attempts": k.attempts(batch_id), "ledger": k.ledger(batch_id), "fleet_ledger": k.fleet_ledger,
                "fleet_counts": k.fleet_counts, "minutes": k.minutes(batch_id)}

    async def write_result(self, k: Keys, batch_id: str, *, line: int, record: bytes, count: str, now: float,
                           ledger: Mapping[str, int], tally: Mapping[str, int] | None = None,
                           pipe: Pipeline | None = None) -> bool:
        """True when the result was new. `tally`: what it adds to the fleet's counts besides its line
        (its calls by outcome). With `pipe` the call is only queued (False here; the answer comes from
        the pipeline's execute)."""
        values = _ledger(ledger)
        done = await self._s["result_write"](
            self._result_keys(k, batch_id), {"line": line, "record": record, "count": count, "now": now,
                                             "nledger": len(values)},
            [*values, *_ledger(tally or {})], client=pipe)
        return pipe is None and bool(done)

    async def write_results(self, k: Keys, batch_id: str, *, now: float,
                            lines: Iterable[tuple[int, bytes, str, Mapping[str, int], Mapping[str, int]]],
                            pipe: Pipeline | None = None) -> int:
        """`write_result` of several lines, (line, record, count, ledger, tally), in one call: how many
        were new (0 here with `pipe`: the answer comes from the pipeline's execute)."""
        done = await self._s["results_write"](self._result_keys(k, batch_id), {"now": now}, _lines(lines),
                                              client=pipe)
        return 0 if pipe is not None else int(done)

    async def finish_submit(self, k: Keys, batch_id: str, *, now: float, start_at: float | None,
                            counts: Mapping[str, int | str]) -> str:
        """The status it set; '' when the batch was stopped while it was being submitted."""
        status = await self._s["submit_finish"](
            {"pending": k.pending(batch_id), "meta": k.meta(batch_id)},
            {"now": now, "start_at": "" if start_at is None else repr(start_at)}, _flat(counts))
        return _text(status)

    async def claim_custom_ids(self, k: Keys, batch_id: str, ids: list[str], lines: list[int]) -> dict[int, int]:
        """Records the ids not taken yet; {index in `ids`: the line that took it first} for the others."""
        found = await self._s["submit_claim_ids"]({"custom_ids": k.custom_ids(batch_id)},
                                                  {"ids": orjson.dumps(ids), "lines": orjson.dumps(lines)})
        return {int(i) - 1: int(first) for i, first in zip(found[::2], found[1::2], strict=True)}

    async def start_due(self, k: Keys, batch_id: str, now: float) -> bool:
        return bool(await self._s["batch_start_due"]({"meta": k.meta(batch_id)}, {"now": repr(now)}))

    # a `run`'s batch: paused, resumed, leased (resume.py)

    async def pause(self, k: Keys, batch_id: str, now: float) -> str | None:
        """The batch's status afterwards (`paused` if it was `in_progress`); None for an unknown batch."""
        status = await self._s["batch_pause"]({"meta": k.meta(batch_id)}, {"now": repr(now)})
        return None if status is None else _text(status)

    async def resume(self, k: Keys, batch_id: str, queue: str) -> str | None:
        """The status it had (a paused or in_progress batch is now in_progress on `queue`); None: unknown."""
        status = await self._s["batch_resume"]({"meta": k.meta(batch_id)}, {"queue": queue})
        return None if status is None else _text(status)

    async def run_lease(self, k: Keys, batch_id: str, *, holder: str, op: str, ttl_ms: int) -> bool:
        """`renew` or `release` the run lease if `holder` has it; False when it does not (any more)."""
        return bool(await self._s["run_lease"]({"run_lease": k.run_lease(batch_id)},
                                               {"holder": holder, "op": op, "ttl_ms": ttl_ms}))

    # chunks held by worker processes (heartbeat.py)

    async def release_chunk(self, k: Keys, *, job: str, holder: str) -> bool:
        """False when the entry was not (or no longer) `holder`'s."""
        return bool(await self._s["chunk_release"]({"held": k.held}, {"job": job, "holder": holder}))

    async def reclaim_chunk(self, k: Keys, batch_id: str, *, job: str, holder: str, worker: str, queue: str,
                            new_job: str, own: bool = False) -> list[int] | None:
        """The pending lines now in chunk `new_job` (none: nothing is left to run); None when `holder`
        beat again or the entry changed since it was read (nothing is done). `own`: the holder
        itself puts back a chunk it no longer runs (its heartbeat is not asked)."""
        lines = await self._s["chunk_reclaim"](
            {"held": k.held, "worker": k.worker(worker), "chunks": k.chunks(batch_id), "pending": k.pending(batch_id),
             "arq_job": k.arq_job(job), "queue": queue},
            {"job_id": job, "holder": holder, "new_id": new_job, "own": int(own)})
        return None if lines is None else [int(n) for n in lines]

    # stopping and retrying (lifecycle.py)

    async def request_stop(self, k: Keys, batch_id: str, interim: Status, now: float) -> str | None:
        """The batch's status afterwards; None for an unknown batch."""
        keys = {"meta": k.meta(batch_id), "first_try": k.first_try(batch_id)}
        status = await self._s["stop_request"](keys, {"interim": interim, "now": now, "queue": k.queue})
        return _text(status) if status is not None else None

    async def finish_stop(self, k: Keys, batch_id: str, interim: Status, final: Status, now: float) -> None:
        await self._s["stop_finish"]({"meta": k.meta(batch_id)}, {"interim": interim, "final": final, "now": now})

    async def reopen_line(self, k: Keys, batch_id: str, *, line: int, record: bytes, count: str, attempts: str,
                          ledger: Mapping[str, int]) -> bool:
        """False when the record changed since it was read (nothing was done)."""
        return bool(await self._s["retry_reopen_line"](
            {"results": k.results(batch_id), "pending": k.pending(batch_id), "meta": k.meta(batch_id),
             "attempts": k.attempts(batch_id), "ledger": k.ledger(batch_id), "first_try": k.first_try(batch_id)},
            {"line": line, "record": record, "count": count, "attempts": attempts}, _ledger(ledger, -1)))

    # spending limits (budget.py); amounts in pico-dollars

    async def reserve(self, k: Keys, batch_id: str, *, token: str, amount: int, now_ms: int, lease_ms: int) -> int:
        """1 reserved, 0 wait for the reservations in flight, -1 the limit is exhausted (budget_reserve.lua)."""
        return int(await self._s["budget_reserve"](
            {"budget": k.budget(batch_id), "budget_leases": k.budget_leases(batch_id), "meta": k.meta(batch_id)},
            {"token": token, "amount": amount, "now_ms": now_ms, "lease_ms": lease_ms}))

    async def settle(self, k: Keys, batch_id: str, *, token: str, billed: int) -> bool:
        """False when the reservation was already settled (or had lapsed)."""
        return bool(await self._s["budget_settle"](
            {"budget": k.budget(batch_id), "budget_leases": k.budget_leases(batch_id)},
            {"token": token, "billed": billed}))

    async def drop_lapsed(self, k: Keys, batch_id: str, now_ms: int) -> None:
        await self._s["budget_purge"]({"budget": k.budget(batch_id), "budget_leases": k.budget_leases(batch_id)},
                                      {"now_ms": now_ms})

    async def raise_limit(self, k: Keys, batch_id: str, *, max_pico: int, now: float) -> bool:
        """True when the batch was waiting on its limit and may now go on."""
        return bool(await self._s["budget_raise"](
            {"budget": k.budget(batch_id), "meta": k.meta(batch_id), "pending": k.pending(batch_id),
             "ledger": k.ledger(batch_id)}, {"max": max_pico, "now": now}))

    # provider health (health.py)

    @staticmethod
    def _health_keys(k: Keys, provider: str) -> dict[str, str]:
        return {"health": k.health, "rate": k.rate(provider), "concurrency": k.concurrency(provider),
                "breaker": k.breaker}

    @staticmethod
    def _acquire_args(p: ProviderConfig, cfg: HealthConfig, model: str, tokens: int, now: float, lease: str,
                      gather: float) -> dict[str, Any]:
        return {"provider": p.name, "model": model, "now": now, "tokens": tokens, "rpm": p.limits.rpm or 0,
                "tpm": p.limits.tpm or 0, "max_concurrency": p.max_concurrency or 0, "lease": lease,
                "lease_until": now + cfg.lease_s, "max_wait": cfg.max_wait_s, "recovery": cfg.rate_recovery_s,
                "headroom": cfg.rate_headroom, "probe_s": cfg.probe_s, "window": cfg.breaker_window_s,
                "gather": gather}

    async def acquire(self, k: Keys, p: ProviderConfig, cfg: HealthConfig, *, model: str, tokens: int, now: float,
                      lease: str, gather: float = 0.1) -> tuple[bool, float, str, bool]:
        """(may go, seconds to wait, reason, whether `lease` was taken); `gather`: how long a slow-start
        round takes calls before they go together."""
        ok, wait, why, leased = await self._s["health_acquire"](
            self._health_keys(k, p.name), self._acquire_args(p, cfg, model, tokens, now, lease, gather))
        return bool(ok), float(wait), _text(why), bool(leased)

    async def acquire_many(self, k: Keys, cfg: HealthConfig, calls: list[tuple[ProviderConfig, str, int, str]], *,
                           now: float, gather: float = 0.1) -> list[tuple[bool, float, str, bool] | Exception]:
        """`acquire` of several calls, (provider, model, tokens, lease), in one round trip: each is its
        own atomic step, in order, as if they had been asked one after the other; a call that failed
        in Redis has its exception in its place."""
        script = self._s["health_acquire"]
        async with self._redis.pipeline(transaction=False) as pipe:
            for p, model, tokens, lease in calls:
                script.queue(pipe, self._health_keys(k, p.name), self._acquire_args(p, cfg, model, tokens, now, lease,
                                                                                     gather))
            replies = await pipe.execute(raise_on_error=False)
        out: list[tuple[bool, float, str, bool] | Exception] = []
        for (p, model, tokens, lease), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):  # Redis lost its scripts (a restart): it did not run
                out.append(await self.acquire(k, p, cfg, model=model, tokens=tokens, now=now, lease=lease,
                                              gather=gather))
            elif isinstance(reply, Exception):
                out.append(reply)
            else:
                ok, wait, why, leased = reply
                out.append((bool(ok), float(wait), _text(why), bool(leased)))
        return out

    async def report(self, k: Keys, provider: str, cfg: HealthConfig, *, model: str, now: float, kind: str,
                     retry_after: float, lease: str, text: str) -> None:
        await self._s["health_report"](self._health_keys(k, provider), {
            "provider": provider, "model": model, "now": now, "kind": kind, "retry_after": retry_after,
            "lease": lease, "text": text, "bench_s": cfg.bench_s, "disable_s": cfg.disable_s,
            "model_s": cfg.model_cooldown_s, "cool_s": cfg.cooldown_s, "min_calls": cfg.breaker_min_calls,
            "err_rate": cfg.breaker_error_rate, "open_s": cfg.breaker_open_s, "recovery": cfg.rate_recovery_s,
            "step": cfg.concurrency_recovery_calls})

    # the webhook outbox (webhooks.py)

    async def claim_webhook(self, k: Keys, batch_id: str, *, seen: float, score: float) -> bool:
        """Move the entry from score `seen` to `score`; True for the one caller that did."""
        return bool(await self._s["webhook_claim"]({"webhooks": k.webhooks},
                                                   {"batch": batch_id, "seen": repr(seen), "score": repr(score)}))

    # lanes (lanes.py): parcels of lines handed to an upstream Batch API

    async def lane_take(self, k: Keys, batch_id: str, *, lane: str, job: str, now: float, deadline: float,
                        must_end_by: float, max_lines: int, max_bytes: int, gather_s: float,
                        lines: Iterable[tuple[int, str, int]]) -> list[int]:
        """The lines of (line, custom_id, bytes) taken into the lane's parcels."""
        taken = await self._s["lane_take"](
            {"meta": k.meta(batch_id), "chunks": k.chunks(batch_id), "pending": k.pending(batch_id),
             "lane_held": k.lane_held(batch_id), "lane_gather": k.lane_gather(batch_id),
             "lane_parcels": k.lane_parcels},
            {"lane": lane, "batch": batch_id, "job": job, "now": repr(now), "deadline": repr(deadline),
             "must_end_by": repr(must_end_by), "max_lines": max_lines, "max_bytes": max_bytes,
             "gather_s": repr(gather_s), "parcel_prefix": k.lane_parcel("")},
            [x for line, cid, size in lines for x in (line, cid, size)])
        return [int(n) for n in taken]

    async def lane_set(self, k: Keys, pid: str, batch_id: str, *, expect: str = "", state: str = "",
                       done: bool = False, fields: Mapping[str, Any] | None = None) -> bool:
        """False when the parcel is gone or not in state `expect` (nothing changed)."""
        return bool(await self._s["lane_set"](
            {"lane_parcel": k.lane_parcel(pid), "lane_gather": k.lane_gather(batch_id), "lane_parcels": k.lane_parcels},
            {"pid": pid, "expect": expect, "state": state, "done": int(done)}, _flat(fields or {})))

    async def lane_record(self, k: Keys, pid: str, *, lane: str, upstream_id: str, due_ms: int) -> bool:
        """False when the parcel is not `creating` or already has an upstream id."""
        return bool(await self._s["lane_record"](
            {"lane_parcel": k.lane_parcel(pid), "lane_recorded": k.lane_recorded(lane), "lane_parcels": k.lane_parcels},
            {"pid": pid, "upstream_id": upstream_id, "due_ms": due_ms}))

    async def lane_lease(self, key: str, *, holder: str, ttl_ms: int) -> bool:
        """Take or renew the lease at `key` (Keys.lane_lease or Keys.lane_creating; 0 ms: give it up)."""
        return bool(await self._s["lane_lease"]({"lane_lease": key}, {"holder": holder, "ttl_ms": ttl_ms}))

    async def lane_write(self, k: Keys, batch_id: str, pid: str, *, now: float,
                         lines: Iterable[tuple[int, bytes, str, Mapping[str, int], Mapping[str, int]]],
                         pipe: Pipeline | None = None) -> int:
        """`write_results` of a parcel's lines, un-held and their reservations settled: how many were new
        (0 here with `pipe`: the answer comes from the pipeline's execute)."""
        done = await self._s["lane_write"](
            {**self._result_keys(k, batch_id), "lane_held": k.lane_held(batch_id), "budget": k.budget(batch_id),
             "budget_leases": k.budget_leases(batch_id), "lane_parcel": k.lane_parcel(pid)},
            {"now": now, "pid": pid}, _lines(lines), client=pipe)
        return 0 if pipe is not None else int(done)

    async def lane_release(self, k: Keys, batch_id: str, pid: str, *, job: str, now: float | str,
                           lines: Iterable[tuple[int, str]], abandoned: str = "") -> list[int]:
        """The pending lines let go of (in chunk `job` unless it is ''); `lines`: (line, attempts JSON or '');
        `now` '': the batch is stopping; `abandoned`: a fleet counter the lines let go of add to (lua)."""
        back = await self._s["lane_release"](
            {"pending": k.pending(batch_id), "lane_held": k.lane_held(batch_id), "attempts": k.attempts(batch_id),
             "first_try": k.first_try(batch_id), "chunks": k.chunks(batch_id), "budget": k.budget(batch_id),
             "budget_leases": k.budget_leases(batch_id), "fleet_counts": k.fleet_counts},
            {"pid": pid, "job": job, "now": now if now == "" else repr(now), "abandoned": abandoned},
            [x for pair in lines for x in pair])
        return [int(n) for n in back]
