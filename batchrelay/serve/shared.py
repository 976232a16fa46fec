"""What both batch APIs share: the served app's state (`Served`), a batch loaded with its `serve_*`
fields (`Loaded`), submitting a batch, and each API's JSON and error responses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.responses import Response

from batchrelay.config.settings import Settings
from batchrelay.money.ledger import Row, rows, total
from batchrelay.spec import BatchSpec
from batchrelay.store.lifecycle import FINAL, advance
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.jobs import LineReader

SERVE_FIELDS = ("serve_api", "serve_endpoint", "serve_input_file_id", "serve_completion_window", "serve_metadata",
                "stop_at", "error")


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


async def load(store: Store, batch_id: str) -> Loaded:
    """BatchNotFound for an unknown id."""
    info = await store.info(batch_id)
    fields = await store.get_fields(batch_id, SERVE_FIELDS)
    return Loaded(info, fields, total(rows(await store.ledger(batch_id))))


async def current(served: Served, batch_id: str) -> Loaded:
    """`load`, after moving a stop on (as `batchrelay cancel` does while it waits): a client polling
    a cancelled batch sees it end once the grace is over, not at the workers' next sweep."""
    b = await load(served.db, batch_id)
    if b.info.status in FINAL and await advance(served.db, batch_id, served.grace_s):
        b = await load(served.db, batch_id)
    return b


async def submit(served: Served, stream: LineReader, spec: BatchSpec, *, source: str, fields: dict[str, str]) -> str:
    """Submit the lines as a new batch, note the API's fields on it, and return its id."""
    store = served.db
    res = await submit_stream(store, stream, spec, source=source)
    await store.set_fields(res.batch_id, fields)
    return res.batch_id


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def openai_error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> Response:
    return json_response({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def anthropic_error(status: int, kind: str, message: str) -> Response:
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)
