"""`submit` of a file already submitted (a warning, or with --resume that batch), idempotent producers
(`idempotency_key`), and what the lifecycle does with a paused batch (store/resume.py)."""

from __future__ import annotations

import asyncio
import io
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay import AsyncClient, Client
from batchrelay.config.settings import ProviderConfig, RedisConfig, Settings, WorkerConfig, load_settings
from batchrelay.errors import InputError, ResumeRefused, RetryRefused
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.ids import new_batch_id
from batchrelay.store.keys import Keys
from batchrelay.store.lifecycle import retry, tick
from batchrelay.store.resume import Lease, fingerprint, options_part, pause, resume, take_lease
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_file, submit_stream

from .conftest import batchrelay, openai_line, status_of, write_config


def _file(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    return path


def _settings(prefix: str) -> Settings:
    return Settings(redis=RedisConfig(prefix=prefix), worker=WorkerConfig(chunk_size=5),
                    providers=(ProviderConfig(name="p", base_url="http://127.0.0.1:9"),))


@pytest.mark.parametrize(("change", "same"), [
    ({"name": "other"}, True), ({"chunk_size": 7}, True), ({"webhook": "https://example.com/h"}, True),
    ({"start_at": 2e9}, True), ({"endpoint": "messages"}, False), ({"providers": ["p"]}, False),
    ({"max_cost": Decimal("1")}, False), ({"require_prices": True}, False), ({"completion_window": 60}, False),
    ({"max_line_bytes": 99}, False),
])
def test_a_fingerprint_covers_the_options_that_shape_what_is_sent_and_priced(
        tmp_path: Path, change: dict[str, Any], same: bool) -> None:
    src = _file(tmp_path / "in.jsonl", 3)
    base = BatchSpec(providers=None)
    changed = BatchSpec.model_validate({**base.model_dump(), **change})
    assert (fingerprint(src, base) == fingerprint(src, changed)) is same
    assert (options_part(base) == options_part(changed)) is same


LANES = ("openai-batch",)  # the configured lanes' names
# read when the tests are collected, which may be minutes before they run (xdist): both well in the future
SOON, LATER = time.time() + 6 * 3600, time.time() + 26 * 3600


@pytest.mark.parametrize(("why", "a", "b", "lanes", "same"), [
    ("no lane configured: a deadline changes nothing", {}, {"deadline": SOON}, (), True),
    ("a lane, and a deadline that may let it in", {}, {"deadline": SOON}, LANES, False),
    ("a lane, and a completion window that may let it in", {}, {"completion_window": 60}, LANES, False),
    ("two deadlines are two instants, not two batches", {"deadline": SOON}, {"deadline": LATER}, LANES, True),
    ("a lane --providers leaves out", {"providers": ["p"]}, {"providers": ["p"], "deadline": SOON}, LANES, True),
    ("a lane --providers keeps", {"providers": ["openai-batch"]},
     {"providers": ["openai-batch"], "deadline": SOON}, LANES, False),
])
def test_a_fingerprint_covers_whether_the_batch_may_use_a_lane_not_its_deadline(
        tmp_path: Path, why: str, a: dict[str, Any], b: dict[str, Any], lanes: tuple[str, ...], same: bool) -> None:
    src = _file(tmp_path / "in.jsonl", 3)
    assert (fingerprint(src, BatchSpec(**a), lanes) == fingerprint(src, BatchSpec(**b), lanes)) is same


def test_a_batch_that_cannot_use_a_lane_keeps_the_fingerprint_it_had(tmp_path: Path) -> None:
    """Batches in Redis from before lanes were fingerprinted are found again by the same run."""
    src = _file(tmp_path / "in.jsonl", 3)
    assert fingerprint(src, BatchSpec(), LANES) == fingerprint(src, BatchSpec())
    assert options_part(BatchSpec(), LANES) == options_part(BatchSpec())
    assert b'"lanes":true' in options_part(BatchSpec(deadline=SOON), LANES)


def test_submit_json_shows_the_effective_deadline_and_what_each_lane_does(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    """Found by a fresh-clone check: `deadline` was the --deadline given, not the earlier completion window, and
    only `estimate` said why a lane took no line."""
    cfg = write_config(tmp_path / "c.toml", prefix, [
        {"name": "p", "base_url": "http://127.0.0.1:9", "price_multiplier": "0.75"},
        {"name": "openai-batch", "kind": "openai-batch", "base_url": "http://127.0.0.1:9"}],
        routing='[routing]\nstrategy = "cheapest"')
    src = _file(tmp_path / "in.jsonl", 4)
    env = {"REDIS_URL": redis_url}
    short = batchrelay("-c", str(cfg), "submit", str(src), "--completion-window", "24h", "--deadline", "+30h",
                       "--json", env=env)
    assert short.returncode == 0, short.stderr
    d = orjson.loads(short.stdout)
    assert d["deadline"] == pytest.approx(time.time() + 24 * 3600, abs=60)  # the window ends first
    assert d["deadline_given"] == pytest.approx(time.time() + 30 * 3600, abs=60)
    (note,) = d["lanes"]
    assert (note["name"], note["used"], note["reason"], note["lines"]) == ("openai-batch", False, "deadline", 0)
    assert note["text"] == ("lane openai-batch not used: deadline leaves 24h, the lane needs 25h (window 24h + "
                            "margin 1h); --deadline +25h or later with --completion-window 25h or more lets 4 lines "
                            "go there")
    assert note["text"] in short.stderr
    fits = batchrelay("-c", str(cfg), "submit", str(src), "--deadline", "+25h", env=env)  # exactly window + margin
    assert fits.returncode == 0, fits.stderr
    assert re.search(r"lane openai-batch: 4 lines go there; they may wait up to 24h, for 67 % of the synchronous "
                     r"price \(\$\S+ instead of \$\S+\)", fits.stderr), fits.stderr
    kept = batchrelay("-c", str(cfg), "submit", str(src), "--deadline", "+25h", "--resume", "--json", env=env)
    assert kept.returncode == 0, kept.stderr
    k = orjson.loads(kept.stdout)
    assert k["existing"] and k["id"] == fits.stdout.strip()
    assert k["notes"] == [f"resuming batch {k['id']} (in_progress, 0 of 4 lines answered)"]
    assert k["lanes"][0]["used"] is True


def test_a_fingerprint_is_of_the_bytes_not_the_path(tmp_path: Path) -> None:
    a, b = _file(tmp_path / "a.jsonl", 3), _file(tmp_path / "b.jsonl", 3)
    assert fingerprint(a, BatchSpec()) == fingerprint(b, BatchSpec())
    assert fingerprint(a, BatchSpec()) != fingerprint(_file(tmp_path / "c.jsonl", 4), BatchSpec())


def test_submit_of_an_unfinished_file_says_so_and_resume_returns_that_batch(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": "http://127.0.0.1:9"}])
    src = _file(tmp_path / "in.jsonl", 12)
    env = {"REDIS_URL": redis_url}
    first = batchrelay("-c", str(cfg), "submit", str(src), env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    a = first.stdout.strip()
    second = batchrelay("-c", str(cfg), "submit", str(src), env=env)
    assert second.returncode == 0, second.stderr
    b = second.stdout.strip()
    assert b != a and a in second.stderr and "in_progress" in second.stderr
    again = batchrelay("-c", str(cfg), "submit", str(src), "--resume", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == b  # the latest batch of that file and options; nothing new was made
    listed = batchrelay("-c", str(cfg), "batches", "--json", env=env)
    assert len(orjson.loads(listed.stdout)) == 2
    other = batchrelay("-c", str(cfg), "submit", str(src), "--resume", "--max-cost", "5", env=env)
    assert other.returncode in (0, 2) and other.stdout.strip() not in (a, b)


def test_the_same_idempotency_key_returns_the_same_batch(tmp_path: Path, redis_url: str, prefix: str) -> None:
    src = _file(tmp_path / "in.jsonl", 7)
    with Client(redis_url, settings=_settings(prefix)) as client:
        a = client.submit(src, idempotency_key="order-17")
        assert client.submit(src, idempotency_key="order-17") == a
        assert client.submit([openai_line(1)], idempotency_key="order-17") == a  # the key decides, not the input
        b = client.submit(src, idempotency_key="order-18")
        assert b != a
        assert len(client.batches()) == 2
        with pytest.raises(InputError):
            client.submit(io.BytesIO(b"not json\n"), idempotency_key="bad")
        c = client.submit(src, idempotency_key="bad")  # a failed submit gives its key back
        assert c not in (a, b) and client.status(c)["counts"]["total"] == 7


async def test_concurrent_submits_with_one_key_make_one_batch(tmp_path: Path, redis_url: str, prefix: str) -> None:
    src = _file(tmp_path / "in.jsonl", 30)
    async with AsyncClient(redis_url, settings=_settings(prefix)) as client:
        ids = await asyncio.gather(*(client.submit(src, idempotency_key="k") for _ in range(5)))
        assert len(set(ids)) == 1
        assert len(await client.batches()) == 1


async def test_a_forgotten_batch_frees_its_idempotency_key_and_fingerprint(store: Store, tmp_path: Path,
                                                                            redis_url: str, prefix: str) -> None:
    src = _file(tmp_path / "in.jsonl", 3)
    async with AsyncClient(redis_url, settings=_settings(prefix)) as client:
        a = await client.submit(src, idempotency_key="k")
        await store.delete_batch(a)
        assert not [k async for k in store.redis.scan_iter(f"{prefix}*") if b":fingerprint:" in k or b"idem" in k]
        assert await client.submit(src, idempotency_key="k") != a


async def _paused(store: Store, n: int = 10, window: float | None = None) -> str:
    res = await submit_stream(store, io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n"
                                                         for i in range(1, n + 1))),
                              BatchSpec(chunk_size=5, completion_window=window), source="t",
                              queue=f"{store.keys.queue}:run:x")
    assert await pause(store, res.batch_id, f"{store.keys.queue}:run:x") == "paused"
    return res.batch_id


async def test_a_paused_batch_gives_no_line_to_a_claim_and_resume_queues_it_on_the_shared_queue(
        store: Store) -> None:
    batch = await _paused(store)
    assert not await store.redis.exists(f"{store.keys.queue}:run:x")  # the run's queue went with it
    with pytest.raises(RetryRefused, match="resume"):
        await retry(store, batch, chunk_size=5)  # says how to go on instead
    assert (await store.claim(batch, [1, 2])).jobs == []
    info = await store.info(batch)
    assert info.status == "paused" and info.pending == 10
    async with (await take_lease(store, batch)).kept():
        with pytest.raises(ResumeRefused, match=batch):
            await take_lease(store, batch)  # one run (or resume) at a time
    await resume(store, batch, store.keys.queue)
    info = await store.info(batch)
    assert info.status == "in_progress" and info.queue == store.keys.queue
    assert await store.redis.zcard(store.keys.queue) == 2  # both chunks
    with pytest.raises(ResumeRefused, match="shared queue"):
        await resume(store, batch, f"{store.keys.queue}:run:y")  # the workers have it now


async def test_a_paused_batch_is_forgotten_after_the_retention(store: Store) -> None:
    batch = await _paused(store)
    await tick(store, grace_s=0, retention_s=3600)
    assert (await store.info(batch)).status == "paused"
    await tick(store, grace_s=0, retention_s=3600, now=9e12)
    assert batch not in {b.id for b in await store.list_batches()}


async def test_a_paused_batch_s_completion_window_keeps_running(store: Store) -> None:
    batch = await _paused(store, window=60)
    await tick(store, grace_s=0, retention_s=None, now=time.time() + 120)
    info = await store.info(batch)
    assert info.status == "expired" and info.pending == 0


def test_status_and_batches_show_a_paused_batch(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": "http://127.0.0.1:9"}])

    async def go() -> str:
        async with await Store.connect(redis_url, Keys(prefix)) as s:
            return await _paused(s)

    batch = asyncio.run(go())
    assert status_of(cfg, redis_url, batch)["status"] == "paused"
    listed = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": redis_url})
    assert "paused" in listed.stdout
    shown = batchrelay("-c", str(cfg), "status", batch, env={"REDIS_URL": redis_url})
    assert "paused" in shown.stdout and "lines/s" not in shown.stdout and "ETA" not in shown.stdout  # nothing works it
    resumed = batchrelay("-c", str(cfg), "resume", batch, "--json", env={"REDIS_URL": redis_url})
    assert resumed.returncode == 0, resumed.stderr
    assert orjson.loads(resumed.stdout)["status"] == "in_progress"


def test_run_of_a_file_the_workers_have_refuses_and_says_how_to_get_its_results(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": "http://127.0.0.1:9"}])
    src = _file(tmp_path / "in.jsonl", 5)
    env = {"REDIS_URL": redis_url}
    batch = batchrelay("-c", str(cfg), "submit", str(src), env=env).stdout.strip()
    run = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "out.jsonl"), env=env)
    assert run.returncode == 2, run.stderr
    assert batch in run.stderr and "shared queue" in run.stderr and "results" in run.stderr
    assert status_of(cfg, redis_url, batch)["counts"]["pending"] == 5  # nothing was sent


def _paused_run_of(cfg: Path, src: Path, redis_url: str, prefix: str) -> str:
    """The batch an interrupted `run -c cfg` of `src` leaves: paused, found by the same fingerprint."""
    spec = BatchSpec.of(load_settings(cfg))

    async def go() -> str:
        async with await Store.connect(redis_url, Keys(prefix)) as s:
            queue = f"{s.keys.queue}:run:x"
            res = await submit_file(s, src, spec, queue=queue, fingerprint=fingerprint(src, spec))
            assert await pause(s, res.batch_id, queue) == "paused"
            return res.batch_id

    return asyncio.run(go())


def test_submit_resume_of_a_paused_batch_hands_it_to_the_workers_and_says_which_batch_it_is(
        tmp_path: Path, redis_url: str, prefix: str, simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": simulator.base_url}], chunk_size=5)
    env = {"REDIS_URL": redis_url}
    src = _file(tmp_path / "in.jsonl", 10)
    batch = _paused_run_of(cfg, src, redis_url, prefix)
    again = batchrelay("-c", str(cfg), "submit", str(src), "--resume", "--cache", "--json", env=env)
    assert again.returncode == 0, again.stderr
    out = orjson.loads(again.stdout)
    assert out["id"] == batch and out["existing"] is True and out["status"] == "in_progress"
    assert f"resuming batch {batch} (paused, 0 of 10 lines answered)" in again.stderr
    assert f"resume {batch}" in again.stderr and "shared queue" in again.stderr  # as `batchrelay resume` does
    assert "keeps its own options" in again.stderr and "--cache" in again.stderr  # given now, not taken
    work = batchrelay("-c", str(cfg), "worker", "--burst", "--quiet", env=env)
    assert work.returncode == 0, work.stderr
    done = batchrelay("-c", str(cfg), "results", batch, "-o", str(tmp_path / "out.jsonl"), "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 10
    assert simulator.stats()["calls"] == 10


def test_plain_submit_of_a_paused_file_makes_a_new_batch_and_says_resume_would_queue_that_one(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": "http://127.0.0.1:9"}], chunk_size=5)
    env = {"REDIS_URL": redis_url}
    src = _file(tmp_path / "in.jsonl", 6)
    batch = _paused_run_of(cfg, src, redis_url, prefix)
    new = batchrelay("-c", str(cfg), "submit", str(src), "--json", env=env)
    assert new.returncode == 0, new.stderr
    out = orjson.loads(new.stdout)
    assert out["id"] != batch and out["existing"] is False
    assert f"batch {batch} of the same input and options is paused" in new.stderr
    assert "--resume puts that one back on the queue" in new.stderr
    assert status_of(cfg, redis_url, batch)["status"] == "paused"  # left as it was
    same = batchrelay("-c", str(cfg), "submit", str(src), "--resume", env=env)  # the new one, in progress
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip() == out["id"]
    assert f"resuming batch {out['id']} (in_progress, 0 of 6 lines answered)" in same.stderr
    assert "keeps its own options" not in same.stderr


def test_submit_resume_leaves_a_batch_a_live_run_works_and_takes_over_one_whose_run_died(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": "http://127.0.0.1:9"}], chunk_size=5)
    env = {"REDIS_URL": redis_url}
    src = _file(tmp_path / "in.jsonl", 10)
    spec = BatchSpec.of(load_settings(cfg))

    async def started() -> tuple[str, Lease]:  # a `run`'s batch, in progress on its private queue
        async with await Store.connect(redis_url, Keys(prefix)) as s:
            batch = new_batch_id()
            lease = await take_lease(s, batch, ttl_s=60)
            await submit_file(s, src, spec, queue=f"{s.keys.queue}:run:x", batch_id=batch,
                              fingerprint=fingerprint(src, spec))
            return batch, lease

    batch, lease = asyncio.run(started())
    live = batchrelay("-c", str(cfg), "submit", str(src), "--resume", env=env)
    assert live.returncode == 0 and live.stdout.strip() == batch, live.stderr
    assert f"resuming batch {batch} (in_progress, 0 of 10 lines answered): a live `run` works it" in live.stderr

    async def died() -> None:
        async with await Store.connect(redis_url, Keys(prefix)) as s:
            await Lease(s, batch, lease.holder, lease.ttl_s).release()

    asyncio.run(died())
    taken = batchrelay("-c", str(cfg), "submit", str(src), "--resume", "--json", env=env)
    assert taken.returncode == 0, taken.stderr
    assert orjson.loads(taken.stdout)["existing"] is True and "back on the shared queue" in taken.stderr

    async def queue_of() -> str:
        async with await Store.connect(redis_url, Keys(prefix)) as s:
            return (await s.info(batch)).queue

    assert asyncio.run(queue_of()) == Keys(prefix).queue  # the dead run's queue is no longer its queue
