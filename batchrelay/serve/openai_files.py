"""OpenAI Files on the batch store, for `batchrelay serve`.

Uploaded files (purpose `batch`) are kept on disk in `[serve] files_dir` as `<id>.jsonl`, their
records in Redis (store/files.py). A batch's output and error files (purpose `batch_output`) are
virtual: `file-<hex>-output` / `file-<hex>-errors` for batch `batch_<hex>`, streamed from its
results once it has finished (its answers / every other record). `GET /v1/files` lists both kinds,
newest first unless `order=asc`, by `purpose`, a page at a time (`limit`, `after`).

Deleting a file, or its expiry (`expires_after` on upload, the batch's `output_expires_after`):
- an uploaded file: its bytes and record go; a batch made from it keeps its lines;
- an output or error file: the batch's answers (or error records) are deleted from Redis. The batch
  keeps its counts and still names the file, as OpenAI's does, and the file answers 404 from then
  on, for good (a later `batchrelay retry` does not bring it back); `batchrelay results` writes what
  is left. An expired file is deleted when it is next asked for or listed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from batchrelay.errors import UploadError, UploadTooLarge
from batchrelay.serve.expiry import expired, expires_at, form_policy, policy_seconds
from batchrelay.serve.listing import descending, page_after, page_size
from batchrelay.serve.params import BadParam, clip
from batchrelay.serve.shared import OPENAI, Served, json_response, openai_error, openai_list
from batchrelay.serve.upload_form import read_form
from batchrelay.store.files import delete_file_record, file_record, file_records, save_file_record
from batchrelay.store.ids import HEX, new_file_id
from batchrelay.store.served import delete_records, served_batches
from batchrelay.store.status import FINISHED
from batchrelay.store.store import BYTE_FIELDS, UNSUCCESSFUL, Store

VIRTUAL = re.compile(f"file-({HEX})-(output|errors)")  # of batch `batch_<hex>` (store/ids.py)
MAX_LIST = 10_000
PIECE = 256 * 1024  # read from an uploaded file at a time
# what a batch's output files are made from, in its meta hash
OUTPUT_FIELDS = ("serve_api", "status", "finished_at", "succeeded", *UNSUCCESSFUL, "serve_output_expires_s",
                 "serve_output_gone", "serve_errors_gone", *BYTE_FIELDS.values(),
                 "serve_output_bytes", "serve_errors_bytes")


@dataclass(frozen=True, slots=True)
class Output:
    """A finished batch's output file (its answers) or error file (every other record)."""

    batch_id: str
    kind: str  # output | errors
    created_at: float  # when the batch finished
    expires_at: float | None

    @property
    def id(self) -> str:
        return f"file-{self.batch_id.removeprefix('batch_')}-{self.kind}"

    @property
    def successes(self) -> bool:
        return self.kind == "output"


def outputs_of(batch_id: str, meta: dict[str, str]) -> list[Output]:
    """The output and error files the batch has (from its meta hash): none before it finished, none
    without records of its kind, none deleted."""
    if meta.get("status") not in FINISHED or not meta.get("finished_at"):
        return []
    finished = float(meta["finished_at"])
    until = expires_at(finished, meta.get("serve_output_expires_s"))
    has = {"output": int(meta.get("succeeded") or 0) > 0,
           "errors": sum(int(meta.get(k) or 0) for k in UNSUCCESSFUL) > 0}
    return [Output(batch_id, kind, finished, until) for kind in ("output", "errors")
            if has[kind] and not meta.get(f"serve_{kind}_gone")]


def file_object(record: dict[str, str]) -> dict[str, Any]:
    until = record.get("expires_at")
    return {"id": record["id"], "object": "file", "bytes": int(record["bytes"]),
            "created_at": int(float(record["created_at"])), "filename": record["filename"],
            "purpose": record["purpose"], "status": "processed",
            "expires_at": int(float(until)) if until else None, "status_details": None}


async def records(store: Store, batch_id: str, successes: bool) -> AsyncIterator[bytes]:
    async for ok, record in store.iter_results(batch_id):
        if ok == successes:
            yield record + b"\n"


async def delete_output(store: Store, out: Output) -> None:
    """The file is gone for good (its mark first, so no reader finds it half deleted), then its records."""
    await store.set_fields(out.batch_id, {f"serve_{out.kind}_gone": str(time.time())})
    await delete_records(store, out.batch_id, out.successes)


async def _counted_size(store: Store, out: Output, meta: dict[str, str]) -> str:
    """The size of a file of a batch made before the store kept it: counted once per finish and
    noted on the batch."""
    stamp, _, size = meta.get(f"serve_{out.kind}_bytes", "").partition(":")
    if stamp != meta["finished_at"]:
        total = 0
        async for line in records(store, out.batch_id, out.successes):
            total += len(line)
        size = str(total)
        await store.set_fields(out.batch_id, {f"serve_{out.kind}_bytes": f"{meta['finished_at']}:{size}"})
    return size


async def _output_object(store: Store, out: Output, meta: dict[str, str]) -> dict[str, Any]:
    """Its file object; its size is the one the store keeps as results are written (BYTE_FIELDS)."""
    size = meta.get(BYTE_FIELDS[out.successes]) or await _counted_size(store, out, meta)
    return file_object({"id": out.id, "bytes": size, "created_at": str(out.created_at),
                        "filename": f"{out.batch_id}_{out.kind}.jsonl", "purpose": "batch_output",
                        **({"expires_at": str(out.expires_at)} if out.expires_at is not None else {})})


