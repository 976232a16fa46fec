"""One line, several providers: the failover loop outside, tenacity retries inside one provider.

Candidates come from `routing` (strategy, per-model routes, the batch's allow-list; providers of
the job's own dialect before those that need a translation, whose answers are translated back).
Before every attempt the shared `health` gate is asked; a provider it refuses is skipped. Transient
failures are retried on the same provider with jittered backoff (Retry-After honoured), then the
next provider is tried; billing/auth/404/429 fail over at once; a bad request fails the line.
When no provider can take the line now, it is deferred, not failed, until its deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from batchrelay.config.settings import HealthConfig, ProviderConfig, WorkerConfig
from batchrelay.errors import ProviderBadResponse, ProviderError
from batchrelay.money.budget import OverBudget, Reservation, Spend, Unpriced
from batchrelay.money.pricing import CallCost, call_cost, price_of
from batchrelay.money.tokens import estimate_tokens
from batchrelay.providers.classify import Action, classify, retry_after_seconds
from batchrelay.providers.client import send
from batchrelay.results.outcome import Attempt, Outcome
from batchrelay.store.health import Health, Kind, Permit, Unavailable
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.reply import ProviderReply, Usage
from batchrelay.wire.translate import translate_request, translate_response

KIND_OF: dict[Action, Kind] = {Action.RETRY: "transient", Action.BENCH: "billing", Action.DISABLE: "auth",
                               Action.COOL_MODEL: "model", Action.FAIL_LINE: "other", Action.FAILOVER: "other"}
PASS_BACKOFF_S = 1.0  # every provider failed transiently: look again this soon
LOCAL_BLOCKS = ("rate_limited", "billing", "auth")
# A process blocks a provider itself only to bridge the moment until its report is in Redis, which
# then rules for everyone (and `providers check` can lift it there).
LOCAL_BRIDGE_S = 5.0


def _block_for(kind: Kind, e: ProviderError, cfg: HealthConfig) -> float:
    if kind == "billing":
        return min(cfg.bench_s, LOCAL_BRIDGE_S)
    if kind == "auth":
        return min(cfg.disable_s, LOCAL_BRIDGE_S)
    ra = retry_after_seconds(e)
    return min(ra if ra is not None else cfg.cooldown_s, LOCAL_BRIDGE_S)


def wire_body(job: JobLine, wire: Dialect, cfg: WorkerConfig) -> tuple[dict[str, Any], list[str]]:
    if wire != job.dialect:
        return translate_request(job.body, job.dialect, wire, default_max_tokens=cfg.default_max_tokens)
    if wire == "messages" and "max_tokens" not in job.body:
        return {**job.body, "max_tokens": cfg.default_max_tokens}, [
            f"max_tokens missing (the messages API requires it): used {cfg.default_max_tokens}"]
    return job.body, []


def answer_body(
    job: JobLine, provider: ProviderConfig, wire: Dialect, reply: ProviderReply
) -> tuple[dict[str, Any], list[str]]:
    body, notes = (reply.body, []) if wire == job.dialect else translate_response(reply.body, wire, job.dialect)
    model = str(job.body["model"])
    if model in provider.models and body.get("model") == provider.models[model]:
        body = {**body, "model": model}  # the job's own model name, whatever the provider calls it
    return body, notes


class _Refused(Exception):
    def __init__(self, why: Unavailable) -> None:
        self.why = why


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and classify(exc) is Action.RETRY


class _RetryAfterTooLong(stop_base):
    """A Retry-After longer than we wait in place: leave the provider to its cooldown and fail over."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        ra = retry_after_seconds(exc) if isinstance(exc, ProviderError) else None
        return ra is not None and ra > self.max_wait_s


def _wait(cfg: WorkerConfig) -> Any:
    """Jittered exponential backoff, or the provider's Retry-After when that is longer."""
    backoff = wait_exponential_jitter(multiplier=cfg.backoff, max=10, jitter=cfg.backoff)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        ra = retry_after_seconds(exc) if isinstance(exc, ProviderError) else None
        return max(backoff(state), ra or 0.0)

    return wait


async def relay(
    job: JobLine,
    candidates: Sequence[tuple[ProviderConfig, Dialect]],
    client: httpx.AsyncClient,
    cfg: WorkerConfig,
    health: Health,
    *,
    first_tried: float,
    earlier: Sequence[Attempt] = (),
    spend: Spend | None = None,
) -> Outcome:
    """Serve the line; short waits for a provider happen here, longer ones come back as `defer_s`.
    With `spend` (the batch has a budget) every call takes a reservation first."""
    out = Outcome(attempts=[a for a in earlier if a.provider != "…"])
    if not candidates:
        out.message = f"no configured provider serves the {job.dialect} dialect for this batch and model"
        return out
    waited = 0.0
    patience = time.monotonic() + health.cfg.probe_wait_s  # for probes and slow starts, in all passes
    while True:
        try:
            done, last, waits = await _one_pass(job, candidates, client, cfg, health, out, spend, patience)
        except OverBudget:
            out.over_budget = True
            return out
        if done:
            return out
        soonest = min((w for w in waits if 0 <= w < float("inf")), default=None)
        if soonest is None or waited + soonest > health.cfg.max_wait_s:
            return _no_provider_now(out, last, waits, first_tried, health.cfg)
        await asyncio.sleep(max(soonest, 0.01))
        waited += max(soonest, 0.01)


