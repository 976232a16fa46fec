"""`batchrelay run`: a file in, results out, in input order, bad lines reported."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from batchrelay.sim.process import SimulatorProcess

from .conftest import ROOT, batchrelay, openai_line, write_config


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_run_answers_every_line_in_input_order(tmp_path: Path, redis_url: str, prefix: str,
                                               simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    src = _write(tmp_path / "in.jsonl", [orjson.dumps(openai_line(i)) for i in range(1, 1001)])
    out = tmp_path / "out.jsonl"

    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--json", env={"REDIS_URL": redis_url})

    assert proc.returncode == 0, proc.stderr
    rows = _read(out)
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(1, 1001)]
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in rows)
    assert rows[0]["response"]["body"]["choices"][0]["message"]["content"].endswith("question 1")
    assert rows[0]["batchrelay"]["provider"] == "sim"
    summary = json.loads(proc.stdout)
    assert summary["status"] == "completed"
    assert summary["counts"]["succeeded"] == 1000
    assert (tmp_path / "out.errors.jsonl").read_bytes() == b""
    assert simulator.stats()["calls"] == 1000


def test_run_reports_malformed_lines_with_their_numbers_and_exits_3(
        tmp_path: Path, redis_url: str, prefix: str, simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    lines = [orjson.dumps(openai_line(i)) for i in range(1, 1001)]
    bad = {100: b"{not json", 200: b"[]", 300: b'{"custom_id": "x", "url": "/v1/chat/completions", "body": {}}',
           400: orjson.dumps(openai_line(1)), 500: b'{"custom_id": "e", "url": "/v1/embeddings", "body": {}}'}
    for n, raw in sorted(bad.items()):
        lines.insert(n - 1, raw)  # so the bad line sits at physical line n
    src = _write(tmp_path / "in.jsonl", lines)
    out, errs = tmp_path / "out.jsonl", tmp_path / "errs.jsonl"

    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--errors", str(errs),
                      env={"REDIS_URL": redis_url})

    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = _read(errs)
    assert [e["error"]["line"] for e in errors] == sorted(bad)
    assert all(e["error"]["message"].startswith(f"line {e['error']['line']}: ") for e in errors)
    assert "duplicate custom_id 'req-1'" in errors[3]["error"]["message"]
    assert len(_read(out)) == 1000


def test_run_fails_over_to_the_next_provider(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"fail_status": 402}) as broke, SimulatorProcess({}) as good:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "broke", "base_url": broke, "priority": 1}, {"name": "good", "base_url": good, "priority": 2}])
        src = _write(tmp_path / "in.jsonl", [orjson.dumps(openai_line(i)) for i in range(1, 21)])
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
        broke_calls = SimulatorProcess.stats_of(broke)["calls"]
    assert proc.returncode == 0, proc.stderr
    rows = _read(out)
    assert {r["batchrelay"]["provider"] for r in rows} == {"good"}
    # an untried provider gets one probe at a time; its 402 benches it for every worker
    assert broke_calls == 1
    paths = sorted([(a["provider"], a["status"]) for a in r["batchrelay"]["attempts"]] for r in rows)
    assert paths == [[("broke", 402), ("good", 200)]] + [[("good", 200)]] * 19


def test_a_line_every_provider_fails_gets_a_terminal_error_record(tmp_path: Path, redis_url: str,
                                                                  prefix: str) -> None:
    with SimulatorProcess({"fail_status": 503}) as down:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "down", "base_url": down}],
                           attempts_per_provider=2, health={"line_deadline_s": 1.5})
        src = _write(tmp_path / "in.jsonl", [orjson.dumps(openai_line(1))])
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode == 3, proc.stderr
    (err,) = _read(tmp_path / "out.errors.jsonl")
    assert err["custom_id"] == "req-1"
    assert err["error"]["code"] == "provider_error"
    assert err["response"]["status_code"] == 503
    # retried on the provider, deferred while it kept failing, failed once the line's deadline passed
    statuses = [a["status"] for a in err["batchrelay"]["attempts"]]
    assert set(statuses) == {503} and len(statuses) >= 4  # at least two passes of two tries each
    assert "before its deadline" in err["error"]["message"] and "last answer HTTP 503" in err["error"]["message"]


def test_a_bad_request_fails_after_one_call_without_failover(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"fail_status": 400}) as strict, SimulatorProcess({}) as other:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "strict", "base_url": strict, "priority": 1}, {"name": "other", "base_url": other, "priority": 2}])
        src = _write(tmp_path / "in.jsonl", [orjson.dumps(openai_line(1))])
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "o.jsonl"),
                          env={"REDIS_URL": redis_url})
        assert SimulatorProcess.stats_of(other)["calls"] == 0
        assert SimulatorProcess.stats_of(strict)["calls"] == 1
    assert proc.returncode == 3
    (err,) = _read(tmp_path / "o.errors.jsonl")
    assert err["error"]["code"] == "invalid_request"


def test_anthropic_batch_lines_get_anthropic_results(tmp_path: Path, redis_url: str, prefix: str,
                                                     simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    line = {"custom_id": "a-1", "params": {"model": "claude-3-5-haiku-20241022", "max_tokens": 50,
                                           "messages": [{"role": "user", "content": "hi"}]}}
    bare = {"model": "claude-3-5-haiku-20241022", "max_tokens": 50, "messages": [{"role": "user", "content": "yo"}]}
    src = _write(tmp_path / "in.jsonl", [orjson.dumps(line), orjson.dumps(bare)])
    out = tmp_path / "out.jsonl"
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--endpoint", "messages",
                      env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    rows = _read(out)
    assert [r["custom_id"] for r in rows] == ["a-1", "line-2"]
    assert all(r["result"]["type"] == "succeeded" for r in rows)
    assert rows[0]["result"]["message"]["content"][0]["type"] == "text"
    assert rows[0]["batchrelay"]["usage"]["input_tokens"] > 0


def test_run_with_two_worker_processes_answers_every_line_once(tmp_path: Path, redis_url: str, prefix: str,
                                                               simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    src = _write(tmp_path / "in.jsonl", [orjson.dumps(openai_line(i)) for i in range(1, 301)])
    out = tmp_path / "out.jsonl"
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--workers", "2",
                      env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    assert [r["custom_id"] for r in _read(out)] == [f"req-{i}" for i in range(1, 301)]


def test_run_with_no_setup_uses_embedded_redis_and_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    env = {"BATCHRELAY_STATE_DIR": str(tmp_path / "state"), "REDIS_URL": "", "BATCHRELAY_CONFIG": ""}
    proc = batchrelay("run", str(ROOT / "examples" / "requests.jsonl"), "-o", str(out), "--json", env=env,
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["succeeded"] == len(_read(out)) == 50
    assert (tmp_path / "state" / "appendonlydir").is_dir()  # the embedded Redis keeps an AOF
    assert not (tmp_path / "state" / "redis.sock").exists()  # and was stopped on exit


def test_demo_shows_failover_and_planted_bad_lines(tmp_path: Path) -> None:
    env = {"BATCHRELAY_STATE_DIR": str(tmp_path / "state"), "REDIS_URL": "", "BATCHRELAY_CONFIG": ""}
    proc = batchrelay("demo", "--lines", "80", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"total": 81, "done": 81, "succeeded": 80, "failed": 0, "invalid": 1, "cancelled": 0,
                                 "expired": 0, "pending": 0}
    rows = _read(tmp_path / "demo-results.jsonl")
    attempts = [a for r in rows for a in r["batchrelay"]["attempts"]]
    assert {a["status"] for a in attempts if a["provider"] == "flaky-reseller"} >= {429, 503, 200}
    assert (tmp_path / "demo-input.jsonl").exists()


def test_hung_and_malformed_answers_are_retried_then_failed_over(tmp_path: Path, redis_url: str,
                                                                 prefix: str) -> None:
    with SimulatorProcess({"hang_rate": 1.0, "hang_seconds": 10}) as hung, \
            SimulatorProcess({"malformed_rate": 1.0}) as junk, SimulatorProcess({}) as good:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "hung", "base_url": hung, "priority": 1}, {"name": "junk", "base_url": junk, "priority": 2},
            {"name": "good", "base_url": good, "priority": 3}], call_timeout=0.5, attempts_per_provider=2)
        src = _write(tmp_path / "in.jsonl", [orjson.dumps(openai_line(1))])
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    (row,) = _read(out)
    steps = [(a["provider"], a["status"], a.get("action")) for a in row["batchrelay"]["attempts"]]
    assert steps == [("hung", None, "retry"), ("hung", None, "retry"), ("junk", 200, "retry"),
                     ("junk", 200, "retry"), ("good", 200, None)]
    assert "0.5s" in row["batchrelay"]["attempts"][0]["error"]


def test_run_works_only_its_own_batch_in_a_shared_redis(tmp_path: Path, redis_url: str, prefix: str,
                                                        simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    env = {"REDIS_URL": redis_url}
    left = batchrelay("-c", str(cfg), "submit", str(_write(tmp_path / "a.jsonl", [orjson.dumps(openai_line(i))
                                                                                   for i in range(1, 31)])), env=env)
    mine = _write(tmp_path / "b.jsonl", [orjson.dumps(openai_line(i)) for i in range(1, 6)])
    proc = batchrelay("-c", str(cfg), "run", str(mine), "-o", str(tmp_path / "o.jsonl"), env=env)
    assert proc.returncode == 0, proc.stderr
    other = json.loads(batchrelay("-c", str(cfg), "status", left.stdout.strip(), "--json", env=env).stdout)
    assert other["status"] == "in_progress" and other["counts"]["pending"] == 30  # left for the shared workers
    assert simulator.stats()["calls"] == 5
