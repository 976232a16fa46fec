"""Money on the command line: `estimate`, `cost` and `budget`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from redis.exceptions import RedisError

from batchrelay.cli.kit import emit_json, handles_errors, open_client, open_store, run_async, settings_of
from batchrelay.cli.options import USD, ProviderNames, completion_window_option, deadline_option, endpoint_option
from batchrelay.cli.text import counted, echo, print_table
from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import StoreError
from batchrelay.money.estimate import Estimate, OutputGuess, estimate_file
from batchrelay.money.pricing import usd_str
from batchrelay.spec import BatchSpec
from batchrelay.store.spending import cost_line, output_history, plain_usd
from batchrelay.store.status import Status

SIMULATOR = "simulator"  # the provider `run` falls back on when none is configured (runner.environment)


def _fmt(amount: Decimal | None) -> str:
    return "unknown" if amount is None else f"${usd_str(amount)}"


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@endpoint_option
@click.option("--providers", "allow", type=ProviderNames(unconfigured=[SIMULATOR]),
              help="Only these providers (comma-separated names).")
@click.option("--output-tokens", type=click.IntRange(1), help="Expect this many output tokens per line.")
@click.option("--output-ratio", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Without history: expect this many output tokens per input token (capped by max_tokens).")
@click.option("--history/--no-history", default=True, show_default=True,
              help="Expect the output per call that each provider and model gave in the last finished batches "
                   "in Redis (skipped when Redis is not reachable).")
@completion_window_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@click.pass_context
@handles_errors
def estimate(ctx: click.Context, file: Path, endpoint: str, allow: tuple[str, ...] | None, output_tokens: int | None,
             output_ratio: float, history: bool, as_json: bool, completion_window: float | None = None,
             deadline: float | None = None) -> None:
    """Estimate what FILE would cost, per provider and model, before submitting it.

    Input tokens are estimated from each request; output is a range from 1 token per line (low)
    to each line's max_tokens (high). `expected` takes --output-tokens if given, else the output
    per call each provider and model gave in earlier batches (history), else --output-ratio.
    `first choice` (*) is where routing sends the lines first (a lane, when the deadline allows it);
    the others are where failover may go.

    With a lane configured (an official Batch API), the estimate shows both totals: with the lane
    (its lines at its price, when the deadline allows) and without it, and what the deadline
    allows: a lane needs its window plus its margin before the deadline (--deadline, or now plus
    --completion-window: the earlier counts); without either, no line goes to a lane.

    \b
    Examples:
      batchrelay estimate requests.jsonl
      batchrelay estimate requests.jsonl --output-tokens 300 --json
      batchrelay estimate requests.jsonl --deadline +26h
    """
    settings = settings_of(ctx)
    if not settings.providers:  # what `run` would use: the built-in simulator, priced at official prices
        settings = settings.with_providers([ProviderConfig(name=SIMULATOR, base_url="http://127.0.0.1")])
        if not as_json:
            click.echo("no providers configured: priced as the built-in simulator `run` uses (official prices)",
                       err=True)
    seen = run_async(_history(settings)) if history and output_tokens is None else {}
    due = BatchSpec.checked({"completion_window": completion_window, "deadline": deadline}).expires_at(time.time())
    # lanes the shared health has closed take no line now: the first choice is then a synchronous provider
    closed = _closed_lanes(settings, [p.name for p in settings.providers if p.is_lane])
    est = estimate_file(file, settings, default_dialect=endpoint, allow=allow,  # type: ignore[arg-type]
                        output=OutputGuess(output_tokens, output_ratio, seen), deadline=due,
                        closed=frozenset(closed))
    if as_json:
        emit_json({**est.as_dict(), "lanes_closed": closed})
        return
    _print_estimate(est, [p for p in settings.providers if not allow or p.name in allow], closed)


def _closed_lanes(settings: Settings, names: list[str]) -> dict[str, str]:
    """The lanes the shared health has closed (disabled, benched, cooling): why each takes no line now."""
    from batchrelay.cli.lane_report import lane_health
    from batchrelay.money.lane_notes import health_text

    if not names:
        return {}
    said = {n: health_text(n, h) for n, h in lane_health(settings, names).items()}
    return {n: t for n, t in said.items() if t}


async def _history(settings: Settings) -> dict[tuple[str, str], float]:
    try:
        async with open_store(settings) as store:
            return await output_history(store)
    except (StoreError, RedisError, OSError):
        return {}  # an estimate needs no Redis


def with_lanes(est: Estimate) -> str:
    """The totals line of an estimate some of whose lines go to lanes, naming them:
    `With lane openai-batch (50 lines there): as above; without it: expected $…, range $… to $…`."""
    used = [(v.lane, v.lines) for v in est.lanes.values() if v.allowed and v.lines]
    low, exp, high = est.sync_total()
    if len(used) == 1:
        head, them = f"With lane {used[0][0]} ({counted(used[0][1], 'line')} there)", "it"
    else:  # `With lanes a (30 lines) and b (20 lines)`
        names = [f"{name} ({counted(n, 'line')})" for name, n in used] or [counted(est.lane_lines, "line")]
        head = "With lanes " + (" and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}")
        them = "them"
    return f"{head}: as above; without {them}: expected {_fmt(exp)}, range {_fmt(low)} to {_fmt(high)}"


def _print_estimate(est: Estimate, providers: Iterable[ProviderConfig], closed: dict[str, str]) -> None:
    print_table(("model", "provider", "lines", "tokens in / out", "expected", "range", "price", "output"),
                [(r.model, r.provider + (" (lane)" if r.lane else "") + (" *" if r.first_choice else ""), str(r.lines),
                  f"{r.input_tokens} / {r.expected_output_tokens}", _fmt(r.expected),
                  f"{_fmt(r.low)}-{_fmt(r.high)}", r.price_source, r.output_basis) for r in est.rows])
    low, exp, high = est.first_choice_total()
    click.echo(f"{est.lines} lines ({est.invalid} invalid). On first-choice providers (*): expected {_fmt(exp)}, "
               f"range {_fmt(low)} to {_fmt(high)}")
    for v in est.lanes.values():
        click.echo(f"{v.text()} ({v.lines} lines)" + (f"; but now {closed[v.lane]}" if v.lane in closed else ""))
    if est.lane_lines:
        click.echo(with_lanes(est))
    elif not est.lanes and (lanes := [p.name for p in providers if p.is_lane]):
        click.echo(f"no line would go to lane {', '.join(lanes)}: a synchronous provider ranks before it "
                   "(routing.strategy, priority, routes, --providers)")
    for m, p in est.unpriced():
        echo(f"warning: no known price for {m} at {p}: its cost would be unknown", err=True)
    for m, n in est.unserved.items():
        echo(f"warning: no provider may serve {m} ({n} lines)", err=True)


@click.command()
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print the ledger as JSON.")
@click.pass_context
@handles_errors
def cost(ctx: click.Context, batch: str, as_json: bool) -> None:
    """What BATCH has cost so far, by provider and model (from its ledger).

    Every billed call is counted once, with the line's result: answers, and failed calls the
    provider still billed. `reported` is what providers that quote their own cost said.

    \b
    Examples:
      batchrelay cost batch_0123abcd
      batchrelay cost batch_0123abcd --json
    """
    async def go() -> dict[str, Any]:
        async with open_client(settings_of(ctx)) as client:
            return await client.cost(batch)

    report = run_async(go())
    if as_json:
        emit_json(report)
        return
    rs = report["rows"]
    rows: list[tuple[str, ...]] = []
    if rs:
        metrics = [k for k in rs[0] if isinstance(rs[0][k], int)]
        t = {"provider": "total", "model": "", **{k: sum(r[k] for r in rs) for k in metrics},
             "cost_usd": report["total"]["usd"],
             "reported_usd": _sum_usd(r["reported_usd"] for r in rs)}
        for r in [*rs, t]:
            flags = [f"{r[k]} {label}" for k, label in (("unpriced", "unpriced"), ("min_charge", "min charge"),
                                                       ("discrepancies", "discrepant")) if r[k]]
            rows.append((r["provider"], r["model"],
                         *(str(r[k]) for k in ("requests", "failed", "input", "cached", "output")),
                         f"${r['cost_usd']}", f"${r['reported_usd']}" if r["reported_usd"] else "", ", ".join(flags)))
    print_table(("provider", "model", "requests", "failed", "input", "cached", "output", "cost", "reported", "flags"),
                rows)
    click.echo(cost_line(report["total"]))


def _sum_usd(amounts: Iterable[str | None]) -> str | None:
    given = [Decimal(a) for a in amounts if a is not None]
    return usd_str(sum(given, Decimal(0))) if given else None


@click.command()
@click.argument("batch")
@click.option("--max-cost", type=USD, metavar="USD", help="Set the batch's spending limit to this many USD.")
@click.option("--json", "as_json", is_flag=True, help="Print the budget as JSON.")
@click.pass_context
@handles_errors
def budget(ctx: click.Context, batch: str, max_cost: Decimal | None, as_json: bool) -> None:
    """Show BATCH's budget, or set it with --max-cost; a batch waiting on it goes on.

    Lines that found the budget spent wait, pending, with the batch `budget_exhausted`; raising
    the limit puts them back on the queue for any running worker (`batchrelay worker`).

    \b
    Examples:
      batchrelay budget batch_0123abcd
      batchrelay budget batch_0123abcd --max-cost 2.50
    """
    async def go() -> dict[str, Any]:
        async with open_client(settings_of(ctx)) as client:
            return await client.budget(batch, max_cost)

    b = run_async(go())
    if as_json:
        emit_json(b)
        return
    if b["max_usd"] is None:
        echo(f"{batch}: no budget (spent is not tracked without one)")
        return
    echo(f"{batch}: {b['status']}; budget ${plain_usd(b['max_usd'])}: ${plain_usd(b['spent_usd'])} spent, "
         f"${plain_usd(b['reserved_usd'])} reserved, ${plain_usd(b['remaining_usd'])} left")
    if b["requeued_chunks"]:
        click.echo(f"{b['requeued_chunks']} chunks of waiting lines are queued again; a running `batchrelay worker` "
                   "takes them")
    elif b["status"] == Status.BUDGET_EXHAUSTED:
        click.echo("lines wait for more budget: raise it with --max-cost", err=True)

