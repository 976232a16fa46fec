"""Redis URLs with credentials and TLS (issue 6), and servers that listen on loopback only.

Each test here runs against a redis-server of its own (ACL users and a password, or TLS with a CA
generated for the test), so nothing depends on the shared test Redis.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import psutil
import pytest
import redis as sync_redis

from batchrelay.sim.process import SimulatorProcess, free_port
from batchrelay.store.embedded import EmbeddedRedis, find_redis_server

from .conftest import batchrelay, openai_line, write_config

DEFAULT_PW = "pw-default-Q7x"
ALICE_PW = "pw-alice"
ODD_PW = "p@ss:w/rd%x#1"  # needs percent-encoding in a URL
WRONG_PW = "WRONG-pw-Zq81"
PREFIX = "brurl:"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path


def _wait_ready(proc: subprocess.Popen[bytes], client: sync_redis.Redis, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log.read_text()[-800:]}")
        try:
            client.ping()
            return
        except (sync_redis.ConnectionError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer: {log.read_text()[-800:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[Server]:
    """A redis-server with a password for `default` and two ACL users, alice and one with an odd password."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="batchrelay-test-acl-") as d:
        log = Path(d) / "redis.log"
        proc = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
             "--appendonly", "no", "--logfile", str(log), "--requirepass", DEFAULT_PW,
             "--user", "alice", "on", f">{ALICE_PW}", "~*", "&*", "+@all",
             "--user", "odd", "on", f">{ODD_PW}", "~*", "&*", "+@all"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = sync_redis.Redis(port=port, username="alice", password=ALICE_PW)
            _wait_ready(proc, client, log)
            client.close()
            yield Server(proc, port, Path(d))
        finally:
            _stop(proc)


def _flow(tmp_path: Path, url: str, secret: str, n: int = 3,
          worker_timeout: float = 30) -> dict[str, subprocess.CompletedProcess[str]]:
    """submit, worker --burst (its INFO log kept), status, results: all with REDIS_URL=url."""
    env = {"REDIS_URL": url}
    out: dict[str, subprocess.CompletedProcess[str]] = {}
    with SimulatorProcess() as sim:
        cfg = write_config(tmp_path / "c.toml", PREFIX + tmp_path.name + ":", [{"name": "sim", "base_url": sim}])
        src = tmp_path / "in.jsonl"
        src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
        out["submit"] = batchrelay("-c", str(cfg), "submit", str(src), "--json", env=env, timeout=30)
        assert out["submit"].returncode == 0, out["submit"].stderr
        batch = json.loads(out["submit"].stdout)["id"]
        out["worker"] = batchrelay("-c", str(cfg), "worker", "--burst", env=env, timeout=worker_timeout)
        assert out["worker"].returncode == 0, out["worker"].stderr
        out["status"] = batchrelay("-c", str(cfg), "status", batch, "--json", env=env, timeout=30)
        out["results"] = batchrelay("-c", str(cfg), "results", batch, "-o", str(tmp_path / "out.jsonl"), "--json",
                                    env=env, timeout=30)
    assert out["status"].returncode == 0, out["status"].stderr
    assert json.loads(out["status"].stdout)["counts"]["succeeded"] == n
    assert out["results"].returncode == 0, out["results"].stderr
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == n
    for label, proc in out.items():
        assert secret not in proc.stdout + proc.stderr, f"{label} printed the Redis password"
        assert "Traceback" not in proc.stderr, f"{label}: {proc.stderr}"
    return out


@pytest.mark.parametrize("who", ["acl-user", "requirepass"])
def test_a_url_with_credentials_works_end_to_end(tmp_path: Path, acl_redis: Server, who: str) -> None:
    if who == "acl-user":
        url, secret = f"redis://alice:{ALICE_PW}@127.0.0.1:{acl_redis.port}/0", ALICE_PW
    else:
        url, secret = f"redis://:{DEFAULT_PW}@127.0.0.1:{acl_redis.port}/0", DEFAULT_PW
    out = _flow(tmp_path, url, secret)
    assert "Starting worker" in out["worker"].stderr


