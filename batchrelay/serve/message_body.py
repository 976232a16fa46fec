"""The body of Anthropic's `POST /v1/messages/batches`, `{"requests": [{"custom_id", "params"}, ...]}`,
read from a file in flat memory however large it is (Anthropic allows 256 MB).

The body is walked, not parsed whole: a scan finds where each request starts and ends, and only one
request is held at a time. Each is checked (`{"custom_id": a string, "params": an object}` exactly)
and written, as its own bytes, as one line of a batch file: numbers and strings are never decoded
and re-encoded here, so they reach the batch as the client wrote them (the submit parses the lines
as it parses any batch file). Anything else is a BadParam naming the request (`requests.<index>`),
found before anything is submitted.
"""

from __future__ import annotations

import re
from typing import IO

import orjson

from batchrelay.serve.params import BadParam

PIECE = 1024 * 1024  # read this much of the body at a time
MAX_KEY = 1024  # bytes of a top-level key
# what is neither a bracket nor in a string, and whole strings: it stops at a bracket, at a string
# not ended in what is read yet, or at the end (possessive: no backtracking)
_RUN = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.S)
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
_SPACE = re.compile(rb"[ \t\r\n]*+")
_ONE_LINE = bytes.maketrans(b"\r\n", b"  ")  # JSON strings hold no raw CR or LF: these are whitespace
SHAPE = "must be an object of exactly `custom_id` (a string) and `params` (an object)"
OPEN, CLOSE, COLON, COMMA, QUOTE, LIST, END = b'{}:,"[]'  # (bytes unpack to ints)


class _Truncated(Exception):
    """The body ended inside a value."""


class _TooLong(Exception):
    """A value passed its size limit."""


def _not_json(where: str = "") -> BadParam:
    return BadParam("body", f"The request body is not valid JSON{where}.")


class _Scan:
    """A window on the body: `buf[pos:]` is what is read and not yet taken."""

    def __init__(self, body: IO[bytes]) -> None:
        self.body, self.buf, self.pos = body, b"", 0

    def _more(self, keep: int) -> int:
        """Read on, dropping what is before `keep`; returns how far the indices moved."""
        piece = self.body.read(PIECE)
        if not piece:
            raise _Truncated
        self.buf = self.buf[keep:] + piece
        self.pos -= keep
        return keep

    def peek(self) -> int | None:
        """The next byte past whitespace (taken up to it), None at the body's end."""
        while True:
            space = _SPACE.match(self.buf, self.pos)
            assert space is not None  # it matches the empty string
            self.pos = space.end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            try:
                self._more(self.pos)
            except _Truncated:
                return None

    def take(self, byte: int) -> bool:
        """Take `byte` if it is next."""
        if self.peek() == byte:
            self.pos += 1
            return True
        return False

    def string(self, limit: int) -> bytes:
        """The string starting here, quotes and escapes as written."""
        while (m := _STRING.match(self.buf, self.pos)) is None:
            if len(self.buf) - self.pos > limit:
                raise _TooLong
            self._more(self.pos)
        self.pos = m.end()
        return m.group()

    def container(self, limit: int) -> bytes:
        """The object or array starting here, as written (brackets are counted, not matched: the
        caller parses what is returned)."""
        buf = self.buf
        start = at = self.pos
        depth = 0
        while True:
            at = _RUN.match(buf, at).end()  # type: ignore[union-attr]  # it matches the empty string
            if at == len(buf) or buf[at] == QUOTE:  # the value goes on past what is read: read on
                if len(buf) - start > limit:
                    raise _TooLong
                moved = self._more(start)
                buf, start, at = self.buf, start - moved, at - moved
                continue
            depth += 1 if buf[at] in b"{[" else -1
            at += 1
            if depth == 0:
                if at - start > limit:
                    raise _TooLong
                self.pos = at
                return buf[start:at]


def _checked(raw: bytes, i: int) -> None:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadParam(f"requests.{i}", f"requests.{i}: not valid JSON ({e.msg})") from None
    if not (isinstance(request, dict) and request.keys() == {"custom_id", "params"}
            and isinstance(request["custom_id"], str) and isinstance(request["params"], dict)):
        raise BadParam(f"requests.{i}", f"requests.{i}: {SHAPE}")


def _requests(scan: _Scan, out: IO[bytes], max_requests: int, max_request_bytes: int) -> int:
    """The `requests` list, each written to `out` as a line; returns how many."""
    if not scan.take(LIST):
        raise BadParam("requests", "requests: must be a non-empty list")
    if scan.take(END):
        return 0
    n = 0
    while True:
        if n == max_requests:
            raise BadParam("requests", f"requests: at most {max_requests:,} per batch ([serve] max_batch_requests)")
        if n and scan.peek() == END:
            raise _not_json(" (a comma ends requests)")
        if scan.peek() != OPEN:
            raise BadParam(f"requests.{n}", f"requests.{n}: {SHAPE}")
        try:
            raw = scan.container(max_request_bytes)
        except _TooLong:
            raise BadParam(f"requests.{n}", f"requests.{n}: over {max_request_bytes:,} bytes ([worker] "
                                            "max_line_bytes)") from None
        _checked(raw, n)
        out.write(raw.translate(_ONE_LINE))
        out.write(b"\n")
        n += 1
        if scan.take(END):
            return n
        if not scan.take(COMMA):
            raise _not_json(f" (after requests.{n - 1})")


def write_requests(body: IO[bytes], out: IO[bytes], *, max_requests: int, max_request_bytes: int) -> int:
    """Write the body's requests to `out`, a line each, and return how many; BadParam for a body that
    is not `{"requests": [...]}` with 1 to `max_requests` requests of the right shape, each of at most
    `max_request_bytes`."""
    scan = _Scan(body)
    count: int | None = None
    try:
        if not scan.take(OPEN):
            raise BadParam("body", "The request body must be a JSON object.")
        if not scan.take(CLOSE):
            while True:
                if scan.peek() != QUOTE:
                    raise _not_json()
                try:
                    key = orjson.loads(scan.string(MAX_KEY))
                except (_TooLong, orjson.JSONDecodeError):
                    raise _not_json(" (a key of the top-level object)") from None
                if not scan.take(COLON):
                    raise _not_json()
                if key != "requests":
                    shown = key if len(key) <= 64 else key[:64] + "…"
                    raise BadParam(shown, f"{shown}: Extra inputs are not permitted")
                if count is not None:
                    raise BadParam("requests", "requests: given twice")
                count = _requests(scan, out, max_requests, max_request_bytes)
                if scan.take(CLOSE):
                    break
                if not scan.take(COMMA):
                    raise _not_json()
        if scan.peek() is not None:
            raise _not_json(" (something follows the object)")
    except _Truncated:
        raise _not_json(" (it ends early)") from None
    if not count:
        raise BadParam("requests", "requests: must be a non-empty list")
    return count
