"""Connecting to Redis with clean errors (URLs are shown without their password), and arq's settings for it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from batchrelay.errors import BadRedisURL, StoreError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
log = logging.getLogger("batchrelay.store.connection")


def masked(url: str) -> str:
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return "<unparsable URL>" if "@" in url else url
    if password is None:
        return url
    host = parts.hostname or ""
    if port:
        host += f":{port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def retry_policy() -> Retry:
    """Ride out a Redis restart: a command that lost its connection, and a connection refused, are
    retried with backoff (0.5, 1, 2, 4, then every 5 s: about half a minute; a reconnect inside a
    retried command can take that long again). Everything we send is safe to repeat: results and the
    ledger are written behind HSETNX guards, enqueues with NX, budget settles once, the rest are SETs."""
    errors: Any = (*RETRY_ON, OSError)  # redis-py's stubs say RedisError subclasses only; it takes any
    return Retry(ExponentialBackoff(cap=5, base=0.25), retries=8, supported_errors=errors)


RETRY_ON: list[type[Exception]] = [ConnectionError, TimeoutError]


ADVICE = "Check REDIS_URL and [redis] url; with neither set, batchrelay uses its embedded Redis."


async def connect(url: str, *, wait_s: float = 0.0, advice: str = ADVICE) -> Redis:
    """A client that has answered PING, or StoreError naming the (masked) URL. Later commands
    retry through short outages (`retry_policy`). The first contact fails fast, so a wrong URL
    does not wait a minute, unless `wait_s` says how long an unreachable Redis may be waited for
    (a worker started before its Redis, or during a restart); a refused login never waits. `advice`
    ends the error's message."""
    try:
        probe = Redis.from_url(url, socket_connect_timeout=5)
    except ValueError as e:
        raise BadRedisURL(f"bad Redis URL {masked(url)!r}: {e} (expected redis://, rediss:// or unix://)") from None
    deadline, delay = time.monotonic() + wait_s, 0.5
    try:
        while True:
            try:
                await probe.ping()
                break
            except (AuthenticationError, AuthorizationError, ResponseError) as e:
                raise _unreachable(url, e, advice) from None
            except (RedisError, OSError) as e:
                if time.monotonic() + delay > deadline:
                    raise _unreachable(url, e, advice) from None
                log.warning("Redis at %s is not answering (%s); trying again in %.1fs", masked(url),
                            type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        await probe.aclose()
    client = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, retry=retry_policy(),
                            retry_on_error=RETRY_ON)
    return client  # type: ignore[no-any-return]


async def check_reachable(url: str, *, wait_s: float = 0.0, advice: str = ADVICE) -> None:
    """StoreError now (naming the masked URL) unless Redis answers at `url`, waited for as `connect` does."""
    await (await connect(url, wait_s=wait_s, advice=advice)).aclose()


def redis_settings(url: str) -> RedisSettings:
    """arq's connection, read from the URL by redis-py's own parser (arq's would keep a password
    percent-encoded and drop `rediss://` options such as `ssl_ca_certs`), retrying through a Redis
    restart like every other client of ours."""
    kw: dict[str, Any] = dict(parse_url(url))
    ssl = kw.pop("connection_class", None) is SSLConnection
    tls = {k: kw[k] for k in ("ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data",
                              "ssl_check_hostname") if k in kw}
    return RedisSettings(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)),
                         unix_socket_path=kw.get("path"), database=int(kw.get("db", 0)),
                         username=kw.get("username"), password=kw.get("password"), ssl=ssl, **tls,
                         retry=retry_policy(), retry_on_error=RETRY_ON)


def _unreachable(url: str, e: BaseException, advice: str) -> StoreError:
    return StoreError(f"cannot reach Redis at {masked(url)}: {type(e).__name__}: {str(e).rstrip('.')}. {advice}")
