"""Anthropic Message Batches on the batch store, for `batchrelay serve`.

`msgbatch_<hex>` is batch `batch_<hex>`. A batch's requests become Anthropic-format lines (a bad
one gets an `errored` result, the rest run); its results are the stored result lines, in input
order, once it has ended (completed, cancelled, expired or failed).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from batchrelay.errors import BatchNotFound
from batchrelay.serve.shared import Loaded, Served, anthropic_error, current, json_response, load, submit
from batchrelay.store.lifecycle import advance, request_stop
from batchrelay.store.status import Status
from batchrelay.store.store import Store

WINDOW_S = 86400.0  # a message batch expires 24 hours after it was created
MAX_REQUESTS = 100_000
# our batch status -> Message Batches' processing_status (its wire values); the rest are in_progress
PROCESSING: dict[str, str] = {Status.CANCELLING: "canceling", Status.COMPLETED: "ended", Status.FAILED: "ended",
              Status.CANCELLED: "ended", Status.EXPIRED: "ended"}


def _known_id(msgbatch_id: str) -> str:
    """The store's id of a `msgbatch_` id; BatchNotFound for any other id."""
    if not msgbatch_id.startswith("msgbatch_"):
        raise BatchNotFound(msgbatch_id)
    return "batch_" + msgbatch_id.removeprefix("msgbatch_")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def batch_object(b: Loaded, base_url: str) -> dict[str, Any]:
    info = b.info
    msg_id = "msgbatch_" + info.id.removeprefix("batch_")
    status = PROCESSING.get(info.status, "in_progress")
    ended = status == "ended"
    return {
        "id": msg_id, "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": 0 if ended else info.pending, "succeeded": info.succeeded,
                           "errored": info.failed + info.invalid, "canceled": info.cancelled,
                           "expired": info.expired},
        "ended_at": _iso(info.finished_at) if ended else None,
        "created_at": _iso(info.created_at),
        "expires_at": _iso(info.expires_at or info.created_at + WINDOW_S),
        "archived_at": None,
        "cancel_initiated_at": _iso(b.stop_at) if info.status in (Status.CANCELLING, Status.CANCELLED) else None,
        "results_url": f"{base_url}/v1/messages/batches/{msg_id}/results" if ended else None,
    }


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _not_found(msgbatch_id: str) -> Response:
    return anthropic_error(404, "not_found_error", f"Message batch {msgbatch_id!r} not found.")


async def _results(store: Store, batch_id: str) -> AsyncIterator[bytes]:
    async for _ok, record in store.iter_results(batch_id):
        yield record + b"\n"


def routes(served: Served) -> list[Route]:
    async def create(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return anthropic_error(400, "invalid_request_error", "The request body is not valid JSON.")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return anthropic_error(400, "invalid_request_error", "requests: must be a non-empty list")
        if len(requests) > MAX_REQUESTS:
            return anthropic_error(400, "invalid_request_error", f"requests: at most {MAX_REQUESTS} per batch")
        lines = io.BytesIO(b"".join(orjson.dumps(r) + b"\n" for r in requests))
        spec = served.spec(name="message batch", endpoint="messages", completion_window=WINDOW_S)
        batch_id = await submit(served, lines, spec, source="serve:anthropic",
                                fields={"serve_api": "anthropic", "serve_endpoint": "/v1/messages"})
        return json_response(batch_object(await load(served.db, batch_id), _base(request)))

    async def retrieve(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        try:
            return json_response(batch_object(await current(served, _known_id(msg_id)), _base(request)))
        except BatchNotFound:
            return _not_found(msg_id)

    async def results(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        try:
            batch_id = _known_id(msg_id)
            info = await served.db.info(batch_id)
        except BatchNotFound:
            return _not_found(msg_id)
        if not info.finished:
            return anthropic_error(400, "invalid_request_error",
                                   f"Message batch {msg_id!r} has not ended yet: its results are not ready.")
        return StreamingResponse(_results(served.db, batch_id), media_type="application/binary")

    async def cancel(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        store = served.db
        try:
            batch_id = _known_id(msg_id)
            await request_stop(store, batch_id, Status.CANCELLED)
            await advance(store, batch_id, served.grace_s)  # workers' sweeps finish it
            return json_response(batch_object(await load(store, batch_id), _base(request)))
        except BatchNotFound:
            return _not_found(msg_id)

    return [
        Route("/v1/messages/batches", create, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/results", results, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", cancel, methods=["POST"]),
    ]
