"""`batchrelay providers`: what is configured, its shared health, and `check`."""

from __future__ import annotations

import sys
from typing import Any

import click

from batchrelay.cli.kit import emit_json, handles_errors, open_store, run_async, settings_of
from batchrelay.cli.lane_text import lane_settings_text, waiting_text, with_lanes
from batchrelay.cli.text import echo, print_table
from batchrelay.errors import StoreError
from batchrelay.money.pricing import price_of, usd_str
from batchrelay.store.health import Health
from batchrelay.store.lane_status import lane_loads


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the providers as JSON.")
@click.pass_context
@handles_errors
def providers(ctx: click.Context, as_json: bool) -> None:
    """List the configured providers: kind, preset, whether the key is set, dialects, models, limits,
    prices, health; a lane's settings (window, margin, gather, sizes, price multiplier) and what it holds.

    
    Examples:
      batchrelay providers
      batchrelay providers check --live
    """
    if ctx.invoked_subcommand:
        return
    settings = settings_of(ctx)
    items = settings.ordered_providers()
    health = run_async(_health_or_none(settings, items))
    rows = [{**_provider_row(p), "health": health.get(p.name) if health else None} for p in items]
    if as_json:
        emit_json(rows)
        return
    print_table(["name", "kind", "preset", "key", "priority", "base url", "dialects", "auth", "models", "rpm/tpm",
                 "pricing", "health"],
                [[p.name, p.kind, p.preset or "-", KEY_TEXT[row["key_set"]], str(p.priority), p.base_url,
                  ", ".join(p.dialects), ", ".join(f"{d}:{a}" for d, a in row["auth"].items()), row["models_summary"],
                  f"{row['limits']['rpm'] or '-'}/{row['limits']['tpm'] or '-'}", _pricing_text(p),
                  health_text(row["health"])] for p, row in zip(items, rows, strict=True)])
    for row in rows:
        if row["lane"]:
            echo(lane_settings_text(row["name"], row["kind"], row["lane"], row["price_multiplier"]))
    for row in rows:  # why a provider takes no call now, below the table (the error is too wide for it)
        h = row["health"] or {}
        if h.get("state") in CLOSED_STATES and h.get("last"):
            echo(f"{row['name']} is {health_text(h)} after: {h['last']}")
    if health is None:
        click.echo("(health unknown: Redis not reachable)", err=True)


KEY_TEXT = {True: "set", False: "unset", None: "-"}  # whether `api_key_env` holds a key; "-": no key needed


def _pricing_text(p: Any) -> str:
    """Where the provider's prices come from: its listed ones, official ones (times a multiplier)."""
    parts = [f"{len(p.prices)} listed"] if p.prices else []
    parts.append("official" + (f" x{p.price_multiplier}" if p.price_multiplier != 1 else ""))
    if p.cost_source == "reported":
        parts.append("bills its reported cost")
    return ", ".join(parts)


def _resolved_prices(p: Any, models: list[str]) -> dict[str, Any]:
    """Per model the provider knows: USD per 1M tokens and per call, and where the price comes from."""
    out = {}
    for m in models:
        price = price_of(p, m)
        rates = {k: usd_str(v) for k, v in price.rates().items()}
        out[m] = {**rates, "per_request": usd_str(price.per_request), "min_charge": usd_str(price.min_charge),
                  "source": price.source}
    return out


CLOSED_STATES = ("benched", "disabled", "cooling", "breaker open")


def health_text(h: dict[str, Any] | None) -> str:
    if not h:
        return "?"
    text = str(h["state"]) + (f" {h['for_s']:.0f}s" if "for_s" in h else "")
    if h.get("cooling_models"):
        text += f" (404: {', '.join(h['cooling_models'])})"
    if h.get("concurrency_limit"):
        text += f", {h['concurrency_limit']} in flight at most"
    if waiting := waiting_text(h):
        text += f" ({waiting})"
    return text