def test_a_percent_encoded_password_works_for_the_cli(tmp_path: Path, acl_redis: Server) -> None:
    url = f"redis://odd:{quote(ODD_PW, safe='')}@127.0.0.1:{acl_redis.port}/0"
    cfg = write_config(tmp_path / "c.toml", PREFIX + "odd:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    proc = batchrelay("-c", str(cfg), "batches", "--json", env={"REDIS_URL": url}, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_a_percent_encoded_password_works_for_the_worker(tmp_path: Path, acl_redis: Server) -> None:
    url = f"redis://odd:{quote(ODD_PW, safe='')}@127.0.0.1:{acl_redis.port}/0"
    try:
        _flow(tmp_path, url, ODD_PW, n=2, worker_timeout=15)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the worker did not finish: {(e.stderr or b'')[-600:]!r}")


def test_a_wrong_password_is_a_clean_error_with_the_password_masked(tmp_path: Path, acl_redis: Server) -> None:
    url = f"redis://alice:{WRONG_PW}@127.0.0.1:{acl_redis.port}/0"
    cfg = write_config(tmp_path / "c.toml", PREFIX + "wrong:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    commands = {
        "submit": ("submit", str(src)),
        "status": ("status", "batch_0123456789abcdef"),
        "results": ("results", "batch_0123456789abcdef", "-o", str(tmp_path / "o.jsonl")),
        "batches": ("batches",),
        "worker": ("worker", "--burst"),
        "run": ("run", str(src), "-o", str(tmp_path / "r.jsonl")),
        "cost": ("cost", "batch_0123456789abcdef", "--json"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(commands, pool.map(
            lambda args: batchrelay("-c", str(cfg), *args, env={"REDIS_URL": url}, timeout=30),
            commands.values()), strict=True))
    for label, proc in done.items():
        text = proc.stdout + proc.stderr
        assert proc.returncode not in (0, None), f"{label}: {text}"
        assert "Traceback" not in text, f"{label}: {text}"
        assert WRONG_PW not in text, f"{label} printed the password: {text}"
        assert f"alice:***@127.0.0.1:{acl_redis.port}" in proc.stderr, f"{label}: {proc.stderr}"
        assert proc.stderr.startswith("Error: "), f"{label}: {proc.stderr}"
    assert not (tmp_path / "r.jsonl").exists()


def test_no_password_for_a_server_that_wants_one_is_a_clean_error(tmp_path: Path, acl_redis: Server) -> None:
    cfg = write_config(tmp_path / "c.toml", PREFIX + "nopw:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    proc = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": f"redis://127.0.0.1:{acl_redis.port}/0"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error: "), proc.stderr


# --- rediss:// -------------------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d: Path) -> None:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=batchrelay-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[Server]:
    if not shutil.which("openssl"):
        pytest.skip("no openssl CLI to make a test CA and certificate (and no `cryptography` package)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="batchrelay-test-tls-") as tmp:
        d = Path(tmp)
        try:
            _make_certs(d)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"openssl could not make a test CA and certificate: {e.stderr!r}")
        log = d / "redis.log"
        proc = subprocess.Popen(
            [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key"),
             "--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "no",
             "--dir", str(d), "--save", "", "--appendonly", "no", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = sync_redis.Redis(port=port, ssl=True, ssl_ca_certs=str(d / "ca.pem"))
            try:
                _wait_ready(proc, client, log)
            except RuntimeError as e:
                pytest.skip(f"this redis-server cannot serve TLS: {e}")
            finally:
                client.close()
            yield Server(proc, port, d)
        finally:
            _stop(proc)


def _tls_url(server: Server) -> str:
    return f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={quote(str(server.dir / 'ca.pem'))}"


def test_rediss_with_a_ca_works_for_submit_status_and_results(tmp_path: Path, tls_redis: Server) -> None:
    env = {"REDIS_URL": _tls_url(tls_redis)}
    cfg = write_config(tmp_path / "c.toml", PREFIX + "tls:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n" + b"not json\n")
    sub = batchrelay("-c", str(cfg), "submit", str(src), "--json", env=env, timeout=30)
    assert sub.returncode == 0, sub.stderr
    batch = json.loads(sub.stdout)["id"]
    status = batchrelay("-c", str(cfg), "status", batch, "--json", env=env, timeout=30)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["invalid"] == 1
    res = batchrelay("-c", str(cfg), "results", batch, "-o", str(tmp_path / "o.jsonl"), "--json", env=env, timeout=30)
    assert res.returncode == 3, res.stderr  # the invalid line; the other one is still pending
    assert json.loads(res.stdout)["errors"] == 1


def test_rediss_with_an_unknown_ca_is_a_clean_error(tmp_path: Path, tls_redis: Server) -> None:
    cfg = write_config(tmp_path / "c.toml", PREFIX + "tls:", [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    proc = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": f"rediss://127.0.0.1:{tls_redis.port}/0"},
                      timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error: "), proc.stderr


def test_rediss_with_a_ca_works_for_the_worker(tmp_path: Path, tls_redis: Server) -> None:
    try:
        _flow(tmp_path, _tls_url(tls_redis), "no-password-here", n=2, worker_timeout=15)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the worker did not finish: {(e.stderr or b'')[-600:]!r}")


# --- servers listen on loopback only ---------------------------------------------------------------

def _other_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback."""
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


@pytest.mark.parametrize("how", ["module", "cli"])
def test_the_simulator_listens_on_loopback_only(how: str) -> None:
    port = free_port()
    cmd = ([sys.executable, "-m", "batchrelay.sim", "--port", str(port)] if how == "module"
           else [sys.executable, "-m", "batchrelay", "simulate", "--port", str(port)])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "the simulator exited"
            try:
                httpx.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=0.5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the simulator never answered"
                time.sleep(0.05)
        assert _listening(proc.pid) == {("127.0.0.1", port)}
        for address in _other_addresses():
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(2)
                s.connect((address, port))
    finally:
        _stop(proc)


def test_the_embedded_redis_listens_on_no_tcp_port(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "state")
    url = embedded.start()
    try:
        assert url.startswith("unix://")
        assert embedded.pid is not None
        assert _listening(embedded.pid) == set()
    finally:
        embedded.stop()
