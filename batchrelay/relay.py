"""One line, several providers: the failover loop outside, tenacity retries inside one provider.

Routes: providers that speak the job's dialect in priority order, then those that can serve it
only by translation (chat ↔ messages), whose answers are translated back so a result body is
always in the job's own dialect.

This is the simple policy of the core pipeline: providers in priority order; transient failures
(timeouts, 5xx, junk 200s) retried on the same provider with jittered backoff, then fail over;
402/429/401/403/404 fail over at once; a bad request (400/413/422) fails the line without
spending money elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .classify import Action, classify
from .config import Dialect, ProviderConfig, WorkerConfig
from .errors import ProviderError
from .jobs import JobLine
from .providers import ProviderReply, send
from .translate import translate_request, translate_response

OTHER: dict[Dialect, Dialect] = {"chat": "messages", "messages": "chat"}


def routes(dialect: Dialect, providers: Sequence[ProviderConfig]) -> list[tuple[ProviderConfig, Dialect]]:
    """Native providers first (priority order), then the ones that need a translation."""
    native = [(p, dialect) for p in providers if p.speaks(dialect)]
    other = OTHER[dialect]
    return native + [(p, other) for p in providers if not p.speaks(dialect) and p.translate and p.speaks(other)]


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
    wire_dialect: Dialect | None = None  # what the serving provider spoke, when it differs from the job's
    notes: list[str] = field(default_factory=list)  # what could not be mapped exactly

    @property
    def ok(self) -> bool:
        return self.reply is not None


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and classify(exc) is Action.RETRY


async def relay(
    job: JobLine, providers: Sequence[ProviderConfig], client: httpx.AsyncClient, cfg: WorkerConfig
) -> Outcome:
    out = Outcome()
    candidates = routes(job.dialect, providers)
    if not candidates:
        out.message = f"no configured provider serves the {job.dialect} dialect"
        return out
    for provider, wire in candidates:
        body, notes = wire_body(job, wire, cfg)
        try:
            reply = await _call_with_retries(provider, wire, body, client, cfg, out.attempts)
            answer, back = answer_body(job, provider, wire, reply)
            out.reply = replace(reply, body=answer)
            out.provider = provider
            out.wire_dialect = wire if wire != job.dialect else None
            out.notes = [*notes, *reply.notes, *back]
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
    provider: ProviderConfig, wire: Dialect, body: dict[str, Any], client: httpx.AsyncClient, cfg: WorkerConfig,
    log: list[Attempt],
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
                reply = await send(client, provider, wire, body, timeout=cfg.call_timeout)
            except ProviderError as e:
                ms = (time.perf_counter() - started) * 1000
                log.append(Attempt(provider.name, e.status, ms, classify(e).value, e.reason))
                raise
            log.append(Attempt(provider.name, 200, reply.latency_ms))
            return reply
    raise AssertionError("unreachable: tenacity either returns or reraises")
