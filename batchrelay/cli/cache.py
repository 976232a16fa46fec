"""`batchrelay cache stats` and `batchrelay cache clear`: the response cache (store/cache.py)."""

from __future__ import annotations

from typing import Any

import click

from batchrelay.cli.kit import emit_json, handles_errors, open_store, run_async, settings_of
from batchrelay.cli.options import DURATION
from batchrelay.store.cache import ResponseCache


@click.group("cache")
def cache_group() -> None:
    """The response cache: identical requests answered once (see README "Response cache")."""


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@click.pass_context
@handles_errors
def stats(ctx: click.Context, as_json: bool) -> None:
    """Entries, size, hit rate and USD saved by the response cache.

    \b
    Examples:
      batchrelay cache stats
      batchrelay cache stats --json
    """
    settings = settings_of(ctx)

    async def go() -> dict[str, Any]:
        async with open_store(settings) as store:
            return (await ResponseCache(store, settings.cache).stats()).as_dict()

    s = run_async(go())
    if as_json:
        emit_json(s)
        return
    rate = "n/a" if s["hit_rate"] is None else f"{s['hit_rate']:.1%}"
    click.echo(f"{s['entries']} entries, {s['mb']} MB (cap {settings.cache.max_mb:g} MB); "
               f"hit rate {rate} ({s['hits']} hits, {s['misses']} misses); saved ${s['saved_usd']}")


@cache_group.command("clear")
@click.option("--older-than", type=DURATION, metavar="DURATION", help="Only answers stored longer ago (e.g. 2d).")
@click.option("--model", help="Only answers to requests for this model (the name in the request).")
@click.option("--json", "as_json", is_flag=True, help="Print how many entries were dropped as JSON.")
@click.pass_context
@handles_errors
def clear(ctx: click.Context, older_than: float | None, model: str | None, as_json: bool) -> None:
    """Drop stored answers: all of them, or those older than a duration, or of one model.

    \b
    Examples:
      batchrelay cache clear
      batchrelay cache clear --older-than 2d --model gpt-4o-mini
    """
    settings = settings_of(ctx)

    async def go() -> int:
        async with open_store(settings) as store:
            return await ResponseCache(store, settings.cache).clear(older_than_s=older_than, model=model)

    n = run_async(go())
    if as_json:
        emit_json({"dropped": n})
    else:
        click.echo(f"dropped {n} cached answers")
