"""Completion webhooks: the batch object is POSTed once its batch ends, signed as Standard Webhooks
signs, retried with backoff until accepted, sent once however many workers run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from batchrelay.errors import ConfigError
from batchrelay.sim.process import SimulatorProcess
from batchrelay.store.webhooks import backoff_s, message, message_id, secret_bytes, signature

from .conftest import batchrelay, openai_line, status_of, wait_for, write_config
from .test_secrets import dump_redis

SECRET = "whsec_" + base64.b64encode(b"a test secret of 24 bytes").decode()


@pytest.mark.parametrize(("attempts", "wait"), [(1, 5.0), (2, 10.0), (3, 20.0), (8, 640.0), (9, 900.0), (60, 900.0)])
def test_backoff_doubles_up_to_its_cap(attempts: int, wait: float) -> None:
    assert backoff_s(attempts, 5.0, 900.0) == wait


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # the example in the Standard Webhooks spec (github.com/standard-webhooks/standard-webhooks)
    secret = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sig = signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert secret_bytes("plain secret") == b"plain secret"
    with pytest.raises(ValueError):
        secret_bytes("whsec_not*base64")


@pytest.mark.parametrize(("status", "event"), [("completed", "batch.completed"), ("failed", "batch.failed"),
                                               ("cancelled", "batch.cancelled"), ("expired", "batch.expired")])
def test_message_names_the_event_and_carries_the_batch(status: str, event: str) -> None:
    batch = {"id": "batch_1", "status": status, "counts": {"total": 3}}
    name, body = message(batch, 1_800_000_000.0)
    assert name == event
    assert orjson.loads(body) == {"type": event, "timestamp": "2027-01-15T08:00:00.000Z", "data": batch}


def test_a_retried_batch_ends_with_a_new_message_id() -> None:
    first = message_id("batch_1", "batch.completed", None)
    assert first == message_id("batch_1", "batch.completed", b"0")
    assert message_id("batch_1", "batch.completed", b"1") not in (first, message_id("batch_1", "batch.completed", b"2"))


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every POST and answers with the next of `answers`
    (the last one from then on)."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    code = receiver.answers[min(len(receiver.posts), len(receiver.answers)) - 1]
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/batch?token=t1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [orjson.loads(b) for _h, b in self.posts]


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(getattr(request, "param", [200]))
    yield r
    r.server.shutdown()
    r.server.server_close()


def _config(tmp_path: Path, prefix: str, sim: str, **webhooks: Any) -> Path:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}])
    text = cfg.read_text() + "\n[webhooks]\n" + "".join(f"{k} = {v!r}\n" for k, v in webhooks.items())
    cfg.write_text(text.replace("'", '"'))
    return cfg


def _workers(cfg: Path, redis_url: str, n: int = 1) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "REDIS_URL": redis_url, "BR_TEST_WEBHOOK_SECRET": SECRET}
    return [subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--quiet"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=30) == 0


def _submit(tmp_path: Path, cfg: Path, redis_url: str, url: str, n: int = 5, *extra: str) -> str:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    proc = batchrelay("-c", str(cfg), "submit", str(src), "--webhook", url, *extra, env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _verify(headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side of Standard Webhooks, written out here independently of batchrelay."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(s.removeprefix("v1,"), expected) for s in headers["webhook-signature"].split())


@pytest.mark.timeout(120)
def test_a_finished_batch_posts_its_batch_object_once_signed(tmp_path: Path, redis_url: str, prefix: str,
                                                            simulator: SimulatorProcess, receiver: Receiver) -> None:
    cfg = _config(tmp_path, prefix, simulator.base_url, secret_env="BR_TEST_WEBHOOK_SECRET")
    batch = _submit(tmp_path, cfg, redis_url, receiver.url, 12)
    assert status_of(cfg, redis_url, batch)["webhook"] == {"url": receiver.url, "status": "pending", "attempts": 0,
                                                           "last": None}
    workers = _workers(cfg, redis_url, 2)
    try:
        wait_for(lambda: status_of(cfg, redis_url, batch)["webhook"]["status"] == "delivered", 60, "the webhook")
        st = status_of(cfg, redis_url, batch)
        time.sleep(4.5)  # two more polls by both workers: nothing more is sent
    finally:
        _stop(workers)
    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    assert _verify(headers, body)
    assert headers["content-type"] == "application/json" and headers["batchrelay-event"] == "batch.completed"
    assert headers["webhook-id"] == f"msg_{batch}_batch.completed"
    event = orjson.loads(body)
    assert event["type"] == "batch.completed"
    data = event["data"]
    assert data["id"] == batch and data["status"] == "completed"
    assert data["counts"]["succeeded"] == 12 and data["counts"]["pending"] == 0
    assert data["cost"]["requests"] == 12
    assert st["webhook"]["attempts"] == 1 and st["webhook"]["last"] == "HTTP 200"
    client = sync_redis.Redis.from_url(redis_url)
    try:
        stored = dump_redis(client, [prefix + "*"])
    finally:
        client.close()
    assert batch.encode() in stored and SECRET.encode() not in stored  # the secret is never written to Redis
    assert base64.b64decode(SECRET.removeprefix("whsec_")) not in stored


@pytest.mark.timeout(120)
@pytest.mark.parametrize("receiver", [[500, 503, 200]], indirect=True)
def test_a_refused_webhook_is_retried_with_the_same_id_until_accepted(tmp_path: Path, redis_url: str, prefix: str,
                                                                     simulator: SimulatorProcess,
                                                                     receiver: Receiver) -> None:
    cfg = _config(tmp_path, prefix, simulator.base_url, backoff_s=0.5, max_backoff_s=1.0)
    batch = _submit(tmp_path, cfg, redis_url, receiver.url)
    workers = _workers(cfg, redis_url)
    try:
        wait_for(lambda: status_of(cfg, redis_url, batch)["webhook"]["status"] == "delivered", 60, "the webhook")
    finally:
        _stop(workers)
    assert len(receiver.posts) == 3
    assert len({h["webhook-id"] for h, _b in receiver.posts}) == 1
    assert "webhook-signature" not in receiver.posts[0][0]  # no secret configured: unsigned
    assert [b["data"]["status"] for b in receiver.bodies()] == ["completed"] * 3
    hook = status_of(cfg, redis_url, batch)["webhook"]
    assert (hook["attempts"], hook["last"]) == (3, "HTTP 200")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("receiver", [[500]], indirect=True)
def test_a_webhook_gives_up_after_max_attempts(tmp_path: Path, redis_url: str, prefix: str,
                                              simulator: SimulatorProcess, receiver: Receiver) -> None:
    cfg = _config(tmp_path, prefix, simulator.base_url, backoff_s=0.2, max_backoff_s=0.2, max_attempts=2)
    batch = _submit(tmp_path, cfg, redis_url, receiver.url)
    workers = _workers(cfg, redis_url)
    try:
        wait_for(lambda: status_of(cfg, redis_url, batch)["webhook"]["status"] == "failed", 60, "giving up")
        time.sleep(4.5)
    finally:
        _stop(workers)
    assert len(receiver.posts) == 2
    assert status_of(cfg, redis_url, batch)["webhook"]["last"] == "HTTP 500"


@pytest.mark.timeout(120)
def test_cancelling_a_batch_posts_batch_cancelled(tmp_path: Path, redis_url: str, prefix: str,
                                                  simulator: SimulatorProcess, receiver: Receiver) -> None:
    cfg = _config(tmp_path, prefix, simulator.base_url)
    batch = _submit(tmp_path, cfg, redis_url, receiver.url, 5, "--in", "2h")  # scheduled: nothing runs
    workers = _workers(cfg, redis_url)
    try:
        cancel = batchrelay("-c", str(cfg), "cancel", batch, "--json", env={"REDIS_URL": redis_url})
        assert cancel.returncode == 0, cancel.stderr
        wait_for(lambda: len(receiver.posts) == 1, 30, "the webhook")
    finally:
        _stop(workers)
    event = receiver.bodies()[0]
    assert event["type"] == "batch.cancelled"
    assert event["data"]["counts"]["cancelled"] == 5


def test_bad_webhook_urls_and_missing_secrets_are_usage_errors(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = _config(tmp_path, prefix, "http://127.0.0.1:9", secret_env="BR_TEST_UNSET_SECRET")
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    sub = batchrelay("-c", str(cfg), "submit", str(src), "--webhook", "ftp://example.com/x",
                     env={"REDIS_URL": redis_url})
    assert sub.returncode == 2 and "webhook URL must be http:// or https://" in sub.stderr
    env = {k: v for k, v in os.environ.items() if k != "BR_TEST_UNSET_SECRET"}
    worker = subprocess.run([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--burst"],
                            capture_output=True, text=True, env={**env, "REDIS_URL": redis_url}, timeout=60)
    assert worker.returncode == 2
    assert "secret_env names BR_TEST_UNSET_SECRET, which is not set" in worker.stderr
    assert "Traceback" not in worker.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text() + '\n[[schedules]]\nname = "n"\ncron = "* * * * *"\ninput = "x"\n'
                   'output_dir = "o"\nwebhook = "mailto:a@b"\n')
    proc = batchrelay("-c", str(bad), "batches", env={"REDIS_URL": redis_url})
    assert proc.returncode == 2 and "webhook URL" in proc.stderr
    assert ConfigError.exit_code == 2
