"""OpenAI Batches on the batch store, for `batchrelay serve` (its Files are openai_files.py).

A batch is created from an uploaded file. Before anything runs its lines are checked as OpenAI's
validation checks them (endpoint_check.py): a request for another endpoint fails the batch
(`failed`, `errors.data` naming each such line) and nothing of it is sent. Otherwise the lines are
submitted as an ordinary batchrelay batch, its API fields (`serve_*`) noted on it. Only batches
created here are listed or found (shared.py). `output_expires_after` is honoured (openai_files.py);
a cancel of a finished batch is a 409, as on OpenAI. Limits, each a 400 naming its parameter: an
input file of more than `[serve] max_batch_lines` lines is refused before anything of it is stored
(OpenAI's 50,000 by default), and `metadata` is held to OpenAI's rules (at most 16 pairs, keys of
at most 64 characters, string values of at most 512).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchrelay.errors import BatchNotFound, InputError
from batchrelay.serve.endpoint_check import TooManyLines, endpoint_errors
from batchrelay.serve.expiry import policy_seconds
from batchrelay.serve.listing import page_size
from batchrelay.serve.openai_files import Files
from batchrelay.serve.openai_files import routes as file_routes
from batchrelay.serve.params import BadParam, clip
from batchrelay.serve.shared import (
    OPENAI,
    Loaded,
    Served,
    body_of,
    current,
    json_response,
    load,
    openai_error,
    openai_list,
    stop,
)
from batchrelay.serve.shared import submit as submit_lines
from batchrelay.spec import BatchSpec
from batchrelay.store.ids import new_batch_id
from batchrelay.store.served import served_batches
from batchrelay.store.status import Status
from batchrelay.wire.jobs import URL_DIALECTS

ENDPOINTS = URL_DIALECTS  # the batch endpoints served, and the dialect each speaks
WINDOWS = {"24h": 86400.0}
MAX_LIST = 100
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512  # OpenAI's limits (characters)
# our batch status -> the OpenAI Batch API's (its wire values)
STATUS: dict[str, str] = {
    Status.VALIDATING: "validating", Status.SCHEDULED: "validating", Status.IN_PROGRESS: "in_progress",
    Status.BUDGET_EXHAUSTED: "in_progress", Status.EXPIRING: "in_progress", Status.CANCELLING: "cancelling",
    Status.COMPLETED: "completed", Status.FAILED: "failed", Status.CANCELLED: "cancelled", Status.EXPIRED: "expired",
    Status.PAUSED: "in_progress",  # an interrupted `run`'s batch: not one `serve` made, shown as not done
}


def _ts(t: float | None) -> int | None:
    return None if t is None else int(t)


def _errors(f: dict[str, str], status: str) -> dict[str, Any] | None:
    if f.get("serve_errors"):
        return {"object": "list", "data": orjson.loads(f["serve_errors"])}
    if status == "failed":
        return {"object": "list", "data": [{"code": "batch_failed", "message": f.get("error", ""), "param": None,
                                            "line": None}]}
    return None


def batch_object(b: Loaded) -> dict[str, Any]:
    info, f = b.info, b.fields
    status = STATUS.get(info.status, "in_progress")
    end = _ts(info.finished_at)
    hexid = info.id.removeprefix("batch_")
    u = b.usage
    return {
        "id": info.id, "object": "batch", "endpoint": f["serve_endpoint"], "errors": _errors(f, status),
        "input_file_id": f["serve_input_file_id"],
        "completion_window": f.get("serve_completion_window", "24h"),
        "status": status,
        "output_file_id": f"file-{hexid}-output" if info.finished and info.succeeded else None,
        "error_file_id": f"file-{hexid}-errors" if info.finished and info.unsuccessful else None,
        "created_at": int(info.created_at),
        "in_progress_at": int(info.created_at) if status not in ("validating", "failed") else None,
        "expires_at": _ts(info.expires_at),
        "finalizing_at": None,
        "completed_at": end if status == "completed" else None,
        "failed_at": end if status == "failed" else None,
        "expired_at": end if status == "expired" else None,
        "cancelling_at": _ts(b.stop_at) if status in ("cancelling", "cancelled") else None,
        "cancelled_at": end if status == "cancelled" else None,
        "request_counts": {"total": info.total, "completed": info.succeeded, "failed": info.unsuccessful},
        "metadata": orjson.loads(f["serve_metadata"]) if f.get("serve_metadata") else None,
        "usage": {"input_tokens": u["input"], "input_tokens_details": {"cached_tokens": u["cached"]},
                  "output_tokens": u["output"], "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
                  "total_tokens": u["input"] + u["output"]},
    }


def _no_batch(batch_id: str) -> Response:
    return openai_error(404, f"No batch found with id '{clip(batch_id)}'.", param="batch_id")


def _check_metadata(metadata: Any) -> None:
    """OpenAI's rules for `metadata`; BadParam naming the one it breaks."""
    if not isinstance(metadata, dict):
        raise BadParam("metadata", "metadata must be an object of string keys and values")
    if len(metadata) > METADATA_PAIRS:
        raise BadParam("metadata", f"metadata: at most {METADATA_PAIRS} key-value pairs, not {len(metadata)}")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY:
            raise BadParam("metadata", f"metadata: a key is at most {METADATA_KEY} characters, not {len(key)} "
                                       f"({clip(key)!r})")
        if not isinstance(value, str):
            raise BadParam("metadata", f"metadata: values must be strings; that of {clip(key)!r} is not")
        if len(value) > METADATA_VALUE:
            raise BadParam("metadata", f"metadata: a value is at most {METADATA_VALUE} characters, not {len(value)} "
                                       f"(that of {clip(key)!r})")


