"""Redis URLs, pure: shown with their secrets masked (`masked`), and Sentinel's `redis+sentinel://`
(`rediss+sentinel://` for TLS) read by one function (the clients are built in connection.py).

    redis+sentinel://[user:password@]host[:port][,host[:port]...]/MASTER[/DB][?option=value&...]

The hosts are the sentinels (port 26379 when left out), MASTER the name they monitor, DB the
database (0). The URL's user and password are the *master's* (and its replicas'): the data's ACL,
sent to whichever server the sentinels name. Sentinels that want a password of their own take it
as `sentinel_password` (and `sentinel_username`) in the query; it is masked like the other one.
With `rediss+sentinel://` every connection, to the sentinels and to the master, is TLS; the
`ssl_*` options of a `rediss://` URL (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`,
`ssl_cert_reqs`, `ssl_check_hostname`) apply to both.

Why Sentinel and not Cluster: arq keeps its queue in one sorted set beside keys per job, names
none of them with a hash tag, and enqueues and starts jobs with WATCH/MULTI transactions over
several of them; Redis Cluster refuses those across slots, so arq does not run on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from batchrelay.errors import BadRedisURL

SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme: TLS
DEFAULT_PORT = 26379
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
SECRET_OPTIONS = ("sentinel_password",)
OPTIONS = (*TLS_OPTIONS, "sentinel_username", *SECRET_OPTIONS)
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a `redis+sentinel://` URL says."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict, repr=False)  # the query's, as given

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py's TLS arguments (for the sentinels and the master alike)."""
        if not self.tls:
            return {}
        kw: dict[str, Any] = {"ssl": True}
        for name in TLS_OPTIONS:
            if name in self.options:
                value = self.options[name]
                kw[name] = value.lower() in ("1", "true", "yes") if name == "ssl_check_hostname" else value
        return kw

    @property
    def sentinel_auth(self) -> dict[str, str]:
        auth = {"username": self.options.get("sentinel_username"), "password": self.options.get("sentinel_password")}
        return {k: v for k, v in auth.items() if v}


_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&])(?:sentinel_)?password=)[^&#]*")


def masked(url: str) -> str:
    """`url` with its passwords (the user's, and a `password` or `sentinel_password` option) as ***:
    for messages and logs. Read by hand rather than by urlsplit, which gives up on a sentinel URL's
    several hosts and on an unencoded '@' or '/' in a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable URL>" if "@" in url else url
    head, q, query = rest.partition("?")
    userinfo, at, tail = head.rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.partition(':')[0]}:***@{tail}"
    return f"{scheme}://{head}{q}{_QUERY_SECRET.sub(lambda m: m[1] + '***', query)}"


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """The URL's sentinels, master name, database, credentials and options; BadRedisURL (the URL in
    it masked) for anything it cannot say for sure."""
    def bad(why: str) -> BadRedisURL:
        return BadRedisURL(f"bad Redis URL {masked(url)!r}: {why} (expected redis+sentinel://[user:password@]"
                           f"host[:port][,host[:port]...]/MASTER[/DB]; port {DEFAULT_PORT} when left out)")

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise bad("not a redis+sentinel:// or rediss+sentinel:// URL")
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise bad("a '#' must be percent-encoded (%23)")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(pw) if colon else None
    sentinels = []
    for part in hosts.split(","):
        m = _HOST.match(part.strip())
        if not m:
            raise bad(f"{part.strip()!r} is not a host[:port]" if part.strip() else "a sentinel's host is missing")
        port = int(m["port"]) if m["port"] else DEFAULT_PORT
        if not 0 < port < 65536:
            raise bad(f"port {port} is out of range")
        sentinels.append((m["v6"] or m["name"], port))
    segments = path.rstrip("/").split("/") if path.rstrip("/") else []
    if not segments or not segments[0]:
        raise bad("the master's name is missing")
    if len(segments) > 2:
        raise bad("too many path segments")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise bad(f"the database must be a number, not {db!r}")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise bad(f"unknown option {key!r} (known: {', '.join(OPTIONS)})")
        if key in TLS_OPTIONS and not SCHEMES[scheme.lower()]:
            raise bad(f"{key} needs TLS: use rediss+sentinel://")
        options[key] = value
    return SentinelURL(tuple(sentinels), unquote(segments[0]), int(db), username, password, SCHEMES[scheme.lower()],
                       options)
