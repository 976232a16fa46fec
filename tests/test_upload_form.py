"""The upload form of `serve` (POST /v1/files), read by python-multipart as it streams in: the file
part goes to disk in flat memory, reading stops at the closing boundary, and the other form fields
are few and small (UploadTooLarge past MAX_FORM_FIELDS / MAX_FIELDS_BYTES: a 413); the headers'
parameters are read strictly (header_params)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from batchrelay.errors import UploadError, UploadTooLarge
from batchrelay.serve.upload_form import MAX_FIELD_BYTES, MAX_FIELDS_BYTES, MAX_FORM_FIELDS, header_params, read_form

CTYPE = b"multipart/form-data; boundary=XyZ"


def field(name: str, value: bytes) -> bytes:
    return b'--XyZ\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n"


def file_part(payload: bytes, name: str = "file") -> bytes:
    return (b'--XyZ\r\nContent-Disposition: form-data; name="' + name.encode() + b'"; filename="a.jsonl"\r\n'
            b"Content-Type: application/jsonl\r\n\r\n" + payload + b"\r\n")


END = b"--XyZ--\r\n"


class Body:
    """An ASGI receive over `chunks` (an iterator: it may never end); counts the chunks handed out."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.taken = chunks, 0

    async def receive(self) -> dict[str, Any]:
        chunk = next(self.chunks, None)
        self.taken += 1
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}


async def read(chunks: Iterator[bytes] | Body, dest: Path, ctype: bytes = CTYPE, max_bytes: int = 2**30
               ) -> tuple[dict[str, str], str | None, int]:
    scope = {"type": "http", "method": "POST", "path": "/v1/files", "query_string": b"",
             "headers": [(b"content-type", ctype)]}
    return await read_form(Request(scope, (chunks if isinstance(chunks, Body) else Body(chunks)).receive), dest,
                           max_bytes)


@pytest.mark.parametrize("piece", [1, 7, 4096])
async def test_the_form_parser_takes_any_chunking(tmp_path: Path, piece: int) -> None:
    payload = b"line one\r\n--\r\nline two\r\n"
    body = field("purpose", b"batch") + file_part(payload) + END
    fields, filename, size = await read(iter([body[i:i + piece] for i in range(0, len(body), piece)]), tmp_path / "f")
    assert fields == {"purpose": "batch"} and filename == "a.jsonl" and size == len(payload)
    assert (tmp_path / "f").read_bytes() == payload


async def test_reading_stops_at_the_closing_boundary(tmp_path: Path) -> None:
    payload = b'{"a": 1}\r\n--XyZ-not-quite\r\n'
    head = field("purpose", b"batch") + file_part(payload) + END + b"junk in the same chunk\r\n--XyZ\r\n"
    body = Body(chain([head], repeat(b"junk after the end " * 1000, 50)))
    fields, filename, size = await read(body, tmp_path / "f")
    assert (fields, filename, size) == ({"purpose": "batch"}, "a.jsonl", len(payload))
    assert (tmp_path / "f").read_bytes() == payload
    assert body.taken == 1  # the junk chunks were never asked for


async def test_the_file_part_streams_to_disk_in_flat_memory(tmp_path: Path) -> None:
    piece = b'{"custom_id": "x", "body": {}}\n' * 2048  # 62 KiB a chunk, 62 MiB in all
    tracemalloc.start()
    try:
        fields, _, size = await read(chain([field("purpose", b"batch") + file_part(b"")[:-2]], repeat(piece, 1024),
                                           [b"\r\n" + END]), tmp_path / "f")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == len(piece) * 1024 == (tmp_path / "f").stat().st_size and fields == {"purpose": "batch"}
    assert peak < 2 * 2**20, peak


async def test_near_boundaries_inside_the_file_are_its_bytes(tmp_path: Path) -> None:
    piece = b"\r\n--XyZ-\r\n--Xy\r\n-\r\n--XyZ-x--\r\n--xyz\r\n--XyZX\r\n" * 1000
    body = field("purpose", b"batch") + file_part(piece * 20) + END
    for size in (7, 4096, len(body)):
        chunks = iter([body[i:i + size] for i in range(0, len(body), size)])
        assert (await read(chunks, tmp_path / "f"))[2] == len(piece) * 20
        assert (tmp_path / "f").read_bytes() == piece * 20