async def _one_pass(
    job: JobLine, candidates: Sequence[tuple[ProviderConfig, Dialect]], client: httpx.AsyncClient,
    cfg: WorkerConfig, health: Health, out: Outcome, spend: Spend | None, patience: float,
) -> tuple[bool, dict[str, str], list[float]]:
    """Try each candidate once (with its retries); True when the line got its answer or failed for good."""
    last: dict[str, str] = {}
    waits: list[float] = []
    for provider, wire in candidates:
        try:
            body, notes = wire_body(job, wire, cfg)
        except ValueError as e:  # this request has no form in the provider's dialect
            last[provider.name] = f"cannot translate the request to {wire}: {e}"
            continue
        try:
            reply = await _call_with_retries(provider, wire, body, client, cfg, health, out.attempts, spend,
                                             patience)
        except Unpriced as e:
            last[provider.name] = str(e)
            continue
        except _Refused as r:
            last[provider.name] = f"{r.why.reason} (for {r.why.wait_s:.1f}s)" if r.why.wait_s >= 0 else r.why.reason
            waits.append(r.why.wait_s)
            continue
        except ProviderError as e:
            out.error = e
            last[provider.name] = out.last_answer[provider.name] = f"{e.reason} ({classify(e).value})"
            if classify(e) is Action.FAIL_LINE:
                out.provider, out.rejected = provider, True
                out.message = f"{provider.name} rejected the request: {e.reason}"
                return True, last, waits
            waits.append(_back_in(e, health.cfg))
            continue
        answer, back = answer_body(job, provider, wire, reply)
        out.reply, out.provider = replace(reply, body=answer), provider
        out.wire_dialect = wire if wire != job.dialect else None
        out.notes = [*notes, *reply.notes, *back]
        return True, last, waits
    return False, last, waits


def _back_in(e: ProviderError, cfg: HealthConfig) -> float:
    """After this failure, when the provider may be worth trying again for this line."""
    action, ra = classify(e), retry_after_seconds(e)
    if action is Action.BENCH:
        return cfg.bench_s
    if action is Action.DISABLE:
        return cfg.disable_s
    if action is Action.COOL_MODEL:
        return cfg.model_cooldown_s
    if e.status == 429:
        return ra if ra is not None else cfg.cooldown_s
    if e.status is None and action is Action.FAILOVER:
        return float("inf")  # no usable key in this worker's environment: waiting will not help
    return ra if ra is not None else PASS_BACKOFF_S


def _no_provider_now(out: Outcome, last: dict[str, str], waits: list[float], first_tried: float,
                     cfg: HealthConfig) -> Outcome:
    """Defer until the earliest provider may take it again, unless that is past the line's deadline."""
    deadline = first_tried + cfg.line_deadline_s
    soonest = min((w for w in waits if 0 <= w < float("inf")), default=None)
    now = time.time()
    if soonest is not None and now + soonest < deadline:
        out.defer_s = max(soonest, 0.05)
        return out
    def said(name: str, what: str) -> str:
        answer = out.last_answer.get(name)
        return what if answer is None or answer == what else f"{what}, last answer {answer}"

    summary = "; ".join(f"{name}: {said(name, what)}" for name, what in last.items())
    out.message = (f"no provider could serve this line before its deadline "
                   f"({cfg.line_deadline_s:g}s after its first try): {summary}")
    return out


