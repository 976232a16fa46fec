"""The dashboard's sessions: a login with a client key gives a cookie holding a random token.

The key itself never leaves the login request: the cookie holds a session token (32 random bytes),
HttpOnly (page scripts cannot read it), SameSite=Strict (no other site's page sends it), Secure when
the request came over https. Sessions live in this process's memory, not in Redis: `serve` is one
process, a token in Redis would be a credential anyone reading Redis could replay, and a restart
costing a new login is cheap (several `serve` replicas behind one address need sticky sessions).
They lapse after `SESSION_S` and at most `MOST` are held (the oldest go first).

Each session has a CSRF token the pages get from `/dashboard/api/session` and send back in the
`X-CSRF-Token` header of every POST, compared in constant time; a POST must also come from the same
origin (`Origin`, else `Sec-Fetch-Site`), so another site can neither forge one nor read the token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "batchrelay_session"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600.0
MOST = 1000


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self, ttl_s: float = SESSION_S, most: int = MOST,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s, self.most, self.clock = ttl_s, most, clock
        self._held: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def new(self) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock() + self.ttl_s)
        self._held[s.token] = s
        while len(self._held) > self.most:
            self._held.popitem(last=False)
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        s = self._held.get(token)
        if s is None:
            return None
        if s.expires <= self.clock():
            del self._held[token]
            return None
        return s

    def drop(self, token: str | None) -> None:
        if token:
            self._held.pop(token, None)


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


def same_origin(request: Request, public_url: str | None = None) -> bool:
    """Whether a POST comes from a page of this server: its Origin is this host (scheme, host and
    port) or `[serve] public_url`'s (a proxy that rewrites Host), or without an Origin the browser
    says the fetch is same-origin."""
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        allowed = {f"{request.url.scheme}://{host}"} if host else set()
        if public_url:
            scheme, _, rest = public_url.partition("://")
            allowed.add(f"{scheme}://{rest.split('/', 1)[0]}")
        return origin in allowed
    return request.headers.get("sec-fetch-site") == "same-origin"


def set_cookie(response: Response, request: Request, session: Session, ttl_s: float) -> None:
    response.set_cookie(COOKIE, session.token, max_age=int(ttl_s), path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
