"""The upload form of OpenAI's `POST /v1/files`, read by python-multipart as it streams in: the file
part goes straight to disk, reading stops at the closing boundary, and the other form fields are
few and small (UploadTooLarge past MAX_FORM_FIELDS / MAX_FIELDS_BYTES: a 413). The parameters of
Content-Type (`boundary`) and of each part's Content-Disposition (`name`, `filename`) are read by the
grammar of RFC 9110 §5.6.6, strictly: a malformed header or a parameter given twice is a 400."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from starlette.requests import Request

from batchrelay.errors import UploadError, UploadTooLarge
from batchrelay.serve.params import clip

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_HEADER_BYTES = 16 * 1024  # room for the form's own bytes (boundaries, part headers) beside the file
MAX_FIELD_BYTES = 64 * 1024
MAX_FORM_FIELDS = 16  # parts besides the file (the SDKs send one: `purpose`)
MAX_FIELDS_BYTES = 256 * 1024  # all of them together


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*+"'  # qdtext / quoted-pair, RFC 9110 §5.6.4
_VALUE = re.compile(rb"[ \t]*+(" + _TOKEN + rb"(?:/" + _TOKEN + rb")?)[ \t]*+")
_PARAMETER = re.compile(rb";[ \t]*+(?:(" + _TOKEN + rb")=(" + _TOKEN + rb"|" + _QUOTED + rb"))?[ \t]*+")
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)


def header_params(value: bytes, header: str) -> tuple[str, dict[str, bytes]]:
    """A header's value (lower case) and its parameters (names in lower case, values unquoted), as
    RFC 9110 §5.6.6 writes them: `type/subtype *( OWS ";" OWS [ name "=" ( token / quoted-string ) ] )`.
    UploadError naming `header` when it is malformed or gives a parameter twice."""
    m = _VALUE.match(value)
    if m is None:
        raise UploadError(f"the {header} header is malformed")
    params: dict[str, bytes] = {}
    at = m.end()
    while at < len(value):
        p = _PARAMETER.match(value, at)
        if p is None:
            raise UploadError(f"the {header} header is malformed")
        at = p.end()
        if p.group(1) is None:
            continue  # an empty parameter (`;;`) is allowed
        name, raw = p.group(1).decode().lower(), p.group(2)
        if name in params:
            raise UploadError(f"the {header} header gives its {name!r} parameter twice")
        params[name] = _QUOTED_PAIR.sub(rb"\1", raw[1:-1]) if raw.startswith(b'"') else raw
    return m.group(1).decode().lower(), params


class _Form:
    """python-multipart's callbacks for one upload: the first `file` part with a file name streams to
    `dest`, every other part is a small text field (at most MAX_FORM_FIELDS, MAX_FIELDS_BYTES in all)."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
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
        params = header_params(self._disposition, "Content-Disposition")[1]
        self._disposition = None
        self._name = params.get("name", b"").decode("utf-8", "replace")
        filename = params.get("filename")
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
            self.size += end - start
            if self.size > self.max_bytes:
                raise UploadTooLarge(too_large(self.max_bytes))
            self._sink.write(memoryview(data)[start:end])
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


def too_large(max_bytes: int) -> str:
    return f"the upload is over {max_bytes / 2**20:g} MiB ([serve] max_upload_mb)"


async def read_form(request: Request, dest: Path, max_bytes: int) -> tuple[dict[str, str], str | None, int]:
    """Stream a multipart/form-data body through python-multipart: the `file` part's bytes go to
    `dest`, small fields are returned, and reading stops at the closing boundary (what follows is
    never read). A file over `max_bytes`, or a body declared or found longer than it and the form's
    room, is UploadTooLarge. Returns (fields, the file's name or None when there was no file part, its size)."""
    given = request.headers.get("content-type", "")
    ctype, params = header_params(given.encode("latin-1"), "Content-Type") if given else ("", {})
    if ctype != "multipart/form-data" or not params.get("boundary"):
        raise UploadError("expected a multipart/form-data body")
    most = max_bytes + MAX_HEADER_BYTES + MAX_FIELDS_BYTES
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > most:
        raise UploadTooLarge(too_large(max_bytes))
    form, received = _Form(dest, max_bytes), 0
    try:
        parser = MultipartParser(params["boundary"], form.callbacks())
        async with contextlib.aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                received += len(chunk)
                if received > most:
                    raise UploadTooLarge(too_large(max_bytes))
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
