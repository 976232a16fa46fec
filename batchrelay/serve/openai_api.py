"""OpenAI Files + Batches on the batch store, for `batchrelay serve`.

Uploaded files (purpose `batch`; DELETE removes one) are kept on disk in `[serve] files_dir` as `<id>.jsonl`, their
records in Redis under `{prefix}files:<id>` (a hash: id, bytes, created_at, filename, purpose). A
batch's output and error files are virtual: `file-<hex>-output` / `file-<hex>-errors` for batch
`batch_<hex>`, streamed from its results once it has finished (successes / everything else).
Multipart uploads are parsed by python-multipart as they stream in, the file part straight to disk.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from batchrelay.errors import BatchNotFound, InputError, UploadError, UploadTooLarge
from batchrelay.serve.shared import Loaded, Served, current, json_response, load, openai_error, submit
from batchrelay.store.files import delete_file_record, file_record, save_file_record
from batchrelay.store.lifecycle import advance, request_stop
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.wire.dialect import Dialect

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024  # room for the form's own bytes (boundaries, part headers) beside the file
MAX_FIELD_BYTES = 64 * 1024
MAX_FORM_FIELDS = 16  # parts besides the file (the SDKs send one: `purpose`)
MAX_FIELDS_BYTES = 256 * 1024  # all of them together
ENDPOINTS: dict[str, Dialect] = {"/v1/chat/completions": "chat", "/v1/messages": "messages"}
WINDOWS = {"24h": 86400.0}
# our batch status -> the OpenAI Batch API's (its wire values)
STATUS: dict[str, str] = {
    Status.VALIDATING: "validating", Status.SCHEDULED: "validating", Status.IN_PROGRESS: "in_progress",
    Status.BUDGET_EXHAUSTED: "in_progress", Status.EXPIRING: "in_progress", Status.CANCELLING: "cancelling",
    Status.COMPLETED: "completed", Status.FAILED: "failed", Status.CANCELLED: "cancelled", Status.EXPIRED: "expired",
}
VIRTUAL = re.compile(r"file-([0-9a-f]+)-(output|errors)")
UPLOADED = re.compile(r"file-[0-9a-f]{24}")


class _Form:
    """python-multipart's callbacks for one upload: the first `file` part with a file name streams to
    `dest`, every other part is a small text field (at most MAX_FORM_FIELDS, MAX_FIELDS_BYTES in all)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.done = False
        self.out: IO[bytes] | None = None
        self._header = (bytearray(), bytearray())  # name, value of the header being read
        self._disposition: bytes | None = None
        self._sink: IO[bytes] | None = None  # the file, while its part is read
        self._name = ""
        self._value = bytearray()  # the field being read
        self._parts = 0
        self._field_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {"on_header_field": lambda data, a, b: self._header[0].extend(data[a:b]),
                "on_header_value": lambda data, a, b: self._header[1].extend(data[a:b]),
                "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
                "on_part_data": self._data, "on_part_end": self._part_end, "on_end": self._end}

    def _header_end(self) -> None:
        name, value = self._header
        if name.strip().lower() == b"content-disposition":
            self._disposition = bytes(value)
        name.clear()
        value.clear()

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise UploadError("a form part has no Content-Disposition")
        params = parse_options_header(self._disposition)[1]
        self._disposition = None
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if self._name == "file" and filename is not None and self.out is None:
            self.filename, self.out = filename.decode("utf-8", "replace"), self.dest.open("wb")
            self._sink = self.out
            return
        self._parts += 1
        if self._parts > MAX_FORM_FIELDS:
            raise UploadTooLarge(f"the form has more than {MAX_FORM_FIELDS} fields")
        self._value = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(memoryview(data)[start:end])
            self.size += end - start
            return
        self._field_bytes += end - start
        if len(self._value) + end - start > MAX_FIELD_BYTES:
            raise UploadError(f"form field {self._name!r} is too long")
        if self._field_bytes > MAX_FIELDS_BYTES:
            raise UploadTooLarge(f"the form fields are over {MAX_FIELDS_BYTES // 1024} KiB together")
        self._value += data[start:end]

    def _part_end(self) -> None:
        if self._sink is None:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
        self._sink = None

    def _end(self) -> None:
        self.done = True


