"""`providers check`: can each provider be reached with its key, and how much credit is left?

Each provider ends `ok` (a check answered as it should), `fail` (one did not) or `unchecked`
(nothing that was tried could tell): "ok" is never said of what was not checked. A provider with
no models or credits endpoint gets an empty request at its chat (or messages) path, which a
working provider refuses with a 4xx, unless `--live` makes a real call; that call is tried once
more when it meets a 5xx.

A lane (an official Batch API) is checked as it is used: its batches listed (OpenAI `GET /v1/batches`,
Anthropic `GET /v1/messages/batches`, one item) with its key; `--live` makes no chat call on it (it
would be a synchronous call at the full price, of an API the lane never uses).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import ExitCode, ProviderError
from batchrelay.providers.client import send, usable_key
from batchrelay.providers.dialects import auth_headers, request_headers

State = Literal["ok", "fail", "unchecked"]
LIVE_RETRY_PAUSE_S = 1.0


@dataclass(slots=True)
class CheckResult:
    provider: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    credits: Any = None

    def add(self, what: str, ok: bool | None, detail: str, latency_ms: float | None = None) -> None:
        """One check: passed (True), failed (False) or told nothing (None)."""
        row: dict[str, Any] = {"check": what, "ok": ok, "detail": detail}
        if latency_ms is not None:
            row["latency_ms"] = round(latency_ms, 1)
        self.checks.append(row)

    @property
    def state(self) -> State:
        if any(c["ok"] is False for c in self.checks):
            return "fail"
        return "ok" if any(c["ok"] is True for c in self.checks) else "unchecked"

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def recovered(self) -> bool:
        """Answered a real check, with credit left where credit is shown: fit to serve again."""
        real = any(c["check"] in ("models", "credits", "live", "batches") for c in self.checks)
        has_credit = self.credits is None or (isinstance(self.credits, int | float) and self.credits > 0)
        return self.ok and real and has_credit

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "ok": self.ok, "state": self.state, "credits": self.credits,
                "checks": self.checks}


def exit_status(results: Iterable[CheckResult]) -> ExitCode:
    """0 when every provider is ok, 1 when one failed, else 5 when one could not be checked."""
    states = {r.state for r in results}
    if "fail" in states:
        return ExitCode.ERROR
    return ExitCode.UNCHECKED if "unchecked" in states else ExitCode.OK


def probe_verdict(status: int) -> tuple[bool | None, str]:
    """What the status a provider answers an empty request with says. Pure."""
    if status in (401, 403):
        return False, f"HTTP {status} to an empty request: the key is refused"
    if status == 402:
        return False, f"HTTP {status} to an empty request: no credit left"
    if status in (404, 405):
        return False, f"HTTP {status} to an empty request: no such endpoint (check base_url and endpoints)"
    if status == 429:
        return None, f"HTTP {status} to an empty request: rate limited, so it told nothing (--live makes a real call)"
    if 400 <= status < 500:
        return True, f"reachable: HTTP {status} to an empty request, as expected (--live makes a real call)"
    return None, f"HTTP {status} to an empty request tells nothing (--live makes a real call)"


async def _get(client: httpx.AsyncClient, p: ProviderConfig, path: str) -> tuple[httpx.Response, float]:
    headers = auth_headers(p, p.dialects[0], p.api_key())
    t0 = time.perf_counter()
    resp = await client.get(p.base_url + path, headers=headers)
    return resp, (time.perf_counter() - t0) * 1000


def _json(resp: httpx.Response) -> Any:
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None


async def _probe(client: httpx.AsyncClient, p: ProviderConfig, res: CheckResult) -> None:
    """An empty request at the provider's first dialect's path: a working one refuses it (4xx)."""
    dialect = p.dialects[0]
    t0 = time.perf_counter()
    resp = await client.post(p.base_url + p.path(dialect), content=b"{}",
                             headers=request_headers(p, dialect, p.api_key()))
    ok, detail = probe_verdict(resp.status_code)
    res.add("reach", ok, detail, (time.perf_counter() - t0) * 1000)


async def _live(client: httpx.AsyncClient, p: ProviderConfig, model: str | None, res: CheckResult) -> None:
    """A 1-token call; a 5xx is often a blip, so it gets one more try before the check fails."""
    dialect = p.dialects[0]
    probe_model = model or (p.catalog[0] if p.catalog and "*" not in p.catalog[0] else "gpt-4o-mini")
    body = {"model": probe_model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
    for retried in (False, True):
        try:
            reply = await send(client, p, dialect, body, timeout=30)
        except ProviderError as e:
            if not retried and e.status is not None and e.status >= 500:
                await asyncio.sleep(LIVE_RETRY_PAUSE_S)
                continue
            res.add("live", False, f"{dialect} call failed: {e.reason}" + (" (tried twice)" if retried else ""))
            return
        res.add("live", True, f"{dialect} call answered, {reply.usage.input_tokens}+{reply.usage.output_tokens} "
                "tokens" + (" (on the second try)" if retried else ""), reply.latency_ms)
        return


async def _lane(client: httpx.AsyncClient, p: ProviderConfig, res: CheckResult, live: bool) -> None:
    """A lane's batches listed with its key, as its parcels' calls are sent (lane_client)."""
    from batchrelay.providers.lane_client import LaneClient

    lane = LaneClient(p, client)
    t0 = time.perf_counter()
    try:
        await lane.list_page(1)
    except ProviderError as e:
        hint = {401: " (the key is refused)", 403: " (the key is refused)", 402: " (no credit left)",
                404: " (no Batch API there: check base_url)"}.get(e.status or 0, "")
        res.add("batches", False, e.reason + hint)
    else:
        res.add("batches", True, f"listed {lane.batches} with its key", (time.perf_counter() - t0) * 1000)
    if live:
        res.add("live", None, "not for a lane: its batch listing is its check (a chat call is not what it uses)")


async def check_provider(client: httpx.AsyncClient, p: ProviderConfig, *, live: bool, model: str | None) -> CheckResult:
    res = CheckResult(p.name)
    try:
        usable_key(p)
    except ProviderError as e:
        res.add("key", False, e.reason)
        return res
    if p.is_lane:
        await _lane(client, p, res, live)
        return res
    try:
        if p.models_path:
            resp, ms = await _get(client, p, p.models_path)
            data = _json(resp)
            n = len(data.get("data", [])) if isinstance(data, dict) and isinstance(data.get("data"), list) else None
            res.add("models", resp.status_code == 200,
                    f"HTTP {resp.status_code}" + (f", {n} models" if n is not None else ""), ms)
        if p.credits_path:
            resp, ms = await _get(client, p, p.credits_path)
            data = _json(resp)
            if resp.status_code == 200 and isinstance(data, dict) and "credits" in data:
                res.credits = data["credits"]
            res.add("credits", resp.status_code == 200, f"HTTP {resp.status_code}, credits {res.credits}", ms)
        if not res.checks and not live:  # a real call says more than an empty one
            await _probe(client, p, res)
    except httpx.HTTPError as e:
        res.add("reach", False, f"{type(e).__name__}: cannot reach {p.base_url}")
        return res
    if live:
        await _live(client, p, model, res)
    return res


async def check_all(providers: list[ProviderConfig], *, live: bool, model: str | None) -> list[CheckResult]:
    async with httpx.AsyncClient(timeout=30) as client:
        return [await check_provider(client, p, live=live, model=model) for p in providers]