def _options(body: Any) -> dict[str, Any]:
    """The create request's options, checked; BadParam naming the first that cannot be used."""
    if not isinstance(body, dict):
        raise BadParam("body", "The request body must be a JSON object.")
    endpoint, window, metadata = body.get("endpoint"), body.get("completion_window"), body.get("metadata")
    if endpoint not in ENDPOINTS:
        raise BadParam("endpoint", f"endpoint must be one of {', '.join(ENDPOINTS)}")
    if window not in WINDOWS:
        raise BadParam("completion_window", f"completion_window must be one of {', '.join(WINDOWS)}")
    if metadata is not None:
        _check_metadata(metadata)
    expiry = body.get("output_expires_after")
    fields = {"serve_api": OPENAI, "serve_endpoint": endpoint, "serve_completion_window": window}
    if metadata is not None:
        fields["serve_metadata"] = orjson.dumps(metadata).decode()
    if expiry is not None:
        fields["serve_output_expires_s"] = str(policy_seconds(expiry, "output_expires_after"))
    return fields


def routes(served: Served) -> list[Route]:
    files = Files(served)

    async def failed(spec: BatchSpec, fields: dict[str, str], errors: list[dict[str, Any]]) -> str:
        """A batch that failed validation: its record, its errors, nothing to run."""
        store, batch_id = served.db, new_batch_id()
        await store.create_batch(batch_id, spec, source=f"serve:{fields['serve_input_file_id']}")
        await store.set_fields(batch_id, {**fields, "serve_errors": orjson.dumps(errors).decode()})
        await store.mark_failed(batch_id, f"{len(errors)} lines are not requests for {fields['serve_endpoint']}")
        return batch_id

    async def create_batch(request: Request) -> Response:
        try:
            body = await body_of(request, served)
            fields = _options(body)
        except BadParam as e:
            return openai_error(400, str(e), param=e.param)
        file_id = body.get("input_file_id")
        record = await files.uploaded(file_id) if isinstance(file_id, str) else None
        try:  # opened once: a delete meanwhile leaves this request its file (or a 404, never a 500)
            stream = (served.files_dir / f"{record['id']}.jsonl").open("rb") if record else None
        except FileNotFoundError:
            stream = None
        if record is None or stream is None:
            return openai_error(404, f"No such File object: {clip(file_id)}", param="input_file_id")
        with stream:
            if record["bytes"] == "0":
                return openai_error(400, "the input file is empty", param="input_file_id")
            fields["serve_input_file_id"] = record["id"]
            endpoint = fields["serve_endpoint"]
            spec = served.spec(name=record["filename"], endpoint=ENDPOINTS[endpoint],
                               completion_window=served.settings.serve.batch_window_s)  # the wire says "24h"
            try:  # checked in a thread: a large file must not stall the other requests
                errors = await asyncio.to_thread(endpoint_errors, stream, endpoint, max_line_bytes=spec.max_line_bytes,
                                                 max_lines=served.settings.serve.max_batch_lines)
            except TooManyLines as e:
                return openai_error(400, str(e), param="input_file_id")
            if errors:
                batch_id = await failed(spec, fields, errors)
            else:
                stream.seek(0)
                try:
                    batch_id = await submit_lines(served, stream, spec, source=f"serve:{record['id']}", fields=fields)
                except InputError as e:  # no requests in the file, or not JSONL: no batch was made
                    return openai_error(400, str(e), param="input_file_id")
        return json_response(batch_object(await load(served.db, batch_id, OPENAI)))

    async def get_batch(request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        try:
            return json_response(batch_object(await current(served, batch_id, OPENAI)))
        except BatchNotFound:
            return _no_batch(batch_id)

    async def list_batches(request: Request) -> Response:
        after = request.query_params.get("after") or None
        data: list[dict[str, Any]] = []
        try:
            limit = page_size(request.query_params.get("limit"), default=20, most=MAX_LIST)
            async for batch_id, _ in served_batches(served.db, OPENAI, after=after):
                if len(data) == limit:
                    return openai_list(data, True)
                try:
                    data.append(batch_object(await load(served.db, batch_id, OPENAI)))
                except BatchNotFound:
                    continue  # forgotten meanwhile
        except BadParam as e:
            return openai_error(400, str(e), param=e.param)
        except BatchNotFound:
            return openai_error(400, f"after: no batch {clip(after)!r}", param="after")
        return openai_list(data, False)

    async def cancel_batch(request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        try:
            b = await load(served.db, batch_id, OPENAI)
            if b.info.finished:
                return openai_error(409, f"Cannot cancel a batch with status '{STATUS[b.info.status]}'.")
            return json_response(batch_object(await stop(served, batch_id, OPENAI)))
        except BatchNotFound:
            return _no_batch(batch_id)

    return [
        *file_routes(served),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]
