"""`serve` as faithful as the OpenAI Files and Batches APIs it copies, checked with the official
openai SDK: listing files (purpose, pagination), deleting a batch's output and error files,
`output_expires_after` and a file's `expires_after`, a cancel of a finished batch (409), a batch
whose lines are for another endpoint (failed at validation), only the API's own batches, and
every unknown route or method in OpenAI's error shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from batchrelay.errors import BatchNotFound
from batchrelay.store.files import file_record, save_file_record
from batchrelay.store.store import Store

from .conftest import batchrelay, openai_line
from .servekit import Api, jsonl, poll, serving

BAD = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
HOUR = 3600


@pytest.fixture
def api(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Api]:
    with serving(tmp_path, redis_url, prefix) as a:
        yield a


def _finished_batch(client: openai.OpenAI, lines: list[dict[str, Any]], **options: Any) -> Any:
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", **options)
    return poll(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")


def _error(r: Any) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_files_are_listed_newest_first_by_purpose_and_in_pages(api: Api) -> None:
    client = api.openai()
    ids = [client.files.create(file=(f"f{i}.jsonl", jsonl([openai_line(i)])), purpose="batch").id for i in range(5)]
    newest_first = ids[::-1]

    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == newest_first  # the SDK follows `after` to the end
    assert [f.id for f in client.files.list(order="asc", limit=3)] == ids
    last = client.files.list(after=ids[2], limit=10)
    assert [f.id for f in last.data] == ids[:2][::-1] and not last.has_more
    assert [f.id for f in client.files.list(after=ids[2], order="asc").data] == ids[3:]
    assert {f.purpose for f in client.files.list()} == {"batch"}
    assert list(client.files.list(purpose="batch_output")) == []

    done = _finished_batch(client, [openai_line(1), BAD])
    outputs = [f.id for f in client.files.list(purpose="batch_output")]
    assert sorted(outputs) == sorted([done.output_file_id, done.error_file_id])
    assert not set(outputs) & {f.id for f in client.files.list(purpose="batch")}
    assert outputs[0] in [f.id for f in client.files.list(limit=1)]  # newest of all: created when the batch ended

    for query, param in (({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"order": "up"}, "order"),
                         ({"after": "file-000000000000000000000000"}, "after")):
        r = api.request("GET", "/v1/files", params=query)
        assert r.status_code == 400 and _error(r)["param"] == param


async def test_deleting_output_and_error_files_deletes_their_records(api: Api, store: Store) -> None:
    client = api.openai()
    done = _finished_batch(client, [openai_line(1), openai_line(2), BAD])
    assert client.files.content(done.output_file_id).text.count("\n") == 2

    deleted = client.files.delete(done.output_file_id)
    assert (deleted.id, deleted.deleted, deleted.object) == (done.output_file_id, True, "file")
    for gone in (lambda: client.files.retrieve(done.output_file_id), lambda: client.files.content(done.output_file_id),
                 lambda: client.files.delete(done.output_file_id)):
        with pytest.raises(openai.NotFoundError):
            gone()
    assert done.output_file_id not in [f.id for f in client.files.list()]
    after = client.batches.retrieve(done.id)  # the batch still names the file, as OpenAI's does
    assert after.status == "completed" and after.output_file_id == done.output_file_id
    assert after.request_counts == done.request_counts
    assert [ok for ok, _ in [r async for r in store.iter_results(done.id)]] == [False]  # the answers are gone

    assert '"bad"' in client.files.content(done.error_file_id).text
    assert client.files.delete(done.error_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.error_file_id)
    assert [r async for r in store.iter_results(done.id)] == []


async def test_output_expires_after_is_honoured(api: Api, store: Store) -> None:
    client = api.openai()
    done = _finished_batch(client, [openai_line(1), BAD],
                           output_expires_after={"anchor": "created_at", "seconds": 2 * HOUR})
    out = client.files.retrieve(done.output_file_id)
    assert out.expires_at == out.created_at + 2 * HOUR
    assert client.files.retrieve(done.error_file_id).expires_at == out.expires_at

    info = await store.info(done.id)
    assert info.finished_at is not None
    await store.set_fields(done.id, {"finished_at": str(info.finished_at - 2 * HOUR - 1)})  # two hours on
    for file_id in (done.output_file_id, done.error_file_id):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(file_id)
    assert list(client.files.list(purpose="batch_output")) == []
    assert [r async for r in store.iter_results(done.id)] == []


POLICIES: list[Any] = [{"anchor": "created_at", "seconds": 60}, {"anchor": "created_at", "seconds": 31 * 24 * HOUR},
                       {"anchor": "completed_at", "seconds": HOUR}, {"seconds": HOUR},
                       {"anchor": "created_at", "seconds": "3600"}, {"anchor": "created_at", "seconds": True}, "1h"]


def test_an_output_expiry_it_cannot_honour_is_a_400_naming_it(api: Api) -> None:
    client = api.openai()
    uploaded = client.files.create(file=("in.jsonl", jsonl([openai_line(1)])), purpose="batch")
    for policy in POLICIES:
        with pytest.raises(openai.BadRequestError) as e:
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", output_expires_after=policy)
        assert "output_expires_after" in str(e.value)
        assert isinstance(e.value.body, dict) and e.value.body["param"] == "output_expires_after"
    assert list(client.batches.list()) == []


async def test_an_uploaded_files_expires_after_is_honoured(api: Api, store: Store) -> None:
    client = api.openai()
    f = client.files.create(file=("in.jsonl", jsonl([openai_line(1)])), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": HOUR})
    assert f.expires_at == f.created_at + HOUR
    assert client.files.retrieve(f.id).expires_at == f.expires_at
    record = await file_record(store, f.id)
    assert record is not None
    await save_file_record(store, f.id, {**record, "expires_at": str(time.time() - 1)})  # an hour on
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    assert await file_record(store, f.id) is None and not list(api.files_dir.iterdir())

    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at",
                                                                                         "seconds": 5})
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "expires_after"


def test_cancelling_a_finished_batch_is_a_conflict(api: Api) -> None:
    client = api.openai()
    done = _finished_batch(client, [openai_line(1)])
    with pytest.raises(openai.ConflictError) as e:
        client.batches.cancel(done.id)
    assert "completed" in str(e.value)
    assert client.batches.retrieve(done.id).status == "completed"


def test_lines_for_another_endpoint_fail_the_batch_at_validation(api: Api) -> None:
    client = api.openai()
    messages_line = {**openai_line(2), "url": "/v1/messages"}
    anthropic_line = {"custom_id": "a-4", "params": openai_line(4)["body"]}
    data = jsonl([openai_line(1), messages_line, openai_line(3), anthropic_line, openai_line(5)])
    uploaded = client.files.create(file=("mixed.jsonl", data), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    failed = poll(lambda: client.batches.retrieve(created.id), lambda b: b.status not in ("validating",), 10)
    assert failed.status == "failed" and failed.failed_at and failed.in_progress_at is None
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.line, e.param) for e in failed.errors.data] == [(2, "url"), (4, "url")]
    assert all(e.code and e.message for e in failed.errors.data)
    assert "/v1/messages" in (failed.errors.data[0].message or "")
    assert failed.output_file_id is None and failed.error_file_id is None
    assert failed.request_counts is not None and failed.request_counts.total == 0
    assert failed.input_file_id == uploaded.id and failed.id in [b.id for b in client.batches.list()]
    time.sleep(1)
    assert api.sim.stats()["calls"] == 0  # nothing of it was sent


def test_only_this_apis_batches_are_listed_and_each_names_a_real_input_file(api: Api, tmp_path: Path) -> None:
    client = api.openai()
    (tmp_path / "cli.jsonl").write_bytes(jsonl([openai_line(1)]))
    proc = batchrelay("-c", str(api.config), "submit", str(tmp_path / "cli.jsonl"), env=api.env)
    assert proc.returncode == 0, proc.stderr
    cli_batch = proc.stdout.strip().split()[-1]
    assert cli_batch.startswith("batch_")
    anthropic_batch = api.anthropic().messages.batches.create(requests=[{  # type: ignore[list-item]
        "custom_id": "m", "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]}}])
    own = _finished_batch(client, [openai_line(1)])

    listed = list(client.batches.list())
    assert [b.id for b in listed] == [own.id]
    for b in listed:
        assert client.files.retrieve(b.input_file_id).purpose == "batch"
    for other in (cli_batch, "batch_" + anthropic_batch.id.removeprefix("msgbatch_")):
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(other)
        with pytest.raises(openai.NotFoundError):
            client.batches.cancel(other)


def test_unknown_routes_and_methods_answer_in_openai_error_shape(api: Api) -> None:
    for method, path, status in (("GET", "/v1/nope", 404), ("GET", "/nope", 404),  # `/` is the dashboard
                                 ("POST", "/v1/chat/completions", 404),
                                 ("PUT", "/v1/batches", 405), ("DELETE", "/v1/batches/batch_x", 405),
                                 ("POST", "/v1/files/file-x", 405), ("GET", "/v1/batches/batch_x/cancel", 405)):
        r = api.request(method, path)
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["content-type"] == "application/json"
        error = _error(r)
        assert error["type"] == "invalid_request_error" and method in error["message"] and path in error["message"]
    with pytest.raises(openai.NotFoundError) as e:
        api.openai().models.list()
    assert isinstance(e.value.body, dict) and "/v1/models" in e.value.body["message"]


async def test_a_batch_object_is_gone_with_its_batch(api: Api, store: Store) -> None:
    client = api.openai()
    done = _finished_batch(client, [openai_line(1)])
    await store.delete_batch(done.id)
    with pytest.raises(BatchNotFound):
        await store.info(done.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(done.output_file_id)
    assert list(client.batches.list()) == []
