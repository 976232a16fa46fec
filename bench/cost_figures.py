"""What the cost bench (bench/cost.py) prices with, and the figures its scenarios report."""

from __future__ import annotations

from typing import Any

from _common import Figure
from cost_lines import GPT, HAIKU

# USD per 1M tokens (and per call) as the recompute and kill configs state them
PRICES: dict[str, dict[str, dict[str, str]]] = {
    "cheap": {
        GPT: {"input": "0.15", "output": "0.6", "cached_input": "0.075", "min_charge": "0.000013"},
        HAIKU: {"input": "0.8", "output": "4", "cached_input": "0.08", "cache_write": "1"},
    },
    "backup": {
        GPT: {"input": "0.3", "output": "1.2", "per_request": "0.000001"},
        HAIKU: {"input": "1", "output": "5"},
    },
}
PRICEY = {"pricey": {"input": "1000", "output": "1000"}}  # the budget scenario's model


FIGURES: list[Figure] = []


def figure(scenario: str, name: str, value: Any, target: str = "", ok: bool | None = None) -> None:
    FIGURES.append(Figure(scenario, name, str(value), target, ok))
