"""`providers check`: can each provider be reached with its key, and how much credit is left?"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import ProviderError
from batchrelay.providers.client import send, usable_key
from batchrelay.providers.dialects import auth_headers


@dataclass(slots=True)
class CheckResult:
    provider: str
    ok: bool = True
    checks: list[dict[str, Any]] = field(default_factory=list)
    credits: Any = None

    def add(self, what: str, ok: bool, detail: str, latency_ms: float | None = None) -> None:
        self.ok = self.ok and ok
        row: dict[str, Any] = {"check": what, "ok": ok, "detail": detail}
        if latency_ms is not None:
            row["latency_ms"] = round(latency_ms, 1)
        self.checks.append(row)

    @property
    def recovered(self) -> bool:
        """Answered a real check, with credit left where credit is shown: fit to serve again."""
        real = any(c["check"] in ("models", "credits", "live") for c in self.checks)
        has_credit = self.credits is None or (isinstance(self.credits, int | float) and self.credits > 0)
        return self.ok and real and has_credit

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "ok": self.ok, "credits": self.credits, "checks": self.checks}


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


async def check_provider(client: httpx.AsyncClient, p: ProviderConfig, *, live: bool, model: str | None) -> CheckResult:
    res = CheckResult(p.name)
    try:
        usable_key(p)
    except ProviderError as e:
        res.add("key", False, e.reason)
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
    except httpx.HTTPError as e:
        res.add("reach", False, f"{type(e).__name__}: cannot reach {p.base_url}")
        return res
    if live:
        dialect = p.dialects[0]
        probe_model = model or (p.catalog[0] if p.catalog and "*" not in p.catalog[0] else "gpt-4o-mini")
        body = {"model": probe_model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
        try:
            reply = await send(client, p, dialect, body, timeout=30)
            res.add("live", True, f"{dialect} call answered, {reply.usage.input_tokens}+{reply.usage.output_tokens} "
                    "tokens", reply.latency_ms)
        except ProviderError as e:
            res.add("live", False, f"{dialect} call failed: {e.reason}")
    if not res.checks:
        res.add("none", True, "the provider has no models or credits endpoint: use --live for a 1-token call")
    return res


async def check_all(providers: list[ProviderConfig], *, live: bool, model: str | None) -> list[CheckResult]:
    async with httpx.AsyncClient(timeout=30) as client:
        return [await check_provider(client, p, live=live, model=model) for p in providers]
