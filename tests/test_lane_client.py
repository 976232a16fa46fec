"""LaneClient against a real upstream: batchrelay's own `serve` (serve + worker + simulator), which is
an OpenAI Files + Batches and an Anthropic Message Batches API. Both kinds go through upload, create,
poll, results (serve's real result records, read by lane_results), listing, cancel and file deletion;
an unknown id and a wrong key are clear errors that never carry the key; and a batch that expires
(`[serve] batch_window_s`) with part of its lines answered leaves them and its `batch_expired` lines
readable."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import ProviderError, ProviderHTTPError, ProviderTransportError
from batchrelay.providers.classify import Action, classify, retry_after_seconds
from batchrelay.providers.lane_client import HEAD, TAIL, LaneClient, _body_length, _requests_of
from batchrelay.providers.lane_results import Answered, Errored, Unanswered, read
from batchrelay.providers.lane_wire import UpstreamState, custom_id, parse_custom_id, request_line
from batchrelay.sim.process import free_port

from .conftest import drop_prefix
from .servekit import KEY, Api, serving

KEY_ENV = "BATCHRELAY_TEST_LANE_KEY"
CHAT_PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Api, Api]]:
    """Two upstreams, started (and stopped) at the same time, as each takes seconds: one with the APIs'
    24 h window, and one whose batches expire 3 s after they were created."""
    prefixes = [f"brtest:{uuid.uuid4().hex[:10]}:" for _ in range(2)]
    managers = [serving(tmp_path_factory.mktemp("upstream"), redis_url, prefixes[0]),
                serving(tmp_path_factory.mktemp("short"), redis_url, prefixes[1], serve_extra="batch_window_s = 3")]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
    entered = [m for m, f in zip(managers, futures, strict=True) if f.exception() is None]
    try:
        apis = [f.result() for f in futures]
        yield apis[0], apis[1]
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda m: m.__exit__(None, None, None), entered))
        for prefix in prefixes:
            drop_prefix(redis_url, prefix)


@pytest.fixture
def upstream(upstreams: tuple[Api, Api]) -> Api:
    return upstreams[0]


@pytest.fixture
def short(upstreams: tuple[Api, Api]) -> Api:
    """The upstream whose batches expire 3 s after they were created."""
    return upstreams[1]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def lane(kind: str, base: str) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": f"up-{kind}", "kind": kind, "base_url": base,
                                          "api_key_env": KEY_ENV})


def batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


def chat(i: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}


def message(i: int) -> dict[str, Any]:
    return {"model": "claude-3-5-haiku-latest", "max_tokens": 32, "messages": [{"role": "user", "content": f"q {i}"}]}


def write_lines(path: Path, kind: Any, bid: str, bodies: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(request_line(kind, custom_id(bid, i), CHAT_PATH if kind == "openai-batch"
                                           else "/v1/messages", body) for i, body in enumerate(bodies)))
    return path


async def until_ended(client: LaneClient, state: UpstreamState, timeout: float = 20) -> UpstreamState:
    deadline = time.monotonic() + timeout
    while not state.ended:
        assert time.monotonic() < deadline, f"upstream batch not ended: {state}"
        await asyncio.sleep(0.2)
        state = await client.get(state.id)
    return state


async def results(client: LaneClient, state: UpstreamState) -> dict[str, Any]:
    """custom_id -> what became of it, every line read once."""
    out: dict[str, Any] = {}
    async for raw in client.results(state):
        got = read(client.kind, raw)
        assert got.custom_id not in out, f"read twice: {got.custom_id}"
        out[got.custom_id] = got
    return out


async def test_an_openai_batch_is_uploaded_created_polled_and_read(upstream: Api, http: httpx.AsyncClient,
                                                                   tmp_path: Path) -> None:
    client = LaneClient(lane("openai-batch", upstream.base), http)
    bid, pid = batch_id(), f"{batch_id()}-p1"
    bad = {"model": "gpt-4o-mini"}  # no messages: the upstream's provider refuses it (400)
    path = write_lines(tmp_path / "in.jsonl", "openai-batch", bid, [chat(0), chat(1), bad, chat(3)])
    since = time.time()
    filename = f"batchrelay-{pid}.jsonl"
    assert await client.find_file(filename) is None
    file_id = await client.upload(filename, path)
    assert await client.find_file(filename) == file_id  # an upload cut off before its id was recorded

    created = await client.create(pid=pid, batch_id=bid, path=path, endpoint=CHAT_PATH, file_id=file_id)
    assert created.metadata == {"batchrelay_parcel": pid, "batchrelay_batch": bid} and not created.ended
    assert created.created_at is not None and created.created_at >= int(since)
    found = [s for s in await client.list_recent(since) if s.metadata.get("batchrelay_parcel") == pid]
    assert [s.id for s in found] == [created.id]

    done = await until_ended(client, created)
    assert (done.status, done.total, done.succeeded, done.failed) == ("completed", 4, 3, 1)
    assert done.output_file_id and done.error_file_id
    got = await results(client, done)
    assert set(got) == {custom_id(bid, i) for i in range(4)}
    assert {parse_custom_id(c) for c in got} == {(bid, i) for i in range(4)}
    answered = [g for g in got.values() if isinstance(g, Answered)]
    assert len(answered) == 3 and all(a.body["object"] == "chat.completion" and a.body["usage"] for a in answered)
    refused = got[custom_id(bid, 2)]
    assert isinstance(refused, Errored) and refused.status == 400 and refused.message
    assert classify(ProviderHTTPError("up", refused.message, status=refused.status)) is Action.FAIL_LINE

    assert await client.cancel(done.id) == done  # ended: a 409 upstream, its state here
    await client.delete_file(file_id)
    assert await client.find_file(filename) is None
    await client.delete_file(file_id)  # gone already: done all the same


async def test_an_anthropic_message_batch_is_streamed_created_polled_and_read(upstream: Api, http: httpx.AsyncClient,
                                                                              tmp_path: Path) -> None:
    client = LaneClient(lane("anthropic-batch", upstream.base), http)
    headers = client._headers("k", json=True)
    assert headers["x-api-key"] == "k" and headers["anthropic-version"] and "Authorization" not in headers
    bid = batch_id()
    bad = {"model": "claude-3-5-haiku-latest", "max_tokens": 32}  # no messages
    path = write_lines(tmp_path / "in.jsonl", "anthropic-batch", bid, [message(0), bad, message(2)])
    with path.open("ab") as f:
        f.write(b"\n")  # a blank line is no request
    since = time.time()
    created = await client.create(pid="p", batch_id=bid, path=path, endpoint="/v1/messages", file_id=None)
    assert created.id.startswith("msgbatch_") and created.total == 3 and created.metadata == {}
    assert created.id in [s.id for s in await client.list_recent(since)]

    done = await until_ended(client, created)
    assert (done.status, done.total, done.succeeded, done.failed) == ("ended", 3, 2, 1)
    assert done.results_url and done.results_url.startswith(upstream.base)
    got = await results(client, done)
    assert set(got) == {custom_id(bid, i) for i in range(3)}
    assert all(isinstance(got[custom_id(bid, i)], Answered) for i in (0, 2))
    assert got[custom_id(bid, 0)].body["type"] == "message"
    refused = got[custom_id(bid, 1)]
    assert isinstance(refused, Errored) and refused.status == 400

    # a results_url on another origin never gets the key: the results are read from base_url instead
    elsewhere = dataclasses.replace(done, results_url=f"http://127.0.0.1:{free_port()}/steal")
    assert set(await results(client, elsewhere)) == set(got)
    assert await client.cancel(done.id) == done  # ended: its state
    assert await client.find_file("x") is None
    await client.delete_file("file-x")  # no files: nothing to do


@pytest.mark.parametrize(("kind", "stopping", "stopped"), [("openai-batch", "cancelling", "cancelled"),
                                                         ("anthropic-batch", "canceling", "ended")])
async def test_a_batch_in_progress_is_cancelled_and_keeps_what_it_answered(
        upstream: Api, http: httpx.AsyncClient, tmp_path: Path, kind: Any, stopping: str, stopped: str) -> None:
    upstream.sim.configure(latency_ms=700)
    try:
        client = LaneClient(lane(kind, upstream.base), http)
        bid = batch_id()
        openai = kind == "openai-batch"
        path = write_lines(tmp_path / "in.jsonl", kind, bid, [chat(i) if openai else message(i) for i in range(8)])
        file_id = await client.upload("c.jsonl", path) if openai else None
        created = await client.create(pid="p", batch_id=bid, path=path, endpoint=CHAT_PATH, file_id=file_id)
        cancelling = await client.cancel(created.id)
        assert cancelling.id == created.id and cancelling.status in (stopping, stopped)
        done = await until_ended(client, cancelling)
    finally:
        upstream.sim.configure(latency_ms=0)
    assert done.status == stopped and done.total == 8
    got = await results(client, done)
    assert set(got) == {custom_id(bid, i) for i in range(8)}
    unanswered = [g for g in got.values() if isinstance(g, Unanswered)]
    assert unanswered and all(g.why == "canceled" for g in unanswered)
    assert all(isinstance(g, Answered | Unanswered) for g in got.values())
    assert done.succeeded == len(got) - len(unanswered)
    assert await client.cancel(done.id) == done  # ended: its state (OpenAI answers 409)


@pytest.mark.parametrize(("kind", "unknown"), [("openai-batch", "batch_nosuch"), ("anthropic-batch", "msgbatch_nosuch")])
async def test_an_unknown_batch_is_a_clear_error(upstream: Api, http: httpx.AsyncClient, kind: str,
                                                 unknown: str) -> None:
    client = LaneClient(lane(kind, upstream.base), http)
    for call in (client.get, client.cancel):
        with pytest.raises(ProviderHTTPError) as e:
            await call(unknown)
        assert e.value.status == 404 and unknown in str(e.value) and "HTTP 404" in str(e.value)
        assert classify(e.value) is Action.COOL_MODEL


@pytest.mark.parametrize("kind", ["openai-batch", "anthropic-batch"])
async def test_the_key_is_never_in_an_error(upstream: Api, http: httpx.AsyncClient, kind: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-lane-secret-0123456789abcdef"
    monkeypatch.setenv(KEY_ENV, secret)
    with pytest.raises(ProviderHTTPError) as wrong:
        await LaneClient(lane(kind, upstream.base), http).list_recent(0)
    assert wrong.value.status == 401 and classify(wrong.value) is Action.DISABLE
    closed = LaneClient(lane(kind, f"http://127.0.0.1:{free_port()}"), http)
    with pytest.raises(ProviderTransportError) as down:
        await closed.get(f"x{secret}")  # even an id holding the key
    assert classify(down.value) is Action.RETRY
    for err in (wrong.value, down.value):
        assert secret not in str(err) and secret.encode() not in err.body and secret not in repr(err.args)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ProviderError) as unset:
        await LaneClient(lane(kind, upstream.base), http).get("batch_x")
    assert KEY_ENV in str(unset.value) and unset.value.status is None


def test_a_message_batch_body_is_built_a_piece_at_a_time(tmp_path: Path) -> None:
    lines = [request_line("anthropic-batch", f"c-{i}", "/v1/messages", message(i)) for i in range(50)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    with path.open("rb") as f:
        pieces = list(_requests_of(f, 300))
    longest = max(len(x) for x in lines)
    assert len(pieces) > 1 and all(len(p) < 300 + longest + 1 for p in pieces)
    body = HEAD + b"".join(pieces) + TAIL
    assert _body_length(path) == len(body)
    assert orjson.loads(body) == {"requests": [orjson.loads(x) for x in lines]}


async def test_a_batch_that_expires_keeps_its_answers_and_names_the_expired_lines(
        short: Api, tmp_path: Path, http: httpx.AsyncClient) -> None:
    n = 24  # at 500 ms a call and 2 at a time, about half are answered within the 3 s window
    try:
        client = LaneClient(lane("openai-batch", short.base), http)
        warm = write_lines(tmp_path / "warm.jsonl", "openai-batch", batch_id(), [chat(0)])
        first = await client.create(pid="w", batch_id="w", path=warm, endpoint=CHAT_PATH,
                                    file_id=await client.upload("w.jsonl", warm))
        assert (await until_ended(client, first)).status == "completed"  # the upstream worker is up
        short.sim.configure(latency_ms=500)
        bid = batch_id()
        path = write_lines(tmp_path / "in.jsonl", "openai-batch", bid, [chat(i) for i in range(n)])
        file_id = await client.upload("e.jsonl", path)
        created = await client.create(pid="p", batch_id=bid, path=path, endpoint=CHAT_PATH, file_id=file_id)
        done = await until_ended(client, created, timeout=25)
        got = await results(client, done)
    finally:
        short.sim.configure(latency_ms=0)
    assert done.status == "expired" and done.total == n
    assert set(got) == {custom_id(bid, i) for i in range(n)}
    answered = [g for g in got.values() if isinstance(g, Answered)]
    expired = [g for g in got.values() if isinstance(g, Unanswered)]
    assert answered and expired and len(answered) + len(expired) == n
    assert all(g.why == "expired" for g in expired) and done.succeeded == len(answered)


async def test_a_refused_call_carries_its_status_and_retry_after(short: Api, http: httpx.AsyncClient,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """serve answers 429 with Retry-After once an address sent too many wrong keys (its own serve:
    that address stays throttled for a minute)."""
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    client = LaneClient(lane("openai-batch", short.base), http)
    errors: list[ProviderHTTPError] = []
    for _ in range(40):
        with pytest.raises(ProviderHTTPError) as e:
            await client.get("batch_x")
        errors.append(e.value)
        if e.value.status == 429:
            break
    assert errors[0].status == 401 and errors[-1].status == 429
    wait = retry_after_seconds(errors[-1])
    assert wait is not None and wait > 0 and classify(errors[-1]) is Action.FAILOVER
