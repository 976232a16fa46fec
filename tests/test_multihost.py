"""Several hosts (issue 17): Redis, the provider simulator, three workers and a client, each on a
"host" of its own (a network namespace, tests/netnskit.py), joined by a bridge. Mid-batch one worker
host is cut off from Redis for 20 s while its calls are in flight, and every process of a second one
is SIGKILLed. The batch completes, every line is answered exactly once, the ledger is the sum of the
lines, the cut worker comes back by itself; the time to recover and the provider calls made twice
are printed (`-s`) and bounded.

The test process stays in the root namespace, which cannot reach the hosts' addresses: the CLI and a
probe (tests/multihost_probe.py) run on the client host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay.sim.state import redacted

from . import netnskit
from .conftest import ROOT, openai_line, write_config
from .netnskit import Network, cut_commands, plan, setup_commands

# enough lines that the batch outlasts the cut and the cut worker's return (its stalled connections wait for
# TCP's next retransmission: up to ~13 s after a 20 s cut): about 0.85 N - 640 lines are left at the restore,
# as the one worker left does at most 8 / 0.25 s = 32 lines a second during the cut (3,000 lines: 20 s longer)
N = 1800
LATENCY_MS = 250
CONCURRENCY, CHUNK = 8, 10
JOB_TIMEOUT = 20  # a killed worker's chunks rerun once arq's in-progress keys lapse: job_timeout + 10 s
CUT_S = 20
FAULT_AT = 0.15  # of the lines done
WORKERS = ("w1", "w2", "w3")
CUT, KILLED = "w1", "w2"
REDIS_PORT, SIM_PORT, METRICS_PORT = 6379, 8787, 9464
# lines one worker holds: its chunk jobs (worker.py: max(2, ceil(2 * concurrency / chunk) + 1)) of CHUNK lines
KEY_ENV = "MULTIHOST_TEST_KEY"
KEYS = {w: f"sk-multihost-test-{w}" for w in WORKERS}
HELD = max(2, -(-2 * CONCURRENCY // CHUNK) + 1) * CHUNK
AT_RISK = CONCURRENCY + max(1, CONCURRENCY // 4)  # a host's lines in flight, and answers it may not have written


# --- the pure part of the kit -------------------------------------------------------------------

@pytest.mark.parametrize(("roles", "subnet", "error"), [
    (["a", "a"], netnskit.SUBNET, "unique"),
    (["a"], "8.8.8.0/24", "not a private range"),
    (["a", "b", "c"], "10.1.2.0/31", "room for 2 hosts"),
    (["averyveryverylongrole"], netnskit.SUBNET, "at most 13"),
    (["no-dash"], netnskit.SUBNET, "alphanumeric"),
])
def test_a_plan_refuses_what_would_leak_or_clash(roles: list[str], subnet: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        plan("abc123", roles, subnet)


def test_a_plan_names_every_namespace_after_its_run_and_gives_private_addresses_in_order() -> None:
    p = plan("abc123", ["redis", "w1"])
    assert p.switch == "brmh-abc123-switch"
    assert [(h.ns, h.addr, h.port) for h in p.hosts.values()] == [
        ("brmh-abc123-redis", "10.77.0.1", "p-redis"), ("brmh-abc123-w1", "10.77.0.2", "p-w1")]
    assert p.namespaces == ["brmh-abc123-switch", "brmh-abc123-redis", "brmh-abc123-w1"]


def test_every_setup_command_acts_inside_a_namespace_of_the_run_and_none_adds_a_route() -> None:
    p = plan("abc123", ["redis", "w1", "w2"])
    cmds = setup_commands(p)
    adds = [c[3] for c in cmds if c[:3] == ["ip", "netns", "add"]]
    assert adds == p.namespaces  # the namespaces first, then only `ip -n NS ...` inside them
    rest = cmds[len(adds):]
    assert all(c[:2] == ["ip", "-n"] and c[2] in p.namespaces for c in rest)
    assert not [c for c in cmds if "route" in c or "nat" in " ".join(c)]
    assert sum(c[3:5] == ["link", "set"] and c[5] == "lo" for c in rest) == len(p.namespaces)  # lo up everywhere
    assert ["ip", "-n", "brmh-abc123-w2", "addr", "add", "10.77.0.3/24", "dev", "eth0"] in rest


def test_a_cut_is_between_two_hosts_both_ways_and_a_restore_undoes_exactly_it() -> None:
    p = plan("abc123", ["redis", "w1"])
    r, w = p.hosts["redis"], p.hosts["w1"]
    assert cut_commands(w, r) == [
        ["ip", "-n", w.ns, "neigh", "replace", r.addr, "lladdr", netnskit.NOWHERE, "dev", "eth0", "nud", "permanent"],
        ["ip", "-n", r.ns, "neigh", "replace", w.addr, "lladdr", netnskit.NOWHERE, "dev", "eth0", "nud", "permanent"]]
    assert cut_commands(w, r, restore=True) == [["ip", "-n", w.ns, "neigh", "del", r.addr, "dev", "eth0"],
                                                ["ip", "-n", r.ns, "neigh", "del", w.addr, "dev", "eth0"]]


def repeated(calls: list[tuple[str, str, float]]) -> dict[str, list[tuple[str, float]]]:
    """From the provider's calls (line, host that called, when), the lines called more than once:
    line -> [(host, when), ...] in time order."""
    by_line: dict[str, list[tuple[str, float]]] = {}
    for line, host, t in calls:
        by_line.setdefault(line, []).append((host, t))
    return {line: sorted(c, key=lambda x: x[1]) for line, c in by_line.items() if len(c) > 1}


@pytest.mark.parametrize(("calls", "expected"), [
    ([], {}),
    ([("1", "w1", 1.0), ("2", "w1", 1.0)], {}),
    ([("1", "w3", 9.0), ("2", "w1", 1.0), ("1", "w1", 2.0)], {"1": [("w1", 2.0), ("w3", 9.0)]}),
    ([("1", "w2", 3.0), ("1", "w3", 1.0), ("1", "w1", 2.0)], {"1": [("w3", 1.0), ("w1", 2.0), ("w2", 3.0)]}),
])
def test_repeated_lists_each_line_called_again_with_its_callers_in_time_order(
        calls: list[tuple[str, str, float]], expected: dict[str, list[tuple[str, float]]]) -> None:
    assert repeated(calls) == expected


# --- the hosts ----------------------------------------------------------------------------------

@pytest.fixture
def net() -> Any:
    reason = netnskit.refused_reason()
    if reason:
        pytest.skip(reason)
    with netnskit.network(["redis", "sim", *WORKERS, "client"]) as n:
        yield n


class Probe:
    """The probe's rows, read as they come (a thread), until `stop`."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.rows: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.rows.append(orjson.loads(line))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {"status": "?", "pending": None, "workers": {}}

    def wait(self, check: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            row = self.last()
            if row.get("pending") is not None and check(row):
                return row
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {row}"
            assert self.proc.poll() is None, "the probe died"
            time.sleep(0.05)


def _lines(row: dict[str, Any], worker: str) -> float | None:
    view = row["workers"].get(worker)
    return None if view is None else float(view["lines"])


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _first(rows: list[dict[str, Any]], after: float, check: Any) -> float | None:
    return next((r["t"] for r in rows if r["t"] >= after and check(r)), None)


@pytest.mark.timeout(240)
def test_a_partitioned_and_a_killed_worker_host_lose_and_duplicate_no_line(net: Network, tmp_path: Path) -> None:
    redis_url = f"redis://{net['redis'].addr}:{REDIS_PORT}/0"
    sim_url = f"http://{net['sim'].addr}:{SIM_PORT}"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHRELAY_CONFIG")}
    env |= {"REDIS_URL": redis_url, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
    prefix = "brmh:"
    # each worker host its own key: the simulator's log (keys redacted to their last 4 characters and a
    # fingerprint) tells which host made each call
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim_url, "api_key_env": KEY_ENV}],
                       concurrency=CONCURRENCY,
                       chunk_size=CHUNK, call_timeout=5, job_timeout=JOB_TIMEOUT, backoff=0.05)
    cfg.write_text(cfg.read_text() + 'prices."gpt-4o-mini" = { input = "0.15", output = "0.6" }\n')
    py = sys.executable

    def cli(*args: str, ok: int = 0) -> str:
        proc = net.run("client", [py, "-m", "batchrelay", "-c", str(cfg), *args], env=env)
        assert proc.returncode == ok, proc.stderr
        return proc.stdout

    net.spawn("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", net["redis"].addr, "--protected-mode",
                        "no", "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
                        "--maxmemory-policy", "noeviction"], tmp_path / "redis.log")
    net.spawn("sim", [py, "-m", "batchrelay", "simulate", "--host", net["sim"].addr, "--port", str(SIM_PORT),
                      "--latency-ms", str(LATENCY_MS)], tmp_path / "sim.log", env=env)
    workers = {w: net.spawn(w, [py, "-m", "batchrelay", "-c", str(cfg), "worker", "--log-format", "json",
                                "--metrics-host", net[w].addr, "--metrics-port", str(METRICS_PORT)],
                            tmp_path / f"{w}.log", env={**env, KEY_ENV: KEYS[w]}) for w in WORKERS}
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, N + 1)))
    batch = json.loads(cli("submit", str(src), "--json"))["id"]
    probe = Probe(subprocess.Popen(
        ["ip", "netns", "exec", net["client"].ns, py, "-m", "tests.multihost_probe", redis_url, prefix, batch,
         *(f"{w}=http://{net[w].addr}:{METRICS_PORT}/metrics" for w in WORKERS)],
        stdout=subprocess.PIPE, env=env, start_new_session=True))
    try:
        run_the_faults(net, cli, probe, workers, tmp_path, batch, sim_url, env)
    finally:
        probe.close()


