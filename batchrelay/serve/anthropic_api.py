"""Anthropic Message Batches on the batch store, for `batchrelay serve`.

`msgbatch_<hex>` is batch `batch_<hex>`. The create body (up to `[serve] max_upload_mb`, at most
`[serve] max_batch_requests` requests) is read in flat memory (message_body.py). Each request must be
`{"custom_id", "params"}` (else a 400 naming it, as Anthropic checks a request's shape at once); its
custom_id (Anthropic's `^[a-zA-Z0-9_-]{1,64}$`) and params are checked as the batch is submitted and
run (a bad one gets an `errored` result, the rest run). A batch's results are the stored result lines,
in input order, once it has ended (completed, cancelled, expired or failed). Batches are listed
newest first, a page at a time either way (`after_id` / `before_id`); only batches created here are
listed or found (shared.py). DELETE forgets an ended batch: its record, requests, results and
ledger (a batch still in progress must be cancelled first, as on Anthropic's API).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from batchrelay.errors import BatchNotFound
from batchrelay.serve.bodies import capped
from batchrelay.serve.listing import page_size
from batchrelay.serve.message_body import write_requests
from batchrelay.serve.params import BadParam, clip
from batchrelay.serve.shared import (
    ANTHROPIC,
    Loaded,
    Served,
    anthropic_error,
    current,
    json_response,
    load,
    stop,
    submit,
)
from batchrelay.store.ids import checked_batch_id
from batchrelay.store.served import served_batches
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.wire.jobs import anthropic_custom_id

WINDOW_S = 86400.0  # a message batch expires 24 hours after it was created
MAX_LIST = 1000
# our batch status -> Message Batches' processing_status (its wire values); the rest are in_progress
PROCESSING: dict[str, str] = {Status.CANCELLING: "canceling", Status.COMPLETED: "ended", Status.FAILED: "ended",
              Status.CANCELLED: "ended", Status.EXPIRED: "ended"}


def _known_id(msgbatch_id: str) -> str:
    """The store's id of a `msgbatch_` id (`msgbatch_` and the hex of `batch_<hex>`); BatchNotFound
    for an id of any other shape."""
    if not msgbatch_id.startswith("msgbatch_"):
        raise BatchNotFound(msgbatch_id)
    return checked_batch_id("batch_" + msgbatch_id.removeprefix("msgbatch_"))


def _msg_id(batch_id: str) -> str:
    return "msgbatch_" + batch_id.removeprefix("batch_")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def batch_object(b: Loaded, base_url: str) -> dict[str, Any]:
    info = b.info
    msg_id = _msg_id(info.id)
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


def _base(request: Request, served: Served) -> str:
    """Where clients reach this server, for `results_url`: `[serve] public_url`, else the address the
    connection came in on. Never the request's Host header: the client picks that, and the SDK sends
    its key to `results_url`."""
    if served.settings.serve.public_url:
        return served.settings.serve.public_url
    server = request.scope.get("server")
    if not server or server[1] is None:
        return ""  # not a TCP connection: a URL relative to this server
    host, port = server
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _not_found(msgbatch_id: str) -> Response:
    return anthropic_error(404, "not_found_error", f"Message batch {clip(msgbatch_id)!r} not found.")


def _bad(e: BadParam) -> Response:
    return anthropic_error(400, "invalid_request_error", str(e))


async def _results(store: Store, batch_id: str) -> AsyncIterator[bytes]:
    async for _ok, record in store.iter_results(batch_id):
        yield record + b"\n"


def routes(served: Served) -> list[Route]:
    async def create(request: Request) -> Response:
        cfg, files_dir, mb = served.settings.serve, served.files_dir, served.settings.serve.max_upload_mb
        spec = served.spec(name="message batch", endpoint="messages", completion_window=cfg.batch_window_s)
        # spooled to disk, then walked a request at a time (message_body.py): memory stays flat
        with tempfile.TemporaryFile(dir=files_dir) as body, tempfile.TemporaryFile(dir=files_dir) as lines:
            async for chunk in capped(request, mb * 2**20, f"{mb} MiB ([serve] max_upload_mb)"):
                body.write(chunk)
            body.seek(0)
            try:
                await asyncio.to_thread(write_requests, body, lines, max_requests=cfg.max_batch_requests,
                                        max_request_bytes=spec.max_line_bytes)
            except BadParam as e:
                return _bad(e)
            lines.seek(0)
            batch_id = await submit(served, lines, spec, source="serve:anthropic", id_rule=anthropic_custom_id,
                                    fields={"serve_api": ANTHROPIC, "serve_endpoint": "/v1/messages"})
        return json_response(batch_object(await load(served.db, batch_id, ANTHROPIC), _base(request, served)))

    async def list_batches(request: Request) -> Response:
        q = request.query_params
        after, before = q.get("after_id") or None, q.get("before_id") or None
        loaded: list[Loaded] = []
        more = False
        try:
            limit = page_size(q.get("limit"), default=20, most=MAX_LIST)
            if after and before:
                raise BadParam("after_id", "give after_id or before_id, not both")
            given = before or after
            cursor = _known_id(given) if given else None
            async for batch_id, _ in served_batches(served.db, ANTHROPIC, after=cursor, newer=before is not None):
                if len(loaded) == limit:
                    more = True
                    break
                try:
                    loaded.append(await load(served.db, batch_id, ANTHROPIC))
                except BatchNotFound:
                    continue  # forgotten meanwhile
        except BadParam as e:
            return _bad(e)
        except BatchNotFound:
            param = "before_id" if before else "after_id"
            return _bad(BadParam(param, f"{param}: no message batch {clip(before or after)!r}"))
        if before:
            loaded.reverse()  # walked from the cursor towards the newest; shown newest first all the same
        data = [batch_object(b, _base(request, served)) for b in loaded]
        return json_response({"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})

    async def retrieve(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        try:
            b = await current(served, _known_id(msg_id), ANTHROPIC)
            return json_response(batch_object(b, _base(request, served)))
        except BatchNotFound:
            return _not_found(msg_id)

    async def results(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        try:
            b = await load(served.db, _known_id(msg_id), ANTHROPIC)
        except BatchNotFound:
            return _not_found(msg_id)
        if not b.info.finished:
            return anthropic_error(400, "invalid_request_error",
                                   f"Message batch {msg_id!r} has not ended yet: its results are not ready.")
        return StreamingResponse(_results(served.db, b.info.id), media_type="application/binary")

    async def cancel(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        try:
            return json_response(batch_object(await stop(served, _known_id(msg_id), ANTHROPIC), _base(request, served)))
        except BatchNotFound:
            return _not_found(msg_id)

    async def delete(request: Request) -> Response:
        msg_id = request.path_params["batch_id"]
        try:
            b = await current(served, _known_id(msg_id), ANTHROPIC)
        except BatchNotFound:
            return _not_found(msg_id)
        if not b.info.finished:
            return anthropic_error(400, "invalid_request_error",
                                   f"Message batch {msg_id!r} is still in progress: cancel it before deleting it.")
        await served.db.delete_batch(b.info.id)
        return json_response({"id": msg_id, "type": "message_batch_deleted"})

    return [
        Route("/v1/messages/batches", create, methods=["POST"]),
        Route("/v1/messages/batches", list_batches, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", delete, methods=["DELETE"]),
        Route("/v1/messages/batches/{batch_id}/results", results, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", cancel, methods=["POST"]),
    ]