async def read_form(request: Request, dest: Path) -> tuple[dict[str, str], str | None, int]:
    """Stream a multipart/form-data body through python-multipart: the `file` part's bytes go to
    `dest`, small fields are returned, and reading stops at the closing boundary (what follows is
    never read). Returns (fields, the file's name or None when there was no file part, its size)."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError("expected a multipart/form-data body")
    form, received = _Form(dest), 0
    try:
        parser = MultipartParser(params[b"boundary"], form.callbacks())
        async with contextlib.aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                received += len(chunk)
                if received > MAX_UPLOAD_BYTES + MAX_HEADER_BYTES:
                    raise UploadTooLarge(f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MiB")
                parser.write(chunk)
                if form.done:
                    break
    except FormParserError as e:
        raise UploadError(f"the multipart body is malformed: {e}") from None
    finally:
        if form.out is not None:
            form.out.close()
    if not form.done:
        raise UploadError("the multipart body ended early")
    return form.fields, form.filename, form.size


def _file_object(record: dict[str, str]) -> dict[str, Any]:
    return {"id": record["id"], "object": "file", "bytes": int(record["bytes"]),
            "created_at": int(float(record["created_at"])), "filename": record["filename"],
            "purpose": record["purpose"], "status": "processed", "expires_at": None, "status_details": None}


async def _file_record(store: Store, file_id: str) -> dict[str, str] | None:
    if not UPLOADED.fullmatch(file_id):
        return None
    return await file_record(store, file_id)


def _ts(t: float | None) -> int | None:
    return None if t is None else int(t)


def batch_object(b: Loaded) -> dict[str, Any]:
    info, f = b.info, b.fields
    status = STATUS.get(info.status, "in_progress")
    end = _ts(info.finished_at)
    hexid = info.id.removeprefix("batch_")
    fallback = "/v1/messages" if info.input_format == "anthropic" else "/v1/chat/completions"
    u = b.usage
    return {
        "id": info.id, "object": "batch", "endpoint": f.get("serve_endpoint", fallback),
        "errors": {"object": "list", "data": [{"code": "batch_failed", "message": f.get("error", ""),
                                               "param": None, "line": None}]} if status == "failed" else None,
        "input_file_id": f.get("serve_input_file_id", ""),
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


async def _virtual(store: Store, file_id: str) -> tuple[str, bool] | None:
    """(batch id, successes?) of a finished batch's output or error file id, else None."""
    m = VIRTUAL.fullmatch(file_id)
    if not m:
        return None
    batch_id = "batch_" + m.group(1)
    try:
        info = await store.info(batch_id)
    except BatchNotFound:
        return None
    return (batch_id, m.group(2) == "output") if info.finished else None


async def _records(store: Store, batch_id: str, successes: bool) -> AsyncIterator[bytes]:
    async for ok, record in store.iter_results(batch_id):
        if ok == successes:
            yield record + b"\n"


def _no_file(file_id: str) -> Response:
    return openai_error(404, f"No such File object: {file_id}", param="id")


def _no_batch(batch_id: str) -> Response:
    return openai_error(404, f"No batch found with id '{batch_id}'.", param="batch_id")


async def _json_body(request: Request) -> dict[str, Any] | Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return openai_error(400, "The request body is not valid JSON.")
    return body if isinstance(body, dict) else openai_error(400, "The request body must be a JSON object.")