def run_the_faults(net: Network, cli: Any, probe: Probe, workers: dict[str, subprocess.Popen[bytes]], tmp_path: Path,
                   batch: str, sim_url: str, env: dict[str, str]) -> None:
    py = sys.executable

    def log_of(w: str) -> str:
        return (tmp_path / f"{w}.log").read_text(errors="replace")[-3000:]

    # mid-batch, with the cut worker's calls in flight (its chunk jobs running)
    probe.wait(lambda r: r["pending"] <= N * (1 - FAULT_AT) and (r["workers"].get(CUT) or {}).get("running"),
               90, "the batch to get going")
    t_cut, wall_cut = time.monotonic(), time.time()
    net.cut(CUT, "redis")
    killed = net.kill_host(KILLED)
    t_kill, wall_kill = time.monotonic(), time.time()
    assert workers[KILLED].pid in killed
    assert workers[KILLED].wait(timeout=10) == -9
    at_cut = probe.last()
    time.sleep(2)  # rows from before the cut are out of the probe's pipe by then
    cut_settled = probe.last()
    time.sleep(CUT_S - (time.monotonic() - t_cut))
    assert workers[CUT].poll() is None, f"the cut worker died: {log_of(CUT)}"
    at_restore_row = probe.last()
    assert at_restore_row["status"] == "in_progress", "the batch ended before the cut was restored: it proves nothing"
    net.cut(CUT, "redis", restore=True)
    t_restore, wall_restore = time.monotonic(), time.time()
    lines_at_restore = _lines(at_restore_row, CUT)
    done = probe.wait(lambda r: r["status"] != "in_progress", 150, "the batch to finish")
    t_done = done["t"]
    time.sleep(0.5)
    rows = list(probe.rows)
    for w in (CUT, "w3"):
        assert workers[w].poll() is None, f"{w} exited: {log_of(w)}"

    # the results: every line once, none missing; the ledger is the sum of the lines
    st = json.loads(cli("status", batch, "--json"))
    assert st["status"] == "completed", st
    out = tmp_path / "out.jsonl"
    cli("results", batch, "-o", str(out))
    results = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    ids = Counter(r["custom_id"] for r in results)
    assert [i for i, c in ids.items() if c > 1] == []
    assert set(ids) == {f"req-{i}" for i in range(1, N + 1)}
    costs = [D(r["batchrelay"]["cost"]["usd"]) for r in results]
    ledger = json.loads(cli("cost", batch, "--json"))
    assert D(ledger["total"]["usd"]) == sum(costs) == D(st["cost"]["usd"]) > 0

    # the provider's side: calls per line, from the simulator's log
    log = orjson.loads(net.run("client", [py, "-c", "import httpx, sys; sys.stdout.write(httpx.get("
                                          f"'{sim_url}/_sim/log?full=1', timeout=60).text)"], env=env).stdout)
    fingerprints = {redacted(k): w for w, k in KEYS.items()}
    calls = [(e["body"]["messages"][0]["content"].removeprefix("question "),
              fingerprints[e["headers"]["authorization"].removeprefix("Bearer ")], e["t"]) for e in log]
    twice = repeated(calls)
    extra = sum(len(c) - 1 for c in twice.values())
    first_by = Counter(c[0][0] for c in twice.values())
    again_after = {w: max((c[1][1] - since for c in twice.values() if c[0][0] == w), default=None)
                   for w, since in ((CUT, wall_cut), (KILLED, wall_kill))}

    # recovery
    cut_resumed = _first(rows, t_restore, lambda r: (_lines(r, CUT) or 0) > (lines_at_restore or 0))
    progress = [(r["t"], r["pending"]) for r in rows if r["t"] >= t_kill and r["pending"] is not None]
    stall = max((b[0] - a[0] for a, b in zip(progress, progress[1:], strict=False) if b[1] == a[1]), default=0.0)
    figures = {
        "lines": N, "latency_ms": LATENCY_MS, "workers": len(WORKERS), "concurrency": CONCURRENCY,
        "done_at_faults": N - at_cut["pending"], "cut_s": round(t_restore - t_cut, 1),
        "cut_worker_lines_during_cut": (lines_at_restore or 0) - (_lines(cut_settled, CUT) or 0),
        "cut_worker_resumed_after_restore_s": None if cut_resumed is None else round(cut_resumed - t_restore, 1),
        "done_after_restore_s": round(t_done - t_restore, 1), "done_after_kill_s": round(t_done - t_kill, 1),
        "longest_progress_stall_s": round(stall, 1), "provider_calls": len(log), "lines_called_twice_or_more": len(twice),
        "extra_calls": extra, "extra_calls_by_first_caller": dict(first_by),
        "bound": 2 * AT_RISK,
        "cut_worker_lines_called_again_within_s": _round(again_after[CUT]),
        "killed_worker_lines_called_again_within_s": _round(again_after[KILLED]), "ledger_usd": ledger["total"]["usd"],
    }
    print("\nmultihost:", json.dumps(figures))
    assert cut_resumed is not None, f"the cut worker never worked again after the restore: {log_of(CUT)}"
    assert len({line for line, _, _ in calls}) == N  # the provider saw every line
    # a line is called again only if it was in flight on the cut or the killed host (each consumer of theirs
    # at most one line), or answered there with its write not back yet (at most concurrency // 4 beyond
    # those: worker/runtime.py _finish): the cut host's lines not started yet are looked up once it is
    # back, and those answered meanwhile are not sent (store/heartbeat.py); what they held in all is the
    # looser bound
    assert extra <= 2 * AT_RISK <= 2 * HELD, twice
    # and no line is called twice but for the faults: one of its calls came from the cut or the killed host
    assert all({CUT, KILLED} & {h for h, _ in c} for c in twice.values()), {
        line: [(h, round(t - wall_restore, 2)) for h, t in c] for line, c in twice.items()}