async def _clear_recovered(settings: Any, names: list[str]) -> set[str]:
    if not names:
        return set()
    lanes = {p.name for p in settings.providers if p.is_lane}
    try:
        async with open_store(settings) as store:
            health = Health(store, settings.health)
            for name in names:
                await health.clear(name, cooling=name in lanes)  # a lane that lists its batches is reachable
    except StoreError:
        return set()
    return set(names)


async def _health_or_none(settings: Any, items: list[Any]) -> dict[str, dict[str, Any]] | None:
    """The shared health of these providers, with what each lane holds over every batch (its lines
    and open parcels by state), or None when Redis cannot be reached."""
    try:
        async with open_store(settings) as store:
            health = await Health(store, settings.health).snapshot([p.name for p in items])
            loads = await lane_loads(store) if any(p.is_lane for p in items) else {}
    except StoreError:
        return None
    return with_lanes(health, {p.name: p.kind for p in items},
                      {lane: (load.lines, load.parcels) for lane, load in loads.items()})


def _provider_row(p: Any) -> dict[str, Any]:
    models = sorted(set(p.catalog) | set(p.models.values()))
    return {
        "name": p.name, "kind": p.kind, "preset": p.preset, "priority": p.priority, "base_url": p.base_url,
        "dialects": list(p.dialects), "auth": {d: p.auth_for(d) for d in p.dialects},
        "paths": {d: p.path(d) for d in p.dialects}, "api_key_env": p.api_key_env,
        "key_set": bool(p.api_key()) if p.api_key_env else None, "models": models,
        "models_summary": ", ".join(models[:4]) + (f" (+{len(models) - 4})" if len(models) > 4 else "") or "any",
        "model_map": p.models, "limits": p.limits.model_dump(), "plan": p.plan,
        "price_multiplier": str(p.price_multiplier), "cost_source": p.cost_source,
        "prices": {m: pr.model_dump(mode="json", exclude_defaults=True) for m, pr in p.prices.items()},
        "model_prices": _resolved_prices(p, [m for m in models if "*" not in m]),
        "lane": p.lane.model_dump() if p.is_lane and p.lane is not None else None,  # window_s, margin_s, ...
    }


@providers.command("check")
@click.option("--live", is_flag=True, help="Also send a 1-token request to each provider (costs a little).")
@click.option("--model", help="Model for the --live request (default: the provider's first listed model).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
@handles_errors
def providers_check(ctx: click.Context, live: bool, model: str | None, as_json: bool) -> None:
    """Check each provider's key and reachability (models/credits endpoints; --live: a real call).

    A provider without a models or credits endpoint gets an empty request (unless --live), which
    a working one refuses with a 4xx; --live tries a 5xx once more. A lane (an official Batch API)
    lists its batches with its key; --live makes no call on it. Each provider is ok, FAIL, or
    unchecked when nothing tried could tell. A provider that passes (with credit left, where it
    shows credit) is taken off the bench and re-enabled for every worker (a lane: its cooldown
    lifted too). Exit status: 0 all ok, 1 one failed, 5 none failed but one could not be checked.

    \b
    Examples:
      batchrelay providers check
      batchrelay providers check --live --model gpt-4o-mini --json
    """
    from batchrelay.providers.checks import check_all, exit_status

    settings = settings_of(ctx)
    results = run_async(check_all(settings.ordered_providers(), live=live, model=model))
    cleared = run_async(_clear_recovered(settings, [r.provider for r in results if r.recovered]))
    if as_json:
        emit_json([{**r.as_dict(), "cleared": r.provider in cleared} for r in results])
    else:
        for r in results:
            credit = f"  credits: {r.credits}" if r.credits is not None else ""
            note = "  (bench/disable lifted)" if r.provider in cleared else ""
            echo(f"{STATE_LABELS[r.state]} {r.provider}{credit}{note}")
            for c in r.checks:
                echo(f"     {c['check']}: {c['detail']}")
    sys.exit(exit_status(results))


STATE_LABELS = {"ok": "ok  ", "fail": "FAIL", "unchecked": "unchecked"}


