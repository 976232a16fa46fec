"""The cost benchmark's independent recomputation (bench/cost.py): what each call a simulator billed
should cost at the configured prices, from the usage in its logged response, using none of
batchrelay's pricing code."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

from cost_lines import line_of

MILLION = D(1_000_000)


def recompute(prices: dict[str, str], path: str, response: dict[str, Any]) -> tuple[D, bool]:
    """Independently of batchrelay: one billed call's usage priced at the configured rates; and
    whether the minimum charge decided it."""
    p = {k: D(v) for k, v in prices.items()}
    u = response["usage"]
    if path.endswith("/chat/completions"):  # OpenAI: prompt_tokens includes the cached ones
        total_in = u["prompt_tokens"]
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        written = 0
        out = u["completion_tokens"]
    else:  # Anthropic: input_tokens leaves out cache reads and writes
        cached = u.get("cache_read_input_tokens") or 0
        written = u.get("cache_creation_input_tokens") or 0
        total_in = u["input_tokens"] + cached + written
        out = u["output_tokens"]
    plain = total_in - cached - written
    tokens = (plain * p["input"] + cached * p.get("cached_input", p["input"])
              + written * p.get("cache_write", p["input"]) + out * p["output"]) / MILLION
    computed = tokens + p.get("per_request", D(0))
    floor = p.get("min_charge", D(0))
    return max(computed, floor), floor > computed


BilledCall = tuple[str, str, str, D]  # provider, model, kind, cost


def billed_calls(logs: dict[str, list[dict[str, Any]]],
                 prices: dict[str, dict[str, dict[str, str]]]) -> tuple[dict[int, D], dict[int, int], list[BilledCall]]:
    """Per line: the recomputed cost of every call a simulator billed (a 200 with usage); per line the
    number of those calls; and (provider, model, kind, cost) for each."""
    per_line: dict[int, D] = {}
    count: dict[int, int] = {}
    calls: list[BilledCall] = []
    for provider, log in logs.items():
        for c in log:
            if c["status"] != 200 or not isinstance(c.get("response"), dict):
                continue
            cost, _ = recompute(prices[provider][c["response"]["model"]], c["path"], c["response"])
            line = line_of(c["body"])
            per_line[line] = per_line.get(line, D(0)) + cost
            count[line] = count.get(line, 0) + 1
            calls.append((provider, c["response"]["model"], c["kind"], cost))
    return per_line, count, calls