@pytest.mark.parametrize(("body", "error", "message"), [
    (b"".join(field(f"f{i}", b"x") for i in range(MAX_FORM_FIELDS + 1)) + file_part(b"{}") + END,
     UploadTooLarge, "more than"),
    (b"".join(field(f"f{i}", b"x" * (MAX_FIELD_BYTES - 10)) for i in range(MAX_FIELDS_BYTES // MAX_FIELD_BYTES + 1))
     + END, UploadTooLarge, "together"),
    (field("purpose", b"x" * (MAX_FIELD_BYTES + 1)) + END, UploadError, "too long"),
    (field("purpose", b"batch") + file_part(b"{}"), UploadError, "ended early"),
    (b"--XyZ\r\nContent-Type: text/plain\r\n\r\nbatch\r\n" + END, UploadError, "Content-Disposition"),
    (b"--XyZ\r\nContent Disposition: x\r\n\r\nbatch\r\n" + END, UploadError, "malformed"),
    (b"--NotXyZ\r\n" + END, UploadError, "malformed"),
    (field("purpose", b"batch") + b"--XyZ\r\n" + b"X-Filler: y\r\n" * 64 + b"\r\n" + END, UploadError, "malformed"),
], ids=["too-many-fields", "fields-too-large-together", "one-field-too-long", "no-closing-boundary",
        "no-disposition", "bad-header", "other-boundary", "too-many-headers"])
async def test_a_bad_form_is_refused(tmp_path: Path, body: bytes, error: type[UploadError], message: str) -> None:
    with pytest.raises(error, match=message) as exc:
        await read(iter([body[i:i + 1000] for i in range(0, len(body), 1000)]), tmp_path / "f")
    assert error is UploadTooLarge or not isinstance(exc.value, UploadTooLarge)


@pytest.mark.parametrize("ctype", [b"application/json", b"multipart/form-data", b"multipart/mixed; boundary=XyZ"])
async def test_only_a_multipart_form_with_a_boundary_is_read(tmp_path: Path, ctype: bytes) -> None:
    with pytest.raises(UploadError, match="multipart/form-data"):
        await read(iter([field("purpose", b"batch") + END]), tmp_path / "f", ctype)


async def test_only_the_first_file_part_goes_to_disk(tmp_path: Path) -> None:
    body = file_part(b"first") + file_part(b"second") + field("file2", b"x") + END
    fields, filename, size = await read(iter([body]), tmp_path / "f")
    assert (filename, size, (tmp_path / "f").read_bytes()) == ("a.jsonl", 5, b"first")
    assert fields == {"file": "second", "file2": "x"}


@pytest.mark.parametrize(("value", "expected"), [
    (b"multipart/form-data; boundary=ZZ", ("multipart/form-data", {"boundary": b"ZZ"})),
    (b"multipart/form-data; xboundary=BB; boundary=ZZ", ("multipart/form-data", {"xboundary": b"BB", "boundary": b"ZZ"})),
    (b'Multipart/Form-Data ;BOUNDARY="a;b=\\"c\\\\"', ("multipart/form-data", {"boundary": b'a;b="c\\'})),
    (b"multipart/form-data;; boundary=ZZ ;", ("multipart/form-data", {"boundary": b"ZZ"})),
    (b'form-data; name="file"; filename="r\xc3\xa9sum\xc3\xa9 1.jsonl"',
     ("form-data", {"name": b"file", "filename": "résumé 1.jsonl".encode()})),
    (b'form-data; xname="purpose"; name="file"', ("form-data", {"xname": b"purpose", "name": b"file"})),
])
def test_header_parameters_are_read_by_the_rfc_grammar(value: bytes, expected: tuple[str, dict[str, bytes]]) -> None:
    assert header_params(value, "Content-Type") == expected


@pytest.mark.parametrize(("value", "says"), [
    (b"multipart/form-data; boundary=ZZ; boundary=BB", "'boundary' parameter twice"),
    (b"multipart/form-data; boundary=ZZ; Boundary=ZZ", "'boundary' parameter twice"),
    (b"multipart/form-data; boundary=Z Z", "malformed"),
    (b"multipart/form-data; boundary", "malformed"),
    (b"multipart/form-data; boundary=", "malformed"),
    (b'multipart/form-data; boundary="ZZ', "malformed"),
    (b"multipart/form-data, boundary=ZZ", "malformed"),
    (b"multipart/form-data; b\xc3\xa9=ZZ", "malformed"),
    (b"", "malformed"),
])
def test_a_malformed_header_or_a_parameter_twice_is_refused(value: bytes, says: str) -> None:
    with pytest.raises(UploadError, match=says):
        header_params(value, "Content-Type")


async def test_a_file_over_its_limit_is_too_large(tmp_path: Path) -> None:
    body = field("purpose", b"batch") + file_part(b"x" * 1000) + END
    assert (await read(iter([body]), tmp_path / "f", max_bytes=1000))[2] == 1000
    with pytest.raises(UploadTooLarge, match=r"over 0.00095\d* MiB \(\[serve\] max_upload_mb\)"):
        await read(iter([body]), tmp_path / "f", max_bytes=999)
