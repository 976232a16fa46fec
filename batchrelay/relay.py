"""One line, several providers: the failover loop outside, tenacity retries inside one provider.

This is the simple policy of the core pipeline: providers in priority order; transient failures
(timeouts, 5xx, junk 200s) retried on the same provider with jittered backoff, then fail over;
402/429/401/403/404 fail over at once; a bad request (400/413/422) fails the line without
spending money elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .classify import Action, classify
from .config import ProviderConfig, WorkerConfig
from .errors import ProviderError
from .jobs import JobLine
from .providers import ProviderReply, send


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    status: int | None
    latency_ms: float
    action: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"provider": self.provider, "status": self.status, "latency_ms": round(self.latency_ms, 1)}
        if self.action:
            d["action"] = self.action
        if self.error:
            d["error"] = self.error
        return d


@dataclass(slots=True)
class Outcome:
    attempts: list[Attempt] = field(default_factory=list)
    reply: ProviderReply | None = None
    provider: ProviderConfig | None = None
    error: ProviderError | None = None
    message: str = ""
    rejected: bool = False  # the provider called the request itself bad: no failover

    @property
    def ok(self) -> bool:
        return self.reply is not None


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and classify(exc) is Action.RETRY


async def relay(
    job: JobLine, providers: Sequence[ProviderConfig], client: httpx.AsyncClient, cfg: WorkerConfig
) -> Outcome:
    out = Outcome()
    candidates = [p for p in providers if p.speaks(job.dialect)]
    if not candidates:
        out.message = f"no configured provider serves the {job.dialect} dialect"
        return out
    for provider in candidates:
        try:
            out.reply = await _call_with_retries(job, provider, client, cfg, out.attempts)
            out.provider = provider
            return out
        except ProviderError as e:
            out.error, out.provider = e, provider
            if classify(e) is Action.FAIL_LINE:
                out.rejected = True
                out.message = f"{provider.name} rejected the request: {e.reason}"
                return out
    tried = "; ".join(f"{a.provider}: {a.error or a.status}" for a in out.attempts)
    out.provider = None
    out.message = f"every provider failed ({tried})"
    return out


async def _call_with_retries(
    job: JobLine, provider: ProviderConfig, client: httpx.AsyncClient, cfg: WorkerConfig, log: list[Attempt]
) -> ProviderReply:
    retrying = AsyncRetrying(
        stop=stop_after_attempt(cfg.attempts_per_provider),
        wait=wait_exponential_jitter(multiplier=cfg.backoff, max=10, jitter=cfg.backoff),
        retry=retry_if_exception(_is_transient),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            started = time.perf_counter()
            try:
                reply = await send(client, provider, job.dialect, job.body, timeout=cfg.call_timeout)
            except ProviderError as e:
                ms = (time.perf_counter() - started) * 1000
                log.append(Attempt(provider.name, e.status, ms, classify(e).value, e.reason))
                raise
            log.append(Attempt(provider.name, 200, reply.latency_ms))
            return reply
    raise AssertionError("unreachable: tenacity either returns or reraises")
