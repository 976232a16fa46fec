"""`batchrelay providers` and `providers check` against simulated seed providers."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrelay.cli.providers import health_text
from batchrelay.sim.process import SimulatorProcess

from .conftest import batchrelay


def _config(path: Path, entries: list[str]) -> Path:
    path.write_text("\n".join(f"[[providers]]\n{e}\n" for e in entries))
    return path


def test_providers_lists_presets_with_dialects_auth_models_and_limits(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "c.toml", ['preset = "ttttt"\napi_key_env = "K1"',
                                         'preset = "ttonkapi"\napi_key_env = "K2"\nplan = "business"',
                                         'preset = "piapi"\napi_key_env = "K3"'])
    proc = batchrelay("-c", str(cfg), "providers", "--json", env={"K1": "x"})
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["ttttt"]["auth"] == {"chat": "bearer", "messages": "x-api-key"}
    assert rows["ttttt"]["key_set"] is True and rows["piapi"]["key_set"] is False
    assert rows["ttonkapi"]["limits"] == {"rpm": 1000, "tpm": None}
    assert "qwen-plus" in rows["ttonkapi"]["models"]
    assert rows["piapi"]["prices"]["gpt-4-gizmo-*"]["min_charge"] == "0.005"
    assert rows["piapi"]["price_multiplier"] == "0.75"
    assert rows["ttttt"]["api_key_env"] == "K1"  # the variable's name; the key itself is never shown


def test_providers_check_reports_credit_models_and_bad_keys(tmp_path: Path) -> None:
    with SimulatorProcess({"preset": "ainow", "api_key": "good", "credits": 12.5}) as ainow, \
            SimulatorProcess({"preset": "ttonkapi", "api_key": "good"}) as ttonk:
        cfg = _config(tmp_path / "c.toml", [
            f'preset = "ainow"\napi_key_env = "AINOW_K"\nbase_url = "{ainow}"',
            f'preset = "ttonkapi"\napi_key_env = "TTONK_K"\nbase_url = "{ttonk}"'])
        ok = batchrelay("-c", str(cfg), "providers", "check", "--live", "--json",
                        env={"AINOW_K": "good", "TTONK_K": "good"})
        bad = batchrelay("-c", str(cfg), "providers", "check", env={"AINOW_K": "good", "TTONK_K": "wrong"})
        unset = batchrelay("-c", str(cfg), "providers", "check", env={"AINOW_K": "good"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    results = {r["provider"]: r for r in json.loads(ok.stdout)}
    assert results["ainow"]["credits"] == 12.5  # read before the live call spends any
    assert {c["check"] for c in results["ainow"]["checks"]} == {"models", "credits", "live"}
    assert {c["check"] for c in results["ttonkapi"]["checks"]} == {"models", "live"}
    assert bad.returncode == 1
    assert "FAIL ttonkapi" in bad.stdout and "HTTP 401" in bad.stdout
    assert "ok   ainow" in bad.stdout
    assert unset.returncode == 1 and "TTONK_K is not set" in unset.stdout


@pytest.mark.parametrize(("health", "text"), [
    (None, "?"),
    ({"state": "ok", "last": None}, "ok"),
    ({"state": "cooling", "for_s": 1.6, "last": "429 slow down"}, "cooling 2s"),
    ({"state": "ok", "last": None, "cooling_models": ["m1", "m2"]}, "ok (404: m1, m2)"),
    ({"state": "cooling", "for_s": 2.0, "last": "429", "concurrency_limit": 1}, "cooling 2s, 1 in flight at most"),
    ({"state": "ok", "last": None, "concurrency_limit": 3}, "ok, 3 in flight at most"),
])
def test_health_text_says_state_time_left_cooling_models_and_the_limit_in_flight(
    health: dict[str, Any] | None, text: str
) -> None:
    assert health_text(health) == text


def test_providers_piped_prints_whole_cells_and_whether_each_key_is_set(tmp_path: Path) -> None:
    long_url = "https://a-rather-long-host-name.example-reseller.com/openai/compatible/v1"
    cfg = _config(tmp_path / "c.toml", ['preset = "ttttt"\napi_key_env = "K1"',
                                         f'preset = "piapi"\napi_key_env = "K3"\nbase_url = "{long_url}"',
                                         'name = "local"\nbase_url = "http://127.0.0.1:9"'])
    proc = batchrelay("-c", str(cfg), "providers", env={"K1": "sk-do-not-print-me", "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:5] == ["name", "kind", "preset", "key", "priority"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["ttttt"][3] == "set" and rows["piapi"][3] == "unset" and rows["local"][3] == "-"
    assert {rows[n][1] for n in ("ttttt", "piapi", "local")} == {"chat"}
    assert long_url in proc.stdout and "…" not in proc.stdout  # a pipe gets every cell whole
    assert "sk-do-not-print-me" not in proc.stdout + proc.stderr


def test_providers_check_tries_reachability_where_there_is_no_models_endpoint(tmp_path: Path) -> None:
    with SimulatorProcess({"preset": "ttapi", "api_key": "good"}) as ttapi:
        cfg = _config(tmp_path / "c.toml", [f'preset = "ttapi"\napi_key_env = "TT_K"\nbase_url = "{ttapi}"',
                                            'name = "gone"\nbase_url = "http://127.0.0.1:9"'])
        proc = batchrelay("-c", str(cfg), "providers", "check", "--json", env={"TT_K": "good"})
        wrong = batchrelay("-c", str(cfg), "providers", "check", env={"TT_K": "wrong"})
    results = {r["provider"]: r for r in json.loads(proc.stdout)}
    assert proc.returncode == 1  # the dead port
    assert results["ttapi"]["state"] == "ok" and [c["check"] for c in results["ttapi"]["checks"]] == ["reach"]
    assert "HTTP 400" in results["ttapi"]["checks"][0]["detail"]
    assert results["gone"]["state"] == "fail" and "cannot reach" in results["gone"]["checks"][0]["detail"]
    assert "FAIL ttapi" in wrong.stdout and "HTTP 401" in wrong.stdout


class _Failing(http.server.BaseHTTPRequestHandler):
    """A provider that answers every call with 503, and counts them."""

    posts = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


@pytest.fixture
def failing() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    _Failing.posts = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_providers_check_says_unchecked_with_its_own_exit_status_when_nothing_told(tmp_path: Path,
                                                                                   failing: str) -> None:
    cfg = _config(tmp_path / "c.toml", [f'name = "mute"\nbase_url = "{failing}"'])
    proc = batchrelay("-c", str(cfg), "providers", "check")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "unchecked mute" in proc.stdout and "ok" not in proc.stdout.split()
    live = batchrelay("-c", str(cfg), "providers", "check", "--live", "--json")
    assert live.returncode == 1
    assert json.loads(live.stdout)[0]["state"] == "fail"
    assert _Failing.posts == 3  # the empty request; then the live call and its one retry


def test_providers_check_live_tries_a_transient_5xx_once_more(tmp_path: Path) -> None:
    sim = SimulatorProcess({"script": [503]})
    with sim as url:
        cfg = _config(tmp_path / "c.toml", [f'name = "blip"\nbase_url = "{url}"'])
        proc = batchrelay("-c", str(cfg), "providers", "check", "--live", "--model", "gpt-4o-mini")
        calls = sim.stats()["by_status"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok   blip")
    assert calls == {"503": 1, "200": 1}


@pytest.mark.parametrize(("status", "verdict"), [
    (400, True), (422, True), (413, True),
    (401, False), (403, False), (402, False), (404, False), (405, False),
    (429, None), (200, None), (302, None), (500, None), (503, None),
])
def test_an_empty_request_is_checked_by_the_status_it_gets(status: int, verdict: bool | None) -> None:
    from batchrelay.providers.checks import probe_verdict

    ok, detail = probe_verdict(status)
    assert ok is verdict and f"HTTP {status}" in detail
