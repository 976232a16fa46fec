"""Reading `redis+sentinel://` URLs (store/redis_url.py) and masking every Redis URL's secrets: pure, table-tested."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrelay.errors import BadRedisURL
from batchrelay.sim.process import free_port
from batchrelay.store.connection import redis_settings, worker_pool
from batchrelay.store.redis_url import SentinelURL, is_sentinel_url, masked, parse_sentinel_url

from .conftest import batchrelay, write_config
from .sentinelkit import replicated

GOOD = [
    ("redis+sentinel://10.0.0.1:26379/mymaster",
     SentinelURL((("10.0.0.1", 26379),), "mymaster")),
    ("redis+sentinel://a:1,b:2,c:3/prod/2",
     SentinelURL((("a", 1), ("b", 2), ("c", 3)), "prod", db=2)),
    ("redis+sentinel://s1,s2.example.com/m/",  # default sentinel port; a trailing slash
     SentinelURL((("s1", 26379), ("s2.example.com", 26379)), "m")),
    ("redis+sentinel://:p%40ss%3Aw%2Frd@h:5000/m",  # a password only, percent-encoded
     SentinelURL((("h", 5000),), "m", password="p@ss:w/rd")),
    ("redis+sentinel://alice:secret@h1:1,h2:2/m/15",
     SentinelURL((("h1", 1), ("h2", 2)), "m", db=15, username="alice", password="secret")),
    ("redis+sentinel://[::1]:26380,127.0.0.1/m",
     SentinelURL((("::1", 26380), ("127.0.0.1", 26379)), "m")),
    ("REDISS+SENTINEL://h:1/m?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=true",
     SentinelURL((("h", 1),), "m", tls=True, options={"ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": "true"})),
    ("redis+sentinel://u:pw@h:1/m?sentinel_password=spw&sentinel_username=sen",
     SentinelURL((("h", 1),), "m", username="u", password="pw",
                 options={"sentinel_password": "spw", "sentinel_username": "sen"})),
    ("redis+sentinel://h:1/my%20master",
     SentinelURL((("h", 1),), "my master")),
]


@pytest.mark.parametrize(("url", "expected"), GOOD)
def test_a_sentinel_url_says_its_sentinels_master_db_and_credentials(url: str, expected: SentinelURL) -> None:
    got = parse_sentinel_url(url)
    assert got == expected
    assert got.password == expected.password and got.options == expected.options  # not in ==: repr=False only


BAD = [
    ("redis://h:1/0", "not a redis+sentinel"),
    ("redis+sentinel://h:1", "master's name is missing"),
    ("redis+sentinel://h:1/", "master's name is missing"),
    ("redis+sentinel://h:1/m/x", "database must be a number"),
    ("redis+sentinel://h:1/m/0/extra", "too many path segments"),
    ("redis+sentinel:///m", "host is missing"),
    ("redis+sentinel://h:1,,h2:2/m", "host is missing"),
    ("redis+sentinel://h:port/m", "is not a host[:port]"),
    ("redis+sentinel://h:70000/m", "out of range"),
    ("redis+sentinel://h:0/m", "out of range"),
    ("redis+sentinel://h:1/m?ssl_ca_certs=/ca.pem", "needs TLS"),
    ("redis+sentinel://h:1/m?socket_timeout=1", "unknown option"),
    ("redis+sentinel://u:pw#1@h:1/m", "'#' must be percent-encoded"),
]


@pytest.mark.parametrize(("url", "why"), BAD)
def test_a_bad_sentinel_url_is_a_clean_error_saying_why(url: str, why: str) -> None:
    with pytest.raises(BadRedisURL, match="bad Redis URL") as e:
        parse_sentinel_url(url)
    assert why in str(e.value)


def test_a_bad_sentinel_url_error_never_shows_its_passwords() -> None:
    with pytest.raises(BadRedisURL) as e:
        parse_sentinel_url("redis+sentinel://alice:TopSecret1@h:1,h2:x/m?sentinel_password=Sent1nelPw")
    text = str(e.value)
    assert "TopSecret1" not in text and "Sent1nelPw" not in text
    assert "alice:***@h:1,h2:x/m?sentinel_password=***" in text


MASKED = [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://alice:pw@127.0.0.1:6379/0", "redis://alice:***@127.0.0.1:6379/0"),
    ("redis://:pw@h/0", "redis://:***@h/0"),
    ("redis://alice@h/0", "redis://alice@h/0"),  # a user, no password
    ("rediss://u:p@ss:w/rd@h:1/0?ssl_ca_certs=/a@b/ca.pem", "rediss://u:***@h:1/0?ssl_ca_certs=/a@b/ca.pem"),
    ("redis://h:1/0?password=pw&db=1", "redis://h:1/0?password=***&db=1"),
    ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ("redis+sentinel://u:pw@a:1,b:2/m/1?sentinel_password=spw",
     "redis+sentinel://u:***@a:1,b:2/m/1?sentinel_password=***"),
    ("rediss+sentinel://:pw@a,b/m", "rediss+sentinel://:***@a,b/m"),
    ("not a url", "not a url"),
    ("host:pw@somewhere", "<unparsable URL>"),
]


@pytest.mark.parametrize(("url", "shown"), MASKED)
def test_a_url_is_shown_with_its_passwords_masked(url: str, shown: str) -> None:
    assert masked(url) == shown


@pytest.mark.parametrize(("url", "yes"), [("redis+sentinel://h/m", True), ("Rediss+Sentinel://h/m", True),
                                          ("redis://h/0", False), ("unix:///s", False), ("", False)])
def test_only_the_sentinel_schemes_are_sentinel_urls(url: str, yes: bool) -> None:
    assert is_sentinel_url(url) is yes


def test_arq_gets_its_own_sentinel_settings_from_a_sentinel_url() -> None:
    s = redis_settings("rediss+sentinel://u:pw@a:1,b:2/prod/3")
    assert (s.sentinel, s.host, s.sentinel_master, s.database) == (True, [("a", 1), ("b", 2)], "prod", 3)
    assert (s.username, s.password, s.ssl) == ("u", "pw", True)


def test_a_worker_pool_is_built_for_a_sentinel_url_only() -> None:
    assert worker_pool("redis://127.0.0.1:6379/0") is None
    pool = worker_pool("redis+sentinel://127.0.0.1:1/m")  # no IO until a command
    assert pool is not None
    assert pool.connection_pool.service_name == "m"  # type: ignore[attr-defined]


def test_the_cli_says_a_bad_sentinel_url_is_bad_without_its_password(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "brsurl:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    proc = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": "redis+sentinel://u:Hunter2pw@h1:1,h2:x/m"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: bad Redis URL") and "'h2:x' is not a host[:port]" in proc.stderr
    assert "Hunter2pw" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_sentinels_that_do_not_answer_are_a_clean_error_naming_the_masked_url(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "brsurl:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    url = f"redis+sentinel://u:Hunter2pw@127.0.0.1:{free_port()}/m?sentinel_password=Sentinel9pw"
    proc = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": url})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: cannot reach Redis at redis+sentinel://u:***@127.0.0.1:"), proc.stderr
    assert "Hunter2pw" not in proc.stderr and "Sentinel9pw" not in proc.stderr
    # the sentinels tried and the master, not redis-py's dump of its client objects
    assert "no sentinel gave the address of master 'm'" in proc.stderr and "did not answer" in proc.stderr
    assert "<redis." not in proc.stderr and "ConnectionPool" not in proc.stderr, proc.stderr


def test_a_master_name_no_sentinel_knows_is_told_apart_from_a_sentinel_that_does_not_answer(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "brsurl:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    dead = free_port()
    with replicated(tmp_path / "redis", sentinels=1) as servers:
        live = servers.sentinels[0]
        url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{live}/nosuchmaster"
        proc = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": url})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"no sentinel gave the address of master 'nosuchmaster' (127.0.0.1:{dead} did not answer; "
            f"127.0.0.1:{live} knows no master 'nosuchmaster' that is up") in proc.stderr, proc.stderr
    assert "<redis." not in proc.stderr, proc.stderr


def test_a_bad_sentinel_url_shows_the_port_as_optional() -> None:
    with pytest.raises(BadRedisURL, match=r"host\[:port\]\[,host\[:port\]\.\.\.\]/MASTER\[/DB\]; port 26379"):
        parse_sentinel_url("redis+sentinel://h1/")
