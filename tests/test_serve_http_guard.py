"""`batchrelay serve`'s connection limits (issue 14, item 1), over raw sockets to a real serve: a
head past `max_header_kb` gets 431 with memory flat, heads that do not arrive within
`header_timeout_s` are closed, connections past `max_connections` are refused; keep-alive and
pipelining still work (serve/http_guard.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from batchrelay.serve.http_guard import ATTRIBUTES, METHODS, Limits, guarded_protocol

from .servekit import KEY, Api, poll, serving

GET = f"GET /v1/batches HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
MB = 1024 * 1024


def connect(api: Api) -> socket.socket:
    host, port = api.base.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def read_response(sock: socket.socket, buf: bytes = b"") -> tuple[int, bytes, bytes]:
    """One response (status, body) from `sock`, and what was read past it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response; got {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    size = int(headers["content-length"])
    while len(rest) < size:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a response"
        rest += chunk
    return int(lines[0].split()[1]), rest[:size], rest[size:]


def until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection; socket.timeout if it does not in time."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    sock.close()
    return data


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """The process's RSS before ([0]) and its peak while the block ran ([1]), sampled every 10 ms."""
    proc = psutil.Process(pid)
    seen = [proc.memory_info().rss] * 2
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            seen[1] = max(seen[1], proc.memory_info().rss)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def test_a_50_mb_header_gets_431_with_memory_flat_and_keep_alive_and_pipelining_still_work(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, serve_extra="max_header_kb = 4", worker=False) as api:
        sock = connect(api)
        with peak_rss(api.pid) as rss:
            sock.sendall(b"GET /v1/batches HTTP/1.1\r\nHost: relay\r\nX-Big: ")

            def flood() -> None:
                with contextlib.suppress(OSError):  # the server ends the connection part way
                    for _ in range(50):
                        sock.sendall(b"a" * MB)

            sender = threading.Thread(target=flood)
            sender.start()
            answer = until_closed(sock, 30)
            sender.join()
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert b"\r\nconnection: close\r\n" in answer and b"at most 4 KB" in answer
        assert rss[1] - rss[0] < 30 * MB, f"RSS grew {(rss[1] - rss[0]) / MB:.0f} MB"

        assert api.request("GET", "/v1/batches").status_code == 200
        # A head just under the cap passes; one over it on a kept-alive connection gets 431.
        kept = connect(api)
        kept.sendall(GET.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 3500 + b"\r\n\r\n"))
        status, _, rest = read_response(kept)
        assert status == 200 and rest == b""
        kept.sendall(GET.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 5000 + b"\r\n\r\n"))
        assert until_closed(kept, 10).startswith(b"HTTP/1.1 431 ")
        # A request, then an over-long head, in one write: the request is answered, then 431.
        with connect(api) as s:
            s.sendall(GET + b"GET /v1/batches HTTP/1.1\r\nX-Big: " + b"b" * 100_000)
            status, _, rest = read_response(s)
            assert status == 200
            assert (rest + until_closed(s, 10)).startswith(b"HTTP/1.1 431 ")

        # Keep-alive and pipelining: a POST whose 300 KB body is far past the head cap, then two GETs,
        # in one write; then one more request on the same connection.
        body = b'{"pad": "' + b"x" * 300_000 + b'"}'
        post = (f"POST /v1/batches HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        with connect(api) as s:
            s.sendall(post + GET + GET)
            first, _, rest = read_response(s)
            assert first == 400  # the body is no batch request; its answer comes first, in turn
            second, _, rest = read_response(s, rest)
            third, _, rest = read_response(s, rest)
            assert (second, third, rest) == (200, 200, b"")
            s.sendall(GET)
            assert read_response(s)[0] == 200


def test_heads_that_do_not_arrive_in_time_are_closed_while_keyed_requests_are_answered(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, serve_extra="header_timeout_s = 1", worker=False) as api:
        halves = [connect(api) for _ in range(50)]
        for s in halves:
            s.sendall(b"GET /v1/batches HTTP/1.1\r\nHost: relay\r\nX-Half: ")
        silent = connect(api)
        trickle = connect(api)

        def drip() -> None:  # a byte every 0.2 s: each read is quick, the head never ends
            with contextlib.suppress(OSError):
                for c in b"GET /v1/batches HTTP/1.1\r\nX-Slow: " + b"s" * 200:
                    trickle.send(bytes([c]))
                    time.sleep(0.2)

        dripper = threading.Thread(target=drip)
        dripper.start()
        assert api.request("GET", "/v1/batches").status_code == 200  # while they hang
        started = time.monotonic()
        answers = [until_closed(s, 15) for s in halves]
        assert all(a.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for a in answers)
        assert until_closed(silent, 15) == b""  # nothing asked, nothing answered: closed
        assert until_closed(trickle, 15).startswith(b"HTTP/1.1 408 ")
        dripper.join()
        assert time.monotonic() - started < 12
        assert api.openai().batches.list().data == []


def test_connections_past_max_connections_are_refused_until_others_close(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, serve_extra="max_connections = 5\nheader_timeout_s = 60",
                 worker=False) as api:
        held = []
        for _ in range(5):
            s = connect(api)
            s.sendall(GET)
            assert read_response(s)[0] == 200
            s.sendall(b"GET /v1/batches HTTP/1.1\r\n")  # the next head, unfinished: the connection stays
            held.append(s)
        for _ in range(3):
            answer = until_closed(connect(api), 10)
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"connection: close" in answer
        with pytest.raises((openai.APIStatusError, openai.APIConnectionError)):
            api.openai().batches.list()
        for s in held:
            s.close()

        def answered() -> int:
            try:
                return api.request("GET", "/v1/batches").status_code
            except httpx.HTTPError:
                return 0

        assert poll(answered, lambda status: status == 200, timeout=10) == 200
        client = api.openai()  # one kept-alive connection for several requests
        for _ in range(5):
            assert client.batches.list().data == []


def test_a_body_that_ends_after_an_early_answer_does_not_keep_the_connection_for_ever(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, worker=False) as api:
        s = connect(api)
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: relay\r\nContent-Length: 10\r\n\r\n")
        assert read_response(s)[0] == 401  # no key: answered before the body
        s.sendall(b"0123456789")
        assert until_closed(s, 20) == b""  # uvicorn's keep-alive timeout (5 s) closes it


def test_the_uvicorn_hooks_the_guard_overrides_still_exist() -> None:
    """http_guard.py subclasses uvicorn's HttpToolsProtocol: if an upgrade renames what it hooks, fail here."""
    for name in METHODS:
        assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn's HttpToolsProtocol lost {name}"

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    cls = guarded_protocol(Limits(max_connections=5, max_head_bytes=4096, head_timeout_s=1))
    loop = asyncio.new_event_loop()
    try:
        state = ServerState()
        proto = cls(config=Config(app=app, http=cls, ws="none", log_config=None), server_state=state,
                    app_state={}, _loop=loop)
        for name in ATTRIBUTES:
            assert hasattr(proto, name), f"uvicorn's HttpToolsProtocol no longer sets {name}"
        assert proto.connections is state.connections and proto.limits.max_head_bytes == 4096
    finally:
        loop.close()
