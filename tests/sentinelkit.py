"""Real Redis replication and Sentinel for tests and benches: a master, replicas (`--replicaof`) and
sentinels (`redis-server CONF --sentinel`), each a process of its own on a free loopback port,
with its config and log in a directory the caller owns. `Servers.stop()` ends every one of them."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis as sync_redis

from batchrelay.procs import stop_all
from batchrelay.sim.process import free_port
from batchrelay.store.embedded import find_redis_server

MASTER = "brmaster"


def client(port: int, tls: Path | None = None, password: str | None = None) -> sync_redis.Redis:
    """A client of the server on `port` (over TLS, trusting `tls`/ca.pem, when `tls` is given)."""
    ssl = {"ssl": True, "ssl_ca_certs": str(tls / "ca.pem")} if tls else {}
    return sync_redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1, password=password,
                            **ssl)  # type: ignore[arg-type]


def _answers(port: int, tls: Path | None, password: str | None) -> bool:
    c = client(port, tls, password)
    try:
        return bool(c.ping())
    except (sync_redis.RedisError, OSError):
        return False
    finally:
        c.close()


@dataclass
class Servers:
    """The processes started, by role; ports too."""

    dir: Path
    tls: Path | None = None  # a directory with ca.pem, server.pem, server.key: every server speaks TLS only
    password: str | None = None  # the master's and replicas' (requirepass); the sentinels have none
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # port: process
    master: int = 0
    replicas: list[int] = field(default_factory=list)
    sentinels: list[int] = field(default_factory=list)

    def _start(self, port: int, args: list[str], *, sentinel: bool = False) -> None:
        log = self.dir / f"redis-{port}.log"
        self.procs[port] = subprocess.Popen([find_redis_server(), *args, "--logfile", str(log)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not _answers(port, self.tls, None if sentinel else self.password):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start: {log.read_text(errors='replace')[-800:]}")
            time.sleep(0.05)

    def _tls_lines(self) -> list[str]:
        """TLS only (no plain port), for clients, replication and a sentinel's own connections."""
        if not self.tls:
            return []
        return [f"tls-cert-file {self.tls / 'server.pem'}", f"tls-key-file {self.tls / 'server.key'}",
                f"tls-ca-cert-file {self.tls / 'ca.pem'}", "tls-auth-clients no", "tls-replication yes"]

    def _port(self, port: int) -> list[str]:
        return ["--port", "0", "--tls-port", str(port)] if self.tls else ["--port", str(port)]

    def _data(self, port: int) -> list[str]:
        d = self.dir / str(port)
        d.mkdir()
        tls = [x for line in self._tls_lines() for x in ("--" + line.split()[0], line.split()[1])]
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        # a replica's first sync at once (a diskless sync waits 5 s for more replicas by default)
        return [*self._port(port), *tls, *auth, "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no",
                "--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0"]

    def client(self, port: int) -> sync_redis.Redis:
        return client(port, self.tls, None if port in self.sentinels else self.password)

    def start_master(self) -> int:
        self.master = free_port()
        self._start(self.master, self._data(self.master))
        return self.master

    def start_replica(self) -> int:
        port = free_port()
        self._start(port, [*self._data(port), "--replicaof", "127.0.0.1", str(self.master)])
        self.replicas.append(port)
        deadline = time.monotonic() + 15
        master = self.client(self.master)
        # linked up, as the master sees it too: it counts a replica for WAIT only once that acknowledged
        while int(master.execute_command("WAIT", len(self.replicas), 100)) < len(self.replicas):
            assert time.monotonic() < deadline, f"replica {port} never linked up with its master"
        return port

    def start_sentinels(self, n: int = 3, *, down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> list[int]:
        """`n` sentinels watching the master (quorum: a majority), each knowing the replicas and the
        other sentinels before this returns."""
        for _ in range(n):
            port = free_port()
            conf = self.dir / f"sentinel-{port}.conf"  # a sentinel rewrites its config: a file of its own
            listen = f"port 0\ntls-port {port}\n" + "".join(f"{x}\n" for x in self._tls_lines()) if self.tls \
                else f"port {port}\n"
            conf.write_text(f"{listen}bind 127.0.0.1\ndir {self.dir}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {self.master} {n // 2 + 1}\n"
                            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
                            f"sentinel failover-timeout {MASTER} {failover_timeout_ms}\n"
                            f"sentinel parallel-syncs {MASTER} 1\n")
            if self.password:
                with conf.open("a") as f:
                    f.write(f"sentinel auth-pass {MASTER} {self.password}\n")
            self.sentinels.append(port)
            self._start(port, [str(conf), "--sentinel"], sentinel=True)
        deadline = time.monotonic() + 30
        for port in self.sentinels:
            while True:
                state = self.client(port).sentinel_master(MASTER)
                if state["num-slaves"] >= len(self.replicas) and state["num-other-sentinels"] >= n - 1:
                    break
                assert time.monotonic() < deadline, f"sentinel {port} does not know the others yet: {state}"
                time.sleep(0.1)
        return self.sentinels

    def url(self, scheme: str = "redis+sentinel") -> str:
        return f"{scheme}://{','.join(f'127.0.0.1:{p}' for p in self.sentinels)}/{MASTER}/0"

    def master_by_sentinels(self) -> int | None:
        """The master's port as a majority of the sentinels name it now."""
        named = []
        for port in self.sentinels:
            try:
                addr = self.client(port).sentinel_get_master_addr_by_name(MASTER)
            except (sync_redis.RedisError, OSError):
                continue
            if addr:
                named.append(int(addr[1]))
        best = max(set(named), key=named.count, default=None)
        return best if best is not None and named.count(best) > len(self.sentinels) // 2 else None

    def stop(self) -> None:
        stop_all(list(self.procs.values()), grace=5)


@contextlib.contextmanager
def replicated(root: Path, *, sentinels: int = 0) -> Iterator[Servers]:
    """A master and one replica under `root` (and `sentinels` sentinels watching them), stopped at the end."""
    s = Servers(root)
    s.dir.mkdir()
    try:
        s.start_master()
        s.start_replica()
        if sentinels:
            s.start_sentinels(sentinels)
        yield s
    finally:
        s.stop()
