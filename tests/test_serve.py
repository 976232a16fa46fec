"""`batchrelay serve` driven by the official openai and anthropic SDKs: upload, create, poll,
download results, cancel; and 401 / 404 in each API's error shape. The server and a worker are
real `batchrelay` processes; the provider is the built-in simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest

from .conftest import batchrelay, openai_line
from .servekit import KEY, Api, anthropic_request, jsonl, poll, serving


@pytest.fixture
def api(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Api]:
    with serving(tmp_path, redis_url, prefix) as a:
        yield a


def test_openai_sdk_upload_create_poll_download(api: Api) -> None:
    client = api.openai()
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    data = jsonl([openai_line(i) for i in range(1, 7)] + [bad])
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data)
    assert uploaded.filename == "requests.jsonl" and uploaded.purpose == "batch"
    assert client.files.retrieve(uploaded.id).bytes == len(data)
    assert client.files.content(uploaded.id).content == data

    api.sim.configure(latency_ms=1000)  # no answer can be in before `create` returns
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"team": "search"})
    api.sim.configure(latency_ms=0)
    # created = validated and queued: in progress at once, the invalid line already counted as failed
    assert batch.id.startswith("batch_") and batch.status == "in_progress"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 0, 1)
    assert batch.in_progress_at == batch.created_at and batch.completed_at is None and batch.output_file_id is None
    assert batch.input_file_id == uploaded.id and batch.metadata == {"team": "search"}
    assert batch.expires_at and batch.expires_at - batch.created_at == 86400

    done = poll(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 6, 1)
    assert done.completed_at and done.in_progress_at and done.cancelled_at is None
    assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert done.output_file_id and done.error_file_id

    out = [orjson.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [r["custom_id"] for r in out] == [f"req-{i}" for i in range(1, 7)]
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in out)
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"]
    errors = [orjson.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [(r["custom_id"], r["error"]["code"]) for r in errors] == [("bad", "invalid_input")]
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"

    listed = client.batches.list(limit=10)
    assert batch.id in [b.id for b in listed.data]

    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert not list(api.files_dir.iterdir())
    assert client.batches.retrieve(batch.id).status == "completed"  # the batch keeps its lines


def test_openai_sdk_cancel_a_slow_batch(api: Api) -> None:
    api.sim.configure(latency_ms=400)
    client = api.openai()
    uploaded = client.files.create(file=("slow.jsonl", jsonl([openai_line(i) for i in range(1, 41)])),
                                   purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    poll(lambda: client.batches.retrieve(batch.id), lambda b: bool(b.request_counts and b.request_counts.completed))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = poll(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "cancelled")
    assert done.cancelled_at and done.request_counts is not None
    assert 0 < done.request_counts.completed < 40 and done.request_counts.total == 40
    assert done.error_file_id
    errors = [orjson.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert errors and {r["error"]["code"] for r in errors} == {"batch_cancelled"}


def test_anthropic_sdk_create_poll_results(api: Api) -> None:
    client = api.anthropic()
    created = client.messages.batches.create(requests=[anthropic_request(i) for i in range(1, 5)])  # type: ignore[misc]
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status in ("in_progress", "ended") and created.expires_at > created.created_at
    ended = poll(lambda: client.messages.batches.retrieve(created.id), lambda b: b.processing_status == "ended")
    assert ended.request_counts.succeeded == 4 and ended.request_counts.processing == 0
    assert ended.ended_at is not None and ended.results_url
    results = list(client.messages.batches.results(created.id))
    assert [r.custom_id for r in results] == [f"m-{i}" for i in range(1, 5)]
    for r in results:
        assert r.result.type == "succeeded"
        assert r.result.message.content[0].type == "text"


def test_anthropic_sdk_cancel(api: Api) -> None:
    api.sim.configure(latency_ms=400)
    client = api.anthropic()
    created = client.messages.batches.create(requests=[anthropic_request(i) for i in range(1, 41)])  # type: ignore[misc]
    canceling = client.messages.batches.cancel(created.id)
    assert canceling.processing_status in ("canceling", "ended") and canceling.cancel_initiated_at
    ended = poll(lambda: client.messages.batches.retrieve(created.id), lambda b: b.processing_status == "ended")
    counts = ended.request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 40
    kinds = [r.result.type for r in client.messages.batches.results(created.id)]
    assert len(kinds) == 40 and "canceled" in kinds


def test_keys_and_error_shapes(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        r = httpx.get(api.base + "/v1/batches", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(api.base + "/v1/messages/batches/msgbatch_0", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"type": "error", "error": {"type": "authentication_error", "message": r.json()["error"]
                                                       ["message"]}}
    # either header style works on either API
    assert httpx.get(api.base + "/v1/batches", headers={"x-api-key": KEY}).status_code == 200
    r = httpx.get(api.base + "/v1/messages/batches/msgbatch_00", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"

    with pytest.raises(openai.AuthenticationError):
        api.openai("wrong").batches.list()
    with pytest.raises(anthropic.AuthenticationError):
        api.anthropic("wrong").messages.batches.retrieve("msgbatch_00")
    with pytest.raises(openai.NotFoundError):
        api.openai().batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        api.openai().files.retrieve("file-0123456789abcdef01234567")
    with pytest.raises(anthropic.NotFoundError):
        api.anthropic().messages.batches.retrieve("msgbatch_nope")
    with pytest.raises(openai.BadRequestError):
        api.openai().files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")


def test_serve_without_client_keys_is_a_clean_error(tmp_path: Path, prefix: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[serve]\napi_keys_env = ["BATCHRELAY_TEST_UNSET_KEY"]\n')
    proc = batchrelay("-c", str(cfg), "serve", env={"BATCHRELAY_TEST_UNSET_KEY": ""}, timeout=30)
    assert proc.returncode == 2
    assert "needs client keys" in proc.stderr and "BATCHRELAY_TEST_UNSET_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_large_upload_round_trips_byte_for_byte(api: Api) -> None:
    data = b"".join(orjson.dumps(openai_line(i)) + b"\r\n--not-the-boundary\r\n" for i in range(30_000))
    r = httpx.post(api.base + "/v1/files", headers={"Authorization": f"Bearer {KEY}"},
                   data={"purpose": "batch"}, files={"file": ("big.jsonl", data, "application/jsonl")})
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(data)
    assert api.openai().files.content(r.json()["id"]).content == data
    assert not list(api.files_dir.glob("*.part"))


def test_upload_limits_answer_in_openai_error_shape(api: Api) -> None:
    from batchrelay.serve.upload_form import MAX_FIELD_BYTES, MAX_FORM_FIELDS

    def post(parts: list[tuple[str, bytes]], after: bytes = b"") -> httpx.Response:
        body = b"".join(b'--XyZ\r\nContent-Disposition: form-data; name="' + name.encode() + b'"'
                        + (b'; filename="in.jsonl"' if name == "file" else b"") + b"\r\n\r\n" + value + b"\r\n"
                        for name, value in parts) + b"--XyZ--\r\n" + after
        return httpx.post(api.base + "/v1/files", content=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=XyZ"})

    data = jsonl([openai_line(1)])
    r = post([("purpose", b"batch"), ("file", data)], after=b"\r\n--XyZ\r\njunk after the end\r\n" * 50_000)
    assert r.status_code == 200, r.text
    assert api.openai().files.content(r.json()["id"]).content == data

    too_many = post([(f"f{i}", b"x") for i in range(MAX_FORM_FIELDS + 1)] + [("purpose", b"batch"), ("file", data)])
    too_long = post([("purpose", b"x" * (MAX_FIELD_BYTES + 1)), ("file", data)])
    for r, status in ((too_many, 413), (too_long, 400)):
        assert r.status_code == status
        assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                      "param": "file", "code": None}}
    assert "more than" in too_many.json()["error"]["message"]
    assert not list(api.files_dir.glob("*.part"))
