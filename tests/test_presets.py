"""Presets: the documents' facts as defaults, every field overridable, dict fields merged."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batchrelay.config.presets import PRESETS
from batchrelay.config.settings import ProviderConfig, parse_settings
from batchrelay.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_and_a_key_variable_make_a_whole_provider(name: str) -> None:
    p = ProviderConfig.model_validate({"preset": name, "api_key_env": "K"})
    assert p.name == name and p.base_url.startswith("https://")
    assert p.dialects and all(p.path(d).startswith("/") for d in p.dialects)


def test_fields_set_in_config_win_over_the_preset_and_maps_are_merged() -> None:
    p = ProviderConfig.model_validate({"preset": "ainow", "name": "cheap", "base_url": "http://127.0.0.1:9/",
                                       "models": {"gpt-4o-mini": "GPT-4o"}, "priority": 3})
    assert (p.name, p.base_url, p.priority) == ("cheap", "http://127.0.0.1:9", 3)
    assert p.provider_model("gpt-4o-mini") == "GPT-4o"
    assert p.provider_model("claude-3-5-sonnet-20240620") == "Claude 3.5 Sonnet"  # kept from the preset
    assert p.path("chat") == "/chat/completions"


def test_piapi_prices_carry_the_gizmo_minimum_charge_by_pattern() -> None:
    p = ProviderConfig.model_validate({"preset": "piapi"})
    gizmo = p.price_of("gpt-4-gizmo-g-gFt1ghYJl")
    assert gizmo is not None and gizmo.min_charge == Decimal("0.005")
    assert p.price_multiplier == Decimal("0.75")
    assert p.price_of("unknown-model") is None


def test_ttonkapi_plans_set_rate_limits_and_explicit_limits_win() -> None:
    assert ProviderConfig.model_validate({"preset": "ttonkapi"}).limits.rpm == 60
    assert ProviderConfig.model_validate({"preset": "ttonkapi", "plan": "pro"}).limits.tpm == 100_000
    assert ProviderConfig.model_validate({"preset": "ttonkapi", "plan": "pro", "rpm": 120}).limits.rpm == 120


@pytest.mark.parametrize(("entry", "message"), [
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"preset": "ttonkapi", "plan": "gold"}, "unknown plan 'gold'"),
])
def test_bad_preset_entries_are_config_errors_naming_the_entry(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_settings({"providers": [entry]}, "b.toml")
    assert str(info.value).startswith("b.toml: providers[0]")
