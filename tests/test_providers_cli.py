"""`batchrelay providers` and `providers check` against simulated seed providers."""

from __future__ import annotations

import json
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
