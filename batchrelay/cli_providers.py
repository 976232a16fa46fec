"""`batchrelay providers`: what is configured, its shared health, and `check`."""

from __future__ import annotations

import sys
from typing import Any

import click

from .clikit import emit_json, handles_errors, run_async, settings_of


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the providers as JSON.")
@click.pass_context
@handles_errors
def providers(ctx: click.Context, as_json: bool) -> None:
    """List the configured providers: preset, dialects, models, limits, prices.

    
    Examples:
      batchrelay providers
      batchrelay providers check --live
    """
    if ctx.invoked_subcommand:
        return
    from rich.console import Console
    from rich.table import Table

    items = settings_of(ctx).ordered_providers()
    if as_json:
        emit_json([_provider_row(p) for p in items])
        return
    table = Table("name", "preset", "priority", "base url", "dialects", "auth", "models", "rpm/tpm")
    for p in items:
        row = _provider_row(p)
        table.add_row(p.name, p.preset or "-", str(p.priority), p.base_url, ", ".join(p.dialects),
                      ", ".join(f"{d}:{a}" for d, a in row["auth"].items()), row["models_summary"],
                      f"{row['limits']['rpm'] or '-'}/{row['limits']['tpm'] or '-'}")
    Console().print(table)


def _provider_row(p: Any) -> dict[str, Any]:
    models = sorted(set(p.catalog) | set(p.models.values()))
    return {
        "name": p.name, "preset": p.preset, "priority": p.priority, "base_url": p.base_url,
        "dialects": list(p.dialects), "auth": {d: p.auth_for(d) for d in p.dialects},
        "paths": {d: p.path(d) for d in p.dialects}, "api_key_env": p.api_key_env,
        "key_set": bool(p.api_key()) if p.api_key_env else None, "models": models,
        "models_summary": ", ".join(models[:4]) + (f" (+{len(models) - 4})" if len(models) > 4 else "") or "any",
        "model_map": p.models, "limits": p.limits.model_dump(), "plan": p.plan,
        "price_multiplier": str(p.price_multiplier), "cost_source": p.cost_source,
        "prices": {m: pr.model_dump(mode="json", exclude_defaults=True) for m, pr in p.prices.items()},
    }


@providers.command("check")
@click.option("--live", is_flag=True, help="Also send a 1-token request to each provider (costs a little).")
@click.option("--model", help="Model for the --live request (default: the provider's first listed model).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
@handles_errors
def providers_check(ctx: click.Context, live: bool, model: str | None, as_json: bool) -> None:
    """Check each provider's key and reachability (models/credits endpoints; --live: a real call).

    Exit status 1 when any provider fails a check.
    """
    from .checks import check_all

    results = run_async(check_all(settings_of(ctx).ordered_providers(), live=live, model=model))
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        for r in results:
            credit = f"  credits: {r.credits}" if r.credits is not None else ""
            click.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.provider}{credit}")
            for c in r.checks:
                click.echo(f"     {c['check']}: {c['detail']}")
    sys.exit(0 if all(r.ok for r in results) else 1)


