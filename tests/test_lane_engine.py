"""The lane engine (worker/lanes.py) in this process against a real upstream: batchrelay's own `serve`
(its worker and simulator behind it) speaking the OpenAI Batch and Anthropic Message Batches APIs.
A chunk hands its lines to the lane; the cron's `poll_due` seals, uploads, creates, polls and collects
them: every line answered once, at the lane's price, with the upstream batch in its attempts, and the
ledger equal to the sum of the lines. A create that a crash cut off before its id was recorded is
found again upstream, never made twice."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchrelay.config.settings import ProviderConfig, Settings, WorkerConfig
from batchrelay.money.estimate import estimate_jobs
from batchrelay.money.lane_notes import lane_notes
from batchrelay.money.ledger import rows, total
from batchrelay.money.pricing import call_cost, price_of
from batchrelay.providers.checks import check_all
from batchrelay.providers.lane_client import LaneClient
from batchrelay.sim.process import SimulatorProcess, free_port
from batchrelay.spec import BatchSpec
from batchrelay.store.budget import Budget
from batchrelay.store.health import Health
from batchrelay.store.lanes import LaneStore
from batchrelay.store.lifecycle import advance, cancel
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.reply import Usage
from batchrelay.worker.lane_send import endpoint, request_file
from batchrelay.worker.lane_steps import SEND_TRIES
from batchrelay.worker.runtime import Runtime
from batchrelay.worker.worker import build_worker, run_worker

from .conftest import openai_line
from .servekit import KEY, KEY_ENV, Api, anthropic_request, serving

N = 6
KINDS = ["openai-batch", "anthropic-batch"]
MODEL = {"openai-batch": "gpt-4o-mini", "anthropic-batch": "claude-3-5-haiku-latest"}


def _settings(kind: str, upstream: str, sim_url: str, cancel_wait_s: float = 5, prefix: str = "batchrelay:"
              ) -> Settings:
    lane = ProviderConfig.model_validate({
        "name": "lane", "kind": kind, "base_url": upstream, "api_key_env": KEY_ENV, "window_s": 30, "margin_s": 5,
        "gather_s": 0.2, "poll_min_s": 0.2, "poll_max_s": 1, "create_wait_s": 3, "cancel_wait_s": cancel_wait_s})
    return Settings(redis={"prefix": prefix}, worker=WorkerConfig(call_timeout=5, backoff=0.01, concurrency=4),
                    routing={"strategy": "cheapest"},
                    providers=(ProviderConfig(name="sim", base_url=sim_url), lane))


def _line(kind: str, i: int) -> dict[str, Any]:
    """A line in the lane's own dialect (a lane ranks after a provider that need not translate)."""
    return openai_line(i) if kind == "openai-batch" else anthropic_request(i)


async def _submit(store: Store, rt: Runtime, kind: str, max_cost: str | None = None) -> str:
    """A batch of N lines whose deadline leaves the lane room, its chunk run: the lane takes all."""
    src = io.BytesIO(b"".join(orjson.dumps(_line(kind, i)) + b"\n" for i in range(N)))
    spec = BatchSpec(name="t", chunk_size=N, completion_window=120, max_cost=Decimal(max_cost) if max_cost else None)
    res = await submit_stream(store, src, spec, source="t")
    ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
    assert await rt.run_chunk(res.batch_id, lines, cid) == 0  # none answered synchronously
    assert await store.chunk_map(res.batch_id) == {}  # the lines left the chunk: the sweeper reruns none
    return res.batch_id


async def _until_collected(rt: Runtime, timeout: float = 60) -> None:
    assert rt.lanes is not None
    deadline = time.monotonic() + timeout
    while await rt.lanes.open():
        assert time.monotonic() < deadline, "the lane's parcel was not collected in time"
        await rt.lanes.poll_due()
        await asyncio.sleep(0.2)


def _upstream_batches(api: Api, kind: str) -> list[dict[str, Any]]:
    path = "/v1/batches" if kind == "openai-batch" else "/v1/messages/batches"
    headers = ({"x-api-key": KEY, "anthropic-version": "2023-06-01"} if kind == "anthropic-batch"
               else {"Authorization": f"Bearer {KEY}"})
    got = httpx.get(api.base + path, params={"limit": 100}, headers=headers)
    assert got.status_code == 200, got.text
    return list(got.json()["data"])


