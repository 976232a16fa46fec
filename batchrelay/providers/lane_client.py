"""A lane's HTTP: the official Batch APIs (OpenAI Files + Batches, Anthropic Message Batches). The IO edge
of lanes; what it sends and reads is lane_wire.py / lane_results.py.

Every call is one request (no retries here: the lane's poller backs off, as the relay does for calls).
Its headers are the provider's own, built as a call's are (client.py / dialects.py: its auth style,
`anthropic-version`), with the key read from its variable at call time. A failure raises what a
failed call raises, so `classify` decides as for any call (429/5xx/connect: later; 401/403: the key;
402: credit): `ProviderHTTPError` with status, body and headers (Retry-After), `ProviderTransportError`
/ `ProviderTimeout` when no answer came, `ProviderBadResponse` for a 2xx that is not the JSON expected.
The key is never in a message or a body kept (redacted as client.py does).

Large inputs are streamed from disk, never held whole: the OpenAI upload is a multipart body read from
the file as it is sent, and an Anthropic Message Batch's body (`{"requests": [...]}`, up to 256 MB) is
built from the file's lines a piece at a time (`PIECE`), with its Content-Length counted beforehand.
Results are read as they stream in, a line at a time. An Anthropic `results_url` is followed only
when it is on the provider's own origin: the key goes nowhere else (else the results path on the
provider's `base_url` is used).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
import orjson

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import ProviderBadResponse, ProviderHTTPError, ProviderTimeout, ProviderTransportError
from batchrelay.providers.client import _error_body, _redact, usable_key
from batchrelay.providers.dialects import request_headers
from batchrelay.providers.lane_wire import UpstreamState, upstream_state

PIECE = 1024 * 1024  # an Anthropic batch body is sent this much at a time (plus one request line)
PAGE = 100  # batches per page when listing (both APIs' most)
MAX_PAGES = 1000  # a listing walks back this many pages at most
MAX_MESSAGE = 300  # of the upstream's error message, in ours
COMPLETION_WINDOW = "24h"  # the only one either API accepts
HEAD, TAIL = b'{"requests":[', b"]}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    defaults = {"http": 80, "https": 443}
    return url.scheme, url.host, url.port or defaults.get(url.scheme)


def _requests_of(f: IO[bytes], size: int) -> Iterator[bytes]:
    """The file's JSONL lines (blank ones skipped) as the comma-separated elements of `requests`, in
    pieces of about `size` bytes (a piece ends at a line's end)."""
    piece, first = bytearray(), True
    for raw in f:
        line = raw.strip()
        if not line:
            continue
        if not first:
            piece += b","
        piece += line
        first = False
        if len(piece) >= size:
            yield bytes(piece)
            piece.clear()
    if piece:
        yield bytes(piece)


def _body_length(path: Path) -> int:
    with path.open("rb") as f:
        return len(HEAD) + sum(len(p) for p in _requests_of(f, PIECE)) + len(TAIL)


class NotReached(ProviderTransportError):
    """No connection was made (refused, no such host, TLS): the request was not sent."""


class LaneClient:
    """One lane's upstream Batch API over `http` (the lane's own client: file streams must not hold the
    call pool's connections). Ids are the upstream's (OpenAI `batch_...`, Anthropic `msgbatch_...`)."""

    def __init__(self, provider: ProviderConfig, http: httpx.AsyncClient) -> None:
        if provider.kind == "chat":
            raise ValueError(f"provider {provider.name!r} is not a lane (kind = \"chat\")")
        self.provider, self.http, self.kind = provider, http, provider.kind
        self.openai = provider.kind == "openai-batch"
        self.base = provider.base_url.rstrip("/")
        self.batches = self.base + ("/v1/batches" if self.openai else "/v1/messages/batches")

    # --- the one request and its errors ---

    def _headers(self, key: str | None, *, json: bool) -> dict[str, str]:
        headers = request_headers(self.provider, "chat" if self.openai else "messages", key)
        if not json:
            headers.pop("content-type", None)
        return headers

    def _failed(self, what: str, resp: httpx.Response, content: bytes, key: str | None) -> ProviderHTTPError:
        try:  # the upstream's own words: {"error": {"message"}} (both APIs), or {"error": "..."}
            said: Any = orjson.loads(content).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            said = None
        said = said.get("message") if isinstance(said, dict) else said
        said = said if isinstance(said, str) else ""
        text = f"{what}: HTTP {resp.status_code}" + (f": {str(said)[:MAX_MESSAGE]}" if said else "")
        return ProviderHTTPError(self.provider.name, _redact(text, key), status=resp.status_code,
                                 body=_error_body(content, key), headers=dict(resp.headers))

    def _transport(self, what: str, e: httpx.TransportError, key: str | None) -> ProviderTransportError:
        if isinstance(e, httpx.TimeoutException):
            return ProviderTimeout(self.provider.name, _redact(f"{what}: timeout ({type(e).__name__})", key))
        kind = NotReached if isinstance(e, httpx.ConnectError) else ProviderTransportError
        return kind(self.provider.name, _redact(f"{what}: {type(e).__name__}: {e}", key))

    async def _call(self, what: str, method: str, url: str, *, json: Any = None, **kw: Any) -> httpx.Response:
        """One request; its response when 2xx, else the error a failed call raises."""
        key = usable_key(self.provider)
        headers = {**self._headers(key, json=json is not None), **kw.pop("headers", {})}
        if json is not None:
            kw["content"] = orjson.dumps(json)
        try:
            resp = await self.http.request(method, url, headers=headers, **kw)
        except httpx.TransportError as e:
            raise self._transport(what, e, key) from None
        if not 200 <= resp.status_code < 300:
            raise self._failed(what, resp, resp.content, key)
        return resp

    def _json(self, what: str, resp: httpx.Response) -> dict[str, Any]:
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ProviderBadResponse(self.provider.name, f"{what}: the answer is not a JSON object",
                                      status=resp.status_code, headers=dict(resp.headers))
        return data

    def _state(self, what: str, resp: httpx.Response) -> UpstreamState:
        try:
            return upstream_state(self.kind, self._json(what, resp))
        except ValueError as e:
            raise ProviderBadResponse(self.provider.name, f"{what}: {e}", status=resp.status_code,
                                      headers=dict(resp.headers)) from None

    def _batch_url(self, upstream_id: str, tail: str = "") -> str:
        return f"{self.batches}/{quote(upstream_id, safe='')}{tail}"

    # --- files (openai-batch) ---

    async def upload(self, filename: str, path: Path) -> str:
        """Upload the JSONL input file (purpose `batch`) as `filename`, read from disk as it is sent;
        its file id. openai-batch only (a Message Batch carries its requests: `create`)."""
        if not self.openai:
            raise ValueError("anthropic-batch has no files: its requests go with create")
        with path.open("rb") as f:
            resp = await self._call(f"upload {filename}", "POST", self.base + "/v1/files", data={"purpose": "batch"},
                                    files={"file": (filename, f, "application/jsonl")})
        file_id = self._json("upload", resp).get("id")
        if not isinstance(file_id, str) or not file_id:
            raise ProviderBadResponse(self.provider.name, "upload: the answer has no file id", status=resp.status_code)
        return file_id

    async def find_file(self, filename: str) -> str | None:
        """The newest uploaded file (purpose `batch`) named `filename`: an upload a crash cut off before
        its id was recorded. None when there is none (and always for anthropic-batch: no files)."""
        if not self.openai:
            return None
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = {"purpose": "batch", **({"after": after} if after else {})}
            page = self._json("list files", await self._call("list files", "GET", self.base + "/v1/files",
                                                             params=params))
            files = [f for f in page.get("data") or [] if isinstance(f, dict)]
            named = [f for f in files if f.get("filename") == filename and isinstance(f.get("id"), str)]
            if named:
                return str(max(named, key=lambda f: f.get("created_at") or 0)["id"])
            if not page.get("has_more") or not files:
                return None
            after = str(files[-1].get("id"))
        return None

    async def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file; one already gone (404) is done too. anthropic-batch: nothing to do."""
        if not self.openai:
            return
        try:
            await self._call(f"delete file {file_id}", "DELETE", f"{self.base}/v1/files/{quote(file_id, safe='')}")
        except ProviderHTTPError as e:
            if e.status != 404:
                raise

    # --- batches ---

    async def create(self, *, pid: str, batch_id: str, path: Path, endpoint: str, file_id: str | None
                     ) -> UpstreamState:
        """Create the upstream batch of parcel `pid`. openai-batch: from the uploaded `file_id`, for
        `endpoint`, tagged with the parcel and batch in its metadata (found again by `list_recent`
        after a crash); anthropic-batch: its requests streamed from `path` (lane_wire.request_line's
        lines), which carries no metadata."""
        what = f"create the batch of {pid}"
        if self.openai:
            if not file_id:
                raise ValueError("openai-batch: create needs the uploaded file's id")
            body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": COMPLETION_WINDOW,
                    "metadata": {"batchrelay_parcel": pid, "batchrelay_batch": batch_id}}
            return self._state(what, await self._call(what, "POST", self.batches, json=body))
        length = await asyncio.to_thread(_body_length, path)
        resp = await self._call(what, "POST", self.batches, content=self._message_batch(path),
                                headers={"content-type": "application/json", "content-length": str(length)})
        return self._state(what, resp)

    async def _message_batch(self, path: Path) -> AsyncIterator[bytes]:
        """`{"requests": [...]}` from the file's lines, read in a thread a piece at a time."""
        yield HEAD
        with path.open("rb") as f:
            pieces = _requests_of(f, PIECE)
            while piece := await asyncio.to_thread(next, pieces, b""):
                yield piece
        yield TAIL

    async def get(self, upstream_id: str) -> UpstreamState:
        what = f"get batch {upstream_id}"
        return self._state(what, await self._call(what, "GET", self._batch_url(upstream_id)))

    async def list_recent(self, since: float) -> list[UpstreamState]:
        """The upstream batches created at or after `since` (unix time), newest first, paging back
        until one is older. Times the upstream rounds down to the second (OpenAI's) are compared as
        such: a batch of the same second as `since` is listed."""
        floor = int(since)
        out: list[UpstreamState] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"limit": PAGE}
            if cursor:
                params["after" if self.openai else "after_id"] = cursor
            page = self._json("list batches", await self._call("list batches", "GET", self.batches, params=params))
            items = [i for i in page.get("data") or [] if isinstance(i, dict)]
            for item in items:
                try:
                    state = upstream_state(self.kind, item)
                except ValueError:
                    continue
                if state.created_at is not None and state.created_at < floor:
                    return out
                out.append(state)
            if not page.get("has_more") or not items:
                return out
            cursor = str(items[-1].get("id"))
        return out

    async def list_page(self, limit: int = 1) -> dict[str, Any]:
        """The first page of the upstream's batches (`providers check`: the key and the API answer)."""
        resp = await self._call("list batches", "GET", self.batches, params={"limit": limit})
        page = self._json("list batches", resp)
        if not isinstance(page.get("data"), list):
            raise ProviderBadResponse(self.provider.name, "list batches: the answer has no batch list",
                                      status=resp.status_code)
        return page

    async def cancel(self, upstream_id: str) -> UpstreamState:
        """Cancel the upstream batch; its state (`cancelling`/`canceling` until it has stopped). One
        that has already ended (OpenAI answers 409) is not an error: its state is returned."""
        what = f"cancel batch {upstream_id}"
        try:
            return self._state(what, await self._call(what, "POST", self._batch_url(upstream_id, "/cancel")))
        except ProviderHTTPError as e:
            if e.status not in (400, 409):
                raise
            state = await self.get(upstream_id)
            if not state.ended:
                raise
            return state

    # --- results ---

    def _results_urls(self, state: UpstreamState) -> list[tuple[str, str]]:
        if self.openai:
            return [(f"read file {fid}", f"{self.base}/v1/files/{quote(fid, safe='')}/content")
                    for fid in (state.output_file_id, state.error_file_id) if fid]
        url = self._batch_url(state.id, "/results")
        if state.results_url:
            given = httpx.URL(state.results_url)
            if given.is_absolute_url and _origin(given) == _origin(httpx.URL(self.base)):
                url = state.results_url
        return [(f"read the results of {state.id}", url)]

    async def results(self, state: UpstreamState) -> AsyncIterator[bytes]:
        """The result lines of an ended upstream batch (without their newlines, blank ones skipped):
        openai-batch its output file, then its error file; anthropic-batch its results."""
        for what, url in self._results_urls(state):
            async for line in self._lines(what, url):
                yield line

    async def _lines(self, what: str, url: str) -> AsyncIterator[bytes]:
        key = usable_key(self.provider)
        rest = bytearray()  # a line not yet ended (a long one spans many chunks: grown in place)
        try:
            async with self.http.stream("GET", url, headers=self._headers(key, json=False)) as resp:
                if not 200 <= resp.status_code < 300:
                    raise self._failed(what, resp, await resp.aread(), key)
                async for chunk in resp.aiter_bytes():
                    rest += chunk
                    if b"\n" not in chunk:
                        continue
                    *lines, tail = bytes(rest).split(b"\n")
                    rest = bytearray(tail)
                    for line in lines:
                        if line.strip():
                            yield line
        except httpx.TransportError as e:
            raise self._transport(what, e, key) from None
        if rest.strip():
            yield bytes(rest)
