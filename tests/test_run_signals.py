"""`run` interrupted: Ctrl-C and SIGTERM finish the calls in flight, record them, pause the batch and say
how to go on (`resume` hands it to `batchrelay worker`); the embedded Redis is out of the terminal's reach; a
Redis that dies under `run` anyway ends it within seconds with one message."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import orjson

from batchrelay.sim.process import SimulatorProcess

from .conftest import openai_line, wait_for, write_config
from .embedkit import cli, home, server_pid, servers_on, socket_of, spawn

__all__ = ["home"]  # the fixture

LINES = 60



def _started(home: Path, sim: SimulatorProcess) -> tuple[subprocess.Popen[str], Path]:
    """`run` of LINES lines on `sim` (embedded Redis), once a few calls have been made."""
    cfg = write_config(home / "c.toml", "sig:", [{"name": "slow", "base_url": sim.base_url}],
                       concurrency=4, chunk_size=5)
    src = home / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, LINES + 1)))
    proc = spawn(home, "-c", str(cfg), "run", str(src), "-o", str(home / "out.jsonl"))
    wait_for(lambda: sim.stats()["calls"] >= 3 or proc.poll() is not None, 60, "the first calls")
    assert proc.poll() is None, proc.communicate()
    return proc, cfg


def _ended(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"`run` still running {timeout}s after the signal: {err[-2000:]}") from None
    assert "Traceback" not in err, err
    return err


def _finished_by_a_worker(home: Path, cfg: Path, sim: SimulatorProcess, batch: str) -> None:
    """What the message says to do next works: every line answered once, each call recorded once."""
    st = json.loads(cli(home, "-c", str(cfg), "status", batch, "--json").stdout)
    assert st["status"] == "paused" and st["counts"]["pending"] > 0
    assert st["counts"]["succeeded"] == sim.stats()["calls"]  # every call made was recorded
    resumed = cli(home, "-c", str(cfg), "resume", batch)
    assert resumed.returncode == 0, resumed.stderr
    assert f"`batchrelay -c {cfg} worker --burst` finishes it" in resumed.stdout  # its config, not none
    work = cli(home, "-c", str(cfg), "worker", "--burst", "--quiet")
    assert work.returncode == 0, work.stderr
    res = cli(home, "-c", str(cfg), "results", batch, "-o", str(home / "all.jsonl"))
    assert res.returncode == 0, res.stderr
    rows = [orjson.loads(x) for x in (home / "all.jsonl").read_bytes().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(1, LINES + 1)]
    assert sim.stats()["calls"] == LINES  # nothing was asked twice


def _says(err: str, command: str) -> bool:
    """Whether `err` suggests `batchrelay [-c CONFIG] COMMAND`."""
    return re.search(rf"batchrelay (-c \S+ )?{re.escape(command)}", err) is not None


def _batch_in(err: str) -> str:
    found = re.search(r"batch_[0-9a-f]{24}", err)
    assert found, err
    return found.group(0)


def test_ctrl_c_finishes_the_calls_in_flight_and_says_how_to_go_on(home: Path, slow: SimulatorProcess) -> None:
    proc, cfg = _started(home, slow)
    redis_pid = server_pid(socket_of(home))
    assert os.getpgid(redis_pid) != os.getpgid(proc.pid)  # a terminal's Ctrl-C does not reach it
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole foreground process group
    err = _ended(proc, 30)
    assert proc.returncode == 130, err
    batch = _batch_in(err)
    assert _says(err, f"status {batch}") and _says(err, f"resume {batch}") and _says(err, "worker --burst")
    assert _says(err, f"-c {cfg} run ")  # the same command line continues it
    assert "the calls in flight were recorded" in err and "were abandoned" not in err, err
    assert servers_on(socket_of(home)) == []  # run was its only user
    _finished_by_a_worker(home, cfg, slow, batch)


def test_sigterm_stops_run_gracefully_and_leaves_no_redis_server(home: Path, slow: SimulatorProcess) -> None:
    proc, cfg = _started(home, slow)
    proc.send_signal(signal.SIGTERM)
    err = _ended(proc, 30)
    assert proc.returncode == 143, err
    batch = _batch_in(err)
    assert _says(err, f"status {batch}")
    assert servers_on(socket_of(home)) == []
    _finished_by_a_worker(home, cfg, slow, batch)


def test_a_second_ctrl_c_stops_at_once(home: Path) -> None:
    with SimulatorProcess({"latency_ms": 20_000}) as hung:
        cfg = write_config(home / "c.toml", "sig:", [{"name": "hung", "base_url": hung}], call_timeout=60,
                           job_timeout=120)
        src = home / "in.jsonl"
        src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
        proc = spawn(home, "-c", str(cfg), "run", str(src), "-o", str(home / "out.jsonl"))
        wait_for(lambda: SimulatorProcess.stats_of(hung)["calls"] >= 1, 60, "the call")
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1)
        assert proc.poll() is None  # waiting for the call in flight
        os.killpg(proc.pid, signal.SIGINT)
        err = _ended(proc, 10)
    assert proc.returncode == 130, err
    assert _says(err, f"status {_batch_in(err)}")
    # the call in flight was not waited for: not recorded, and sent again when the batch goes on
    assert "were recorded" not in err, err
    assert "the calls in flight were abandoned, not recorded: their lines are sent again" in err, err


def test_a_redis_that_dies_under_run_ends_it_within_seconds_with_one_message(
        home: Path, slow: SimulatorProcess) -> None:
    proc, _cfg = _started(home, slow)
    os.kill(server_pid(socket_of(home)), signal.SIGKILL)
    started = time.monotonic()
    err = _ended(proc, 30)
    assert time.monotonic() - started < 8, err
    assert proc.returncode == 1, err
    assert err.count("Error:") == 1 and "embedded Redis" in err, err
    assert len(err) < 1000, err
