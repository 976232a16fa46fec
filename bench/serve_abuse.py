"""Serve under attack (issue 14, items 1-4): the serve process's peak RSS and a keyed request's latency
while a client sends too much, too slowly or too many lines.

    python bench/serve_abuse.py [--scale F] [--only NAME[,NAME...]] [--json]

Runs its own redis-server (no AOF) on a free port in a temporary directory, the provider simulator,
and `python -m batchrelay -c CFG serve --port P` (the code PYTHONPATH picks), whose client key is in
the environment variable BENCH_ABUSE_CLIENT_KEY (random unless set). Serve is started afresh before
every attack, on an emptied store and files directory, so each peak is that attack's own. For each:
- serve's RSS, sampled every ~20 ms (psutil): just before the attack, and its peak from then until
  0.5 s after;
- keyed `GET /v1/batches?limit=1`, one after another 20 ms apart on a keep-alive connection of their
  own: median, p95, max and count of those overlapping the attack (at least its first second), the
  errors among them (no answer or not 200), and the median of the second before (idle);
- the attack's answers (status codes), its duration (until its answer was complete), the bytes it
  sent (what the server took before refusing) and the bytes of its answers;
- Redis used_memory (every ~250 ms): the growth at its peak.
Targets: for every attack, peak RSS < 150 MB, and every keyed request during it answered 200 in
< 100 ms (the max is judged: a stalled event loop is one long request among many quick ones, which
p95 hides; p95 is shown); slow-headers: no connection still open at the end; json-file-id: an answer
under 64 KiB (the id is not echoed). The result column names the targets missed.

Attacks (sizes at --scale 1, which F multiplies; MB = 2**20 bytes):
  header          no key: a request whose header is 100 MB
  header-x4       no key: four of them at once
  slow-headers    no key: 300 connections each send half a request head, then nothing; how many are
                  still open after [serve] header_timeout_s + 5 s
  upload-junk     POST /v1/files: a valid form, its closing boundary, then 200 MB of junk
  upload-fields   POST /v1/files: 7,500 extra form fields of 60 KB (440 MB) before the file
  json-batches    POST /v1/batches: a 150 MB body (metadata holding a list of 78M zeros)
  json-file-id    POST /v1/batches: an input_file_id of 150 MB
  json-messages   POST /v1/messages/batches: a 150 MB body, 100,000 requests of 1.5 KB
  lines-bad       upload a 3 MB file of 1M bad lines (`{}`: JSON, not requests), create a batch of it
  lines-valid     upload 1M valid lines (the shortest valid chat lines: 125 MB), create a batch of it,
                  cancel it (a worker runs, the simulator answering in 0.5 s); the time until it is cancelled
After a raw attack's answer it goes on sending (at most 10 s more) until all is sent or the server
refuses, as an attacker would. Exit status 1 when any target fails.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from _abuse_rig import (  # noqa: E402
    Exchange,
    Probe,
    Rig,
    Sampler,
    exchange,
    padded,
    percentile,
    request_head,
    still_open,
)
from _common import print_table  # noqa: E402

try:  # noqa: E402 - its home since #14; a tree from before keeps it in settings.py (a "before" run)
    from batchrelay.config.serve import ServeConfig
except ImportError:
    from batchrelay.config.settings import ServeConfig  # type: ignore[attr-defined,no-redef]

MB = 2**20
RSS_TARGET_MB = 150
KEYED_TARGET_MS = 100
HEAD_OPEN = b"GET /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
B = "AbuseBoundary7"
CHAT = '{"custom_id":"%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}\n'  # noqa: E501
CREATE = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}


@dataclass
class Run:
    """One attack's outcome; the attack sets what it did, the runner what it measured."""

    name: str
    started: float = 0.0
    ended: float = 0.0
    answers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sent: int = 0
    received: int = 0
    notes: list[str] = field(default_factory=list)
    extra: tuple[str, bool] | None = None  # an attack's own target: (name, met)
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    keyed_ms: dict[str, float] = field(default_factory=dict)
    keyed_count: int = 0
    keyed_errors: int = 0
    redis_growth_mb: float = 0.0
    missed: list[str] = field(default_factory=list)

    def begin(self) -> None:
        self.started = time.monotonic()

    def finish(self) -> None:
        self.ended = time.monotonic()
        self.seconds = self.seconds or self.ended - self.started

    def add(self, ex: Exchange) -> None:
        self.answers.append(ex.status)
        self.seconds = max(self.seconds, ex.seconds)
        self.sent += ex.sent
        self.received += ex.received


