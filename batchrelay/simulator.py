"""A fake cheap LLM provider over real HTTP, with fault injection, for the demo, tests and benchmarks.

It speaks the OpenAI chat dialect (`POST /v1/chat/completions`) and the Anthropic messages dialect
(`POST /v1/messages`), answers deterministically from the request, and reports realistic usage.
Faults (statuses, quota running out, broken bodies, hangs) come from a `SimConfig`, which can be
changed while it runs through the `/_sim/*` control endpoints:

    GET  /_sim/config   current config
    POST /_sim/config   merge the given fields into it; {"reset": true} also restarts script and counters
    GET  /_sim/log      every provider call: {"t", "path", "model", "status"}; ?since=N skips N entries
    GET  /_sim/stats    {"calls": n, "by_status": {"200": n, ...}}
    POST /_sim/reset    clear log, counters and script position

Run it with `python -m batchrelay.simulator --port 8787 --fail-rate 0.1`. The decisions and
wire shapes are pure functions in `simfaults.py`; this module is only the HTTP edge.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchrelay.simfaults import (
    SIM_MODEL,
    Dialect,
    FaultState,
    Outcome,
    SimConfig,
    answer_body,
    decide,
    error_body,
    invalid_reason,
    key_matches,
    malformed,
    retry_headers,
)

__all__ = ["SimConfig", "create_app", "main", "serve"]

JSON = "application/json"
MODEL_ENTRY = {"id": SIM_MODEL, "object": "model", "created": 0, "owned_by": "batchrelay-sim"}
MODELS_BODY = orjson.dumps({"object": "list", "data": [MODEL_ENTRY]})


class _Sim:
    """Mutable state of one running simulator. Only touched between awaits, so no locks are needed."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.faults = FaultState(seed=config.seed)
        # Tuples, not dicts: a benchmark logs every one of its calls and the log is rarely read.
        self.log: list[tuple[float, str, str | None, int]] = []
        self.by_status: dict[int, int] = {}
        # Never reset, so ids stay unique for the life of the process even across /_sim/reset.
        self.numbers = 0

    def record(self, t: float, path: str, model: str | None, status: int) -> None:
        self.log.append((t, path, model, status))
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def reset(self) -> None:
        self.faults.reset(self.config.seed)
        self.log.clear()
        self.by_status.clear()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type=JSON)


def _auth_failure(config: SimConfig, request: Request) -> str | None:
    if config.api_key is None:
        return None
    h = request.headers
    authorization, x_key, tt_key = h.get("authorization"), h.get("x-api-key"), h.get("tt-api-key")
    if key_matches(config.api_key, authorization, x_key, tt_key):
        return None
    if authorization is None and x_key is None and tt_key is None:
        return "simulated 401: no API key provided"
    return "simulated 401: incorrect API key provided"


def create_app(config: SimConfig) -> Starlette:
    """An ASGI app serving both dialects with the faults `config` describes."""
    sim = _Sim(config)

    def provider(dialect: Dialect) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            t = time.time()
            path = request.url.path
            cfg = sim.config  # one snapshot per call, so a config change mid-call cannot mix rules
            raw = await request.body()
            try:
                body: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            model = body.get("model") if isinstance(body, dict) else None
            model = model if isinstance(model, str) else None

            # Auth and validation come before faults, as at a real provider: a bad request does not
            # consume a script entry or a random draw.
            outcome: Outcome | None = None
            message = _auth_failure(cfg, request)
            if message is not None:
                status = 401
            else:
                message = invalid_reason(dialect, body) if body is not None else "body is not valid JSON"
                if message is not None:
                    status = 400
                else:
                    outcome = decide(cfg, sim.faults)
                    status = outcome.status
            sim.record(t, path, model, status)

            delay = cfg.latency_ms / 1000
            if outcome is not None and outcome.kind == "hang":
                delay += cfg.hang_seconds
            if delay:
                await asyncio.sleep(delay)

            if outcome is None or outcome.kind == "error":
                envelope = error_body(dialect, status, message)
                return _json(envelope, status, retry_headers(status, cfg.retry_after))
            sim.numbers += 1
            content = orjson.dumps(answer_body(dialect, body, sim.numbers, int(t)))
            if outcome.kind == "malformed":
                content = malformed(content)
            return Response(content, 200, media_type=JSON)

        return endpoint

    async def models(request: Request) -> Response:
        message = _auth_failure(sim.config, request)
        if message is not None:
            return _json(error_body("chat", 401, message), 401)
        return Response(MODELS_BODY, 200, media_type=JSON)

    async def get_config(request: Request) -> Response:
        return _json(sim.config.model_dump(mode="json"))

    async def set_config(request: Request) -> Response:
        try:
            update = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            update = None
        if not isinstance(update, dict):
            return _json({"error": {"message": "body must be a JSON object"}}, 400)
        reset = update.pop("reset", False) is True
        try:
            new = SimConfig.model_validate({**sim.config.model_dump(), **update})
        except ValidationError as e:
            return _json({"error": {"message": str(e)}}, 400)
        sim.config = new
        if reset:
            sim.faults.reset(new.seed)
        elif "seed" in update:
            # A new seed means a new random sequence now, not at some later reset.
            sim.faults.rng.seed(new.seed)
            sim.faults.seed = new.seed
        return _json(new.model_dump(mode="json"))

    async def get_log(request: Request) -> Response:
        try:
            since = max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return _json({"error": {"message": "since must be an integer"}}, 400)
        entries = [{"t": t, "path": p, "model": m, "status": s} for t, p, m, s in sim.log[since:]]
        return _json(entries)

    async def get_stats(request: Request) -> Response:
        by_status = {str(k): v for k, v in sorted(sim.by_status.items())}
        return _json({"calls": len(sim.log), "by_status": by_status})

    async def reset(request: Request) -> Response:
        sim.reset()
        return _json({"ok": True})

    routes = [
        Route("/v1/chat/completions", provider("chat"), methods=["POST"]),
        Route("/v1/messages", provider("messages"), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m batchrelay.simulator",
        description="Fake LLM provider (OpenAI chat + Anthropic messages) with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--config-json", help="SimConfig fields as JSON; the flags below override it")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--fail-status", type=int, help="every call answers this status")
    p.add_argument("--fail-rate", type=float, help="this fraction of calls fails")
    p.add_argument("--fail-rate-status", type=int, help="status of those failures (default 500)")
    p.add_argument("--retry-after", type=float, help="seconds, sent on 429/503/529")
    p.add_argument("--script", help="comma-separated statuses for the first calls, 200 = normal")
    p.add_argument("--fail-after", type=int, help="402 after this many successful calls")
    p.add_argument("--malformed-rate", type=float, help="this fraction answers 200 with a non-JSON body")
    p.add_argument("--hang-rate", type=float, help="this fraction sleeps --hang-seconds first")
    p.add_argument("--hang-seconds", type=float)
    p.add_argument("--api-key", help="require this key (Bearer, x-api-key or TT-API-KEY)")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    fields: dict[str, Any] = orjson.loads(args.config_json) if args.config_json else {}
    for name in SimConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.script is not None:
        fields["script"] = [int(s) for s in args.script.split(",") if s.strip()]
    return SimConfig.model_validate(fields)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, orjson.JSONDecodeError) as e:  # pydantic's ValidationError is a ValueError
        parser.error(str(e))
    print(f"batchrelay simulator on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    serve(config, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
