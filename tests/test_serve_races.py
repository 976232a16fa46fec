"""A file's content downloaded while another request deletes it (issue 14): every download is either
the whole file or OpenAI's plain 404, never a 500, a body cut short, a path on the server or a
traceback in serve's log."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx

from .conftest import openai_line
from .servekit import KEY, Api, jsonl, poll, serving

ROUNDS = 60
GETS = 3  # downloads beside each delete


def _race(api: Api, file_id: str) -> tuple[list[httpx.Response], httpx.Response]:
    """GETS downloads of the file's content and one delete of it, all at once."""
    with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http, \
            ThreadPoolExecutor(GETS + 1) as pool:
        gets = [pool.submit(http.get, f"/v1/files/{file_id}/content") for _ in range(GETS)]
        delete = pool.submit(http.delete, f"/v1/files/{file_id}")
        return [g.result() for g in gets], delete.result()


def _no_path_in(r: httpx.Response, files_dir: Path) -> None:
    assert str(files_dir) not in r.text and str(files_dir.parent) not in r.text, r.text


def _output_files(api: Api) -> list[str]:
    """Three batches' output and error files, once they have finished."""
    client = api.openai()
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    lines = [openai_line(i) for i in range(200)] + [{**bad, "custom_id": f"bad-{i}"} for i in range(200)]
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batches = [client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h") for _ in range(3)]
    done = [poll(partial(client.batches.retrieve, b.id), lambda b: b.status == "completed", timeout=120)
            for b in batches]
    return [f for b in done for f in (b.output_file_id, b.error_file_id) if f]


def test_downloads_racing_a_delete_get_the_whole_file_or_a_plain_404(tmp_path: Path, redis_url: str,
                                                                      prefix: str) -> None:
    data = jsonl([openai_line(i) for i in range(2000)])  # ~250 KB: a download takes a while
    with serving(tmp_path, redis_url, prefix) as api:
        client = api.openai()
        statuses: set[int] = set()
        for _ in range(ROUNDS):
            file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
            gets, delete = _race(api, file_id)
            assert delete.status_code in (200, 404), delete.text
            for r in [*gets, delete]:
                _no_path_in(r, api.files_dir)
            for r in gets:
                statuses.add(r.status_code)
                if r.status_code == 200:
                    assert r.content == data and r.headers["content-length"] == str(len(data))
                else:
                    assert r.status_code == 404, r.text
                    assert r.json()["error"]["message"] == f"No such File object: {file_id}"
            assert api.request("GET", f"/v1/files/{file_id}/content").status_code == 404
        assert 200 in statuses  # the race was run, not only lost

        outputs = _output_files(api)  # a batch's output and error files: answers from Redis, not a file on disk
        assert len(outputs) == 6
        for file_id in outputs:
            gets, delete = _race(api, file_id)
            assert delete.status_code in (200, 404), delete.text
            for r in gets:
                assert r.status_code in (200, 404), r.text
                _no_path_in(r, api.files_dir)
                assert all(line.startswith(b"{") for line in r.content.splitlines())
        assert "Traceback" not in api.serve_log(), api.serve_log()


def test_batches_created_from_a_file_being_deleted_are_made_whole_or_a_plain_404(tmp_path: Path, redis_url: str,
                                                                                   prefix: str) -> None:
    """A create reads its input file twice (the endpoint check, then the submit): a delete between
    them must not turn into a 500."""
    data = jsonl([openai_line(i) for i in range(2000)])
    body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with serving(tmp_path, redis_url, prefix, worker=False) as api, \
            httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http, \
            ThreadPoolExecutor(2) as pool:
        client, statuses = api.openai(), set()
        for _ in range(30):
            file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
            create = pool.submit(http.post, "/v1/batches", json={**body, "input_file_id": file_id})
            delete = pool.submit(http.delete, f"/v1/files/{file_id}")
            made, gone = create.result(), delete.result()
            assert gone.status_code == 200, gone.text
            statuses.add(made.status_code)
            if made.status_code == 200:
                assert made.json()["request_counts"]["total"] == 2000, made.text
            else:
                assert made.status_code == 404 and made.json()["error"]["message"] == f"No such File object: {file_id}"
            _no_path_in(made, api.files_dir)
        assert "Traceback" not in api.serve_log()