def sized(n: int, scale: float) -> int:
    return max(1, int(n * scale))


def multipart(headers: dict[str, str], length: int) -> bytes:
    return request_head("POST", "/v1/files", {**headers, "Content-Type": f"multipart/form-data; boundary={B}"},
                        length)


def part_head(name: str) -> bytes:
    return f'--{B}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()


FILE_PART = (f'--{B}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
             f"Content-Type: application/jsonl\r\n\r\n{CHAT % 1}{CHAT % 2}\r\n--{B}--\r\n").encode()


# ---------------------------------------------------------------------------------------------- attacks

def _headers(rig: Rig, scale: float, run: Run, copies: int) -> None:
    n = sized(100 * MB, scale)
    run.begin()
    with ThreadPoolExecutor(copies) as pool:
        for ex in pool.map(lambda _: exchange(rig.port, padded(HEAD_OPEN, b"a", n, b"\r\n\r\n")[1]), range(copies)):
            run.add(ex)
    run.finish()


def header(rig: Rig, scale: float, run: Run) -> None:
    _headers(rig, scale, run, 1)


def header_x4(rig: Rig, scale: float, run: Run) -> None:
    _headers(rig, scale, run, 4)


def slow_headers(rig: Rig, scale: float, run: Run) -> None:
    n, wait = sized(300, scale), float(getattr(ServeConfig(), "header_timeout_s", 10)) + 5
    socks: list[socket.socket] = []
    run.begin()
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", rig.port), timeout=5))
            socks[-1].sendall(HEAD_OPEN + b"aaaa")
            run.sent += len(HEAD_OPEN) + 4
    except OSError as e:
        run.notes.append(f"connection {len(socks)} of {n} refused: {e}")
    time.sleep(max(0.0, wait - (time.monotonic() - run.started)))
    left = still_open(socks)
    run.finish()
    run.answers.append(f"{left} of {n} open after {wait:g} s")
    run.extra = ("open", left == 0)
    for s in socks:
        s.close()


def upload_junk(rig: Rig, scale: float, run: Run) -> None:
    length, pieces = padded(part_head("purpose") + b"batch\r\n" + FILE_PART, b"j", sized(200 * MB, scale), b"")
    _raw(rig, run, multipart(rig.auth, length), pieces)


def _raw(rig: Rig, run: Run, head: bytes, pieces: Iterable[bytes]) -> None:
    def all_of() -> Iterator[bytes]:
        yield head
        yield from pieces

    run.begin()
    run.add(exchange(rig.port, all_of()))
    run.finish()


def upload_fields(rig: Rig, scale: float, run: Run) -> None:
    count, value = sized(7500, scale), b"v" * 60 * 1024
    purpose = part_head("purpose") + b"batch\r\n"
    length = len(purpose) + count * (len(part_head("f00000")) + len(value) + 2) + len(FILE_PART)

    def pieces() -> Iterator[bytes]:
        yield purpose
        for i in range(count):
            yield part_head(f"f{i:05d}")
            yield value + b"\r\n"
        yield FILE_PART

    _raw(rig, run, multipart(rig.auth, length), pieces())


def _json(rig: Rig, run: Run, path: str, length: int, pieces: Iterable[bytes]) -> None:
    _raw(rig, run, request_head("POST", path, {**rig.auth, "Content-Type": "application/json"}, length), pieces)


