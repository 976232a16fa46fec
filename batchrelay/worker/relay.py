"""One line, several providers: the failover loop outside, tenacity retries inside one provider.

Candidates come from `routing` (strategy, per-model routes, the batch's allow-list; providers of
the job's own dialect before those that need a translation, whose answers are translated back).
Before every attempt the shared `health` gate is asked; a provider it refuses is skipped. Transient
failures are retried on the same provider with jittered backoff (Retry-After honoured), then the
next provider is tried; billing/auth/404/429 fail over at once; a bad request fails the line.
When no provider can take the line now, it is deferred, not failed, until its deadline.

A `LineRelay` carries one line through all this and ends it with one `Result` (results/outcome.py):
ANSWERED, REJECTED (a bad request), FAILED (nobody before the deadline), DEFERRED (nobody now, or
the batch's limit covers the next call only once the reservations in flight settle) or OVER_BUDGET
(the batch's limit cannot cover the next call whatever they settle at).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
from batchrelay.money.budget import BudgetBusy, OverBudget, Reservation, Spend, Unpriced
from batchrelay.money.pricing import CallCost, call_cost, price_of
from batchrelay.money.tokens import estimate_tokens
from batchrelay.providers.classify import Action, classify, retry_after_seconds
from batchrelay.providers.client import send
from batchrelay.results.outcome import Attempt, Outcome, Result
from batchrelay.store.health import Health, Kind, Permit, Unavailable
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.reply import ProviderReply, Usage
from batchrelay.wire.translate import translate_request, translate_response
from batchrelay.worker import calllog
from batchrelay.worker.metrics import timed_call

KIND_OF: dict[Action, Kind] = {Action.RETRY: "transient", Action.BENCH: "billing", Action.DISABLE: "auth",
                               Action.COOL_MODEL: "model", Action.FAIL_LINE: "other", Action.FAILOVER: "other"}
PASS_BACKOFF_S = 1.0  # every provider failed transiently: look again this soon
LOCAL_BLOCKS = ("rate_limited", "billing", "auth")
# A process blocks a provider itself only to bridge the moment until its report is in Redis, which
# then rules for everyone (and `providers check` can lift it there).
LOCAL_BRIDGE_S = 5.0
# A line the budget's reservations in flight leave no room for looks again in place after pauses of
# BUDGET_POLL_S (growing by half, up to health's max_wait_s in all), then deferred after a tenth of its
# age within BUDGET_WAIT_S: calls settle in seconds, a lane's reservations when its upstream batch ends.
BUDGET_POLL_S, BUDGET_WAIT_S = (0.02, 0.5), (0.2, 10.0)


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


@dataclass(slots=True)
class _Pass:
    """One look at every candidate that did not end the line: why each could not serve it (in
    candidate order), and when each may be worth trying again (seconds; inf: not while we wait)."""

    why: dict[str, str] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)

    @property
    def soonest(self) -> float | None:
        return min((w for w in self.waits if 0 <= w < float("inf")), default=None)


class LineRelay:
    """One line on its way through its candidate providers.

    It holds what the line needs (the job, its candidates in order, an HTTP client, the worker and
    health settings, the batch's budget as `spend`) and what it has learnt so far (its attempts,
    each provider's last answer, the last provider error). `run` returns the line's `Outcome`; the
    other methods are its steps: a pass over the candidates, the retries on one provider, one call.
    `earlier`: attempts of the line's previous runs (it was deferred), kept in its record; `batch`
    its batch id, for the log (calllog.py).
    """

    def __init__(
        self,
        job: JobLine,
        candidates: Sequence[tuple[ProviderConfig, Dialect]],
        client: httpx.AsyncClient,
        cfg: WorkerConfig,
        health: Health,
        *,
        first_tried: float,
        earlier: Sequence[Attempt] = (),
        spend: Spend | None = None,
        batch: str | None = None,
    ) -> None:
        self.job, self.candidates, self.client, self.cfg, self.health = job, candidates, client, cfg, health
        self.first_tried, self.spend, self.batch = first_tried, spend, batch
        self.attempts = [a for a in earlier if a.provider != "…"]  # the gap left by trimming
        self.last_answer: dict[str, str] = {}  # provider -> its last failed call
        self.error: ProviderError | None = None
        self.patience = 0.0  # set by `run`

    async def run(self) -> Outcome:
        """Serve the line; short waits for a provider happen here, longer ones end it DEFERRED.
        With `spend` (the batch has a budget) every call takes a reservation first."""
        if not self.candidates:
            return Outcome(Result.FAILED, self.attempts, message=f"no configured provider serves the "
                           f"{self.job.dialect} dialect for this batch and model")
        waited, busy = 0.0, 0
        # for probes and slow starts: the line waits for them until then (monotonic), in all passes
        self.patience = time.monotonic() + self.health.cfg.probe_wait_s
        while True:
            try:
                tried = await self._one_pass()
            except BudgetBusy:
                # calls in flight settle within moments: wait here, as for a provider; longer, defer
                pause = min(BUDGET_POLL_S[1], BUDGET_POLL_S[0] * 1.5 ** busy)
                if waited + pause > self.health.cfg.max_wait_s:
                    return self._budget_busy()
                await asyncio.sleep(pause)
                waited, busy = waited + pause, busy + 1
                continue
            except OverBudget:
                return Outcome(Result.OVER_BUDGET, self.attempts)
            if isinstance(tried, Outcome):
                return tried
            soonest = tried.soonest
            if soonest is None or waited + soonest > self.health.cfg.max_wait_s:
                return self._no_provider_now(tried)
            await asyncio.sleep(max(soonest, 0.01))
            waited += max(soonest, 0.01)

    async def _one_pass(self) -> Outcome | _Pass:
        """Try each candidate once (with its retries): the line's Outcome when a provider answered or
        rejected it, else what this pass learnt."""
        tried = _Pass()
        for i, (provider, wire) in enumerate(self.candidates):
            name = provider.name
            try:
                body, notes = wire_body(self.job, wire, self.cfg)
            except ValueError as e:  # this request has no form in the provider's dialect
                tried.why[name] = f"cannot translate the request to {wire}: {e}"
                continue
            try:
                reply = await self._call_with_retries(provider, wire, body)
            except Unpriced as e:
                tried.why[name] = str(e)
                continue
            except _Refused as r:
                tried.why[name] = f"{r.why.reason} (for {r.why.wait_s:.1f}s)" if r.why.wait_s >= 0 else r.why.reason
                tried.waits.append(r.why.wait_s)
                continue
            except ProviderError as e:
                self.error, action = e, classify(e)
                tried.why[name] = self.last_answer[name] = f"{e.reason} ({action.value})"
                if action is Action.FAIL_LINE:
                    return Outcome(Result.REJECTED, self.attempts, provider=provider, error=e,
                                   message=f"{name} rejected the request: {e.reason}")
                tried.waits.append(_back_in(e, self.health.cfg))
                if i + 1 < len(self.candidates):
                    calllog.failing_over(self.batch, self.job.line, len(self.attempts), name,
                                         self.candidates[i + 1][0].name, str(body["model"]), e, action.value)
                continue
            answer, back = answer_body(self.job, provider, wire, reply)
            return Outcome(Result.ANSWERED, self.attempts, replace(reply, body=answer), provider,
                           wire_dialect=wire if wire != self.job.dialect else None,
                           notes=[*notes, *reply.notes, *back])
        return tried

    def _budget_busy(self) -> Outcome:
        """Deferred, not failed and with no attempt spent, until the reservations in flight may have
        settled: they end at or below their amounts, so the call may fit then (money/budget.py)."""
        low, high = BUDGET_WAIT_S
        wait = min(high, max(low, (time.time() - self.first_tried) / 10)) * random.uniform(0.8, 1.2)
        return Outcome(Result.DEFERRED, self.attempts, defer_s=wait, budget_wait=True,
                       message="the batch's budget is held by calls in flight: waits for them to settle")

    def _no_provider_now(self, tried: _Pass) -> Outcome:
        """Defer until the earliest provider may take it again, unless that is past the line's deadline."""
        cfg = self.health.cfg
        soonest = tried.soonest
        if soonest is not None and time.time() + soonest < self.first_tried + cfg.line_deadline_s:
            return Outcome(Result.DEFERRED, self.attempts, defer_s=max(soonest, 0.05))

        def said(name: str, what: str) -> str:
            answer = self.last_answer.get(name)
            return what if answer is None or answer == what else f"{what}, last answer {answer}"

        summary = "; ".join(f"{name}: {said(name, what)}" for name, what in tried.why.items())
        return Outcome(Result.FAILED, self.attempts, error=self.error,
                       message=f"no provider could serve this line before its deadline "
                               f"({cfg.line_deadline_s:g}s after its first try): {summary}")

    async def _call_with_retries(self, provider: ProviderConfig, wire: Dialect, body: dict[str, Any]) -> ProviderReply:
        """The call on one provider, transient failures retried in place (jittered backoff, Retry-After)."""
        cfg, health = self.cfg, self.health
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
                got = await self._acquire(provider, model, tokens)
                if isinstance(got, Unavailable):
                    raise _Refused(got)
                held = None
                try:
                    if got.wait_s > 0:
                        await asyncio.sleep(got.wait_s)  # our paced slot in the provider's rate limit
                    if self.spend is not None:
                        held = await self.spend.reserve(provider, body)
                except BaseException:
                    await asyncio.shield(health.release(got))
                    raise
                return await self._attempt(_Call(provider, wire, body, got, self.spend, held), slept + got.wait_s)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _acquire(self, provider: ProviderConfig, model: str, tokens: int) -> Permit | Unavailable:
        """A slot at the provider; while its single probe is out, or it is in its slow start, wait (until
        `patience`, shared by the line's passes) rather than spill lines onto lower-priority providers.
        After a 429 they spill at once."""
        while True:
            got = await self.health.acquire(provider, model, tokens)
            if not isinstance(got, Unavailable) or got.reason not in ("probing", "starting") \
                    or time.monotonic() >= self.patience:
                return got
            await asyncio.sleep(got.wait_s)

    async def _attempt(self, call: _Call, waited: float) -> ProviderReply:
        """One call, reported to the shared health and settled with the budget whatever its end;
        `waited`: slept before it (pacing, backoff or Retry-After)."""
        provider, permit, health = call.provider, call.permit, self.health
        blocked = health.blocked_locally(provider.name)
        if blocked is not None:  # another call of this process just learnt the provider must be left alone
            await asyncio.shield(asyncio.gather(call.settle(None), health.release(permit)))
            raise _Refused(blocked)
        started_at = time.time()
        started = time.perf_counter()
        try:
            reply = await timed_call(provider.name, send(self.client, provider, call.wire, call.body,
                                                         timeout=self.cfg.call_timeout))
        except ProviderError as e:
            await self._reported_failure(call, e, started, started_at, waited)
            raise
        except BaseException:
            # cancelled, or a bug: give the slot and the reservation back
            await asyncio.shield(asyncio.gather(health.release(permit), call.settle(None)))
            raise
        cost = call.cost(reply.usage, reply.reported_cost)
        await _report_and_settle(call, health, cost, "success")
        self.attempts.append(Attempt(provider.name, 200, reply.latency_ms, wait_s=waited, started_at=started_at,
                                     model=provider.provider_model(call.model), usage=reply.usage, cost=cost))
        calllog.answered(self.batch, self.job.line, len(self.attempts), provider.name, call.model, reply.latency_ms)
        return reply

    async def _reported_failure(self, call: _Call, e: ProviderError, started: float, started_at: float,
                                waited: float) -> None:
        provider, model, health = call.provider, call.model, self.health
        action = classify(e)
        billed = e.billed if isinstance(e, ProviderBadResponse) else None  # a 200 without an answer, still billed
        cost = call.cost(*billed) if billed else None
        self.attempts.append(Attempt(provider.name, e.status, (time.perf_counter() - started) * 1000, action.value,
                                     e.reason, waited, started_at, provider.provider_model(model) if billed else None,
                                     billed[0] if billed else None, cost))
        kind: Kind = "rate_limited" if e.status == 429 and action is Action.FAILOVER else KIND_OF[action]
        if kind in LOCAL_BLOCKS:
            health.block_locally(provider.name, _block_for(kind, e, health.cfg), kind)
        calllog.failed(self.batch, self.job.line, len(self.attempts), provider.name, model, e, action.value, kind,
                       self.attempts[-1].latency_ms)
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
