"""What the command line refuses before anything is sent: outputs that would destroy the input or
each other, providers without their key, input files with no requests or that are not JSONL."""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import openai
import orjson
import pytest

from batchrelay.api import AsyncClient
from batchrelay.config.settings import RedisConfig, Settings
from batchrelay.errors import InputError
from batchrelay.sim.process import SimulatorProcess

from .conftest import batchrelay, openai_line, write_config
from .test_serve import Api, api  # noqa: F401 - the fixture: `batchrelay serve` and a worker

LINE = orjson.dumps(openai_line(1)) + b"\n"


def _nothing_submitted(cfg: Path, redis_url: str) -> bool:
    listed = batchrelay("-c", str(cfg), "batches", "--json", env={"REDIS_URL": redis_url})
    return json.loads(listed.stdout) == []


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "errors", "default-errors"])
def test_run_refuses_an_output_that_is_its_input(tmp_path: Path, redis_url: str, prefix: str,
                                                 simulator: SimulatorProcess, how: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(LINE)
    args = ["-o", str(src)]
    if how == "symlink":
        (tmp_path / "link.jsonl").symlink_to(src)
        args = ["-o", str(tmp_path / "link.jsonl")]
    elif how == "hardlink":
        os.link(src, tmp_path / "hard.jsonl")
        args = ["-o", str(tmp_path / "hard.jsonl")]
    elif how == "errors":
        args = ["-o", str(tmp_path / "out.jsonl"), "--errors", str(src)]
    elif how == "default-errors":  # the errors file of `-o in` is in.errors.jsonl: the input there
        src = tmp_path / "x.errors.jsonl"
        src.write_bytes(LINE)
        args = ["-o", str(tmp_path / "x.jsonl")]
    proc = batchrelay("-c", str(cfg), "run", str(src), *args, env={"REDIS_URL": redis_url})
    assert proc.returncode == 2, proc.stderr
    assert "is the input" in proc.stderr and "Traceback" not in proc.stderr
    assert src.read_bytes() == LINE  # the input is untouched
    assert _nothing_submitted(cfg, redis_url) and simulator.stats()["calls"] == 0


def test_run_and_results_refuse_results_and_errors_in_one_file(tmp_path: Path, redis_url: str, prefix: str,
                                                               simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(LINE)
    out = tmp_path / "out.jsonl"
    env = {"REDIS_URL": redis_url}
    run = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--errors", str(out), env=env)
    assert run.returncode == 2 and "the same file" in run.stderr, run.stderr
    assert _nothing_submitted(cfg, redis_url)
    batch = batchrelay("-c", str(cfg), "submit", str(src), env=env).stdout.strip()
    (tmp_path / "alias.jsonl").symlink_to(out)
    # refused before `--wait` waits for a batch nothing works on
    res = batchrelay("-c", str(cfg), "results", batch, "-o", str(out), "--errors", str(tmp_path / "alias.jsonl"),
                     "--wait", env=env, timeout=30)
    assert res.returncode == 2 and "the same file" in res.stderr, res.stderr
    assert not out.exists()


async def test_the_python_api_export_refuses_results_and_errors_in_one_file(tmp_path: Path, redis_url: str,
                                                                            prefix: str) -> None:
    async with AsyncClient(redis_url, settings=Settings(redis=RedisConfig(prefix=prefix))) as client:
        batch = await client.submit(io.BytesIO(LINE))
        with pytest.raises(InputError, match="the same file"):
            await client.export(batch, tmp_path / "o.jsonl", tmp_path / "o.jsonl")


@pytest.mark.parametrize(("out", "errors", "problem"), [
    ("o.jsonl", None, None),
    ("o.jsonl", "e.jsonl", None),
    ("in.jsonl", None, "is the input"),
    ("o.jsonl", "in.jsonl", "is the input"),
    ("o.jsonl", "o.jsonl", "the same file"),
    ("sub/../o.jsonl", "o.jsonl", "the same file"),
    ("o.jsonl", "o.errors.jsonl", None),
])
def test_check_paths_names_an_output_that_is_the_input_or_the_other_output(
    tmp_path: Path, out: str, errors: str | None, problem: str | None
) -> None:
    from batchrelay.store.export import check_paths

    (tmp_path / "in.jsonl").write_bytes(LINE)
    (tmp_path / "sub").mkdir()
    args = (tmp_path / out, tmp_path / errors if errors else None)
    if problem is None:
        check_paths(*args, inputs=[tmp_path / "in.jsonl"])
    else:
        with pytest.raises(InputError, match=problem):
            check_paths(*args, inputs=[tmp_path / "in.jsonl"])


def test_run_leaves_out_providers_without_their_key_with_one_warning(tmp_path: Path, redis_url: str, prefix: str,
                                                                     simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [
        {"name": "keyless", "base_url": simulator.base_url, "api_key_env": "BR_TEST_UNSET_KEY", "priority": 1},
        {"name": "open", "base_url": simulator.base_url, "priority": 2}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 6)))
    out = tmp_path / "out.jsonl"
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("BR_TEST_UNSET_KEY") == 1 and "keyless" in proc.stderr
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert {a["provider"] for r in rows for a in r["batchrelay"]["attempts"]} == {"open"}


def test_run_refuses_a_model_only_providers_without_their_key_can_serve(tmp_path: Path, redis_url: str,
                                                                       prefix: str, simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [
        {"name": "claude-only", "base_url": simulator.base_url, "api_key_env": "BR_TEST_UNSET_KEY"},
        {"name": "gpt-only", "base_url": simulator.base_url}],
        routing='[routing]\nroutes = { "claude-*" = ["claude-only"] }')
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n" + orjson.dumps(openai_line(2, model="claude-3-5-haiku")) + b"\n")
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "o.jsonl"), env={"REDIS_URL": redis_url})
    assert proc.returncode == 2, proc.stderr
    assert "claude-3-5-haiku" in proc.stderr and "claude-only" in proc.stderr and "BR_TEST_UNSET_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _nothing_submitted(cfg, redis_url) and simulator.stats()["calls"] == 0


