"""`[redis] min_replicas_ack` (store/replicas.py): a result write waits (Redis WAIT, on the write's own
connection) until a replica has it; with no replica answering, it is kept, counted and warned
about, and the worker goes on. Against a real master and replica."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from batchrelay.config.cache import CacheConfig
from batchrelay.store.cache import ResponseCache
from batchrelay.store.keys import Keys
from batchrelay.store.replicas import ReplicaAcks
from batchrelay.store.store import Store

from .sentinelkit import Servers, client, replicated

BATCH = "batch_0123456789abcdef01234567"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Servers]:
    with replicated(tmp_path / "redis") as s:
        yield s


@pytest.fixture
async def acked(pair: Servers) -> AsyncIterator[Store]:
    redis = Redis(port=pair.master)
    yield Store(redis, Keys("brack:"), acks=ReplicaAcks(1, timeout_s=0.5))
    await redis.aclose()


@pytest.fixture
async def patient(pair: Servers) -> AsyncIterator[Store]:
    """Waits as long as a loaded machine may need for its replica's acknowledgement (WAIT returns
    as soon as it has it): 0.5 s was once too short in CI, and the write went on unacknowledged."""
    redis = Redis(port=pair.master)
    yield Store(redis, Keys("brack:"), acks=ReplicaAcks(1, timeout_s=10))
    await redis.aclose()


async def test_a_result_write_is_on_the_replica_when_it_returns(pair: Servers, patient: Store) -> None:
    acked = patient
    replica, master = client(pair.replicas[0]), client(pair.master)
    await acked.scripts.load_all()  # else the first write finds its script missing, loads it and runs again
    waits = int(master.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    results = acked.keys.results(BATCH)
    for line in range(1, 51):  # read at once, each time: no sleep lets replication catch up
        assert await acked.write_result(BATCH, line, b'{"n": %d}' % line, True, {"sim|gpt|calls": 1})
        assert replica.hexists(results, str(line)), (line, acked.acks.short)
    assert await acked.write_results(BATCH, [(line, b"{}", False, {}, "cancelled") for line in range(51, 61)]) == 10
    assert replica.hlen(results) == 60
    hits = ResponseCache(acked, CacheConfig())
    assert await hits.write_hits(BATCH, [(61, b"{}", {"sim|gpt|calls": 0}, Decimal("0.01"))]) == 1
    assert replica.hexists(results, "61") and replica.hget(acked.keys.cache_stats, "saved")
    assert not await acked.write_result(BATCH, 1, b"again", True)  # a rerun is still a no-op
    assert acked.acks.short == 0
    # one WAIT per write, on the write's own connection (one on another would wait for nothing)
    assert int(master.info("commandstats")["cmdstat_wait"]["calls"]) - waits == 50 + 1 + 1 + 1


async def test_with_no_replica_a_result_write_is_kept_and_warned_about_once(
        pair: Servers, acked: Store, caplog: pytest.LogCaptureFixture) -> None:
    pair.procs[pair.replicas[0]].send_signal(signal.SIGKILL)
    pair.procs[pair.replicas[0]].wait(timeout=10)
    caplog.set_level(logging.WARNING, "batchrelay.store.replicas")
    t0 = time.monotonic()
    assert await acked.write_result(BATCH, 1, b"{}", True)
    assert await acked.write_result(BATCH, 2, b"{}", True)
    assert time.monotonic() - t0 >= 2 * 0.5  # each waited for the replica, as long as it was told to
    assert await acked.redis.hlen(acked.keys.results(BATCH)) == 2  # type: ignore[misc]
    assert acked.acks.short == 2
    warned = [r for r in caplog.records if "min_replicas_ack" in r.getMessage()]
    assert len(warned) == 1, warned  # once a minute, not once a line
    assert "0 of the 1 replicas" in warned[0].getMessage()
