"""`batchrelay serve`: the OpenAI- and Anthropic-compatible batch HTTP API on the batch store.

Clients point their official SDK at it (`base_url`) and work batches as they would on those APIs:
OpenAI Files + Batches (openai_api.py) and Anthropic Message Batches (anthropic_api.py). A
batch submitted here is an ordinary batchrelay batch (workers run it, `batchrelay batches` lists
it); what only the APIs need (input file, endpoint, metadata) is kept in the batch's meta hash under
`serve_*` fields, so it goes when the batch is forgotten. Every request needs one of the keys named
by `[serve] api_keys_env` (`Authorization: Bearer` or `x-api-key`), else 401 in that API's error shape;
past `[serve] auth_failures_per_min` wrong or missing keys from one address, 429 (throttle.py).
The connection limits (head size and time, open connections) are http_guard.py's. The web dashboard
at `/` (serve/dashboard/) logs in with the same keys and then uses a session cookie instead.
Every other error, an unknown route or method (404, 405) or a fault of the server's own (500),
answers in that API's JSON error shape too (Anthropic's under /v1/messages, OpenAI's elsewhere).
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from batchrelay.config.settings import Settings
from batchrelay.errors import BodyRefused, ConfigError
from batchrelay.serve.anthropic_api import routes as anthropic_routes
from batchrelay.serve.bodies import BodyGuard
from batchrelay.serve.dashboard import is_dashboard
from batchrelay.serve.dashboard.routes import routes as dashboard_routes
from batchrelay.serve.http_guard import Limits, guarded_protocol
from batchrelay.serve.metrics import PublicMetrics, metrics_route
from batchrelay.serve.openai_api import routes as openai_routes
from batchrelay.serve.params import clip
from batchrelay.serve.shared import Served, anthropic_error, openai_error
from batchrelay.serve.throttle import FailureThrottle
from batchrelay.store.connection import DEFAULT_URL
from batchrelay.store.embedded import state_dir
from batchrelay.store.files import index_files
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def presented_keys(request: Request) -> list[str]:
    found = [request.headers.get("x-api-key", "").strip()]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found.append(token.strip())
    return [k for k in found if k]


class RequireKey:
    """Every request needs an accepted key; a missing or wrong one gets 401 in its API's shape. An
    address past its wrong keys per minute gets 429 with Retry-After, its key unread (throttle.py)."""

    def __init__(self, app: ASGIApp, accepted: list[str], throttle: FailureThrottle) -> None:
        self.app = app
        self.accepted = [k.encode() for k in accepted]
        self.throttle = throttle

    def _accepts(self, key: str) -> bool:
        raw = key.encode()
        return any([hmac.compare_digest(raw, k) for k in self.accepted])  # no early exit: constant time per key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_dashboard(scope["path"]):  # the dashboard checks its own cookie
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        anthropic = is_anthropic(request.url.path)
        address = request.client.host if request.client else ""
        wait = self.throttle.wait_s(address)
        if wait is not None:
            await throttled(anthropic, wait)(scope, receive, send)
            return
        keys = presented_keys(request)
        if any(self._accepts(k) for k in keys):
            await self.app(scope, receive, send)
            return
        self.throttle.failed(address)
        if anthropic:
            message = "invalid x-api-key" if keys else "x-api-key header is required"
            response = anthropic_error(401, "authentication_error", message)
        else:
            message = ("Incorrect API key provided." if keys else
                       "You didn't provide an API key. Provide it in an Authorization header (Bearer auth).")
            response = openai_error(401, message, code="invalid_api_key")
        await response(scope, receive, send)


def throttled(anthropic: bool, wait_s: float) -> Response:
    """429 for an address past its wrong keys per minute, in the API's shape, with Retry-After."""
    seconds = max(1, math.ceil(wait_s))
    message = f"Too many requests with a wrong or missing API key from this address; try again in {seconds} s."
    response = (anthropic_error(429, "rate_limit_error", message) if anthropic else
                openai_error(429, message, kind="requests", code="rate_limit_exceeded"))
    response.headers["Retry-After"] = str(seconds)
    return response


