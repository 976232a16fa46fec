"""The chaos run's providers and the config it writes (bench/chaos.py): three simulated providers with
about 30 % faults each, every one with its own key variable, auth header, dialects and prices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos_input import GPT, HAIKU

WORKER = {"chunk_size": 25, "call_timeout": 3, "job_timeout": 8, "backoff": 0.05, "attempts_per_provider": 2}
HEALTH = {"cooldown_s": 1, "max_wait_s": 2, "breaker_open_s": 2}


@dataclass(frozen=True)
class Provider:
    name: str
    auth: str
    dialects: tuple[str, ...]
    sim: dict[str, Any]
    prices: dict[str, dict[str, str]]

    @property
    def env(self) -> str:
        return f"CHAOS_{self.name.upper()}_KEY"


# About 30 % of every provider's calls go wrong, each in its own ways.
PROVIDERS = (
    Provider("alpha", "bearer", ("chat", "messages"),
             {"fail_rate": 0.12, "fail_rate_status": 503, "retry_after": 0.5, "malformed_rate": 0.06,
              "junk_rate": 0.08, "hang_rate": 0.04, "hang_seconds": 1.0, "cached_fraction": 0.25},
             {GPT: {"input": "0.15", "output": "0.6", "cached_input": "0.075", "min_charge": "0.000013"},
              HAIKU: {"input": "0.8", "output": "4", "cached_input": "0.08"}}),
    Provider("bravo", "x-api-key", ("chat", "messages"),
             {"fail_rate": 0.14, "fail_rate_status": 429, "retry_after": 0.5, "malformed_rate": 0.08,
              "junk_rate": 0.08, "cache_write_fraction": 0.2},
             {GPT: {"input": "0.3", "output": "1.2", "per_request": "0.000001"},
              HAIKU: {"input": "1", "output": "5", "cache_write": "1.25"}}),
    Provider("charlie", "tt-api-key", ("chat",),
             {"fail_rate": 0.16, "fail_rate_status": 500, "malformed_rate": 0.04, "junk_rate": 0.07,
              "hang_rate": 0.03, "hang_seconds": 4.0},
             {GPT: {"input": "0.2", "output": "0.8"}, HAIKU: {"input": "0.9", "output": "4.5"}}),
)


def q(s: str) -> str:
    return json.dumps(s)  # a TOML basic string


def toml_value(v: Any) -> str:
    return q(v) if isinstance(v, str) else repr(v)


def write_config(path: Path, prefix: str, sims: dict[str, str], concurrency: int) -> Path:
    lines = ["[redis]", f"prefix = {q(prefix)}", "", "[worker]", f"concurrency = {concurrency}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in WORKER.items()]
    lines += ["", "[health]"] + [f"{k} = {toml_value(v)}" for k, v in HEALTH.items()]
    lines += ["", "[routing]", 'strategy = "weighted"']
    for i, p in enumerate(PROVIDERS, start=1):
        lines += ["", "[[providers]]", f"name = {q(p.name)}", f"base_url = {q(sims[p.name])}",
                  f"api_key_env = {q(p.env)}", f"auth = {q(p.auth)}", f"dialects = {json.dumps(list(p.dialects))}",
                  f"priority = {i}"]
        for model, price in p.prices.items():
            lines.append(f"prices.{q(model)} = {{ {', '.join(f'{k} = {q(v)}' for k, v in price.items())} }}")
    path.write_text("\n".join(lines) + "\n")
    return path
