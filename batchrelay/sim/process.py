"""Running the provider simulator as a child process (demo, default `run`, tests, benchmarks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from batchrelay.errors import BatchrelayError
from batchrelay.procs import stop_all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorProcess:
    """`with SimulatorProcess({"fail_rate": 0.1}) as base_url: ...`"""

    def __init__(self, config: dict[str, Any] | None = None, port: int | None = None) -> None:
        self.config = config or {}
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> str:
        cmd = [sys.executable, "-m", "batchrelay.sim", "--port", str(self.port),
               "--config-json", json.dumps(self.config)]
        # a session of its own: a terminal's Ctrl-C reaches the command using it, which stops it last
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BatchrelayError(f"simulator exited at start: {err.strip()[-500:]}")
            try:
                httpx.get(self.base_url + "/_sim/stats", timeout=0.5)
                return self.base_url
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise BatchrelayError(f"simulator did not answer on port {self.port} within {timeout:g}s")

    def configure(self, **fields: Any) -> None:
        httpx.post(self.base_url + "/_sim/config", json=fields, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self.stats_of(self.base_url)

    @staticmethod
    def stats_of(base_url: str) -> dict[str, Any]:
        return dict(httpx.get(base_url + "/_sim/stats", timeout=5).json())

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc], grace=5)
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
