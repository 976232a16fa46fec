"""The chaos run (issue 6), short and bounded: 400 lines (5 % of them bad), 2 workers of which 2 are
SIGKILLed mid-batch (and replaced), one Redis restart, three providers with about 30 % faults, each
requiring a planted API key. Every valid line is answered exactly once, every bad line is an error
with its line number, the ledger equals the sum of the lines, and no key is written anywhere.

`bench/chaos.py` is the full-size run; this file shares no code with it.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess
from batchrelay.sim.state import redacted

from .conftest import OwnRedis, batchrelay, write_config

N = 400
WORKERS = 2
KILLS = 2
GPT, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-20241022"
CALL_TIMEOUT = 2

# name, auth, dialects, faults (about 30 % of calls each), prices (USD per 1M tokens)
PROVIDERS: list[tuple[str, str, list[str], dict[str, Any], dict[str, dict[str, str]]]] = [
    ("alpha", "bearer", ["chat", "messages"],
     {"fail_rate": 0.12, "fail_rate_status": 503, "retry_after": 0.5, "malformed_rate": 0.06, "junk_rate": 0.08,
      "hang_rate": 0.04, "hang_seconds": 0.5, "cached_fraction": 0.25},
     {GPT: {"input": "0.15", "output": "0.6", "cached_input": "0.075", "min_charge": "0.000013"},
      HAIKU: {"input": "0.8", "output": "4", "cached_input": "0.08"}}),
    ("bravo", "x-api-key", ["chat", "messages"],
     {"fail_rate": 0.14, "fail_rate_status": 429, "retry_after": 0.5, "malformed_rate": 0.08, "junk_rate": 0.08},
     {GPT: {"input": "0.3", "output": "1.2", "per_request": "0.000001"}, HAIKU: {"input": "1", "output": "5"}}),
    ("charlie", "tt-api-key", ["chat"],  # messages lines sent here are translated
     {"fail_rate": 0.16, "fail_rate_status": 500, "malformed_rate": 0.04, "junk_rate": 0.07, "hang_rate": 0.03,
      "hang_seconds": CALL_TIMEOUT + 1},  # these hangs outlast the call timeout
     {GPT: {"input": "0.2", "output": "0.8"}, HAIKU: {"input": "0.9", "output": "4.5"}}),
]
BAD_KINDS = ("invalid_json", "invalid_utf8", "not_object", "missing_model", "duplicate_custom_id", "unsupported_url")


def _config(path: Path, prefix: str, sims: dict[str, str]) -> Path:
    cfg = write_config(path, prefix, [], health={"cooldown_s": 1, "max_wait_s": 2, "breaker_open_s": 2},
                       routing='[routing]\nstrategy = "weighted"', concurrency=4, chunk_size=10,
                       call_timeout=CALL_TIMEOUT, job_timeout=6, backoff=0.05)
    text = cfg.read_text()
    for name, auth, dialects, _faults, prices in PROVIDERS:
        text += (f'\n[[providers]]\nname = "{name}"\nbase_url = "{sims[name]}"\napi_key_env = "{_env(name)}"\n'
                 f'auth = "{auth}"\ndialects = {json.dumps(dialects)}\n')
        for model, p in prices.items():
            text += f'prices."{model}" = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in p.items())} }}\n'
    cfg.write_text(text)
    return cfg


def _env(name: str) -> str:
    return f"CHAOS_TEST_{name.upper()}_KEY"


def _input(path: Path, rng: random.Random) -> tuple[dict[int, str], dict[int, str]]:
    """N lines, chat and messages; 5 % bad ones at known lines (never the first). (valid line ->
    custom_id, bad line -> kind)."""
    bad_at = sorted(rng.sample(range(2, N + 1), N // 20))
    kinds = {line: BAD_KINDS[k % len(BAD_KINDS)] for k, line in enumerate(bad_at)}
    valid: dict[int, str] = {}
    rows = []
    for i in range(1, N + 1):
        kind = kinds.get(i)
        text = f"question {i}: " + "why " * (i % 11)
        if kind == "invalid_json":
            rows.append(b'{"custom_id": "bad", "body": {"model": ')
        elif kind == "invalid_utf8":
            rows.append(b'{"custom_id": "bad-%d", "params": {"model": "\xff\xfe"}}' % i)
        elif kind == "not_object":
            rows.append([b"[1, 2]", b'"a string"', b"42"][i % 3])
        elif kind == "missing_model":
            rows.append(orjson.dumps({"custom_id": f"bad-{i}", "params": {"max_tokens": 8,
                                                                          "messages": [{"role": "user", "content": "x"}]}}))
        elif kind == "duplicate_custom_id":
            rows.append(orjson.dumps({"custom_id": valid[rng.choice(sorted(valid))], "method": "POST",
                                      "url": "/v1/chat/completions",
                                      "body": {"model": GPT, "messages": [{"role": "user", "content": "again"}]}}))
        elif kind == "unsupported_url":
            rows.append(orjson.dumps({"custom_id": f"bad-{i}", "method": "POST", "url": "/v1/embeddings",
                                      "body": {"model": "text-embedding-3-small", "input": "hi"}}))
        elif i % 3:
            valid[i] = f"req-{i}"
            rows.append(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                      "body": {"model": GPT, "messages": [{"role": "user", "content": text}]}}))
        else:
            valid[i] = f"req-{i}"
            rows.append(orjson.dumps({"custom_id": f"req-{i}", "params": {
                "model": HAIKU, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}}))
    path.write_bytes(b"\n".join(rows) + b"\n")
    return valid, kinds


def _worker(cfg: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # INFO logs; the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker"], env=env,
                                stdout=out, stderr=out)


def _progress(url: str, prefix: str, batch: str) -> tuple[str, int] | None:
    """(status, lines pending), straight from Redis; None while it is away."""
    client = sync_redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        status = client.hget(f"{prefix}batch:{batch}", "status")
        return (status or b"?").decode(), int(client.scard(f"{prefix}batch:{batch}:pending"))  # type: ignore[union-attr, arg-type]
    except (sync_redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _redis_values(url: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, each of its names and values) for every key of the server, whatever its type."""
    client = sync_redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            yield key, key
            if kind == b"string":
                yield key, client.get(key) or b""  # type: ignore[misc]
            elif kind == b"hash":
                for k, v in client.hgetall(key).items():  # type: ignore[union-attr]
                    yield key, k + b"\n" + v
            elif kind == b"list":
                for v in client.lrange(key, 0, -1):  # type: ignore[union-attr]
                    yield key, v
            elif kind == b"set":
                for v in client.smembers(key):  # type: ignore[union-attr]
                    yield key, v
            elif kind == b"zset":
                for v, _ in client.zrange(key, 0, -1, withscores=True):  # type: ignore[union-attr]
                    yield key, v
            else:
                yield key, client.dump(key) or b""  # type: ignore[misc]
    finally:
        client.close()