async def _check_answered_once(store: Store, batch: str, rt: Runtime, kind: str, upstream_ids: set[str]) -> None:
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.failed, info.pending) == ("completed", N, 0, 0)
    sim = next(p for p in rt.providers if p.name == "sim")
    line_costs, seen = Decimal(0), []
    async for ok, raw in store.iter_results(batch):
        rec = orjson.loads(raw)
        meta = rec["batchrelay"]
        assert ok and meta["provider"] == "lane", meta
        seen.append(meta["line"])
        (attempt,) = meta["attempts"]
        assert attempt["provider"] == "lane" and attempt["status"] == 200 and attempt["upstream_batch"] in upstream_ids
        # priced from the upstream usage at the lane's price: half what the synchronous provider charges
        usage = Usage.from_dict(meta["usage"])
        assert usage.billable
        full = call_cost(price_of(sim, MODEL[kind]), usage, None, "computed").billed
        assert full is not None and Decimal(meta["cost"]["usd"]) == full / 2
        assert Decimal(attempt["cost"]["usd"]) == Decimal(meta["cost"]["usd"])
        if kind == "openai-batch":
            assert rec["response"]["body"]["object"] == "chat.completion"
        else:
            assert rec["result"]["type"] == "succeeded" and rec["result"]["message"]["type"] == "message"
        line_costs += Decimal(meta["cost"]["usd"])
    assert sorted(seen) == list(range(1, N + 1))
    rs = rows(await store.ledger(batch))
    assert [(r.provider, r["requests"]) for r in rs] == [("lane", N)]
    assert total(rs).cost == line_costs


