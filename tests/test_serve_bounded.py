"""`serve` keeps a batch's cost bounded per request (issue 14): an input file of more lines than
`[serve] max_batch_lines` is refused before anything is stored; a cancel of a large batch answers at
once and leaves the rest to the workers; an output file's size is kept as results are written, not
read from every result each time it is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from batchrelay.serve.shared import STOP_LINES
from batchrelay.store.store import Store

from .conftest import batchrelay, openai_line
from .servekit import jsonl, redis_commands, serving

BAD = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}


def _create(client: openai.OpenAI, data: bytes) -> Any:
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


async def test_an_input_file_over_max_batch_lines_is_refused_before_anything_is_stored(
        tmp_path: Path, redis_url: str, prefix: str, store: Store) -> None:
    requests = [openai_line(i) for i in range(5)] + [{**BAD, "custom_id": f"bad-{i}"} for i in range(5)]
    lines = b"\n\n".join(orjson.dumps(r) for r in requests) + b"\n\n"  # ten lines, blank ones between
    with serving(tmp_path, redis_url, prefix, serve_extra="max_batch_lines = 10", worker=False) as api:
        client = api.openai()
        for over in (lines + b'{"not": "a request"}\n', lines + b"not even JSON\n"):  # a bad line counts too
            with pytest.raises(openai.BadRequestError) as e:
                _create(client, over)
            assert e.value.param == "input_file_id"
            assert e.value.body == {"message": "The input file has more than 10 lines: a batch takes at most 10 "
                                               "([serve] max_batch_lines).", "type": "invalid_request_error",
                                    "param": "input_file_id", "code": None}
        assert list(client.batches.list()) == []
        stored = {k.decode().removeprefix(prefix).partition(":")[0] for k in await store.redis.keys(prefix + "*")}
        assert stored == {"files"}  # the uploads' records: no batch, no error record

        batch = _create(client, lines)  # ten lines, however many blank ones: taken
        assert batch.request_counts.total == 10 and batch.request_counts.failed == 5


async def test_a_large_batchs_cancel_answers_at_once_and_the_workers_finish_it(
        tmp_path: Path, redis_url: str, prefix: str, store: Store) -> None:
    n = 3 * STOP_LINES
    with serving(tmp_path, redis_url, prefix, worker=False) as api:
        client = api.openai()
        batch = _create(client, jsonl([openai_line(i) for i in range(n)]))
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        info = await store.info(batch.id)
        assert 0 < info.cancelled <= STOP_LINES and info.pending == n - info.cancelled

        api.work()  # a worker's sweep stops the rest
        info = await store.info(batch.id)
        assert (info.status, info.cancelled, info.pending, info.done) == ("cancelled", n, 0, n)
        records = [orjson.loads(r) async for _, r in store.iter_results(batch.id)]
        assert sorted(r["batchrelay"]["line"] for r in records) == list(range(1, n + 1))  # each one once
        assert {r["error"]["code"] for r in records} == {"batch_cancelled"}
        done = client.batches.retrieve(batch.id)
        assert done.status == "cancelled" and done.request_counts and done.request_counts.failed == n


def test_the_cli_cancel_still_stops_every_line_at_once(tmp_path: Path, redis_url: str, prefix: str) -> None:
    n = 2 * STOP_LINES + 1
    with serving(tmp_path, redis_url, prefix, worker=False) as api:
        batch = _create(api.openai(), jsonl([openai_line(i) for i in range(n)]))
        proc = batchrelay("-c", str(api.config), "cancel", batch.id, "--json", env=api.env)
        assert proc.returncode == 0, proc.stderr
        st = orjson.loads(proc.stdout)
        assert (st["status"], st["counts"]["cancelled"], st["counts"]["pending"]) == ("cancelled", n, 0)


def _file_sizes(client: openai.OpenAI, file_ids: list[str], redis_url: str, batch_id: str) -> None:
    """Each file's `bytes`, got alone and listed, is its content's length, and getting them reads no result."""
    with redis_commands(redis_url) as commands:
        alone = {f: client.files.retrieve(f).bytes for f in file_ids}
        listed = {f.id: f.bytes for f in client.files.list(purpose="batch_output")}
    assert not [c for c in commands if f"{batch_id}:results" in c]
    for f in file_ids:
        assert alone[f] == listed[f] == len(client.files.content(f).content), f


async def test_an_output_files_size_is_its_contents_length_after_a_retry_and_a_delete(
        tmp_path: Path, redis_url: str, prefix: str, store: Store) -> None:
    with serving(tmp_path, redis_url, prefix, worker=False) as api:
        client = api.openai()
        batch = _create(client, jsonl([openai_line(i) for i in range(1, 5)] + [BAD]))
        assert client.batches.cancel(batch.id).status == "cancelled"  # no worker: every line cancelled at once
        ended = client.batches.retrieve(batch.id)
        assert ended.output_file_id is None and ended.error_file_id is not None
        _file_sizes(client, [ended.error_file_id], redis_url, batch.id)

        proc = batchrelay("-c", str(api.config), "retry", batch.id, env=api.env)  # the cancelled lines' records go
        assert proc.returncode == 0, proc.stderr
        api.work()  # and they are answered
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.output_file_id and done.error_file_id
        assert done.request_counts and done.request_counts.completed == 4
        _file_sizes(client, [done.output_file_id, done.error_file_id], redis_url, batch.id)

        assert client.files.delete(done.error_file_id).deleted
        _file_sizes(client, [done.output_file_id], redis_url, batch.id)
