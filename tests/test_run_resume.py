"""Never paying twice for `run`: the same command after an interrupt (Ctrl-C, or a SIGKILL once the
run's lease has lapsed) continues the batch and sends no answered line again; `--new` starts afresh;
a finished batch is written again with no provider call."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay.cli.runner import continue_command
from batchrelay.sim.process import SimulatorProcess

from .conftest import openai_line, wait_for, write_config
from .embedkit import cli, fresh_env, home

__all__ = ["home"]  # the fixture

LINES = 60
CONCURRENCY = 4



def _setup(home: Path, sim: SimulatorProcess, lines: int = LINES) -> tuple[Path, Path]:
    cfg = write_config(home / "c.toml", "res:", [{"name": "slow", "base_url": sim.base_url}],
                       concurrency=CONCURRENCY, chunk_size=5)
    src = home / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, lines + 1)))
    return cfg, src


def _spawn(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchrelay", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**fresh_env(home), **(env or {})}, cwd=home, start_new_session=True)


def _run_args(cfg: Path, src: Path, out: Path) -> list[str]:
    return ["-c", str(cfg), "run", str(src), "-o", str(out)]


def _interrupted_after(home: Path, sim: SimulatorProcess, args: list[str], calls: int, sig: signal.Signals,
                       env: dict[str, str] | None = None) -> str:
    """`run ARGS` stopped by `sig` once the simulator had `calls` calls; its stderr."""
    proc = _spawn(home, *args, env=env)
    wait_for(lambda: sim.stats()["calls"] >= calls or proc.poll() is not None, 60, "the first calls")
    assert proc.poll() is None, proc.communicate()
    (os.killpg if sig != signal.SIGKILL else os.kill)(proc.pid, sig)  # SIGKILL: `run` alone, as a crash
    _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return err


def _batch_in(text: str) -> str:
    found = re.search(r"batch_[0-9a-f]{24}", text)
    assert found, text
    return found.group(0)


def _rows(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def _status(home: Path, cfg: Path, batch: str) -> dict[str, object]:
    proc = cli(home, "-c", str(cfg), "status", batch, "--json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _all_answered_once(home: Path, cfg: Path, out: Path, batch: str) -> None:
    assert [r["custom_id"] for r in _rows(out)] == [f"req-{i}" for i in range(1, LINES + 1)]
    st = _status(home, cfg, batch)
    assert st["status"] == "completed" and st["counts"]["succeeded"] == LINES  # type: ignore[index]


@pytest.mark.parametrize(("sig", "extra"), [
    (signal.SIGINT, []), (signal.SIGHUP, []),  # Ctrl-C; the terminal closed
    (signal.SIGINT, ["--workers", "2"]),  # worker processes of the run's own
])
def test_the_same_command_after_ctrl_c_resumes_the_batch_and_sends_no_answered_line_again(
        home: Path, slow: SimulatorProcess, sig: signal.Signals, extra: list[str]) -> None:
    cfg, src = _setup(home, slow)
    args = [*_run_args(cfg, src, home / "out.jsonl"), *extra]
    err = _interrupted_after(home, slow, args, 10, sig)
    batch = _batch_in(err)
    assert " ".join(args) in err  # the exact command that continues it
    st = _status(home, cfg, batch)
    assert st["status"] == "paused" and st["eta_s"] is None  # nothing works it until it is resumed
    answered = LINES - st["counts"]["pending"]  # type: ignore[index]
    assert cli(home, "-c", str(cfg), "batches").stdout.count("paused") == 1
    waited = cli(home, "-c", str(cfg), "results", batch, "-o", str(home / "part.jsonl"), "--wait")
    assert f"`batchrelay resume {batch}` continues it" in waited.stderr  # not a wait for ever
    assert waited.returncode == 4  # and not taken for a whole batch by a script
    again = cli(home, *args)
    assert again.returncode == 0, again.stderr
    assert f"resuming batch {batch}: {answered} of {LINES} lines already answered" in again.stderr
    _all_answered_once(home, cfg, home / "out.jsonl", batch)
    assert slow.stats()["calls"] == LINES  # the calls in flight were recorded at the interrupt: none twice


def test_a_rerun_refuses_while_the_killed_run_s_lease_lives_and_takes_the_batch_over_after(
        home: Path, slow: SimulatorProcess) -> None:
    cfg, src = _setup(home, slow)
    args = _run_args(cfg, src, home / "out.jsonl")
    lease = {"BATCHRELAY_RUN_LEASE_S": "8"}
    _interrupted_after(home, slow, args, 10, signal.SIGKILL, env=lease)
    refused = cli(home, *args, env=lease)
    assert refused.returncode == 2, refused.stderr
    batch = _batch_in(refused.stderr)
    assert "another `run`" in refused.stderr and "pid" in refused.stderr, refused.stderr
    assert _status(home, cfg, batch)["status"] == "in_progress"  # nobody works it: its run is dead
    time.sleep(8.5)  # the dead run's lease lapses
    again = cli(home, *args, env=lease)
    assert again.returncode == 0, again.stderr
    assert f"resuming batch {batch}" in again.stderr
    _all_answered_once(home, cfg, home / "out.jsonl", batch)
    assert LINES <= slow.stats()["calls"] <= LINES + CONCURRENCY  # only the calls cut off by the kill again


def test_a_finished_batch_is_written_again_with_no_provider_call_and_new_starts_afresh(
        home: Path, slow: SimulatorProcess) -> None:
    cfg, src = _setup(home, slow, lines=LINES)
    slow.configure(latency_ms=0)
    args = _run_args(cfg, src, home / "out.jsonl")
    first = cli(home, *args)
    assert first.returncode == 0, first.stderr
    batch = _batch_in(first.stdout)
    before = (home / "out.jsonl").read_bytes()
    (home / "out.jsonl").unlink()
    again = cli(home, *args[:-1], str(home / "out.jsonl"))
    assert again.returncode == 0, again.stderr
    assert f"batch {batch}" in again.stderr and "no provider is called" in again.stderr
    assert f"{batch}: completed earlier (no provider called now)" in again.stdout
    assert (home / "out.jsonl").read_bytes() == before
    cached = cli(home, *args, "--cache")  # the cache is not in the fingerprint: the same batch, said in one sentence
    assert cached.returncode == 0, cached.stderr
    assert (f"batch {batch} (same input and options) is already complete: its results are written again from "
            "Redis and no provider is called; --cache applies to new batches (add --new to run the file again "
            "with the cache)") in cached.stderr
    assert slow.stats()["calls"] == LINES
    fresh = cli(home, *args, "--new")
    assert fresh.returncode == 0, fresh.stderr
    assert _batch_in(fresh.stdout) != batch
    assert slow.stats()["calls"] == 2 * LINES


def test_a_changed_option_is_another_run(home: Path, slow: SimulatorProcess) -> None:
    cfg, src = _setup(home, slow, lines=10)
    slow.configure(latency_ms=0)
    args = _run_args(cfg, src, home / "out.jsonl")
    assert cli(home, *args).returncode == 0
    other = cli(home, *args, "--endpoint", "messages")
    assert other.returncode in (0, 3), other.stderr
    assert "no provider is called" not in other.stderr
    assert slow.stats()["calls"] == 20


def test_a_paused_batch_can_be_cancelled(home: Path, slow: SimulatorProcess) -> None:
    cfg, src = _setup(home, slow)
    err = _interrupted_after(home, slow, _run_args(cfg, src, home / "out.jsonl"), 5, signal.SIGTERM)
    batch = _batch_in(err)
    done = cli(home, "-c", str(cfg), "cancel", batch, "--json")
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert st["status"] == "cancelled" and st["counts"]["pending"] == 0
    resumed = cli(home, "-c", str(cfg), "resume", batch)
    assert resumed.returncode == 2 and "cancelled" in resumed.stderr


@pytest.mark.parametrize(("args", "shown"), [
    (["run", "in.jsonl", "-o", "out.jsonl"], "batchrelay run in.jsonl -o out.jsonl"),
    (["run", "in.jsonl", "-o", "out.jsonl", "--new"], "batchrelay run in.jsonl -o out.jsonl"),
    (["-c", "my conf.toml", "run", "--new", "a b.jsonl", "-o", "o.jsonl"],
     "batchrelay -c 'my conf.toml' run 'a b.jsonl' -o o.jsonl"),
])
def test_the_command_that_continues_a_run_is_its_own_without_new(args: list[str], shown: str) -> None:
    """`--new` would start yet another batch: the printed command leaves it out (found by a fresh-clone check)."""
    assert continue_command(args) == shown


@pytest.mark.parametrize(("config", "shown"), [
    (None, "batchrelay"), ("batchrelay.toml", "batchrelay -c batchrelay.toml"),
    ("my conf.toml", "batchrelay -c 'my conf.toml'"),
])
def test_suggested_commands_name_the_config_the_command_ran_with(config: str | None, shown: str) -> None:
    """Without its `-c`, a suggested `worker --burst` reads no config and answers with the simulator
    (found by a fresh-clone check of `resume`)."""
    from batchrelay.cli.text import command_with

    assert command_with(config) == shown


# lanes: whether a run may use one is in the fingerprint; its deadline (an instant) is not


def _lane_setup(home: Path, sim: SimulatorProcess, lines: int = LINES) -> tuple[Path, Path]:
    """The simulator as a 0.75x reseller and a 24 h lane (0.5x, so `cheapest` puts it first) that no test
    deadline here leaves room for: the lane is never called, and each run says why."""
    cfg = write_config(home / "c.toml", "res:", [
        {"name": "slow", "base_url": sim.base_url, "price_multiplier": "0.75"},
        {"name": "openai-batch", "kind": "openai-batch", "base_url": "http://127.0.0.1:9"}],
        routing='[routing]\nstrategy = "cheapest"', concurrency=CONCURRENCY, chunk_size=5)
    src = home / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, lines + 1)))
    return cfg, src


def _json_run(home: Path, *args: str) -> tuple[dict[str, Any], str]:
    proc = cli(home, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout)), proc.stderr


def test_a_run_with_a_deadline_after_one_without_is_a_new_batch_and_each_says_why_the_lane_took_no_line(
        home: Path, slow: SimulatorProcess) -> None:
    """Found by a fresh-clone check: `run FILE --deadline +2m` after `run FILE` printed the old batch again and
    never said why the lane was not used."""
    cfg, src = _lane_setup(home, slow, lines=10)
    slow.configure(latency_ms=0)
    args = _run_args(cfg, src, home / "out.jsonl")
    urgent, err = _json_run(home, *args)
    (note,) = urgent["lanes"]
    assert (note["name"], note["used"], note["reason"]) == ("openai-batch", False, "no_deadline")
    assert ("lane openai-batch not used: the batch has no deadline; the lane needs 25h (window 24h + margin 1h): "
            "--deadline +25h or later lets 10 lines go there") in err
    assert urgent["deadline"] is None and urgent["deadline_given"] is None and urgent["deadline_note"] is None
    soon, err = _json_run(home, *args, "--deadline", "+2m")
    assert soon["id"] != urgent["id"] and not soon["already_done"]  # may use a lane: another batch
    assert soon["deadline"] == pytest.approx(time.time() + 120, abs=30) == soon["deadline_given"]
    (note,) = soon["lanes"]
    assert (note["used"], note["reason"], note["needs_s"]) == (False, "deadline", 90000)
    assert "lane openai-batch not used: deadline leaves 2m, the lane needs 25h (window 24h + margin 1h); " in err
    assert slow.stats()["calls"] == 20
    again, err = _json_run(home, *args, "--deadline", "+2m")  # the same instant, to the minute: nothing to say
    assert again["id"] == soon["id"] and again["already_done"] and again["deadline_note"] is None
    later, err = _json_run(home, *args, "--deadline", "+3h")
    assert later["id"] == soon["id"] and later["already_done"]  # a deadline is an instant: not in the fingerprint
    assert later["deadline"] == soon["deadline"] and later["deadline_given"] > soon["deadline"] + 3600
    assert later["deadline_note"] in err
    assert re.search(rf"note: batch {soon['id']} \(same input and options\) ran with its deadline \S+Z; this run's "
                     r"deadline \S+Z is not applied \(--new starts a batch with it\)", later["deadline_note"])
    assert slow.stats()["calls"] == 20  # no line sent again


def test_an_interrupted_run_with_a_deadline_resumes_its_batch_and_says_when_it_keeps_its_own_deadline(
        home: Path, slow: SimulatorProcess) -> None:
    cfg, src = _lane_setup(home, slow)
    args = [*_run_args(cfg, src, home / "out.jsonl"), "--deadline", "+1h"]
    batch = _batch_in(_interrupted_after(home, slow, args, 10, signal.SIGINT))
    same = cli(home, *args)  # the same command: the same batch, its deadline the same instant (to the minute)
    assert same.returncode == 0, same.stderr
    assert f"resuming batch {batch}" in same.stderr and "is not applied" not in same.stderr
    assert re.search(r"lane openai-batch not used: deadline leaves (1h|59\.\dm), the lane needs 25h", same.stderr)
    assert "--new with --deadline +25h or later lets" in same.stderr  # the batch keeps its deadline
    _all_answered_once(home, cfg, home / "out.jsonl", batch)
    assert slow.stats()["calls"] == LINES


def test_a_resumed_run_given_another_deadline_keeps_its_own_and_says_so(home: Path, slow: SimulatorProcess) -> None:
    cfg, src = _lane_setup(home, slow)
    args = _run_args(cfg, src, home / "out.jsonl")
    batch = _batch_in(_interrupted_after(home, slow, [*args, "--deadline", "+1h"], 10, signal.SIGINT))
    kept = _status(home, cfg, batch)["expires_at"]
    resumed, err = _json_run(home, *args, "--deadline", "+2h")
    assert resumed["id"] == batch and resumed["deadline"] == kept
    assert resumed["deadline_given"] == pytest.approx(time.time() + 7200, abs=60)
    assert f"note: batch {batch} (same input and options) keeps its deadline" in resumed["deadline_note"]
    assert resumed["deadline_note"] in err and err.index(f"resuming batch {batch}") < err.index(
        resumed["deadline_note"])
    _all_answered_once(home, cfg, home / "out.jsonl", batch)
    assert slow.stats()["calls"] == LINES