async def unknown_route(request: Request, exc: Exception) -> Response:
    """404 for a path no route has, 405 for a method its route does not take."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    method, path = clip(request.method), clip(request.url.path)
    allow = {"Allow": exc.headers["Allow"]} if isinstance(exc, HTTPException) and exc.headers else {}
    if is_anthropic(request.url.path):
        response = (anthropic_error(404, "not_found_error", f"Not found: {method} {path}") if status == 404 else
                    anthropic_error(status, "invalid_request_error", f"Method {method} is not allowed on {path}"))
    else:
        response = openai_error(status, f"Invalid URL ({method} {path})" if status == 404 else
                                f"Invalid method for URL ({method} {path})")
    response.headers.update(allow)
    return response


async def refused_body(request: Request, exc: Exception) -> Response:
    """A body `serve` stopped reading (bodies.py): 413 or 408 in the API's shape (BodyGuard closes the connection)."""
    status = exc.status if isinstance(exc, BodyRefused) else 400
    if is_anthropic(request.url.path):
        return anthropic_error(status, "request_too_large" if status == 413 else "invalid_request_error", str(exc))
    return openai_error(status, str(exc))


async def server_fault(request: Request, _exc: Exception) -> Response:
    """A fault of the server's own: a 500 in the API's shape (the traceback goes to the server's log)."""
    if is_anthropic(request.url.path):
        return anthropic_error(500, "api_error", "Internal server error")
    return openai_error(500, "The server had an error while processing your request.", kind="server_error")


def create_app(settings: Settings, redis_url: str | None = None) -> Starlette:
    """ConfigError when no client key is set: an API anyone could use is never started by mistake."""

    cfg = settings.serve
    accepted = cfg.api_keys()
    if not accepted:
        named = ", ".join(cfg.api_keys_env) or "none named"
        raise ConfigError(f"`serve` needs client keys: set [serve] api_keys_env to environment variables that hold "
                          f"them, and set those variables ({named})")
    served = Served(settings, cfg.files_dir or state_dir() / "files")
    url = redis_url or settings.redis_url or DEFAULT_URL

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        served.files_dir.mkdir(parents=True, exist_ok=True)
        async with await Store.connect(url, Keys(settings.redis.prefix)) as served.store:
            await index_files(served.store)
            yield

    metrics = metrics_route(served)  # GET /metrics (metrics.py): a client key, unless [serve] metrics_public
    throttle = FailureThrottle(cfg.auth_failures_per_min)  # the API's wrong keys and the dashboard's logins
    app = Starlette(routes=[*openai_routes(served), *anthropic_routes(served), metrics,
                            *dashboard_routes(served, accepted, throttle)], lifespan=lifespan,
                    exception_handlers={404: unknown_route, 405: unknown_route, BodyRefused: refused_body,
                                        Exception: server_fault})
    app.add_middleware(RequireKey, accepted=accepted, throttle=throttle)
    app.add_middleware(PublicMetrics, route=metrics, public=cfg.metrics_public)
    app.add_middleware(BodyGuard, idle_s=cfg.body_timeout_s)  # outermost: it sees every request's body
    return app


def serve(settings: Settings, host: str, port: int, log_level: str | None = "warning",
          announce: Callable[[str], None] | None = None, redis_url: str | None = None, *,
          access_log: bool = True) -> None:
    """Run the API until interrupted. `log_level` None: the caller has configured logging (uvicorn's
    loggers go to its handlers; cli/logs.py), and `access_log` says whether to log each request."""
    app = create_app(settings, redis_url)
    if announce:
        announce(f"batchrelay serve on http://{host}:{port} (OpenAI /v1/files, /v1/batches; "
                 "Anthropic /v1/messages/batches; dashboard /)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                log_config=uvicorn.config.LOGGING_CONFIG if log_level else None, timeout_graceful_shutdown=5,
                http=guarded_protocol(Limits.of(settings.serve)), ws="none")