async def _call_with_retries(
    provider: ProviderConfig, wire: Dialect, body: dict[str, Any], client: httpx.AsyncClient, cfg: WorkerConfig,
    health: Health, log: list[Attempt], spend: Spend | None, patience: float,
) -> ProviderReply:
    model = str(body["model"])
    tokens = estimate_tokens(body)
    retrying = AsyncRetrying(
        stop=stop_any(stop_after_attempt(cfg.attempts_per_provider), stop_after_delay(cfg.provider_deadline),
                      _RetryAfterTooLong(health.cfg.max_wait_s)),
        wait=_wait(cfg),
        retry=retry_if_exception(_is_transient),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            slept = attempt.retry_state.upcoming_sleep if attempt.retry_state.attempt_number > 1 else 0.0
            got = await _acquire(health, provider, model, tokens, patience)
            if isinstance(got, Unavailable):
                raise _Refused(got)
            held = None
            try:
                if got.wait_s > 0:
                    await asyncio.sleep(got.wait_s)  # our paced slot in the provider's rate limit
                if spend is not None:
                    held = await spend.reserve(provider, body)
            except BaseException:
                await asyncio.shield(health.release(got))
                raise
            call = _Call(provider, wire, body, got, spend, held)
            return await _attempt(call, client, cfg, health, log, slept + got.wait_s)
    raise AssertionError("unreachable: tenacity either returns or reraises")


async def _acquire(health: Health, provider: ProviderConfig, model: str, tokens: int,
                   patience: float) -> Permit | Unavailable:
    """A slot at the provider; while its single probe is out, or it is in its slow start, wait (until
    the monotonic `patience`, shared by the line's passes) rather than spill lines onto lower-priority
    providers. After a 429 they spill at once."""
    while True:
        got = await health.acquire(provider, model, tokens)
        if not isinstance(got, Unavailable) or got.reason not in ("probing", "starting") \
                or time.monotonic() >= patience:
            return got
        await asyncio.sleep(got.wait_s)


@dataclass(frozen=True, slots=True)
class _Call:
    """One call about to be sent: where, what, its health permit and its budget reservation."""

    provider: ProviderConfig
    wire: Dialect
    body: dict[str, Any]
    permit: Permit
    spend: Spend | None = None
    held: Reservation | None = None

    @property
    def model(self) -> str:
        return str(self.body["model"])

    def cost(self, usage: Usage, reported: Any) -> CallCost:
        p = self.provider
        return call_cost(price_of(p, p.provider_model(self.model)), usage, reported, p.cost_source)

    async def settle(self, billed: CallCost | None) -> None:
        """Give the reservation back less what the call was billed (None: nothing was)."""
        if self.spend is not None and self.held is not None:
            await self.spend.settle(self.held, billed.billed if billed else Decimal(0))


async def _attempt(call: _Call, client: httpx.AsyncClient, cfg: WorkerConfig, health: Health, log: list[Attempt],
                   waited: float) -> ProviderReply:
    provider, permit = call.provider, call.permit
    blocked = health.blocked_locally(provider.name)
    if blocked is not None:  # another call of this process just learnt the provider must be left alone
        await asyncio.shield(asyncio.gather(call.settle(None), health.release(permit)))
        raise _Refused(blocked)
    started_at = time.time()
    started = time.perf_counter()
    try:
        reply = await send(client, provider, call.wire, call.body, timeout=cfg.call_timeout)
    except ProviderError as e:
        await _reported_failure(call, e, health, log, started, started_at, waited)
        raise
    except BaseException:
        # cancelled, or a bug: give the slot and the reservation back
        await asyncio.shield(asyncio.gather(health.release(permit), call.settle(None)))
        raise
    cost = call.cost(reply.usage, reply.reported_cost)
    await _report_and_settle(call, health, cost, "success")
    log.append(Attempt(provider.name, 200, reply.latency_ms, wait_s=waited, started_at=started_at,
                       model=provider.provider_model(call.model), usage=reply.usage, cost=cost))
    return reply


async def _reported_failure(call: _Call, e: ProviderError, health: Health, log: list[Attempt], started: float,
                            started_at: float, waited: float) -> None:
    provider, model = call.provider, call.model
    action = classify(e)
    billed = e.billed if isinstance(e, ProviderBadResponse) else None  # a 200 without an answer, still billed
    cost = call.cost(*billed) if billed else None
    log.append(Attempt(provider.name, e.status, (time.perf_counter() - started) * 1000, action.value, e.reason,
                       waited, started_at, provider.provider_model(model) if billed else None,
                       billed[0] if billed else None, cost))
    kind: Kind = "rate_limited" if e.status == 429 and action is Action.FAILOVER else KIND_OF[action]
    if kind in LOCAL_BLOCKS:
        health.block_locally(provider.name, _block_for(kind, e, health.cfg), kind)
    await _report_and_settle(call, health, cost, kind, retry_after=retry_after_seconds(e),
                             text=f"{e.status or ''} {e.reason}".strip())


async def _report_and_settle(call: _Call, health: Health, cost: CallCost | None, kind: Kind, **report: Any) -> None:
    """Tell the shared health first (a cooldown is worth most the sooner every worker sees it; the
    report also frees the call's slot), then settle the budget; each happens even when the other
    fails or the task is cancelled."""
    try:
        if health.worth_reporting(call.permit, kind):
            await asyncio.shield(health.report(call.provider, call.permit, call.model, kind, **report))
    finally:
        if call.held is not None:
            await asyncio.shield(call.settle(cost))
