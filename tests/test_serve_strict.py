"""`serve` takes only what it can vouch for (issue 14): ids of the exact shapes it hands out (any
other is a plain 404, as is an unknown id, and no Redis key is built from it; the CLI says "no
batch"), OpenAI's limits on `metadata`, Anthropic-shaped results an Anthropic SDK reads, and error
messages that repeat at most a few dozen characters of what a client sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from batchrelay.store.lifecycle import advance, request_stop
from batchrelay.store.store import Store

from .conftest import batchrelay, openai_line
from .servekit import KEY, Api, anthropic_request, jsonl, redis_commands, serving

# the batch keys (store/keys.py) a suffix would name, and ids of almost the right shape
SUFFIXES = (":lines", ":results", ":ids", ":ledger", ":chunks", ":pending", ":first", ":attempts", ":budget",
            ":budget:leases")


@pytest.fixture
def api(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Api]:
    with serving(tmp_path, redis_url, prefix, worker=False) as a:
        yield a


def _openai_batch(client: openai.OpenAI, lines: list[dict[str, Any]], **options: Any) -> Any:
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 **options)


def _openai_404(r: Any) -> None:
    assert r.status_code == 404, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["type"] == "invalid_request_error", r.text


def _anthropic_404(r: Any) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error", r.text


def test_ids_of_any_other_shape_are_a_plain_404_that_reads_no_key(api: Api, redis_url: str) -> None:
    batch = _openai_batch(api.openai(), [openai_line(1), openai_line(2)])  # no worker: its lines stay pending
    msg = api.anthropic().messages.batches.create(requests=[anthropic_request(1)])  # type: ignore[list-item]
    hexes = [batch.id.removeprefix("batch_"), msg.id.removeprefix("msgbatch_")]
    tails = [h + s for h in hexes for s in SUFFIXES] + [hexes[0].upper(), hexes[0][:-1], hexes[0] + "0"]
    with redis_commands(redis_url) as commands, httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for tail in tails:
            for method, path in (("GET", "/v1/batches/batch_{}"), ("POST", "/v1/batches/batch_{}/cancel"),
                                 ("GET", "/v1/files/file-{}-output"), ("GET", "/v1/files/file-{}-errors/content"),
                                 ("DELETE", "/v1/files/file-{}-output")):
                _openai_404(http.request(method, path.format(tail)))
            for method, path in (("GET", "/v1/messages/batches/msgbatch_{}"),
                                 ("GET", "/v1/messages/batches/msgbatch_{}/results"),
                                 ("POST", "/v1/messages/batches/msgbatch_{}/cancel"),
                                 ("DELETE", "/v1/messages/batches/msgbatch_{}")):
                _anthropic_404(http.request(method, path.format(tail)))
    assert not [c for c in commands if any(h in c for h in hexes)]  # not one key of either batch was touched
    assert api.openai().batches.retrieve(batch.id).status == "in_progress"  # and both are as they were
    assert api.anthropic().messages.batches.retrieve(msg.id).processing_status == "in_progress"


def test_the_cli_says_no_batch_for_an_id_of_another_shape(api: Api) -> None:
    batch = _openai_batch(api.openai(), [openai_line(1)])
    for command, suffix in (("status", ":pending"), ("status", ":lines"), ("cancel", ":pending")):
        proc = batchrelay("-c", str(api.config), command, batch.id + suffix, env=api.env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"no batch '{batch.id}{suffix}'" in proc.stderr
    assert api.openai().batches.retrieve(batch.id).status == "in_progress"


def test_metadata_is_held_to_openais_limits(api: Api) -> None:
    client = api.openai()
    line = [openai_line(1)]
    most = {f"{i:064d}": "v" * 512 for i in range(16)}  # 16 keys of 64 characters, values of 512
    assert _openai_batch(client, line, metadata=most).metadata == most
    for metadata, rule in (({**most, "k": "v"}, "metadata: at most 16 key-value pairs, not 17"),
                           ({"k" * 65: "v"}, "metadata: a key is at most 64 characters, not 65"),
                           ({"k": "v" * 513}, "metadata: a value is at most 512 characters, not 513 (that of 'k')"),
                           ({"k": 1}, "metadata: values must be strings; that of 'k' is not"),
                           (["k", "v"], "metadata must be an object of string keys and values")):
        with pytest.raises(openai.BadRequestError) as e:
            _openai_batch(client, line, metadata=metadata)
        assert isinstance(e.value.body, dict) and e.value.param == "metadata"
        assert e.value.body["message"].startswith(rule), e.value.body
    assert [b.metadata for b in client.batches.list()] == [most]


async def test_anthropic_results_are_anthropic_lines_and_an_openai_batch_has_none(api: Api, store: Store) -> None:
    client = api.anthropic()
    requests: list[Any] = [anthropic_request(1), anthropic_request(1),  # the second is a duplicate custom_id
                           {"custom_id": "no-messages", "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 8}}]
    ran = client.messages.batches.create(requests=requests)
    cancelled = client.messages.batches.create(requests=[anthropic_request(2)])  # type: ignore[list-item]
    client.messages.batches.cancel(cancelled.id)
    expired = client.messages.batches.create(requests=[anthropic_request(3)])  # type: ignore[list-item]
    expired_id = "batch_" + expired.id.removeprefix("msgbatch_")
    await request_stop(store, expired_id, "expired")  # as the sweep does past the batch's window
    await advance(store, expired_id, grace_s=60)
    openai_made = _openai_batch(api.openai(), [openai_line(1)])
    api.work()

    types = {}
    for b in (ran, cancelled, expired):
        assert client.messages.batches.retrieve(b.id).processing_status == "ended"
        types[b.id] = [r.result.type for r in client.messages.batches.results(b.id)]
    assert types == {ran.id: ["succeeded", "errored", "errored"], cancelled.id: ["canceled"], expired.id: ["expired"]}
    assert api.openai().batches.retrieve(openai_made.id).status == "completed"

    msg_id = "msgbatch_" + openai_made.id.removeprefix("batch_")
    with pytest.raises(anthropic.NotFoundError):
        list(client.messages.batches.results(msg_id))
    _anthropic_404(api.request("GET", f"/v1/messages/batches/{msg_id}/results"))


def test_error_messages_repeat_at_most_a_little_of_what_the_client_sent(api: Api) -> None:
    huge = "f" * 500_000
    with pytest.raises(openai.NotFoundError) as e:
        api.openai().batches.create(input_file_id="file-" + huge, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    assert len(e.value.response.content) < 1024 and "…" in e.value.response.text

    long = "x" * 8000
    for method, path, params, status in (
            ("GET", f"/v1/batches/batch_{long}", None, 404), ("POST", f"/v1/batches/{long}/cancel", None, 404),
            ("GET", f"/v1/files/file-{long}", None, 404), ("GET", f"/v1/messages/batches/msgbatch_{long}", None, 404),
            ("GET", f"/v1/{long}", None, 404), ("GET", "/v1/batches", {"after": long}, 400),
            ("GET", "/v1/files", {"after": long}, 400), ("GET", "/v1/files", {"limit": long}, 400),
            ("GET", "/v1/files", {"order": long}, 400), ("GET", "/v1/messages/batches", {"after_id": long}, 400),
            ("GET", "/v1/messages/batches", {"limit": "9" * 4000}, 400)):
        r = api.request(method, path, params=params)
        assert r.status_code == status and len(r.content) < 1024 and "…" in r.text, (path, params, r.text[:200])
    r = api.request("POST", "/v1/files", files={"file": ("in.jsonl", jsonl([openai_line(1)]))},
                    data={"purpose": "x" * 60_000})
    assert r.status_code == 400 and len(r.content) < 1024 and "…" in r.text
    uploaded = api.openai().files.create(file=("in.jsonl", jsonl([openai_line(1)])), purpose="batch")
    r = api.request("POST", "/v1/batches", json={"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h",
                                                 "output_expires_after": {"anchor": long, "seconds": 3600}})
    assert r.status_code == 400 and len(r.content) < 1024 and "…" in r.text
