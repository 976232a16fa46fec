"""The dashboard's routes: its page and assets, login/logout, JSON for the pages' polls, the actions
(cancel, retry, raise the budget) and the downloads of a batch's results and errors.

Every JSON endpoint needs the session cookie (auth.py), answering 401 without it; every POST also
needs the session's CSRF token and the same origin (403). A wrong key at login counts toward the same
per-address throttle as the API's wrong keys (serve/throttle.py): past it, 429 before the key is read.
Every response carries the security headers (`HEADERS`): the page loads only its own assets, cannot
be framed, and sends no Referer.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from batchrelay.errors import BatchNotFound, BatchrelayError, BodyRefused, RetryRefused, StoreError
from batchrelay.money.ledger import rows, total
from batchrelay.serve.bodies import capped
from batchrelay.serve.dashboard.auth import (
    COOKIE,
    CSRF_HEADER,
    Session,
    Sessions,
    clear_cookie,
    csrf_ok,
    same_origin,
    set_cookie,
)
from batchrelay.serve.dashboard.views import (
    Pace,
    attempts_by_provider,
    batch_row,
    error_classes,
    provider_totals,
    series,
    spend_today,
)
from batchrelay.serve.shared import STOP_LINES, Served
from batchrelay.serve.throttle import FailureThrottle
from batchrelay.store import dashboard as reads
from batchrelay.store.health import Health
from batchrelay.store.ids import checked_batch_id
from batchrelay.store.lifecycle import FINAL, advance, request_stop, retry
from batchrelay.store.status import Status

HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "base-uri 'none'; form-action 'self'",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-store"}
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
LIST_LIMIT = 200
SMALL_BODY = 4096
Handler = Callable[[Request], Awaitable[Response]]


def _static(name: str) -> bytes:
    return resources.files("batchrelay.serve.dashboard").joinpath("static", name).read_bytes()


def secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def json(data: Any, status: int = 200) -> Response:
    return secured(Response(orjson.dumps(data), status_code=status, media_type="application/json"))


def refused(status: int, message: str) -> Response:
    return json({"error": message}, status)


async def small_body(request: Request) -> bytes:
    """The body of a login or an action: BodyTooLarge (a 413) past SMALL_BODY bytes."""
    body = bytearray()
    async for chunk in capped(request, SMALL_BODY, f"{SMALL_BODY} bytes (a dashboard request)"):
        body += chunk
    return bytes(body)


def accepts(key: str, accepted: list[bytes]) -> bool:
    raw = key.encode()
    return any([hmac.compare_digest(raw, k) for k in accepted])  # no early exit: constant time per key


def routes(served: Served, accepted_keys: list[str], throttle: FailureThrottle,
           sessions: Sessions | None = None) -> list[BaseRoute]:
    """The dashboard's routes on `served`'s store; `throttle`: the API's (shared by login)."""
    accepted = [k.encode() for k in accepted_keys]
    held = sessions or Sessions()
    pace = Pace()
    settings = served.settings

    def session_of(request: Request) -> Session | None:
        return held.get(request.cookies.get(COOKIE))

    def guarded(handler: Callable[[Request, Session], Awaitable[Response]], post: bool = False) -> Handler:
        async def run(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                return refused(401, "Not logged in: log in with a client key.")
            if post and not same_origin(request, settings.serve.public_url):
                return refused(403, "Refused: this request does not come from the dashboard's own page.")
            if post and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
                return refused(403, "Refused: the CSRF token is missing or wrong; reload the page.")
            try:
                return await handler(request, session)
            except BatchNotFound:
                return refused(404, "No such batch.")
            except RetryRefused as e:
                return refused(409, str(e))
            except BodyRefused:
                raise  # the app's handler answers it (413, 408) and BodyGuard closes the connection
            except StoreError as e:
                return refused(503, str(e))
            except BatchrelayError as e:
                return refused(400, str(e))
        return run

    async def index(_request: Request) -> Response:
        return secured(Response(_static("index.html"), media_type="text/html; charset=utf-8"))

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return refused(404, "No such file.")
        return secured(Response(_static(name), media_type=ASSETS[name]))

    async def login(request: Request) -> Response:
        address = request.client.host if request.client else ""
        wait = throttle.wait_s(address)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            response = refused(429, f"Too many wrong keys from this address; try again in {seconds} s.")
            response.headers["Retry-After"] = str(seconds)
            return response
        if not same_origin(request, settings.serve.public_url):
            return refused(403, "Refused: this login does not come from the dashboard's own page.")
        body = await small_body(request)
        try:
            key = orjson.loads(body).get("key") if body else None
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        if not isinstance(key, str) or not key or not accepts(key.strip(), accepted):
            throttle.failed(address)
            return refused(401, "That key is not accepted: use one of the client keys of [serve] api_keys_env.")
        held.drop(request.cookies.get(COOKIE))  # a new login never keeps an old token
        session = held.new()
        response = json({"csrf": session.csrf})
        set_cookie(response, request, session, held.ttl_s)
        return response

    async def logout(request: Request, session: Session) -> Response:
        held.drop(session.token)
        response = json({"ok": True})
        clear_cookie(response, request)
        return response

    async def whoami(_request: Request, session: Session) -> Response:
        return json({"csrf": session.csrf})

    async def batches(request: Request, _session: Session) -> Response:
        wanted = request.query_params.get("status") or ""
        now = time.time()
        found = [batch_row(r, now) for r in await reads.batch_rows(served.db, LIST_LIMIT)]
        statuses = sorted({b["status"] for b in found})
        if wanted:
            found = [b for b in found if b["status"] == wanted]
        return json({"batches": found, "statuses": statuses, "now": now, "limit": LIST_LIMIT})

    async def batch(request: Request, _session: Session) -> Response:
        db, batch_id = served.db, checked_batch_id(request.path_params["batch"])
        info = await db.info(batch_id)
        if info.status in FINAL and await advance(db, batch_id, served.grace_s, most=STOP_LINES):
            info = await db.info(batch_id)  # a stop watched here ends once its grace is over (as serve's APIs)
        ledger = await db.ledger(batch_id)
        rs = rows(ledger)
        now = time.time()
        sample, partial = await reads.error_sample(db, batch_id)
        return json({
            "batch": batch_row(reads.BatchRow(info, reads.cost_of(ledger)), now),
            "ledger": [r.as_dict() for r in rs], "total": total(rs).as_dict(),
            "budget": await reads.budget_of(db, batch_id),
            "series": series(await reads.minutes(db, batch_id), now, not info.finished),
            "errors": {"classes": error_classes(sample), "sampled": len(sample), "partial": partial},
            "now": now})

    async def providers(_request: Request, _session: Session) -> Response:
        db, now = served.db, time.time()
        ordered = settings.ordered_providers()
        names = [p.name for p in ordered]
        health = await Health(db, settings.health).snapshot(names)
        counts = await reads.fleet_counts(db)
        totals = provider_totals(counts, await reads.fleet_ledger(db))
        paced = pace.observe(totals)
        today = spend_today(counts, now)
        flight = await reads.in_flight(db, names)
        recent = [b.id for b in await db.list_batches(3)]
        sampled = attempts_by_provider(await reads.recent_records(db, recent))
        out = []
        for p in ordered:
            h = health[p.name]
            out.append({
                "name": p.name, "state": h["state"], "for_s": h.get("for_s"),
                "until": now + h["for_s"] if h.get("for_s") else None, "last": h.get("last"),
                "cooling_models": h.get("cooling_models", []), "concurrency_limit": h.get("concurrency_limit"),
                "max_concurrency": p.max_concurrency, "in_flight": flight[p.name],
                "rpm": p.limits.rpm, "tpm": p.limits.tpm, "pace": paced.get(p.name),
                "calls": totals.get(p.name, {}), "spend_today_usd": today.get(p.name, "0"),
                **sampled.get(p.name, {"last_errors": []})})
        return json({"providers": out, "now": now})

    async def cancel(request: Request, _session: Session) -> Response:
        db, batch_id = served.db, request.path_params["batch"]
        await db.info(checked_batch_id(batch_id))
        await request_stop(db, batch_id, Status.CANCELLED)
        await advance(db, batch_id, served.grace_s, most=STOP_LINES)
        return json({"batch": batch_row(reads.BatchRow(await db.info(batch_id), 0), time.time())})

    async def retry_lines(request: Request, _session: Session) -> Response:
        batch_id = checked_batch_id(request.path_params["batch"])
        done = await retry(served.db, batch_id, settings.worker.chunk_size)
        return json({"lines": done.lines, "chunks": done.chunks})

    async def budget(request: Request, _session: Session) -> Response:
        batch_id = checked_batch_id(request.path_params["batch"])
        try:
            body = orjson.loads(await small_body(request))
            limit = Decimal(str(body["max_usd"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, InvalidOperation):
            return refused(400, "Send the new limit as {\"max_usd\": \"12.50\"}.")
        if not limit.is_finite() or limit <= 0:
            return refused(400, "The limit must be a positive amount of USD.")
        return json(await reads.raise_budget(served.db, batch_id, limit))

    def download(errors: bool) -> Callable[[Request, Session], Awaitable[Response]]:
        async def go(request: Request, _session: Session) -> Response:
            batch_id = checked_batch_id(request.path_params["batch"])
            await served.db.info(batch_id)

            async def lines() -> AsyncIterator[bytes]:
                async for ok, raw in served.db.iter_results(batch_id):
                    if ok != errors:
                        yield raw + b"\n"

            name = f"{batch_id}.{'errors' if errors else 'results'}.jsonl"
            return secured(StreamingResponse(lines(), media_type="application/x-ndjson", headers={
                "Content-Disposition": f'attachment; filename="{name}"'}))
        return go

    api = "/dashboard/api"
    return [
        Route("/", index, methods=["GET"]),
        Route("/dashboard/static/{name}", asset, methods=["GET"]),
        Route(f"{api}/login", login, methods=["POST"]),
        Route(f"{api}/logout", guarded(logout, post=True), methods=["POST"]),
        Route(f"{api}/session", guarded(whoami), methods=["GET"]),
        Route(f"{api}/batches", guarded(batches), methods=["GET"]),
        Route(f"{api}/providers", guarded(providers), methods=["GET"]),
        Route(f"{api}/batches/{{batch}}", guarded(batch), methods=["GET"]),
        Route(f"{api}/batches/{{batch}}/cancel", guarded(cancel, post=True), methods=["POST"]),
        Route(f"{api}/batches/{{batch}}/retry", guarded(retry_lines, post=True), methods=["POST"]),
        Route(f"{api}/batches/{{batch}}/budget", guarded(budget, post=True), methods=["POST"]),
        Route(f"{api}/batches/{{batch}}/results.jsonl", guarded(download(False)), methods=["GET"]),
        Route(f"{api}/batches/{{batch}}/errors.jsonl", guarded(download(True)), methods=["GET"]),
    ]
