"""Request bodies `serve` refuses (issue #14: items 2, 3, 9 and 11), against a real `batchrelay serve`:
JSON bodies past `[serve] max_json_kb` and uploads or message batches past `[serve] max_upload_mb` get
413 before they are read, a body silent for `[serve] body_timeout_s` gets 408, and every body not read
to its end closes its connection (the rest is never read); the upload form's parameters are parsed
strictly; a message batch's body streams in flat memory, at most `[serve] max_batch_requests`
requests, and a custom_id Anthropic would refuse errors its own line only."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from .conftest import openai_line
from .servekit import KEY, Api, anthropic_request, jsonl, poll, serving

LIMITS = "max_json_kb = 4\nmax_upload_mb = 1\nbody_timeout_s = 1\nmax_batch_requests = 5\n"
JUNK = b"\r\n--XyZ\r\njunk after the end " * 2000  # ~64 KiB


@pytest.fixture
def api(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Api]:
    with serving(tmp_path, redis_url, prefix, serve_extra=LIMITS) as a:
        yield a


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class Counted:
    """A request body sent as it is asked for: `head`, then `piece` up to `times` times (`sent` counts them)."""

    def __init__(self, head: bytes, piece: bytes, times: int) -> None:
        self.head, self.piece, self.times, self.sent = head, piece, times, 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for _ in range(self.times):
            self.sent += 1
            yield self.piece


def part(name: str, value: bytes, filename: str | None = None, boundary: bytes = b"XyZ",
         disposition: bytes | None = None) -> bytes:
    disposition = disposition or (b'form-data; name="' + name.encode() + b'"'
                                  + (b'; filename="' + filename.encode() + b'"' if filename else b""))
    return b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"


def form(data: bytes, boundary: bytes = b"XyZ", file_disposition: bytes | None = None) -> bytes:
    return (part("purpose", b"batch", boundary=boundary)
            + part("file", data, "in.jsonl", boundary, file_disposition) + b"--" + boundary + b"--\r\n")


def post(api: Api, path: str, content: Any, ctype: str = "multipart/form-data; boundary=XyZ",
         **headers: str) -> httpx.Response:
    return httpx.post(api.base + path, content=content, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": ctype, **headers})


def send_part_of(api: Api, path: str, ctype: str, declared: int, body: bytes) -> tuple[int, dict[str, Any], bool]:
    """Send a request's head and the first bytes of its body, then nothing: (status, JSON answer,
    whether the server closed the connection after it)."""
    port = int(api.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: {ctype}\r\nContent-Length: {declared}\r\n\r\n".encode() + body)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            assert got, "no answer"
            closed = False
        else:
            closed = True
    head, _, answer = got.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(answer), closed


def test_a_json_body_over_max_json_kb_gets_413_before_it_is_read(api: Api) -> None:
    body = orjson.dumps({"input_file_id": "file-x" * 1000, "endpoint": "/v1/chat/completions",
                         "completion_window": "24h"})
    r = post(api, "/v1/batches", body, "application/json")  # its Content-Length says it is too large
    assert r.status_code == 413, r.text
    assert r.json() == {"error": {"message": "The request body is over 4 KiB ([serve] max_json_kb).",
                                  "type": "invalid_request_error", "param": None, "code": None}}
    assert r.headers["connection"] == "close"

    junk = Counted(b"not JSON at all ", b"x" * 65536, 3200)  # 200 MiB, chunked: no Content-Length
    r = post(api, "/v1/batches", junk, "application/json")
    assert r.status_code == 413 and "[serve] max_json_kb" in r.json()["error"]["message"]  # counted, not parsed
    assert r.headers["connection"] == "close" and junk.sent < 800  # the rest was never read

    small = api.openai().files.create(file=("in.jsonl", jsonl([openai_line(1)])), purpose="batch")
    assert api.openai().batches.create(input_file_id=small.id, endpoint="/v1/chat/completions",
                                       completion_window="24h").status in ("validating", "in_progress")


def test_a_body_silent_for_body_timeout_s_gets_408_and_its_connection_closed(api: Api) -> None:
    status, answer, closed = send_part_of(api, "/v1/batches", "application/json", 100, b'{"endpoint": ')
    assert (status, closed) == (408, True)
    assert answer == {"error": {"message": "The request body sent nothing for 1 s ([serve] body_timeout_s).",
                                "type": "invalid_request_error", "param": None, "code": None}}

    status, answer, closed = send_part_of(api, "/v1/messages/batches", "application/json", 10_000,
                                          b'{"requests": [')
    assert (status, closed) == (408, True)
    assert answer["error"]["type"] == "invalid_request_error" and "body_timeout_s" in answer["error"]["message"]
    assert answer["type"] == "error"


def test_an_upload_that_stops_halfway_gets_408_and_leaves_no_part_file(api: Api) -> None:
    body = form(jsonl([openai_line(i) for i in range(200)]))
    status, answer, closed = send_part_of(api, "/v1/files", "multipart/form-data; boundary=XyZ", len(body),
                                          body[: len(body) // 2])
    assert (status, closed) == (408, True)
    assert "[serve] body_timeout_s" in answer["error"]["message"]
    assert not list(api.files_dir.glob("*.part")) and not list(api.files_dir.glob("*.jsonl"))
    assert list(api.openai().files.list()) == []


def test_what_follows_the_closing_boundary_is_never_read(api: Api) -> None:
    before = peak_rss_mb(api.pid)
    data = jsonl([openai_line(1)])
    junk = Counted(form(data), JUNK, 3200)  # then 200 MiB of junk, chunked
    r = post(api, "/v1/files", junk)
    assert r.status_code == 200, r.text
    assert r.headers["connection"] == "close" and junk.sent < 800
    assert api.openai().files.content(r.json()["id"]).content == data
    assert peak_rss_mb(api.pid) - before < 50


def test_thousands_of_extra_form_fields_get_413_at_the_first_past_the_limit(api: Api) -> None:
    fields = Counted(b"", part("extra", b"x" * 60_000), 7_500)  # 450 MB of small fields, chunked
    r = post(api, "/v1/files", fields)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"] in ("the form has more than 16 fields",
                                            "the form fields are over 256 KiB together")
    assert r.headers["connection"] == "close" and fields.sent < 800
    assert not list(api.files_dir.glob("*.part"))


def test_an_upload_over_max_upload_mb_gets_413(api: Api) -> None:
    big = jsonl([openai_line(i) for i in range(20_000)])
    assert len(big) > 2**20
    with pytest.raises(openai.APIStatusError) as e:  # the SDK sends a Content-Length: refused before reading
        api.openai().files.create(file=("big.jsonl", big), purpose="batch")
    assert e.value.status_code == 413
    assert "the upload is over 1 MiB ([serve] max_upload_mb)" in str(e.value)
    streamed = Counted(form(big)[: len(big) // 2], b"x" * 65536, 3200)  # chunked: refused as it passes 1 MiB
    r = post(api, "/v1/files", streamed)
    assert r.status_code == 413 and r.headers["connection"] == "close" and streamed.sent < 800
    assert not list(api.files_dir.glob("*.part"))
    assert api.openai().files.create(file=("small.jsonl", big[:500_000]), purpose="batch").bytes == 500_000


def test_multipart_parameters_are_parsed_strictly(api: Api) -> None:
    data = jsonl([openai_line(1)])
    for ctype, boundary in (("multipart/form-data; xboundary=BB; boundary=ZZ", b"ZZ"),
                            ('Multipart/Form-Data; BOUNDARY="ZZ"', b"ZZ"),
                            ("multipart/form-data ; ; boundary=ZZ;", b"ZZ")):
        r = post(api, "/v1/files", form(data, boundary), ctype)
        assert r.status_code == 200, (ctype, r.text)
    for ctype, boundary, says in (("multipart/form-data; xboundary=BB; boundary=ZZ", b"BB", "malformed"),
                                  ("multipart/form-data; boundary=ZZ; boundary=BB", b"BB", "'boundary' parameter twice"),
                                  ("multipart/form-data; boundary=ZZ; Boundary=ZZ", b"ZZ", "'boundary' parameter twice"),
                                  ("multipart/form-data; boundary=ZZ junk", b"ZZ", "Content-Type header is malformed"),
                                  ("multipart/form-data; boundary", b"ZZ", "Content-Type header is malformed")):
        r = post(api, "/v1/files", form(data, boundary), ctype)
        assert r.status_code == 400, (ctype, r.text)
        assert says in r.json()["error"]["message"], (ctype, r.text)

    r = post(api, "/v1/files", form(data, file_disposition=b'form-data; xname="purpose"; name="file"; '
                                                         b'xfilename="x"; filename="in.jsonl"'))
    assert r.status_code == 200, r.text
    assert api.openai().files.content(r.json()["id"]).content == data
    r = post(api, "/v1/files", form(data, file_disposition=b'form-data; name="file"; name="purpose"; '
                                                         b'filename="in.jsonl"'))
    assert r.status_code == 400 and "'name' parameter twice" in r.json()["error"]["message"]
    assert not list(api.files_dir.glob("*.part"))


def test_a_message_batch_over_max_upload_mb_gets_413(api: Api) -> None:
    client = api.anthropic()
    big = [{**anthropic_request(i), "params": {**anthropic_request(i)["params"], "system": "s" * 400_000}}
           for i in range(3)]
    with pytest.raises(anthropic.RequestTooLargeError) as e:
        client.messages.batches.create(requests=big)  # type: ignore[arg-type]
    assert e.value.status_code == 413
    assert e.value.body == {"type": "error", "error": {
        "type": "request_too_large", "message": "The request body is over 1 MiB ([serve] max_upload_mb)."}}
    streamed = Counted(b'{"requests": [' + orjson.dumps(big[0]) + b",", b" " * 65536, 3200)  # chunked
    r = post(api, "/v1/messages/batches", streamed, "application/json")
    assert r.status_code == 413 and r.headers["connection"] == "close" and streamed.sent < 800
    assert list(client.messages.batches.list()) == []


def test_more_requests_than_max_batch_requests_get_400_naming_the_setting(api: Api) -> None:
    client = api.anthropic()
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=[anthropic_request(i) for i in range(6)])  # type: ignore[misc]
    assert e.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "requests: at most 5 per batch ([serve] max_batch_requests)"}}
    assert list(client.messages.batches.list()) == []
    assert client.messages.batches.create(requests=[anthropic_request(i) for i in range(5)]).request_counts  # type: ignore[misc]


def test_a_custom_id_anthropic_would_refuse_errors_its_line_and_the_others_run(api: Api) -> None:
    client = api.anthropic()
    long_id, bad_id = "a" * 100_000, "not ok!"
    requests = [anthropic_request(0), {**anthropic_request(1), "custom_id": long_id},
                {**anthropic_request(2), "custom_id": bad_id}, {**anthropic_request(3), "custom_id": "x" * 64}]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    done = poll(lambda: client.messages.batches.retrieve(batch.id), lambda b: b.processing_status == "ended")
    assert (done.request_counts.succeeded, done.request_counts.errored) == (2, 2)
    results = list(client.messages.batches.results(batch.id))
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["m-0"].type == by_id["x" * 64].type == "succeeded"
    cut = "a" * 64 + "…"  # the record keeps only the id's start
    assert set(by_id) == {"m-0", "x" * 64, cut, bad_id}
    for custom_id, says in ((cut, "custom_id is 100,000 characters long, over Anthropic's limit of 64"),
                            (bad_id, "custom_id may only have letters, digits, _ and -")):
        result = by_id[custom_id]
        assert result.type == "errored" and result.error.error.type == "invalid_request_error"
        assert says in result.error.error.message
    assert "first 64 characters" in by_id[cut].error.error.message  # type: ignore[union-attr]
    assert all(len(r.model_dump_json()) < 2000 for r in results)


def message_batch_body(n: int) -> bytes:
    return orjson.dumps({"requests": [
        {"custom_id": f"r-{i}", "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 64, "temperature": 0.7,
                                           "messages": [{"role": "user", "content": f"question {i} " * 8}]}}
        for i in range(n)]})


def test_a_large_message_batch_streams_in_flat_memory(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, worker=False) as api:  # default limits: 512 MiB, 100,000 requests
        # a small batch first: the submit's own blocks (store/submit.py) reach their size at any body size
        first = post(api, "/v1/messages/batches", message_batch_body(20_000), "application/json")
        assert first.status_code == 200, first.text
        body = message_batch_body(100_000)
        assert len(body) > 20 * 2**20
        before = peak_rss_mb(api.pid)
        r = post(api, "/v1/messages/batches", body, "application/json")
        assert r.status_code == 200, r.text
        assert r.json()["request_counts"]["processing"] == 100_000
        assert peak_rss_mb(api.pid) - before < 10  # MiB, for a body of 25
