"""A fake cheap LLM provider over real HTTP, with fault injection, for the demo, tests and benchmarks.

It speaks the OpenAI chat dialect (`POST /v1/chat/completions`) and the Anthropic messages dialect
(`POST /v1/messages`), answers deterministically from the request, and reports realistic usage; with
`"stream": true` it answers in server-sent events (`sim/streams.py`). `SimConfig.preset` makes it one of
the seed providers instead, with that provider's paths, key header, error envelope and answer shape
as its document describes them (`sim/presets.py`); other paths then answer 404. Faults (statuses,
quota running out, broken bodies, hangs, cut streams), a credit balance and rate limits come from a
`SimConfig`, which can be changed while it runs through the `/_sim/*` control endpoints:

    GET  /_sim/config   current config; `credits` is the balance left now
    POST /_sim/config   merge the given fields into it; `credits` sets the balance; {"reset": true}
                        also restarts script, counters, balance and rate window
    GET  /_sim/log      every completion call (and, with a preset, every call to a path it does not
                        serve): {"t", "answered", "path", "model", "status", "kind"}: "t" when it
                        arrived, "answered" when its answer left (null while waiting), kind the fate:
                        "answer", "error" (any non-200), "malformed", "hang" or "junk"; ?since=N skips
                        N entries; ?full=1 adds "method", "headers" (the key headers, content-type and
                        x-*; keys redacted: `Bearer ***wxyz sha256:…`, as `api_key` in the config),
                        "body" (the request) and "response" (the JSON body answered, null while a
                        call is still waiting or when it was malformed; for a stream, the answer its
                        events were made from). It keeps the newest `log_limit` calls (100,000 by
                        default); N counts the dropped ones too
    GET  /_sim/stats    {"calls": n, "by_status": {"200": n, ...}}
    POST /_sim/reset    clear log and counters; restart script, balance and rate window

Run it with `python -m batchrelay.sim --port 8787 --fail-rate 0.1` (flags in `command.py`). The
decisions and wire shapes are pure functions next to it (`faults.py`: which fault; `answers.py`: the
bodies; `presets.py`: each seed provider's format; `streams.py`: the events), the running state is
in `state.py`; this module is only the HTTP edge.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, request_response
from starlette.types import Receive, Scope, Send

from batchrelay.sim.answers import (
    estimate_output_tokens,
    invalid_reason,
    junk,
    malformed,
    plan_answer,
    rate_tokens,
    retry_headers,
)
from batchrelay.sim.faults import (
    JUNK,
    MALFORMED,
    SimConfig,
    SimDialect,
    SimOutcome,
    decide,
)
from batchrelay.sim.presets import (
    AINOW_UNSET_CREDITS,
    Endpoint,
    Provider,
    auth_failure,
    call_cost,
    moderation,
    provider_error,
    refusal,
    render,
)
from batchrelay.sim.state import Entry, SimState, captured, shown_headers
from batchrelay.sim.streams import chat_events, corrupt, messages_events, truncated

__all__ = ["SimConfig", "create_app", "serve"]

JSON = "application/json"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type=JSON)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class _ProviderPaths(BaseRoute):
    """Every path outside /_sim/. Which ones exist depends on the preset, and /_sim/config can change
    that at any time; one prefix test is also cheaper than trying each route's regex in turn."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = request_response(endpoint)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not scope["path"].startswith("/_sim/"):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _events(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def create_app(config: SimConfig) -> Starlette:
    """An ASGI app serving the configured provider with the faults `config` describes."""
    sim = SimState(config)

    async def complete(request: Request, p: Provider, dialect: SimDialect) -> Response:
        t = time.time()
        scope = request.scope
        cfg = sim.config  # one snapshot per call, so a config change mid-call cannot mix rules
        raw = await request.body()
        body = _loads(raw)
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) else None

        # Auth, validation, balance and rate limits come before faults, as at a real provider: a call
        # they turn away does not consume a script entry or a random draw.
        outcome: SimOutcome | None = None
        headers: dict[str, str] | None = None
        message = auth_failure(p.auth_for(dialect), cfg.api_key, request.headers)
        if message is not None:
            status = 401
        else:
            message = invalid_reason(dialect, body) if body is not None else "body is not valid JSON"
            refused = refusal(p, body) if message is None else None
            if message is not None:
                status = 400
            elif refused is not None:
                status, message = refused
            elif sim.balance is not None and sim.balance <= 0:
                status = 402
            else:
                answer = plan_answer(dialect, body, cfg.cached_fraction, cfg.cache_write_fraction, cfg.answer_bytes)
                wait = 0.0
                if cfg.rpm is not None or cfg.tpm is not None:
                    tokens = rate_tokens(dialect, body, answer)
                    wait = sim.window.admit(time.monotonic(), tokens, cfg.rpm, cfg.tpm)
                if wait:
                    status, headers = 429, {"retry-after": str(max(1, math.ceil(wait)))}
                    message = f"simulated 429: rate limit reached (rpm {cfg.rpm}, tpm {cfg.tpm}), retry later"
                else:
                    outcome = decide(cfg, sim.faults)
                    status = outcome.status
        entry = Entry(t, scope["method"], scope["path"], model, status, captured(scope["headers"]), raw,
                      "error" if outcome is None else outcome.kind)
        sim.record(entry)

        delay = cfg.latency_ms / 1000
        if outcome is not None and outcome.kind == "hang":
            delay += cfg.hang_seconds
        if delay:
            await asyncio.sleep(delay)

        if outcome is None or outcome.kind == "error":
            content = orjson.dumps(provider_error(p, dialect, status, message))
            entry.answer(content)
            return Response(content, status, headers or retry_headers(status, cfg.retry_after), media_type=JSON)
        sim.numbers += 1
        elapsed = time.time() - t
        payload = render(p, dialect, body, answer, sim.numbers, int(t), elapsed)
        if outcome is JUNK:
            payload = junk(dialect, payload)
        if sim.balance is not None and outcome is not MALFORMED:
            # Spent when the answer is made, so a stream cut short later is still paid for (and junk
            # is paid for as an answer). Rounded so the balance reads as the sum of the costs.
            sim.balance = round(sim.balance - call_cost(p, body["model"], answer), 10)
        if body.get("stream") is True and outcome is not JUNK:  # junk is a plain JSON body even then
            entry.answer(payload)
            return _stream(cfg, p, dialect, body, payload, outcome, elapsed)
        content = orjson.dumps(payload)
        if outcome is MALFORMED:
            content = malformed(content)
        entry.answer(content)
        return Response(content, 200, media_type=JSON)

    def _stream(cfg: SimConfig, p: Provider, dialect: SimDialect, body: dict[str, Any], payload: dict[str, Any],
                outcome: SimOutcome, elapsed: float) -> Response:
        if dialect == "messages":
            events = messages_events(payload)
        else:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = chat_events(p, payload, include_usage, elapsed)
        if outcome is MALFORMED:
            events = corrupt(events)
        elif sim.faults.truncates(cfg.truncate_rate):
            events = truncated(events)
        return StreamingResponse(_events(events), 200, {"cache-control": "no-cache"}, media_type="text/event-stream")

    async def utility(request: Request, p: Provider, endpoint: Endpoint) -> Response:
        message = auth_failure(p.auth_for(endpoint), sim.config.api_key, request.headers)
        if message is not None:
            return _json(provider_error(p, "chat", 401, message), 401)
        if endpoint == "models":
            return Response(p.models_body, 200, media_type=JSON)
        if endpoint == "credits":
            return _json({"credits": AINOW_UNSET_CREDITS if sim.balance is None else sim.balance})
        body = _loads(await request.body())
        if endpoint == "tokens":
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str):
                return _json(provider_error(p, "chat", 400, "simulated 400: 'text' must be a string"), 400)
            return _json({"tokens": estimate_output_tokens(text)})
        inputs = body.get("input") if isinstance(body, dict) else None
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return _json(provider_error(p, "chat", 400, "simulated 400: 'input' must be a string or strings"), 400)
        return _json(moderation(inputs))

    async def elsewhere(request: Request, p: Provider) -> Response:
        scope = request.scope
        method, path = scope["method"], scope["path"]
        if method == "HEAD" and ("GET", path) in p.routes:
            return await dispatch_as(request, p, p.routes["GET", path])
        allowed = path in p.paths()
        if p.name == "generic":  # what Starlette's router answered before presets existed
            if allowed:
                return PlainTextResponse("Method Not Allowed", 405)
            return PlainTextResponse("Not Found", 404)
        # A client calling a path its provider does not have is a bug worth seeing in the log.
        status = 405 if allowed else 404
        raw = await request.body()
        body = _loads(raw)
        model = body.get("model") if isinstance(body, dict) else None
        text = f"simulated {status}: {p.name} has no {method} {path}"
        content = orjson.dumps(provider_error(p, "chat", status, text))
        sim.record(Entry(time.time(), method, path, model if isinstance(model, str) else None, status,
                         captured(scope["headers"]), raw, "error", content))
        return Response(content, status, media_type=JSON)

    async def dispatch(request: Request) -> Response:
        p = sim.provider
        endpoint = p.routes.get((request.scope["method"], request.scope["path"]))
        if endpoint is None:
            return await elsewhere(request, p)
        return await dispatch_as(request, p, endpoint)

    async def dispatch_as(request: Request, p: Provider, endpoint: Endpoint) -> Response:
        if endpoint == "chat" or endpoint == "messages":
            return await complete(request, p, endpoint)
        return await utility(request, p, endpoint)

    async def get_config(request: Request) -> Response:
        return _json(sim.config_view())

    async def set_config(request: Request) -> Response:
        update = _loads(await request.body())
        if not isinstance(update, dict):
            return _json({"error": {"message": "body must be a JSON object"}}, 400)
        reset = update.pop("reset", False) is True
        try:
            new = SimConfig.model_validate({**sim.config.model_dump(), **update})
        except ValidationError as e:
            return _json({"error": {"message": str(e)}}, 400)
        sim.configure(new, update, reset)
        return _json(sim.config_view())

    async def get_log(request: Request) -> Response:
        try:
            since = max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return _json({"error": {"message": "since must be an integer"}}, 400)
        if request.query_params.get("full") in ("1", "true"):
            return _json([
                {**e.brief(), "method": e.method,
                 "headers": shown_headers(e.headers),
                 "body": _loads(e.raw),
                 "response": _loads(e.response) if isinstance(e.response, bytes) else e.response}
                for e in sim.entries(since)
            ])
        return _json([e.brief() for e in sim.entries(since)])

    async def get_stats(request: Request) -> Response:
        by_status = {str(k): v for k, v in sorted(sim.by_status.items())}
        return _json({"calls": sim.calls, "by_status": by_status})

    async def reset(request: Request) -> Response:
        sim.reset()
        return _json({"ok": True})

    routes = [
        _ProviderPaths(dispatch),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", set_config, methods=["POST"]),
        Route("/_sim/log", get_log, methods=["GET"]),
        Route("/_sim/stats", get_stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8787, log_level: str = "warning") -> None:
    """Run the simulator until interrupted. Binds to loopback by default: it takes any key it is set to."""
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # per-request logging would dominate a throughput benchmark
        # Hanging calls would otherwise hold shutdown for hang_seconds.
        timeout_graceful_shutdown=1,
    )
