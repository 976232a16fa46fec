"""Connecting to Redis with clean errors (URLs are shown without their password), and arq's settings
for it: a server's URL (`redis://`, `rediss://`, `unix://`), or Sentinel's (`redis+sentinel://`,
read in redis_url.py), whose clients follow the master the sentinels name through a failover."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from batchrelay.errors import BadRedisURL, StoreError
from batchrelay.store.redis_url import SentinelURL, is_sentinel_url, masked, parse_sentinel_url

__all__ = ["DEFAULT_URL", "check_reachable", "connect", "masked", "redis_settings", "retry_policy", "worker_pool"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
R = TypeVar("R", bound=Redis)
log = logging.getLogger("batchrelay.store.connection")


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
    probe = _client(url, socket_connect_timeout=5)
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
    return _client(url, socket_connect_timeout=5, health_check_interval=30, retry=retry_policy(),
                   retry_on_error=RETRY_ON)


async def check_reachable(url: str, *, wait_s: float = 0.0, advice: str = ADVICE) -> None:
    """StoreError now (naming the masked URL) unless Redis answers at `url`, waited for as `connect` does."""
    await (await connect(url, wait_s=wait_s, advice=advice)).aclose()


def _client(url: str, **kwargs: Any) -> Redis:
    """A client for `url` (no IO yet): a Sentinel-managed master's for a `redis+sentinel://` URL;
    BadRedisURL (masked) for one that cannot be read."""
    if is_sentinel_url(url):
        return master_client(parse_sentinel_url(url), Redis, **kwargs)
    try:
        return Redis.from_url(url, **kwargs)  # type: ignore[no-any-return]
    except ValueError as e:
        raise BadRedisURL(f"bad Redis URL {masked(url)!r}: {e} "
                          "(expected redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://)") from None


class _Following(SentinelManagedConnection):
    """A connection to the master the sentinels name, trying each address they give once.

    redis-py's own retries its connect to the address it was given with the client's whole retry
    policy (half a minute with ours) inside the loop that asks the sentinels again: after a failover
    every reconnect waited on the dead master that long. Here the outer loop (and the command's
    retries) do the waiting, and each try asks the sentinels where the master is now."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = retry


class _FollowingTLS(_Following, SentinelManagedSSLConnection):
    pass


class _Pool(SentinelConnectionPool):
    """Closing the client closes its connections to the sentinels too (redis-py leaves them open)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # a close, not the drop of idle connections to a master that moved
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def master_client(url: SentinelURL, redis_class: type[R], **kwargs: Any) -> R:
    """A client of the master the sentinels name now. Each new connection asks them again, so the
    client follows a failover: a command's retries reconnect (`retry_policy`), and a demoted master's
    READONLY drops the connection. No IO here: the first command connects. `kwargs`: redis-py's
    connection arguments for the master (timeouts, retry); the sentinels get the same timeouts,
    the URL's TLS options and their own credentials (`sentinel_password`), never the master's."""
    socket = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel_kwargs = {**socket, **url.tls_kwargs, **url.sentinel_auth}
    sentinel = Sentinel(list(url.sentinels), sentinel_kwargs=sentinel_kwargs, **url.tls_kwargs)  # type: ignore[no-untyped-call]
    client: R = sentinel.master_for(url.master, redis_class=redis_class, db=url.db, username=url.username,
                                    password=url.password, connection_class=_FollowingTLS if url.tls else _Following,
                                    connection_pool_class=_Pool, **kwargs)
    return client


def worker_pool(url: str) -> ArqRedis | None:
    """arq's pool for a worker on a Sentinel URL, built here rather than by arq (whose Sentinel
    support passes on the master's password and `ssl` only: no retry policy, no sentinel password,
    no CA file); None for any other URL, whose pool arq makes from `redis_settings`."""
    if not is_sentinel_url(url):
        return None
    return master_client(parse_sentinel_url(url), ArqRedis, socket_connect_timeout=5, retry=retry_policy(),
                         retry_on_error=RETRY_ON)


def redis_settings(url: str) -> RedisSettings:
    """arq's connection, read from the URL by redis-py's own parser (arq's would keep a password
    percent-encoded and drop `rediss://` options such as `ssl_ca_certs`), retrying through a Redis
    restart like every other client of ours. A Sentinel URL gives arq's own Sentinel settings (the
    sentinels, the master's name and password); a worker uses `worker_pool` for it instead."""
    if is_sentinel_url(url):
        s = parse_sentinel_url(url)
        return RedisSettings(host=list(s.sentinels), sentinel=True, sentinel_master=s.master, database=s.db,
                             username=s.username, password=s.password, ssl=s.tls,
                             retry=retry_policy(), retry_on_error=RETRY_ON)
    kw: dict[str, Any] = dict(parse_url(url))
    ssl = kw.pop("connection_class", None) is SSLConnection
    tls = {k: kw[k] for k in ("ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data",
                              "ssl_check_hostname") if k in kw}
    return RedisSettings(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)),
                         unix_socket_path=kw.get("path"), database=int(kw.get("db", 0)),
                         username=kw.get("username"), password=kw.get("password"), ssl=ssl, **tls,
                         retry=retry_policy(), retry_on_error=RETRY_ON)


def _unreachable(url: str, e: BaseException, advice: str) -> StoreError:
    why = _no_master(url, e) if isinstance(e, MasterNotFoundError) else f"{type(e).__name__}: {str(e).rstrip('.')}"
    return StoreError(f"cannot reach Redis at {masked(url)}: {why}. {advice}")


def _no_master(url: str, e: MasterNotFoundError) -> str:
    """redis-py's MasterNotFoundError, told plainly: which sentinels did not answer, which answered
    without a live master of that name (its own text is a dump of client objects). Pure."""
    s = parse_sentinel_url(url)
    said = str(e)
    silent: list[str] = []
    answered: list[str] = []
    for host, port in s.sentinels:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        (silent if f"host={host},port={port}," in said else answered).append(shown)
    parts = [f"{', '.join(silent)} did not answer"] if silent else []
    if answered:
        parts.append(f"{', '.join(answered)} {'knows' if len(answered) == 1 else 'know'} no master {s.master!r} "
                     "that is up (check the master's name)")
    return f"no sentinel gave the address of master {s.master!r} ({'; '.join(parts)})"
