"""One line's relay (worker/relay.py) against real simulators over HTTP and a real Redis.

Each test sets up the situation that causes one result kind, or one rule of the failover loop,
and checks the Outcome, the attempts it logged and the calls the simulators actually received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, ProviderConfig, WorkerConfig
from batchrelay.money.budget import Spend
from batchrelay.results.outcome import Attempt, Result
from batchrelay.sim.faults import SimConfig
from batchrelay.sim.process import SimulatorProcess
from batchrelay.store.budget import Budget
from batchrelay.store.health import Health, Permit
from batchrelay.store.keys import Keys
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.relay import LineRelay

MODEL = "gpt-4o-mini"  # officially priced, so a budget can reserve for it
CFG = WorkerConfig(call_timeout=5, backoff=0.01, attempts_per_provider=2)


@dataclass(frozen=True)
class Sim:
    """A simulator the tests reuse, and the provider config that reaches it."""

    name: str
    proc: SimulatorProcess

    def provider(self, **faults: Any) -> ProviderConfig:
        """Only `faults` (on a default config) from now on, an empty log; the provider."""
        self.proc.configure(reset=True, **{**SimConfig().model_dump(), **faults})
        httpx.post(self.proc.base_url + "/_sim/reset", timeout=5).raise_for_status()
        return ProviderConfig(name=self.name, base_url=self.proc.base_url)

    @property
    def calls(self) -> int:
        return int(self.proc.stats()["calls"])

    def log(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.proc.base_url + "/_sim/log", params={"full": 1}, timeout=5).json())


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Sim, Sim]]:
    """Two simulators for the whole module (each test configures them afresh)."""
    a, b = SimulatorProcess(), SimulatorProcess()
    a.start()
    b.start()
    yield Sim("a", a), Sim("b", b)
    a.stop()
    b.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def _health(redis: Redis, prefix: str, **cfg: Any) -> Health:
    return Health(Store(redis, Keys(prefix)), HealthConfig(**cfg))


def _job(dialect: Dialect = "chat", model: str = MODEL) -> JobLine:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    return JobLine(7, "req-7", "openai", dialect, body)


def _relay(candidates: list[tuple[ProviderConfig, Dialect]], client: httpx.AsyncClient, health: Health, *,
           job: JobLine | None = None, first_tried: float | None = None, **kw: Any) -> LineRelay:
    return LineRelay(job or _job(), candidates, client, kw.pop("cfg", CFG), health,
                     first_tried=time.time() if first_tried is None else first_tried, **kw)


async def _spend(redis: Redis, prefix: str, max_usd: str) -> Spend:
    """Batch "b1" with a spending limit of `max_usd`, as its relays see it."""
    budget = Budget(Store(redis, Keys(prefix)))
    await budget.raise_limit("b1", Decimal(max_usd))
    return Spend(budget, "b1")


def _tried(attempts: list[Attempt]) -> list[tuple[str, int | None, str | None]]:
    return [(a.provider, a.status, a.action) for a in attempts]


# --- ANSWERED -------------------------------------------------------------------------------------

async def test_the_first_provider_in_order_answers_and_the_next_is_never_called(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(), sims[1].provider()
    out = await _relay([(a, "chat"), (b, "chat")], client, _health(redis, prefix)).run()
    assert out.kind is Result.ANSWERED and out.ok
    assert out.provider == a
    assert out.reply is not None and out.reply.body["model"] == MODEL
    assert out.reply.body["choices"][0]["message"]["role"] == "assistant"
    assert _tried(out.attempts) == [("a", 200, None)]
    assert out.attempts[0].cost is not None and out.attempts[0].cost.billed is not None  # priced and billed
    assert out.wire_dialect is None
    assert (sims[0].calls, sims[1].calls) == (1, 0)


async def test_transient_failures_are_retried_on_the_same_provider_then_it_fails_over(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(fail_status=500), sims[1].provider()
    out = await _relay([(a, "chat"), (b, "chat")], client, _health(redis, prefix)).run()
    assert out.kind is Result.ANSWERED and out.provider == b
    # attempts_per_provider = 2 on a, each logged; then b
    assert _tried(out.attempts) == [("a", 500, "retry"), ("a", 500, "retry"), ("b", 200, None)]
    assert out.attempts[1].wait_s > 0  # the retry waited its (jittered) backoff
    assert (sims[0].calls, sims[1].calls) == (2, 1)


async def test_a_retry_honours_retry_after_and_then_succeeds_on_the_same_provider(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(script=[503], retry_after=1), sims[1].provider()
    started = time.monotonic()
    out = await _relay([(a, "chat"), (b, "chat")], client, _health(redis, prefix)).run()
    assert out.kind is Result.ANSWERED and out.provider == a
    assert _tried(out.attempts) == [("a", 503, "retry"), ("a", 200, None)]
    assert out.attempts[1].wait_s >= 1.0
    assert time.monotonic() - started >= 1.0
    assert sims[1].calls == 0


async def test_a_429_fails_over_at_once_and_keeps_the_next_line_away_from_that_provider(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(fail_status=429, retry_after=30), sims[1].provider()
    health = _health(redis, prefix)
    started = time.monotonic()
    out = await _relay([(a, "chat"), (b, "chat")], client, health).run()
    assert time.monotonic() - started < 3  # no wait for the Retry-After, no retry on a
    assert out.kind is Result.ANSWERED and out.provider == b
    assert _tried(out.attempts) == [("a", 429, "failover"), ("b", 200, None)]
    # the shared health now has a cooling: the next line skips a without calling it
    again = await _relay([(a, "chat"), (b, "chat")], client, health).run()
    assert again.provider == b and _tried(again.attempts) == [("b", 200, None)]
    assert (sims[0].calls, sims[1].calls) == (1, 2)


async def test_a_provider_the_health_gate_refuses_is_skipped_without_a_call(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(), sims[1].provider()
    health = _health(redis, prefix)
    await health.report(a, None, MODEL, "billing")  # benched: out of credit
    out = await _relay([(a, "chat"), (b, "chat")], client, health).run()
    assert out.kind is Result.ANSWERED and out.provider == b
    assert _tried(out.attempts) == [("b", 200, None)]
    assert sims[0].calls == 0


async def test_a_provider_of_the_other_dialect_answers_through_translation(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a = sims[0].provider().model_copy(update={"dialects": ("messages",)})
    out = await _relay([(a, "messages")], client, _health(redis, prefix)).run()
    assert out.kind is Result.ANSWERED and out.wire_dialect == "messages"
    assert out.reply is not None
    assert out.reply.body["object"] == "chat.completion"  # the job's own dialect, translated back
    assert out.reply.body["choices"][0]["message"]["content"]
    (call,) = sims[0].log()
    assert call["path"] == "/v1/messages"
    assert call["body"]["max_tokens"] == CFG.default_max_tokens  # the messages API requires it


async def test_earlier_attempts_are_kept_ahead_of_new_ones_without_the_trimming_gap(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a = sims[0].provider()
    earlier = [Attempt("b", 429, 5.0, "failover", "HTTP 429"), Attempt("…", None, 0.0, error="3 more attempts not kept")]
    out = await _relay([(a, "chat")], client, _health(redis, prefix), earlier=earlier).run()
    assert _tried(out.attempts) == [("b", 429, "failover"), ("a", 200, None)]


# --- REJECTED -------------------------------------------------------------------------------------

async def test_a_400_rejects_the_line_without_trying_another_provider(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(fail_status=400), sims[1].provider()
    out = await _relay([(a, "chat"), (b, "chat")], client, _health(redis, prefix)).run()
    assert out.kind is Result.REJECTED and not out.ok
    assert out.provider == a
    assert out.error is not None and out.error.status == 400
    assert out.message.startswith("a rejected the request: ")
    assert _tried(out.attempts) == [("a", 400, "fail_line")]
    assert (sims[0].calls, sims[1].calls) == (1, 0)


# --- DEFERRED and FAILED: no provider can take the line ------------------------------------------

async def test_when_every_provider_is_cooling_the_line_is_deferred_until_the_earliest_may_take_it(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(fail_status=429, retry_after=30), sims[1].provider(fail_status=429, retry_after=20)
    out = await _relay([(a, "chat"), (b, "chat")], client, _health(redis, prefix)).run()
    assert out.kind is Result.DEFERRED and not out.ok
    assert 15 < out.defer_s <= 20  # b's Retry-After, the sooner one
    assert _tried(out.attempts) == [("a", 429, "failover"), ("b", 429, "failover")]


async def test_transient_failures_everywhere_defer_the_line_by_the_pass_backoff(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(fail_status=500), sims[1].provider(fail_status=502)
    out = await _relay([(a, "chat"), (b, "chat")], client, _health(redis, prefix, max_wait_s=0)).run()
    assert out.kind is Result.DEFERRED and out.defer_s == 1.0  # relay.PASS_BACKOFF_S
    assert [a.status for a in out.attempts] == [500, 500, 502, 502]


async def test_short_waits_happen_in_place_before_the_line_is_deferred(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    # a cools 1 s after its 429, within max_wait_s: the relay waits for it and calls it again
    a = sims[0].provider(script=[429], retry_after=1)
    out = await _relay([(a, "chat")], client, _health(redis, prefix, max_wait_s=5)).run()
    assert out.kind is Result.ANSWERED and out.provider == a
    assert _tried(out.attempts) == [("a", 429, "failover"), ("a", 200, None)]


async def test_past_its_deadline_a_line_nobody_can_take_fails_with_each_providers_last_answer(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a, b = sims[0].provider(fail_status=429, retry_after=30), sims[1].provider(fail_status=503, retry_after=30)
    health = _health(redis, prefix, line_deadline_s=60)
    out = await _relay([(a, "chat"), (b, "chat")], client, health, first_tried=time.time() - 50).run()
    assert out.kind is Result.FAILED and not out.ok
    assert out.message.startswith("no provider could serve this line before its deadline (60s after its first try)")
    assert "a: HTTP 429 (failover)" in out.message and "b: HTTP 503 (retry)" in out.message
    assert out.error is not None and out.error.status == 503  # the last answer, for the error record


async def test_no_candidate_at_all_fails_the_line_at_once(client: httpx.AsyncClient, redis: Redis,
                                                          prefix: str) -> None:
    out = await _relay([], client, _health(redis, prefix), job=_job("messages")).run()
    assert out.kind is Result.FAILED
    assert out.message == "no configured provider serves the messages dialect for this batch and model"
    assert out.attempts == []


# --- budgets --------------------------------------------------------------------------------------

async def test_a_budget_that_cannot_cover_the_call_ends_the_line_over_budget_and_frees_its_permit(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a = sims[0].provider()
    health, spend = _health(redis, prefix), await _spend(redis, prefix, "0.000000001")
    await redis.hset(Keys(prefix).meta("b1"), "status", "in_progress")  # type: ignore[misc]
    out = await _relay([(a, "chat")], client, health, spend=spend).run()
    assert out.kind is Result.OVER_BUDGET and not out.ok
    assert out.attempts == [] and sims[0].calls == 0
    assert await redis.hget(Keys(prefix).meta("b1"), "status") == Status.BUDGET_EXHAUSTED.encode()  # type: ignore[misc]
    got = await health.acquire(a, MODEL, 10)  # the probe permit the relay held went back
    assert isinstance(got, Permit) and got.probe


async def test_a_budgeted_call_settles_its_reservation_at_the_billed_cost(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a = sims[0].provider()
    spend = await _spend(redis, prefix, "1")
    out = await _relay([(a, "chat")], client, _health(redis, prefix), spend=spend).run()
    assert out.kind is Result.ANSWERED
    billed = out.attempts[0].cost.billed if out.attempts[0].cost else None
    info = await spend.budget.info("b1")
    assert billed is not None and billed > 0
    assert (info.spent_usd, info.reserved_usd) == (billed, Decimal(0))


async def test_an_unpriced_model_is_never_sent_when_the_batch_has_a_budget(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a = sims[0].provider()
    out = await _relay([(a, "chat")], client, _health(redis, prefix), job=_job(model="no-such-model-anywhere"),
                       spend=await _spend(redis, prefix, "1")).run()
    assert out.kind is Result.FAILED
    assert "a: no known price for no-such-model-anywhere at a" in out.message
    assert sims[0].calls == 0


# --- cancellation ---------------------------------------------------------------------------------

async def test_a_cancelled_relay_gives_back_its_concurrency_lease_probe_and_reservation(
    sims: tuple[Sim, Sim], client: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    a = sims[0].provider(latency_ms=10_000).model_copy(update={"max_concurrency": 2})
    keys, health, spend = Keys(prefix), _health(redis, prefix), await _spend(redis, prefix, "1")
    task = asyncio.create_task(_relay([(a, "chat")], client, health, spend=spend).run())
    deadline = time.monotonic() + 5
    while sims[0].calls == 0:  # the call is at the provider, holding its lease and its reservation
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await redis.zcard(keys.concurrency("a")) == 1
    assert (await spend.budget.info("b1")).reserved_usd > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await redis.zcard(keys.concurrency("a")) == 0
    assert (await spend.budget.info("b1")).reserved_usd == 0
    got = await health.acquire(a, MODEL, 10)  # not "probing": the probe claim went back too
    assert isinstance(got, Permit) and got.probe