def routes(served: Served) -> list[Route]:
    async def upload(request: Request) -> Response:
        store = served.db
        file_id = "file-" + uuid.uuid4().hex[:24]
        part = served.files_dir / f"{file_id}.part"
        try:
            fields, filename, size = await read_form(request, part)
            if filename is None:
                raise UploadError("missing the `file` part")
            if fields.get("purpose") != "batch":
                return openai_error(400, f"purpose {fields.get('purpose')!r} is not supported here: only 'batch'",
                                    param="purpose")
            part.replace(served.files_dir / f"{file_id}.jsonl")
        except UploadError as e:
            return openai_error(413 if isinstance(e, UploadTooLarge) else 400, str(e), param="file")
        finally:
            part.unlink(missing_ok=True)
        record = {"id": file_id, "bytes": str(size), "created_at": str(time.time()), "filename": filename,
                  "purpose": "batch"}
        await save_file_record(store, file_id, record)
        return json_response(_file_object(record))

    async def get_file(request: Request) -> Response:
        store, file_id = served.db, request.path_params["file_id"]
        record = await _file_record(store, file_id)
        if record:
            return json_response(_file_object(record))
        found = await _virtual(store, file_id)
        if found is None:
            return _no_file(file_id)
        batch_id, successes = found
        size = 0
        async for line in _records(store, batch_id, successes):
            size += len(line)
        info = await store.info(batch_id)
        return json_response(_file_object({
            "id": file_id, "bytes": str(size), "created_at": str(info.finished_at or info.created_at),
            "filename": f"{batch_id}_{'output' if successes else 'errors'}.jsonl", "purpose": "batch_output"}))

    async def file_content(request: Request) -> Response:
        store, file_id = served.db, request.path_params["file_id"]
        path = served.files_dir / f"{file_id}.jsonl"
        if await _file_record(store, file_id):
            if not path.is_file():
                return openai_error(404, f"The content of {file_id} is gone from {served.files_dir}", param="id")
            return FileResponse(path, media_type="application/octet-stream")
        found = await _virtual(store, file_id)
        if found is None:
            return _no_file(file_id)
        return StreamingResponse(_records(store, *found), media_type="application/octet-stream")

    async def delete_file(request: Request) -> Response:
        store, file_id = served.db, request.path_params["file_id"]
        if not await _file_record(store, file_id):
            return _no_file(file_id)  # a batch's output and error files go with the batch
        await delete_file_record(store, file_id)
        (served.files_dir / f"{file_id}.jsonl").unlink(missing_ok=True)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    async def create_batch(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        file_id, endpoint, window = body.get("input_file_id"), body.get("endpoint"), body.get("completion_window")
        metadata = body.get("metadata")
        if endpoint not in ENDPOINTS:
            return openai_error(400, f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        if window not in WINDOWS:
            return openai_error(400, f"completion_window must be one of {', '.join(WINDOWS)}",
                                param="completion_window")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            return openai_error(400, "metadata must be an object of at most 16 string values", param="metadata")
        record = await _file_record(served.db, file_id) if isinstance(file_id, str) else None
        if record is None:
            return openai_error(404, f"No such File object: {file_id}", param="input_file_id")
        if record["bytes"] == "0":
            return openai_error(400, "the input file is empty", param="input_file_id")
        fields = {"serve_api": "openai", "serve_endpoint": endpoint, "serve_input_file_id": record["id"],
                  "serve_completion_window": window}
        if metadata is not None:
            fields["serve_metadata"] = orjson.dumps(metadata).decode()
        with (served.files_dir / f"{record['id']}.jsonl").open("rb") as stream:
            spec = served.spec(name=record["filename"], endpoint=ENDPOINTS[endpoint], completion_window=WINDOWS[window])
            try:
                batch_id = await submit(served, stream, spec, source=f"serve:{record['id']}", fields=fields)
            except InputError as e:  # no requests in the file, or not JSONL: no batch was made
                return openai_error(400, str(e), param="input_file_id")
        return json_response(batch_object(await load(served.db, batch_id)))

    async def get_batch(request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        try:
            return json_response(batch_object(await current(served, batch_id)))
        except BatchNotFound:
            return _no_batch(batch_id)

    async def list_batches(request: Request) -> Response:
        store = served.db
        try:
            limit = min(100, max(1, int(request.query_params.get("limit", "20"))))
        except ValueError:
            return openai_error(400, "limit must be an integer", param="limit")
        ids = await store.batch_ids(limit + 1, after=request.query_params.get("after") or None)
        data = []
        for batch_id in ids[:limit]:
            try:
                data.append(batch_object(await load(store, batch_id)))
            except BatchNotFound:
                continue  # forgotten meanwhile
        return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": len(ids) > limit})

    async def cancel_batch(request: Request) -> Response:
        store, batch_id = served.db, request.path_params["batch_id"]
        try:
            await request_stop(store, batch_id, Status.CANCELLED)
            await advance(store, batch_id, served.grace_s)  # workers' sweeps finish it
            return json_response(batch_object(await load(store, batch_id)))
        except BatchNotFound:
            return _no_batch(batch_id)

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]