def json_batches(rig: Rig, scale: float, run: Run) -> None:
    prefix = orjson.dumps({**CREATE, "input_file_id": "file-0"})[:-1] + b',"metadata":{"pad":['
    _json(rig, run, "/v1/batches", *padded(prefix, b"0,", sized(150 * MB, scale) // 2, b"0]}}"))


def json_file_id(rig: Rig, scale: float, run: Run) -> None:
    suffix = b'",' + orjson.dumps(CREATE)[1:]
    _json(rig, run, "/v1/batches", *padded(b'{"input_file_id":"file-', b"a", sized(150 * MB, scale), suffix))
    run.extra = ("echo", run.received < 64 * 1024)


def json_messages(rig: Rig, scale: float, run: Run) -> None:
    count = sized(100_000, scale)
    start = b'{"custom_id":"m-%07d","params":{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":'
    pad = 150 * MB // 100_000 - 1 - len(start % 0) - 32  # each request and its comma: 1,572 bytes
    end = b'[{"role":"user","content":"' + b"x" * pad + b'"}]}}'
    size = len(start % 0) + len(end)

    def pieces() -> Iterator[bytes]:
        yield b'{"requests":['
        for lo in range(0, count, 500):
            yield (b"," if lo else b"") + b",".join(start % i + end for i in range(lo, min(count, lo + 500)))
        yield b"]}"

    _json(rig, run, "/v1/messages/batches", 15 + count * size + count - 1, pieces())


def _call(rig: Rig, run: Run, label: str, method: str, path: str, **kw: Any) -> httpx.Response:
    t0 = time.monotonic()
    r = httpx.request(method, rig.base + path, headers=rig.auth, timeout=900, **kw)
    run.answers.append(f"{label} {r.status_code}")
    run.notes.append(f"{label} {time.monotonic() - t0:.2f} s")
    run.received += len(r.content)
    return r


def _upload_create(rig: Rig, run: Run, path: Path) -> str | None:
    """Upload the file and create a batch of it; the batch's id when there is one."""
    run.sent += path.stat().st_size
    with path.open("rb") as f:
        up = _call(rig, run, "upload", "POST", "/v1/files", files={"file": (path.name, f)}, data={"purpose": "batch"})
    if up.status_code != 200:
        return None
    made = _call(rig, run, "create", "POST", "/v1/batches", json={**CREATE, "input_file_id": up.json()["id"]})
    if made.status_code == 200:
        run.notes.append(f"batch {made.json()['status']}")
        return str(made.json()["id"])
    return None


def lines_bad(rig: Rig, scale: float, run: Run) -> None:
    path = rig.tmp / "bad.jsonl"
    path.write_bytes(b"{}\n" * sized(1_000_000, scale))  # JSON, so not refused as "not JSONL"
    run.begin()
    _upload_create(rig, run, path)
    run.finish()
    path.unlink()


def lines_valid(rig: Rig, scale: float, run: Run) -> None:
    path = rig.tmp / "valid.jsonl"
    with path.open("w", buffering=MB) as f:
        for i in range(sized(1_000_000, scale)):
            f.write(CHAT % i)
    rig.start_worker(rig.tmp / "worker.log")
    try:
        run.begin()
        batch = _upload_create(rig, run, path)
        if batch is not None:
            _call(rig, run, "cancel", "POST", f"/v1/batches/{batch}/cancel")
        run.finish()
        if batch is not None:
            deadline, status = time.monotonic() + max(30, 180 * scale), ""
            while time.monotonic() < deadline and status not in ("cancelled", "completed", "failed", "expired"):
                time.sleep(0.5)
                status = httpx.get(f"{rig.base}/v1/batches/{batch}", headers=rig.auth, timeout=60).json()["status"]
            run.notes.append(f"{status} {time.monotonic() - run.started:.1f} s after the upload began")
    finally:
        rig.stop_worker()
        path.unlink()


ATTACKS: dict[str, Callable[[Rig, float, Run], None]] = {
    "header": header, "header-x4": header_x4, "slow-headers": slow_headers, "upload-junk": upload_junk,
    "upload-fields": upload_fields, "json-batches": json_batches, "json-file-id": json_file_id,
    "json-messages": json_messages, "lines-bad": lines_bad, "lines-valid": lines_valid}


# ---------------------------------------------------------------------------------------------- measuring

def measure(rig: Rig, name: str, scale: float) -> Run:
    """Serve started afresh on an empty store, one attack, what it cost."""
    rig.reset()
    proc = rig.start_serve(rig.tmp / f"serve-{name}.log")
    sampler, probe = Sampler(proc.pid, rig), Probe(rig)
    time.sleep(1.0)
    called, run = time.monotonic(), Run(name)
    try:
        ATTACKS[name](rig, scale, run)
    except Exception as e:  # noqa: BLE001 -- the attack's own failure is part of its outcome
        run.notes.append(f"attack stopped: {type(e).__name__}: {e}")
        run.started = run.started or called
        run.finish()
    time.sleep(0.5)
    probe.stop()
    sampler.stop()
    if proc.poll() is not None:
        run.notes.append(f"serve exited {proc.returncode} (log: {rig.tmp / f'serve-{name}.log'})")
    rig.stop_serve()

    run.rss_before_mb = Sampler.last_before(sampler.rss, run.started) / MB
    run.rss_peak_mb = Sampler.peak_from(sampler.rss, run.started) / MB
    run.redis_growth_mb = (Sampler.peak_from(sampler.redis, run.started)
                           - Sampler.last_before(sampler.redis, run.started)) / MB
    during = probe.during(run.started, max(run.ended, run.started + 1.0))
    idle = [t1 - t0 for t0, t1, status in probe.samples if t1 <= called and status == 200]
    run.keyed_count, run.keyed_errors = len(during), sum(status != 200 for _, status in during)
    if during:
        ms = [s * 1000 for s, _ in during]
        run.keyed_ms = {"p50": percentile(ms, 0.5), "p95": percentile(ms, 0.95), "max": max(ms)}
    if idle:
        run.keyed_ms["idle_p50"] = percentile(idle, 0.5) * 1000
    run.missed = [name for name, met in [("rss", run.rss_peak_mb < RSS_TARGET_MB),
                                         ("keyed", bool(during) and run.keyed_ms["max"] < KEYED_TARGET_MS),
                                         ("keyed errors", not run.keyed_errors), run.extra or ("", True)] if not met]
    return run


def row(r: Run) -> tuple[str, ...]:
    k = r.keyed_ms
    keyed = (f"{k['p50']:.0f} / {k['p95']:.0f} / {k['max']:.0f} ({r.keyed_count}"
             + (f", {r.keyed_errors} errors" if r.keyed_errors else "") + f"; idle {k.get('idle_p50', 0):.0f})"
             if "p50" in k else "none")
    return (r.name, ", ".join(r.answers), f"{r.seconds:.3f}", f"{r.sent / MB:.1f}", f"{r.received:,}",
            f"{r.rss_before_mb:.0f} -> {r.rss_peak_mb:.0f}", keyed, f"{r.redis_growth_mb:+.1f}",
            "FAIL: " + ", ".join(r.missed) if r.missed else "PASS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every attack's size (0.1: a quick run)")
    ap.add_argument("--only", help=f"comma-separated attacks: {', '.join(ATTACKS)}")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(ATTACKS)
    if unknown := [n for n in names if n not in ATTACKS]:
        ap.error(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    say = sys.stderr if args.json else sys.stdout
    runs: list[Run] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="brbench-abuse-") as d, Rig(Path(d)) as rig:
        print(f"redis-server on port {rig.redis.port}, simulator {rig.sim.base_url}; scale {args.scale:g}; "
              "serve is restarted before every attack on an emptied store and files directory", file=say)
        for name in names:
            runs.append(measure(rig, name, args.scale))
            r = runs[-1]
            print(f"  {name}: {', '.join(r.answers)} in {r.seconds:.3f} s; RSS {r.rss_before_mb:.0f} -> "
                  f"{r.rss_peak_mb:.0f} MB; keyed max {r.keyed_ms.get('max', -1):.0f} ms; {row(r)[-1]}",
                  file=say, flush=True)
    failed = [r.name for r in runs if r.missed]
    if args.json:
        attacks = [{k: v for k, v in asdict(r).items() if k not in ("started", "ended")} for r in runs]
        print(orjson.dumps({"scale": args.scale, "targets": {"rss_peak_mb": RSS_TARGET_MB, "keyed_max_ms":
                            KEYED_TARGET_MS}, "serve_restarted_per_attack": True, "seconds": time.monotonic() - t0,
                            "attacks": attacks, "failed": failed}).decode())
    else:
        print(f"\n== serve under attack (scale {args.scale:g}; serve restarted before each attack; "
              f"targets: peak RSS < {RSS_TARGET_MB} MB, keyed max < {KEYED_TARGET_MS} ms, no keyed errors)")
        print_table([("attack", "answers", "s", "sent MB", "answer bytes", "RSS MB", "keyed ms p50 / p95 / max "
                      "(n; idle p50)", "Redis MB", "result"), *(row(r) for r in runs)])
        for r in runs:
            if r.notes:
                print(f"  {r.name}: {'; '.join(r.notes)}")
        print(f"  {len(failed)} of {len(runs)} attacks failed their targets; {time.monotonic() - t0:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
