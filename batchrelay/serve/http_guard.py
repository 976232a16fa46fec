"""The connection limits of `batchrelay serve`: uvicorn's httptools protocol with three guards added.

- A request's head (request line + headers) may be at most `[serve] max_header_kb`: past it the
  client gets `431 Request Header Fields Too Large` (plain text, `Connection: close`) and the
  connection ends. httptools keeps a header value in one Python bytes object however long it grows
  (and copies it on every read), so the bytes are counted as they are fed to the parser, not in
  `on_header`: memory per connection stays within the cap plus one read (256 KiB).
- A head must arrive within `header_timeout_s`, counted from when the connection opens (one that
  sends nothing) and from the first byte of each further request: else `408 Request Timeout` (or a
  plain close when nothing of a request came) and the connection ends. Idle keep-alive connections
  between requests are uvicorn's own keep-alive timer's.
- At most `max_connections` are open at once: one more gets `503 Service Unavailable` and is closed
  at once. (uvicorn's `limit_concurrency` answers 503 only after reading a head, and keeps the
  connection.)

After a 431 or 408 the connection half-closes and drops what the client still sends, for up to LINGER_S
or LINGER_BYTES, before closing: closing a socket with unread data resets it, and the client could
lose the answer.

This leans on uvicorn's internals (its protocol's parser callbacks and per-connection state), so
pyproject.toml pins the uvicorn versions it was tested with and tests/test_serve_http_guard.py checks
that every hook and attribute used here still exists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from batchrelay.config.serve import ServeConfig

LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024

# What this module uses of uvicorn's HttpToolsProtocol (the test checks they exist): the methods it
# overrides or calls, and the attributes it reads or sets on an instance.
METHODS = ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_headers_complete",
           "on_message_complete", "on_response_complete", "timeout_keep_alive_handler")
ATTRIBUTES = ("connections", "transport", "loop", "cycle", "pipeline", "timeout_keep_alive",
              "timeout_keep_alive_task")


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    max_head_bytes: int
    head_timeout_s: float

    @classmethod
    def of(cls, cfg: ServeConfig) -> Limits:
        return cls(cfg.max_connections, cfg.max_header_kb * 1024, cfg.header_timeout_s)


def guarded_protocol(limits: Limits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), with these limits."""
    chosen = limits

    class Configured(GuardedHttpToolsProtocol):
        limits = chosen

    return Configured


def _plain(status: int, message: str) -> bytes:
    body = message.encode()
    return (STATUS_LINE[status] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body))


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = Limits.of(ServeConfig())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A head is "open" from the end of the request before (or the connection's start) until
        # on_headers_complete; `_head_bytes` counts what was fed to the parser while it was open.
        self._head_open = True
        self._head_bytes = 0
        self._head_seen = False  # any byte of the open head has arrived
        self._head_closed_in_piece = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._refused = False
        self._refusal = b""  # an answer of ours waiting for the responses to the requests before
        self._linger_after = True
        self._dropped = 0

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # refused: not one of the open connections
            self._refuse(503, "Too many connections: try again later.", linger=False)
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # refused: what still comes is dropped
            if self._refusal:
                self.transport.pause_reading()  # until the answers before ours are out
                return
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        pos, end = 0, len(data)
        while pos < end:
            if self._head_open:
                self._head_seen = True
                if self._head_timer is None:
                    self._arm_head_timer()
                room = max(1, self.limits.max_head_bytes - self._head_bytes)  # never more than the cap allows
                stop = min(end, pos + room)
            else:
                stop = end
            piece = data if pos == 0 and stop == end else data[pos:stop]
            pos = stop
            head_was_open, self._head_closed_in_piece = self._head_open, False
            super().data_received(piece)
            if self.transport.is_closing():
                return
            if head_was_open and self._head_open and not self._head_closed_in_piece:
                # The whole piece belongs to one head. (A head that began inside a piece, after the body
                # of the request before, is counted from the next piece: at most one read more.)
                self._head_bytes += len(piece)
                if self._head_bytes >= self.limits.max_head_bytes:
                    kb = self.limits.max_head_bytes // 1024
                    self._refuse(431, f"Request header fields too large: a request's line and headers may be "
                                      f"at most {kb} KB.")
                    return
        self._keep_idle_timer()

    # parser callbacks (httptools calls them while data_received feeds it)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = self._head_seen = True
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_open = self._head_seen = False
        self._head_closed_in_piece = True
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open = True

    def on_response_complete(self) -> None:  # uvicorn's, when a response has gone out
        super().on_response_complete()
        if self._refusal and not self._answering() and not self.transport.is_closing():
            self._send_refusal()

    # timers

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_open or self._refused or self.transport.is_closing():
            return
        if self._answering():
            # Still answering the request before (pipelined, or the client sent its next head early):
            # the head waits on us, not on the client; its time starts again.
            self._arm_head_timer()
        elif self._head_seen:
            self._refuse(408, "Request timeout: the request's line and headers did not arrive in time.")
        else:
            self.transport.close()  # nothing of a request came: nothing to answer

    def _keep_idle_timer(self) -> None:
        """uvicorn arms its keep-alive timer when a response ends and disarms it on any data. When the
        response ended before the request's body did (an early 401, say), the rest of the body disarms
        it and nothing arms it again: the connection would idle for ever. Arm it again then."""
        idle = self._head_open and not self._head_seen and self._head_timer is None
        if (idle and self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing()
                and self.timeout_keep_alive_task is None):
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    # answers of our own

    def _answering(self) -> bool:
        """A response to an earlier request is going out, or one is queued (pipelined)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse(self, status: int, message: str, *, linger: bool = True) -> None:
        """Answer `status` once the requests before are answered, reading nothing more meanwhile; then close."""
        self._refused = True
        self._cancel_head_timer()
        self._refusal, self._linger_after = _plain(status, message), linger
        if self._answering():
            self.transport.pause_reading()
        else:
            self._send_refusal()

    def _send_refusal(self) -> None:
        answer, self._refusal = self._refusal, b""
        self.transport.write(answer)
        if self._linger_after and self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