class OpenedFile(StreamingResponse):
    """An opened file's bytes, read a piece at a time in a thread, and the file closed when the response
    ends (also when the client goes). A delete after the open does not cut them short: on POSIX the
    open file keeps its bytes after the unlink."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        super().__init__(self._pieces(), media_type="application/octet-stream",
                         headers={"content-length": str(os.fstat(file.fileno()).st_size)})

    async def _pieces(self) -> AsyncIterator[bytes]:
        while piece := await anyio.to_thread.run_sync(self.file.read, PIECE):
            yield piece

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.file.close()


class Files:
    """The files of one served app: uploaded ones on disk, output ones from batches' results."""

    def __init__(self, served: Served) -> None:
        self.served = served

    async def uploaded(self, file_id: str) -> dict[str, str] | None:
        """The uploaded file's record; None when there is none or it has expired (it is deleted then)."""
        record = await file_record(self.served.db, file_id)  # None for an id of another shape
        if record and expired(float(record["expires_at"]) if record.get("expires_at") else None, time.time()):
            await self.delete_uploaded(file_id)
            return None
        return record

    async def delete_uploaded(self, file_id: str) -> bool:
        gone = await delete_file_record(self.served.db, file_id)
        (self.served.files_dir / f"{file_id}.jsonl").unlink(missing_ok=True)
        return gone

    async def output(self, file_id: str) -> tuple[Output, dict[str, str]] | None:
        """An OpenAI batch's output or error file with the batch's meta; None when it has no such
        file (yet, or any more: an expired one is deleted here)."""
        m = VIRTUAL.fullmatch(file_id)
        if not m:
            return None
        batch_id = "batch_" + m.group(1)
        meta = await self.served.db.get_fields(batch_id, OUTPUT_FIELDS)
        found = [o for o in outputs_of(batch_id, meta) if o.id == file_id] if meta.get("serve_api") == OPENAI else []
        if found and expired(found[0].expires_at, time.time()):
            await delete_output(self.served.db, found[0])
            return None
        return (found[0], meta) if found else None

    async def listed(self, purpose: str | None) -> list[tuple[float, str, dict[str, Any]]]:
        """(created_at, id, file object) of every file of that purpose (all without one)."""
        store, now, found = self.served.db, time.time(), []
        if purpose in (None, "batch"):
            for record in await file_records(store):
                if record.get("expires_at") and expired(float(record["expires_at"]), now):
                    await self.delete_uploaded(record["id"])
                else:
                    found.append((float(record["created_at"]), record["id"], file_object(record)))
        if purpose in (None, "batch_output"):
            async for batch_id, meta in served_batches(store, OPENAI):
                for out in outputs_of(batch_id, meta):
                    if expired(out.expires_at, now):
                        await delete_output(store, out)
                    else:
                        found.append((out.created_at, out.id, await _output_object(store, out, meta)))
        return found


def _no_file(file_id: str) -> Response:
    return openai_error(404, f"No such File object: {clip(file_id)}", param="id")


def routes(served: Served) -> list[Route]:
    files = Files(served)

    async def upload(request: Request) -> Response:
        file_id = new_file_id()
        part = served.files_dir / f"{file_id}.part"
        try:
            fields, filename, size = await read_form(request, part, served.settings.serve.max_upload_mb * 2**20)
            if filename is None:
                raise UploadError("missing the `file` part")
            if fields.get("purpose") != "batch":
                return openai_error(400, f"purpose {clip(fields.get('purpose'))!r} is not supported here: only 'batch'",
                                    param="purpose")
            policy = form_policy(fields, "expires_after")
            seconds = None if policy is None else policy_seconds(policy, "expires_after")
            part.replace(served.files_dir / f"{file_id}.jsonl")
        except UploadError as e:
            return openai_error(413 if isinstance(e, UploadTooLarge) else 400, str(e), param="file")
        except BadParam as e:
            return openai_error(400, str(e), param=e.param)
        finally:
            part.unlink(missing_ok=True)
        now = time.time()
        record = {"id": file_id, "bytes": str(size), "created_at": str(now), "filename": filename, "purpose": "batch"}
        if seconds is not None:
            record["expires_at"] = str(now + seconds)
        await save_file_record(served.db, file_id, record)
        return json_response(file_object(record))

    async def list_files(request: Request) -> Response:
        q = request.query_params
        try:
            limit = page_size(q.get("limit"), default=MAX_LIST, most=MAX_LIST)
            desc = descending(q.get("order"))
            found = sorted(await files.listed(q.get("purpose")), key=lambda f: f[:2], reverse=desc)
            data, more = page_after([f[2] for f in found], lambda f: str(f["id"]), q.get("after"), limit)
        except BadParam as e:
            return openai_error(400, str(e), param=e.param)
        return openai_list(data, more)

    async def get_file(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if record := await files.uploaded(file_id):
            return json_response(file_object(record))
        found = await files.output(file_id)
        return json_response(await _output_object(served.db, *found)) if found else _no_file(file_id)

    async def file_content(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if await files.uploaded(file_id):
            try:  # opened before answering: a delete from now on does not cut the answer short
                return OpenedFile((served.files_dir / f"{file_id}.jsonl").open("rb"))
            except FileNotFoundError:  # deleted since its record was read
                return _no_file(file_id)
        found = await files.output(file_id)
        if found is None:
            return _no_file(file_id)
        out = found[0]
        return StreamingResponse(records(served.db, out.batch_id, out.successes), media_type="application/octet-stream")

    async def delete_file(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if await files.uploaded(file_id):
            if not await files.delete_uploaded(file_id):
                return _no_file(file_id)  # another request deleted it first
        elif found := await files.output(file_id):
            await delete_output(served.db, found[0])
        else:
            return _no_file(file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    ]
