"""The upload form of OpenAI's `POST /v1/files`, read by python-multipart as it streams in: the file
part goes straight to disk, reading stops at the closing boundary, and the other form fields are
few and small (UploadTooLarge past MAX_FORM_FIELDS / MAX_FIELDS_BYTES: a 413)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from batchrelay.errors import UploadError, UploadTooLarge
from batchrelay.serve.shared import clip

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024  # room for the form's own bytes (boundaries, part headers) beside the file
MAX_FIELD_BYTES = 64 * 1024
MAX_FORM_FIELDS = 16  # parts besides the file (the SDKs send one: `purpose`)
MAX_FIELDS_BYTES = 256 * 1024  # all of them together


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
            raise UploadError(f"form field {clip(self._name)!r} is too long")
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