def _rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()] if path.exists() else []


def _message(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return str(rec["error"]["message"])
    return str(rec["result"]["error"]["error"]["message"])


@pytest.mark.timeout(240)
def test_chaos_every_line_once_the_ledger_exact_and_no_secret_anywhere(tmp_path: Path, own_redis: OwnRedis,
                                                                       prefix: str) -> None:
    rng = random.Random(6)
    url = own_redis.url
    keys = {name: f"sk-{secrets.token_hex(5)}-chaos-{name}-{secrets.token_hex(12)}" for name, *_ in PROVIDERS}
    needles = {f"{n} key": k.encode() for n, k in keys.items()} | {f"{n} key[:12]": k[:12].encode()
                                                                    for n, k in keys.items()}
    env = {**os.environ, "REDIS_URL": url, **{_env(n): k for n, k in keys.items()}}
    env.pop("BATCHRELAY_CONFIG", None)
    outputs: list[tuple[str, str]] = []

    def cli(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        proc = batchrelay("-c", str(cfg), *args, env=env, timeout=120)
        outputs.extend([(f"{args[0]} stdout", proc.stdout), (f"{args[0]} stderr", proc.stderr)])
        assert proc.returncode in ok, proc.stderr
        return proc.stdout

    sims = {name: SimulatorProcess({"latency_ms": 100, "seed": i, "api_key": keys[name], **faults})
            for i, (name, _auth, _d, faults, _p) in enumerate(PROVIDERS)}
    workers: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for s in sims.values():
            s.start()
        cfg = _config(tmp_path / "c.toml", prefix, {n: s.base_url for n, s in sims.items()})
        src = tmp_path / "in.jsonl"
        valid, bad = _input(src, rng)
        sub = json.loads(cli("submit", str(src), "--json"))
        assert (sub["lines"], sub["valid"], sub["invalid"]) == (N, len(valid), len(bad))
        batch = sub["id"]

        def start_worker() -> None:
            logs.append(tmp_path / f"worker{len(logs)}.log")
            workers.append(_worker(cfg, env, logs[-1]))

        for _ in range(WORKERS):
            start_worker()
        events = [(0.15, "kill"), (0.35, "restart"), (0.55, "kill")]
        kills = restarts = 0
        status, pending = "in_progress", len(valid)
        deadline = time.monotonic() + 180
        while status in ("in_progress", "?"):
            got = _progress(url, prefix, batch)
            if got is not None:
                status, pending = got
            while events and 1 - pending / len(valid) >= events[0][0] and status == "in_progress":
                _, what = events.pop(0)
                if what == "kill":
                    victim = rng.choice([w for w in workers if w.poll() is None])
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(timeout=10)
                    kills += 1
                    start_worker()
                else:
                    own_redis.restart(2.0)
                    restarts += 1
            for i, w in enumerate(workers):
                assert w.poll() is None or w.returncode == -signal.SIGKILL, \
                    f"worker {i} exited {w.returncode}: {logs[i].read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, f"batch not done in time: {status}, {pending} pending"
            time.sleep(0.1)
        assert (kills, restarts) == (KILLS, 1), "the batch finished before the faults: it proves nothing"
        st = json.loads(cli("status", batch, "--json"))
        assert st["status"] == "completed", st

        # SIGTERM: every live worker leaves, with exit status 0, within its grace
        live = [(i, w) for i, w in enumerate(workers) if w.poll() is None]
        assert len(live) == WORKERS
        for _, w in live:
            w.send_signal(signal.SIGTERM)
        for i, w in live:
            try:
                rc = w.wait(timeout=CALL_TIMEOUT + 5 + 10)
            except subprocess.TimeoutExpired:
                rc = None
            assert rc == 0, f"worker {i} after SIGTERM: {rc}: {logs[i].read_text(errors='replace')[-3000:]}"
        sim_tail = {n: httpx.get(f"{s.base_url}/_sim/log?full=1&since=0", timeout=60).content
                    for n, s in sims.items()}
    finally:
        stop_all(workers, grace=5)
        for s in sims.values():
            s.stop()

    out, err = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    cli("results", batch, "-o", str(out), "--errors", str(err), ok=(3,))  # 3: the batch has invalid lines
    results, errors = _rows(out), _rows(err)

    # every valid line exactly once, in the results; none lost, none twice, none failed
    by_line = Counter(r["batchrelay"]["line"] for r in results)
    assert [line for line, c in by_line.items() if c > 1] == []  # duplicates
    assert sorted(by_line) == sorted(valid)  # lost: none; and no bad line among the results
    assert {r["batchrelay"]["line"]: r["custom_id"] for r in results} == valid
    # every bad line in the errors, once, with its number
    assert sorted(e["batchrelay"]["line"] for e in errors) == sorted(bad)
    for e in errors:
        line = e["batchrelay"]["line"]
        assert e["batchrelay"]["error"] == "invalid_input" and _message(e).startswith(f"line {line}:"), (bad[line], e)
    assert set(bad.values()) == set(BAD_KINDS)

    # every line priced; the ledger is the sum of the lines, exactly
    costs = [r["batchrelay"]["cost"]["usd"] for r in results]
    assert None not in costs
    ledger = json.loads(cli("cost", batch, "--json"))
    assert not ledger["total"].get("unpriced")
    assert D(ledger["total"]["usd"]) == sum(D(c) for c in costs) == D(st["cost"]["usd"])
    assert sum(r["requests"] - r["failed"] for r in ledger["rows"]) == len(valid)  # one answer billed per line

    # no planted key (nor its first 12 characters) anywhere but in the simulators' own request logs
    cli("batches", "--json")
    cli("providers", "--json")
    found: list[str] = []
    for key, value in _redis_values(url):
        found += [f"redis {key!r}: {n}" for n, x in needles.items() if x in value]
    places: dict[str, bytes] = {str(p.relative_to(tmp_path)): p.read_bytes()
                                for p in [*own_redis.data.rglob("*"), out, err, *logs] if p.is_file()}
    places |= {what: text.encode() for what, text in outputs}
    for where, data in places.items():
        found += [f"{where}: {n}" for n, x in needles.items() if x in data]
    assert found == []
    assert any(str(p).endswith(".aof") for p in places)  # the AOF files were among the places searched
    # (and the keys really went out: the simulators saw each in the headers of its calls, and log it redacted)
    assert all(redacted(keys[n]).encode() in sim_tail[n] and keys[n].encode() not in sim_tail[n] for n in sims)
