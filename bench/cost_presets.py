"""The cost bench's `presets` scenario (bench/cost.py): one line each through PiAPI's and ai-now's presets
and a cached line, priced as each preset says (minimum charge, reported cost, cached rate)."""

from __future__ import annotations

import argparse
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
from cost_figures import PRICES, figure
from cost_lines import GPT
from cost_recompute import MILLION, recompute
from cost_rig import cli_json, prices_toml, q, results, sim_log, usd

from batchrelay.sim.process import SimulatorProcess

PRESET_KEY = "sk-bench-cost-7d1e"


def single_line(tmp: Path, url: str, prefix: str, tag: str, sim_config: dict[str, Any], provider_toml: str,
                line: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one line against one simulator; (its result's batchrelay.cost, the simulator's response)."""
    src = tmp / f"{tag}.jsonl"
    src.write_bytes(orjson.dumps(line) + b"\n")
    sim = SimulatorProcess(sim_config)
    try:
        sim.start()
        cfg = tmp / f"{tag}.toml"
        cfg.write_text(f"[redis]\nprefix = {q(prefix + tag + ':')}\n\n[[providers]]\n{provider_toml}\n"
                       f"base_url = {q(sim.base_url)}\n")
        out = tmp / f"{tag}.out.jsonl"
        cli_json(cfg, url, "run", str(src), "-o", str(out), timeout=60, env={"BENCH_COST_KEY": PRESET_KEY})
        (call,) = sim_log(sim.base_url)
    finally:
        sim.stop()
    (row,) = results(out)
    return row["batchrelay"]["cost"], call["response"]


def scenario_presets(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s = "presets"
    print("\n== 1b. single lines: PiAPI gizmo minimum charge, ai-now reported cost, cached input")
    key = 'api_key_env = "BENCH_COST_KEY"'
    # [{"role":"user","content":"Hi"}] is 32 bytes: 8 input tokens at the simulator, plus 2 output
    cost, resp = single_line(tmp, url, prefix, "gizmo", {"preset": "piapi", "api_key": PRESET_KEY},
                             f'preset = "piapi"\n{key}',
                             {"custom_id": "g", "method": "POST", "url": "/v1/chat/completions",
                              "body": {"model": "gpt-4-gizmo-g-abc123", "max_tokens": 2,
                                       "messages": [{"role": "user", "content": "Hi"}]}})
    u = resp["usage"]
    tokens = u["prompt_tokens"] + u["completion_tokens"]
    print(f"  gizmo: {tokens} tokens at the simulator; line usd {cost['usd']}, computed {cost.get('computed_usd')}, "
          f"min_charge_applied {cost['min_charge_applied']}")
    figure(s, "PiAPI gizmo line of 10 tokens",
           f"{tokens} tokens: ${cost['usd']} (min charge {cost['min_charge_applied']})",
           "10 tokens: $0.005 exactly", tokens == 10 and cost["usd"] is not None and D(cost["usd"]) == D("0.005")
           and cost["min_charge_applied"] is True)

    cost, resp = single_line(tmp, url, prefix, "ainow", {"preset": "ainow", "api_key": PRESET_KEY},
                             f'preset = "ainow"\n{key}',
                             {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                              "body": {"model": "gpt-4-turbo",
                                       "messages": [{"role": "user", "content": "Tell me about tea."}]}})
    # GPT-4 Turbo at ai-now: $0.03 / $0.06 per 1K tokens, as its document quotes them
    computed = (resp["input_tokens"] * D("0.03") + resp["output_tokens"] * D("0.06")) / 1000
    reported = D(str(resp["total_tokens_cost"]))
    ok = (cost.get("computed_usd") is not None and D(cost["computed_usd"]) == computed
          and cost.get("reported_usd") is not None and D(cost["reported_usd"]) == reported
          and cost.get("source") == "reported" and cost["usd"] == cost["reported_usd"])
    print(f"  ai-now: computed {cost.get('computed_usd')} (mine {usd(computed)}), reported {cost.get('reported_usd')} "
          f"(simulator {reported}), billed {cost['usd']} from {cost.get('source')}")
    figure(s, "ai-now line: computed / reported", f"${cost.get('computed_usd')} / ${cost.get('reported_usd')} "
           f"(billed {cost.get('source')})", f"${usd(computed)} / ${reported} (reported)", ok)

    cost, resp = single_line(tmp, url, prefix, "cached", {"cached_fraction": 0.75},
                             'name = "cheap"\n' + prices_toml(PRICES["cheap"]),
                             {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
                              "body": {"model": GPT,
                                       "messages": [{"role": "user", "content": "question 1: " + "x" * 400}]}})
    want, floor = recompute(PRICES["cheap"][GPT], "/v1/chat/completions", resp)
    u = resp["usage"]
    cached = u["prompt_tokens_details"]["cached_tokens"]
    p = {k: D(v) for k, v in PRICES["cheap"][GPT].items()}
    all_cached = (u["prompt_tokens"] * p["cached_input"] + u["completion_tokens"] * p["output"]) / MILLION
    print(f"  cached: {cached} of {u['prompt_tokens']} input tokens cached; line usd {cost['usd']}, recomputed "
          f"{usd(want)} (all input at the cached rate would be {usd(all_cached)}; min charge decided: {floor})")
    figure(s, "cached line: cached part at the cached rate", f"${cost['usd']} ({cached}/{u['prompt_tokens']} cached)",
           f"${usd(want)}, above the min charge", cost["usd"] is not None and D(cost["usd"]) == want and not floor
           and cached > 0)


# ---------------------------------------------------------------------------------------------- main