def test_run_with_only_keyless_providers_refuses_instead_of_simulating(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[providers]]\nname = "real"\nbase_url = "http://127.0.0.1:9"\napi_key_env = "BR_TEST_UNSET_KEY"\n')
    src = tmp_path / "in.jsonl"
    src.write_bytes(LINE)
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "o.jsonl"),
                      env={"BATCHRELAY_STATE_DIR": str(tmp_path / "state"), "REDIS_URL": ""})
    assert proc.returncode == 2 and "BR_TEST_UNSET_KEY" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\r\n\t\n"])
def test_run_and_submit_refuse_an_input_without_requests(tmp_path: Path, redis_url: str, prefix: str,
                                                         content: bytes) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "empty.jsonl"
    src.write_bytes(content)
    env = {"REDIS_URL": redis_url}
    for args in (["run", str(src), "-o", str(tmp_path / "o.jsonl")], ["submit", str(src)]):
        proc = batchrelay("-c", str(cfg), *args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert f"no requests in {src}" in proc.stderr and "Traceback" not in proc.stderr
    assert _nothing_submitted(cfg, redis_url)


def test_submit_of_a_file_that_is_not_jsonl_asks_whether_it_is(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [])
    src = tmp_path / "requests.json"
    src.write_text(json.dumps([openai_line(1), openai_line(2)], indent=2))  # pretty JSON, not JSONL
    proc = batchrelay("-c", str(cfg), "submit", str(src), env={"REDIS_URL": redis_url})
    assert proc.returncode == 2, proc.stderr
    assert "is this a JSONL file?" in proc.stderr
    assert _nothing_submitted(cfg, redis_url)


async def test_the_python_api_refuses_an_empty_batch(redis_url: str, prefix: str) -> None:
    async with AsyncClient(redis_url, settings=Settings(redis=RedisConfig(prefix=prefix))) as client:
        with pytest.raises(InputError, match="no requests in"):
            await client.submit([])
        with pytest.raises(InputError, match="no requests in"):
            await client.submit(io.BytesIO(b"\n \n"))
        assert await client.batches() == []


def test_serve_refuses_a_batch_of_a_file_without_requests_with_a_400(api: Api) -> None:  # noqa: F811
    client = api.openai()
    blank = client.files.create(file=("blank.jsonl", b"\n  \n"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="no requests in"):
        client.batches.create(input_file_id=blank.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.list().data == []


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "no requests in f.jsonl"),
    (b"\n \r\n\t\n", "no requests in f.jsonl"),
    (LINE, None),
    (LINE + b"{broken\n", None),  # a bad line among good ones becomes an error record, as before
    (b'{"model": ""}\n{"custom_id": 3}\n', None),  # JSON objects that are not requests: error records too
    (b"{broken\n" + LINE + b"[1, 2]\n", "2 of its first 3 lines are not JSON objects (line 1: invalid JSON"),
    (b"id,prompt\n1,hello\n", "is this a JSONL file?"),
    (b'[{"model": "m", "messages": [{"role": "user", "content": "hi"}]}]\n', "expected a JSON object, got list"),
    (b"\xff\xfe\x00\n", "invalid UTF-8"),
    (b"\n" * 5 + b"x\n" * 20 + LINE * 20, "10 of its first 10 lines"),  # only the first lines are looked at
])
def test_an_input_with_no_requests_or_not_jsonl_is_named_before_it_becomes_a_batch(
    content: bytes, problem: str | None
) -> None:
    from batchrelay.wire.jobs import iter_jobs
    from batchrelay.wire.sniff import SNIFF_LINES, input_problem

    head = list(itertools.islice(iter_jobs(io.BytesIO(content), dedupe=False), SNIFF_LINES))
    found = input_problem(head, "f.jsonl")
    assert (found is None) if problem is None else (found is not None and problem in found), found
