"""What both batch APIs share: the served app's state (`Served`), a batch loaded with its `serve_*`
fields (`Loaded`), submitting a batch, and each API's JSON and error responses.

Each API sees only the batches created through it (`serve_api`): a batch of the other API, or one
submitted by the CLI, has no input file or request shape it could show, so it is not found there.
An error message that repeats what a client sent (an id, a cursor, a parameter) repeats at most
`ECHO` characters of it (`clip`): a client never gets back an unbounded copy of its request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from batchrelay.config.settings import Settings
from batchrelay.errors import BatchNotFound
from batchrelay.money.ledger import Row, rows, total
from batchrelay.serve.bodies import capped
from batchrelay.serve.params import BadParam
from batchrelay.spec import BatchSpec
from batchrelay.store.ids import checked_batch_id
from batchrelay.store.lifecycle import FINAL, advance, request_stop
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.jobs import IdRule, LineReader

SERVE_FIELDS = ("serve_api", "serve_endpoint", "serve_input_file_id", "serve_completion_window", "serve_metadata",
                "serve_errors", "serve_output_expires_s", "serve_output_gone", "serve_errors_gone", "stop_at", "error")
OPENAI, ANTHROPIC = "openai", "anthropic"
STOP_LINES = 1000  # lines a request that cancels (or polls a cancelling batch) stops at most; workers do the rest


@dataclass
class Served:
    """What every handler shares; `store` is set when the app starts."""

    settings: Settings
    files_dir: Path
    store: Store | None = None

    @property
    def db(self) -> Store:
        assert self.store is not None, "the app has not started"
        return self.store

    def spec(self, **options: Any) -> BatchSpec:
        """A batch's options (BatchSpec.of) under these settings."""
        return BatchSpec.of(self.settings, **options)

    @property
    def grace_s(self) -> float:
        """How long a cancel lets calls in flight finish (as `batchrelay cancel`)."""
        return self.settings.worker.cancel_grace_s


@dataclass(frozen=True, slots=True)
class Loaded:
    """A batch as the APIs show it: its record, its `serve_*` fields and its token usage."""

    info: BatchInfo
    fields: dict[str, str]
    usage: Row

    @property
    def stop_at(self) -> float | None:
        return float(self.fields["stop_at"]) if self.fields.get("stop_at") else None


async def load(store: Store, batch_id: str, api: str) -> Loaded:
    """BatchNotFound for an unknown id (or one of another shape: store/ids.py) or a batch not created
    through `api`."""
    checked_batch_id(batch_id)
    fields = await store.get_fields(batch_id, SERVE_FIELDS)
    if fields.get("serve_api") != api:
        raise BatchNotFound(batch_id)
    info = await store.info(batch_id)
    return Loaded(info, fields, total(rows(await store.ledger(batch_id))))


async def current(served: Served, batch_id: str, api: str) -> Loaded:
    """`load`, after moving a stop on (as `batchrelay cancel` does while it waits): a client polling
    a cancelled batch sees it end once the grace is over, not at the workers' next sweep. A request
    stops at most `STOP_LINES` lines: the workers' sweeps stop the rest of a large batch."""
    b = await load(served.db, batch_id, api)
    if b.info.status in FINAL and await advance(served.db, batch_id, served.grace_s, most=STOP_LINES):
        b = await load(served.db, batch_id, api)
    return b


async def stop(served: Served, batch_id: str, api: str) -> Loaded:
    """Cancel the batch and move the stop on by at most `STOP_LINES` lines (the workers' sweeps
    finish it); BatchNotFound as `load`."""
    await load(served.db, batch_id, api)
    await request_stop(served.db, batch_id, Status.CANCELLED)
    await advance(served.db, batch_id, served.grace_s, most=STOP_LINES)
    return await load(served.db, batch_id, api)


async def submit(served: Served, stream: LineReader, spec: BatchSpec, *, source: str, fields: dict[str, str],
                 id_rule: IdRule | None = None) -> str:
    """Submit the lines as a new batch, note the API's fields (`serve_api` first) on it, and return its id
    (`id_rule`: as submit_stream's)."""
    store = served.db
    res = await submit_stream(store, stream, spec, source=source, id_rule=id_rule)
    await store.set_fields(res.batch_id, fields)
    return res.batch_id


async def body_of(request: Request, served: Served) -> Any:
    """The request's JSON body: BodyTooLarge (a 413) past `[serve] max_json_kb`, before parsing and
    holding no more than that; BadParam when it is not JSON."""
    kb = served.settings.serve.max_json_kb
    body = bytearray()
    async for chunk in capped(request, kb * 1024, f"{kb} KiB ([serve] max_json_kb)"):
        body += chunk
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadParam("body", "The request body is not valid JSON.") from None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def openai_list(data: list[dict[str, Any]], more: bool) -> Response:
    """A page of an OpenAI list (files, batches)."""
    return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None, "has_more": more})


def openai_error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> Response:
    return json_response({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def anthropic_error(status: int, kind: str, message: str) -> Response:
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)
