"""`serve` as faithful as Anthropic's Message Batches API, checked with the official anthropic SDK:
listing batches (limit, before_id/after_id, has_more, first_id, last_id), deleting an ended batch
(and refusing one still in progress), requests of another shape refused at create, only the API's
own batches, and every unknown route or method in Anthropic's error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from batchrelay.errors import BatchNotFound
from batchrelay.store.store import Store

from .conftest import openai_line
from .servekit import Api, anthropic_request, jsonl, poll, serving


@pytest.fixture
def api(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Api]:
    with serving(tmp_path, redis_url, prefix) as a:
        yield a


def _error(r: Any, kind: str) -> str:
    body: dict[str, Any] = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    return message


def test_batches_are_listed_newest_first_in_pages_both_ways(api: Api) -> None:
    client = api.anthropic()
    ids = [client.messages.batches.create(requests=[anthropic_request(i)]).id for i in range(4)]  # type: ignore[list-item]
    newest = ids[::-1]

    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2] and page.has_more
    assert (page.first_id, page.last_id) == (newest[0], newest[1])
    assert [b.id for b in client.messages.batches.list(limit=3)] == newest  # the SDK follows after_id
    older = client.messages.batches.list(after_id=newest[1])
    assert [b.id for b in older.data] == newest[2:] and not older.has_more
    newer = client.messages.batches.list(before_id=newest[3], limit=2)
    assert [b.id for b in newer.data] == newest[1:3] and newer.has_more
    assert (newer.first_id, newer.last_id) == (newest[1], newest[2])
    # the SDK follows before_id (first_id) towards the newest, a page at a time
    assert [b.id for b in client.messages.batches.list(before_id=newest[3], limit=2)] == [*newest[1:3], newest[0]]
    top = client.messages.batches.list(before_id=newest[1])
    assert [b.id for b in top.data] == newest[:1] and not top.has_more
    empty = client.messages.batches.list(after_id=newest[3])
    assert (empty.data, empty.has_more, empty.first_id, empty.last_id) == ([], False, None, None)
    assert all(b.type == "message_batch" for b in client.messages.batches.list())

    for query in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"after_id": "msgbatch_nope"},
                  {"before_id": ids[0], "after_id": ids[1]}):
        r = api.request("GET", "/v1/messages/batches", params=query)
        assert r.status_code == 400, query
        _error(r, "invalid_request_error")


async def test_an_ended_batch_is_deleted_and_one_in_progress_is_not(api: Api, store: Store) -> None:
    client = api.anthropic()
    api.sim.configure(latency_ms=400)
    slow = client.messages.batches.create(requests=[anthropic_request(i) for i in range(1, 21)])  # type: ignore[misc]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.delete(slow.id)
    assert "cancel" in str(e.value)
    assert client.messages.batches.retrieve(slow.id).processing_status in ("in_progress", "canceling")

    client.messages.batches.cancel(slow.id)
    poll(lambda: client.messages.batches.retrieve(slow.id), lambda b: b.processing_status == "ended")
    deleted = client.messages.batches.delete(slow.id)
    assert (deleted.id, deleted.type) == (slow.id, "message_batch_deleted")
    for gone in (lambda: client.messages.batches.retrieve(slow.id), lambda: client.messages.batches.delete(slow.id),
                 lambda: list(client.messages.batches.results(slow.id))):
        with pytest.raises(anthropic.NotFoundError):
            gone()
    assert slow.id not in [b.id for b in client.messages.batches.list()]
    with pytest.raises(BatchNotFound):  # its record, requests, results and ledger went with it
        await store.info("batch_" + slow.id.removeprefix("msgbatch_"))


def test_requests_of_another_shape_are_refused_at_create(api: Api) -> None:
    client = api.anthropic()
    for bad in ([anthropic_request(1), {"custom_id": "o", **{k: v for k, v in openai_line(2).items() if k != "custom_id"}}],
                [anthropic_request(1), openai_line(2)["body"]], [anthropic_request(1), "text"],
                [{"custom_id": 3, "params": anthropic_request(3)["params"]}],
                [{"custom_id": "m", "params": "hello"}]):
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.batches.create(requests=bad)  # type: ignore[arg-type]
        assert "requests." in str(e.value)
    assert list(client.messages.batches.list()) == []


def test_only_this_apis_batches_are_seen(api: Api) -> None:
    oa = api.openai()
    uploaded = oa.files.create(file=("in.jsonl", jsonl([openai_line(1)])), purpose="batch")
    openai_batch = oa.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    poll(lambda: oa.batches.retrieve(openai_batch.id), lambda b: b.status == "completed")
    client = api.anthropic()
    as_msgbatch = "msgbatch_" + openai_batch.id.removeprefix("batch_")
    assert list(client.messages.batches.list()) == []
    for call in (client.messages.batches.retrieve, client.messages.batches.cancel, client.messages.batches.delete,
                 lambda i: list(client.messages.batches.results(i))):
        with pytest.raises(anthropic.NotFoundError):
            call(as_msgbatch)
    assert oa.batches.retrieve(openai_batch.id).status == "completed"


def test_unknown_routes_and_methods_answer_in_anthropic_error_shape(api: Api) -> None:
    for method, path, status in (("GET", "/v1/messages/nope", 404), ("POST", "/v1/messages", 404),
                                 ("PUT", "/v1/messages/batches", 405), ("POST", "/v1/messages/batches/msgbatch_x", 405),
                                 ("GET", "/v1/messages/batches/msgbatch_x/cancel", 405)):
        r = api.request(method, path)
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["content-type"] == "application/json"
        _error(r, "not_found_error" if status == 404 else "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as e:
        api.anthropic().messages.create(model="claude-3-5-haiku-latest", max_tokens=8,
                                        messages=[{"role": "user", "content": "hi"}])
    assert isinstance(e.value.body, dict) and e.value.body["error"]["type"] == "not_found_error"
