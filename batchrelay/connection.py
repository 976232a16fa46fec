"""Connecting to Redis with clean errors; URLs are shown without their password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .errors import BadRedisURL, StoreError

DEFAULT_URL = "redis://127.0.0.1:6379/0"


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


async def connect(url: str) -> Redis:
    """A client that has answered PING, or StoreError naming the (masked) URL."""
    try:
        client = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    except ValueError as e:
        raise BadRedisURL(f"bad Redis URL {masked(url)!r}: {e} (expected redis://, rediss:// or unix://)") from None
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        await client.aclose()
        raise StoreError(f"cannot reach Redis at {masked(url)}: {type(e).__name__}: {e}. "
                         "Set REDIS_URL or [redis] url, or use `batchrelay run` for an embedded Redis.") from None
    return client  # type: ignore[no-any-return]
