"""Request bodies as `serve` reads them: never past a size limit, never waiting on a silent client,
never drained after the answer.

`BodyGuard` (ASGI middleware, outside every route) gives each body `[serve] body_timeout_s` to send
its next bytes (BodyIdle: a 408), and closes the connection of a request answered before its body
was read to the end (`Connection: close`): uvicorn would otherwise read and drop the rest of it,
however long, to keep the connection open for the next request. `capped` streams a body up to a
size limit (BodyTooLarge: a 413), refusing it on its Content-Length before reading anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchrelay.errors import BodyIdle, BodyTooLarge


def _has_body(scope: Scope) -> bool:
    """Whether the request's head announces a body (uvicorn reads none without either header)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


class BodyGuard:
    """Idle bodies time out; a body not read to its end closes its connection."""

    def __init__(self, app: ASGIApp, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        unread = _has_body(scope)
        idle_s = self.idle_s

        async def guarded_receive() -> Message:
            nonlocal unread
            if not unread:
                return await receive()
            try:
                async with asyncio.timeout(idle_s):
                    message = await receive()
            except TimeoutError:
                raise BodyIdle(f"The request body sent nothing for {idle_s:g} s ([serve] body_timeout_s).") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, closing_send)


async def capped(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body's chunks as they come; BodyTooLarge once it passes `limit` bytes, or at once when
    its Content-Length does. `what` says the limit and its setting in the error ("1024 KiB ([serve]
    max_json_kb)")."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is over {what}.")
    received = 0
    async with contextlib.aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge(f"The request body is over {what}.")
            yield chunk