async def test_a_lane_answers_every_line_once_at_its_price(tmp_path: Path, redis_url: str, prefix: str, store: Store,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic's here (its requests streamed with the create), the batch on a budget; OpenAI's upload
    and create are in the tests below, which the engine drives too."""
    monkeypatch.setenv(KEY_ENV, KEY)
    kind = "anthropic-batch"
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        rt = Runtime.opened(_settings(kind, api.base, sim_url), store)
        try:
            batch = await _submit(store, rt, kind, max_cost="10")
            budget = await Budget(store).info(batch)
            assert budget.reserved_usd > 0 and budget.spent_usd == 0  # reserved for the lane's lines
            await _until_collected(rt)
            budget = await Budget(store).info(batch)  # settled at what the lane billed
            assert budget.reserved_usd == 0 and budget.spent_usd == total(rows(await store.ledger(batch))).cost
            (upstream,) = _upstream_batches(api, kind)  # one parcel, one upstream batch
            await _check_answered_once(store, batch, rt, kind, {upstream["id"]})
            counts = upstream["request_counts"]
            assert (counts.get("total") or counts.get("succeeded")) == N
        finally:
            await rt.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_create_cut_off_before_its_id_was_recorded_is_found_not_made_again(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        rt = Runtime.opened(_settings(kind, api.base, sim_url), store)
        try:
            batch = await _submit(store, rt, kind)
            # what a worker killed between the create and its record leaves: the parcel marked creating,
            # its upstream batch made
            parcels, lane = LaneStore(store), next(p for p in rt.providers if p.name == "lane")
            await asyncio.sleep(0.3)
            (pid,) = await parcels.due(time.time())
            p = await parcels.parcel(pid)
            assert p is not None and p.state == "gathering" and p.n == N
            assert await parcels.advance(pid, "gathering", "sealed", sealed_at=time.time())
            p = await parcels.parcel(pid)
            assert p is not None
            path, n, _ = await request_file(parcels, p, lane, rt.settings.worker, tmp_path)
            assert n == N
            async with httpx.AsyncClient() as http:
                client = LaneClient(lane, http)
                file_id = await client.upload(path.name, path) if kind == "openai-batch" else None
                assert await parcels.advance(pid, "sealed", "uploaded", **({"file_id": file_id} if file_id else {}))
                assert await parcels.advance(pid, "uploaded", "creating", creating_at=time.time())
                made = await client.create(pid=pid, batch_id=batch, path=path, endpoint=endpoint(lane),
                                           file_id=file_id)
            # the next look finds it, records it and goes on with it
            await _until_collected(rt)
            (upstream,) = _upstream_batches(api, kind)
            assert upstream["id"] == made.id
            await _check_answered_once(store, batch, rt, kind, {made.id})
        finally:
            await rt.close()


async def test_lines_an_upstream_batch_did_not_answer_go_on_to_the_synchronous_provider(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    kind = "openai-batch"
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:",
                                                  serve_extra="batch_window_s = 2") as api:
        api.sim.configure(latency_ms=1500)  # 2 at a time: the upstream batch expires before it answers all
        rt = Runtime.opened(_settings(kind, api.base, sim_url), store)
        try:
            batch = await _submit(store, rt, kind)
            await _until_collected(rt)
            back = await store.chunk_map(batch)  # the lines given back: a chunk of their own, queued
            assert back, "the upstream answered every line within its window: the test proves nothing"
            for cid, lines in back.items():
                await rt.run_chunk(batch, lines, cid)
            (upstream,) = _upstream_batches(api, kind)
            assert upstream["status"] == "expired"
        finally:
            await rt.close()
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == ("completed", N, 0)
    by: dict[str, int] = {"lane": 0, "sim": 0}
    line_costs = Decimal(0)
    async for ok, raw in store.iter_results(batch):
        assert ok
        meta = orjson.loads(raw)["batchrelay"]
        by[meta["provider"]] += 1
        line_costs += Decimal(meta["cost"]["usd"])
        first = meta["attempts"][0]
        assert first["provider"] == "lane" and first["upstream_batch"] == upstream["id"]
        if meta["provider"] == "sim":  # failed over: the lane's attempt says why, then the answer
            assert first["status"] is None and first["error"].startswith("upstream expired"), first
            assert [a["provider"] for a in meta["attempts"]] == ["lane", "sim"]
    assert by["sim"] == sum(len(lines) for lines in back.values()) and by["lane"] + by["sim"] == N
    rs = rows(await store.ledger(batch))
    assert {r.provider: r["requests"] for r in rs} == {k: v for k, v in by.items() if v}
    assert total(rs).cost == line_costs


async def test_a_cancelled_batch_cancels_its_upstream_batch_and_keeps_what_it_answered(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    kind = "openai-batch"
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        api.sim.configure(latency_ms=1000)  # 2 at a time: the cancel comes while the upstream batch runs
        # the upstream ends a cancelled batch once its calls in flight are done (its own sweep, every 15 s)
        rt = Runtime.opened(_settings(kind, api.base, sim_url, cancel_wait_s=50), store)
        assert rt.lanes is not None
        try:
            batch = await _submit(store, rt, kind)
            deadline = time.monotonic() + 30
            while not (ups := _upstream_batches(api, kind)) or not ups[0]["request_counts"]["completed"]:
                assert time.monotonic() < deadline, "the upstream batch answered nothing"
                await rt.lanes.poll_due()
                await asyncio.sleep(0.2)
            await cancel(store, batch, grace_s=0, wait=False)
            await _until_collected(rt)
            await advance(store, batch, grace_s=0)  # the lines the lane let go of are cancelled
            (upstream,) = _upstream_batches(api, kind)
        finally:
            await rt.close()
    assert upstream["status"] == "cancelled"
    info = await store.info(batch)
    assert info.status == "cancelled" and info.succeeded >= 1 and info.cancelled >= 1
    assert (info.succeeded + info.cancelled, info.failed, info.pending) == (N, 0, 0)
    line_costs = Decimal(0)
    async for ok, raw in store.iter_results(batch):
        meta = orjson.loads(raw)["batchrelay"]
        line_costs += Decimal(meta["cost"]["usd"])
        (attempt,) = meta["attempts"]  # the lane's, in the answered lines and in the cancelled ones
        assert attempt["provider"] == "lane" and attempt["upstream_batch"] == upstream["id"]
        assert ok == (meta.get("error") is None) and (ok or attempt["status"] is None)
    rs = rows(await store.ledger(batch))
    assert [(r.provider, r["requests"]) for r in rs] == [("lane", info.succeeded)]
    assert total(rs).cost == line_costs


async def test_a_burst_worker_waits_for_its_lane_and_ends_once_the_parcel_is_collected(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    kind = "openai-batch"
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        settings = _settings(kind, api.base, sim_url, prefix=prefix)
        spec = BatchSpec(name="t", chunk_size=N, completion_window=120)

        def src() -> io.BytesIO:
            return io.BytesIO(b"".join(orjson.dumps(_line(kind, i)) + b"\n" for i in range(N)))
        # another `run`'s batch, on a queue of its own, has a parcel open (gathering for an hour): this
        # worker neither waits for it nor moves it on
        parcels, now = LaneStore(store), time.time()
        other = (await submit_stream(store, src(), spec, source="t", queue=f"{store.keys.queue}:run:other")).batch_id
        ((cid, lines),) = (await store.chunk_map(other)).items()
        assert await parcels.take("lane", other, cid, [(n, f"{other}-{n}", 100) for n in lines], deadline=now + 120,
                                  must_end_by=now + 100, max_lines=100, max_bytes=10_000, gather_s=3600, now=now)
        res = await submit_stream(store, src(), spec, source="t")
        worker = build_worker(settings, redis_url, burst=True, handle_signals=False)
        with caplog.at_level(logging.INFO, logger="arq"):
            await asyncio.wait_for(run_worker(worker), 60)  # its queue is empty at once: the lane's parcel is not
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        # one arq run however long the parcel took (gathering, upstream, polls: it was re-run, and
        # logged its start, twice a second while it waited)
        starts = [r for r in caplog.records if r.getMessage().startswith("Starting worker")]
        assert len(starts) == 1
        assert await parcels.open_parcels(res.batch_id) == 0
        other_parcel = await parcels.parcel(f"{other}-p1")
        assert other_parcel is not None and other_parcel.state == "gathering"
        (upstream,) = _upstream_batches(api, kind)
        rt = Runtime.opened(settings, store)
        try:
            await _check_answered_once(store, res.batch_id, rt, kind, {upstream["id"]})
        finally:
            await rt.close()


OTHER_LINE = {  # a line in the dialect the lane does not speak
    "openai-batch": lambda i: {"custom_id": f"m-{i}", "params": {"model": MODEL["openai-batch"], "max_tokens": 64,
                                                                 "messages": [{"role": "user", "content": f"q {i}"}]}},
    "anthropic-batch": lambda i: openai_line(i, MODEL["anthropic-batch"]),
}


def _shape(record: dict[str, Any]) -> dict[str, Any]:
    """What a record's answer looks like, whatever the words: its keys, its kind of body and content."""
    meta = record["batchrelay"]
    if "response" in record:  # an OpenAI-format line's record
        body = record["response"]["body"]
        message = body["choices"][0]["message"]
        answer = (body["object"], sorted(body), sorted(body["usage"]), message["role"], type(message["content"]))
    else:
        message = record["result"]["message"]
        answer = (record["result"]["type"], sorted(message), sorted(message["usage"]),
                  [block["type"] for block in message["content"]])
    return {"answer": answer, "model": (body if "response" in record else message)["model"],
            "translated": meta.get("translated"), "notes": meta.get("notes")}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_line_in_the_other_dialect_is_answered_by_the_lane_in_its_own_as_a_synchronous_provider_would(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An Anthropic line on an OpenAI Batch lane, or an OpenAI line on an Anthropic one: the request
    goes up translated and the answer comes back in the line's own dialect, priced at the lane's price;
    the record has the shape the synchronous path gives the same line (a provider that speaks only the
    lane's dialect: it translates too)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        base = _settings(kind, api.base, sim_url)
        lane = next(p for p in base.providers if p.is_lane)
        sync = ProviderConfig(name="sim", base_url=sim_url, dialects=lane.dialects)  # translates too
        settings = base.model_copy(update={"providers": (sync, lane)})
        rt = Runtime.opened(settings, store)
        try:
            src = b"".join(orjson.dumps(OTHER_LINE[kind](i)) + b"\n" for i in range(1, N + 1))
            lanes = await submit_stream(store, io.BytesIO(src), BatchSpec(name="t", chunk_size=N, completion_window=120),
                                        source="t")
            synchronous = await submit_stream(store, io.BytesIO(src), BatchSpec(name="t", chunk_size=N), source="t")
            for res in (lanes, synchronous):
                ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
                await rt.run_chunk(res.batch_id, lines, cid)
            await _until_collected(rt)
            (upstream,) = _upstream_batches(api, kind)
            records = {}
            for res in (lanes, synchronous):
                info = await store.info(res.batch_id)
                assert (info.status, info.succeeded) == ("completed", N)
                records[res.batch_id] = [orjson.loads(raw) async for _, raw in store.iter_results(res.batch_id)]
        finally:
            await rt.close()
    line_dialect = "chat" if kind == "anthropic-batch" else "messages"
    for by_lane, by_sync in zip(records[lanes.batch_id], records[synchronous.batch_id], strict=True):
        meta = by_lane["batchrelay"]
        (attempt,) = meta["attempts"]
        assert meta["provider"] == "lane" and attempt["upstream_batch"] == upstream["id"], meta
        assert by_sync["batchrelay"]["provider"] == "sim"
        assert meta["translated"] == {"from": line_dialect, "to": lane.dialects[0]}
        assert _shape(by_lane) == _shape(by_sync)
        assert _shape(by_lane)["model"] == MODEL[kind]  # the line's own model name
        full = call_cost(price_of(sync, MODEL[kind]), Usage.from_dict(meta["usage"]), None, "computed").billed
        assert full is not None and Decimal(meta["cost"]["usd"]) == full / 2


async def test_an_anthropic_lane_makes_no_new_batch_while_a_cut_off_create_of_it_is_not_found_yet(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic's batches are told apart by request count and time only: were a second create of the
    lane cut off too while the first is not found yet, two parcels of the same size would compete for
    one upstream batch. So parcel A, marked `creating` by a worker that died before its create went out,
    is recovered (not found, created again once create_wait_s is over) before B, of the same size, is
    created; each parcel is answered by its own upstream batch."""
    monkeypatch.setenv(KEY_ENV, KEY)
    kind = "anthropic-batch"
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        rt = Runtime.opened(_settings(kind, api.base, sim_url), store)
        assert rt.lanes is not None
        try:
            parcels = LaneStore(store)
            a = await _submit(store, rt, kind)
            pid_a = f"{a}-p1"
            assert await parcels.advance(pid_a, "gathering", "sealed", sealed_at=time.time())
            assert await parcels.advance(pid_a, "sealed", "uploaded")
            assert await parcels.advance(pid_a, "uploaded", "creating", creating_at=time.time())  # and died
            b = await _submit(store, rt, kind)
            deadline = time.monotonic() + 2  # create_wait_s is 3: A is not created again before then
            while time.monotonic() < deadline:
                await rt.lanes.poll_due()
                await asyncio.sleep(0.2)
            p_b = await parcels.parcel(f"{b}-p1")
            assert p_b is not None and p_b.state == "uploaded" and _upstream_batches(api, kind) == []
            await _until_collected(rt)
            ups = _upstream_batches(api, kind)
            assert len(ups) == 2
            a_view, b_view = await parcels.parcel(pid_a), await parcels.parcel(f"{b}-p1")
            assert a_view is not None and b_view is not None and a_view.upstream_id != b_view.upstream_id
            created = {u["id"]: u["created_at"] for u in ups}
            assert created[a_view.upstream_id] <= created[b_view.upstream_id]  # A's recovery came first
            for batch, view in ((a, a_view), (b, b_view)):
                await _check_answered_once(store, batch, rt, kind, {view.upstream_id})
        finally:
            await rt.close()


async def _answered_after_the_lane(store: Store, rt: Runtime, batch: str) -> list[dict[str, Any]]:
    """Run the chunks of lines the lane gave back (the synchronous provider answers them); each line's
    record's meta."""
    back = await store.chunk_map(batch)
    assert back, "the lane gave no line back"
    for cid, lines in back.items():
        await rt.run_chunk(batch, lines, cid)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == ("completed", N, 0)
    return [orjson.loads(raw)["batchrelay"] async for _, raw in store.iter_results(batch)]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_lane_that_cannot_be_reached_gives_its_lines_back_at_once_and_cools(
        kind: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo'd base_url: the parcel (nothing upstream yet) fails to upload (OpenAI) or create (Anthropic:
    no connection, so nothing was created) SEND_TRIES times, then its lines go to the synchronous
    provider, long before the deadline; the lane cools in the shared health (`providers` shows why) and
    the next batch's lines are not handed to it."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with SimulatorProcess({}) as sim_url:
        settings = _settings(kind, f"http://127.0.0.1:{free_port()}", sim_url)
        rt = Runtime.opened(settings, store)
        try:
            batch = await _submit(store, rt, kind)
            t0 = time.monotonic()
            await _until_collected(rt, timeout=20)
            assert time.monotonic() - t0 < 15  # not held until deadline - margin (120 s - 5 s)
            for meta in await _answered_after_the_lane(store, rt, batch):
                lane, sim = meta["attempts"]
                assert (lane["provider"], sim["provider"], meta["provider"]) == ("lane", "sim", "sim")
                assert lane["status"] is None and "ConnectError" in lane["error"], lane
                assert lane["error"].startswith(f"could not be sent to the lane {SEND_TRIES} times"), lane
            (health,) = (await Health(store, settings.health).snapshot(["lane"])).values()
            assert health["state"] == "cooling" and "ConnectError" in health["last"], health
            src = io.BytesIO(b"".join(orjson.dumps(_line(kind, i)) + b"\n" for i in range(N)))
            res = await submit_stream(store, src, BatchSpec(name="t", chunk_size=N, completion_window=120), source="t")
            ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
            await rt.run_chunk(res.batch_id, lines, cid)
            assert (await store.info(res.batch_id)).succeeded == N  # all synchronous: the lane is cooling
            assert rt.lanes is not None and not await rt.lanes.open()
        finally:
            await rt.close()


async def test_a_refused_key_fails_the_lines_over_saying_why_and_providers_check_lists_batches(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong key: the upload gets a 401, the lane is disabled in the shared health, its lines' lane
    attempts carry the 401 and the upstream's words (not the key); the notes `submit` and `run` print
    say the lane is not used and why. `providers check` lists the lane's batches (no chat call), fails
    with the wrong key, passes with the right one and re-enables the lane."""
    wrong = "sk-wrong-key-0123456789"
    monkeypatch.setenv(KEY_ENV, wrong)
    kind = "openai-batch"
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        settings = _settings(kind, api.base, sim_url)
        rt = Runtime.opened(settings, store)
        try:
            batch = await _submit(store, rt, kind)
            await _until_collected(rt, timeout=20)
            for meta in await _answered_after_the_lane(store, rt, batch):
                lane = meta["attempts"][0]
                assert lane["provider"] == "lane" and lane["status"] == 401, lane
                assert lane["error"] == "the upstream refused the batch (list files: HTTP 401: Incorrect API key provided.)"
                assert wrong not in orjson.dumps(meta).decode()
            health = await Health(store, settings.health).snapshot(["lane"])
            assert health["lane"]["state"] == "disabled"
            est = estimate_jobs([JobLine(1, "c1", "bare", "chat", _line(kind, 1)["body"])], settings,
                                deadline=time.time() + 120)
            (note,) = lane_notes(est, [next(p for p in settings.providers if p.name == "lane")], time.time(), "", health=health)
            assert (note.used, note.reason) == (False, "disabled")
            assert note.text.startswith("lane lane not used: disabled for ") and " after HTTP 401 (check its key" in note.text and \
                "check its key; `batchrelay providers check` re-enables it" in note.text, note.text
            lane_cfg = next(p for p in settings.providers if p.name == "lane")
            for live in (False, True):
                (res,) = await check_all([lane_cfg], live=live, model=None)
                assert res.state == "fail" and [c["check"] for c in res.checks][0] == "batches", res.checks
                assert "HTTP 401" in res.checks[0]["detail"] and wrong not in str(res.checks)
            monkeypatch.setenv(KEY_ENV, KEY)
            (res,) = await check_all([lane_cfg], live=True, model=None)
            assert res.state == "ok" and res.recovered, res.checks  # and --live made no chat call:
            assert [(c["check"], c["ok"]) for c in res.checks] == [("batches", True), ("live", None)]
            await Health(store, settings.health).clear("lane", cooling=True)  # what `providers check` does then
            assert (await Health(store, settings.health).snapshot(["lane"]))["lane"]["state"] != "disabled"
        finally:
            await rt.close()


async def test_providers_check_lists_each_kind_of_lane_s_batches_with_its_own_auth(
        tmp_path: Path, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's `GET /v1/batches` (Bearer) and Anthropic's `GET /v1/messages/batches` (x-api-key):
    ok with the key `serve` accepts, FAIL naming the 401 with another; never a chat request."""
    with serving(tmp_path, redis_url, f"{prefix}up:", worker=False) as api:
        lanes = [next(p for p in _settings(kind, api.base, "http://127.0.0.1:1").providers if p.is_lane)
                 for kind in KINDS]
        monkeypatch.setenv(KEY_ENV, KEY)
        good = await check_all(lanes, live=False, model=None)
        monkeypatch.setenv(KEY_ENV, "sk-not-this-one")
        bad = await check_all(lanes, live=False, model=None)
    assert [(r.state, r.checks[0]["check"], r.recovered) for r in good] == [("ok", "batches", True)] * 2, good
    for r, path in zip(bad, ("/v1/batches", "/v1/messages/batches"), strict=True):
        assert r.state == "fail" and "HTTP 401" in r.checks[0]["detail"] and "key is refused" in r.checks[0]["detail"]
        assert r.checks[0]["detail"].startswith("list batches: HTTP 401"), r.checks
        assert path in next(c["detail"] for c in (good[0 if path == "/v1/batches" else 1].checks))
