"""The `batchrelay` command line. Domain errors become one-line messages, never tracebacks."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchrelay.cli.cache import cache_group
from batchrelay.cli.config_file import accept_config_after, load_config
from batchrelay.cli.cost import budget, cost, estimate
from batchrelay.cli.kit import CONTEXT, emit_json, handles_errors, open_client, open_store, run_async, settings_of
from batchrelay.cli.lifecycle import cancel, resume_command, retry_command
from batchrelay.cli.logs import LogSetup, log_options, secrets_of, setup_logging
from batchrelay.cli.options import (
    cache_option,
    completion_window_option,
    deadline_option,
    defer_options,
    endpoint_option,
    money_options,
    providers_option,
    start_at_of,
    webhook_option,
)
from batchrelay.cli.providers import health_text, providers
from batchrelay.cli.resubmit import submit_or_resume
from batchrelay.cli.run_summary import print_report
from batchrelay.cli.servers import serve, simulate
from batchrelay.cli.text import echo, print_table
from batchrelay.cli.worker_cmd import worker
from batchrelay.errors import ExitCode
from batchrelay.money.estimate import require_prices as check_prices
from batchrelay.spec import BatchSpec
from batchrelay.store.export import check_paths, default_errors_path
from batchrelay.store.spending import cost_line
from batchrelay.store.status import Status
from batchrelay.store.store import FINISHED, unsuccessful

if TYPE_CHECKING:
    from batchrelay.api import AsyncClient
    from batchrelay.config.settings import Settings


@click.group(context_settings=CONTEXT)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), envvar="BATCHRELAY_CONFIG",
              help="Config file (default: ./batchrelay.toml if present); also accepted after the command.")
@click.version_option(package_name="batchrelay")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Run JSONL batches of LLM requests on cheap, unreliable providers.

    \b
    Quick start (embedded Redis + built-in provider simulator, no setup):
      batchrelay run examples/requests.jsonl -o results.jsonl
      batchrelay demo
    \b
    With worker processes (one machine: they share the embedded Redis; more: give all one REDIS_URL):
      batchrelay submit requests.jsonl          # prints the batch id
      batchrelay worker --burst &               # as many as you like
      batchrelay results BATCH -o results.jsonl --wait
    """
    ctx.ensure_object(dict)
    load_config(ctx, config_path)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Results JSONL (successes, in input order).")
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path),
              help="Errors JSONL (default: OUTPUT with .errors.jsonl).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (1 = in this process).")
@endpoint_option
@providers_option
@money_options
@deadline_option
@cache_option
@click.option("--new", is_flag=True,
              help="A new batch, even if a run of the same input and options was stopped or is done.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@log_options("warning")
@click.pass_context
@handles_errors
def run(ctx: click.Context, file: Path, out: Path, errors: Path | None, workers: int, endpoint: str,
        allow: tuple[str, ...] | None, max_cost: Decimal | None, require_prices: bool, new: bool,
        as_json: bool, logs: LogSetup, cache: bool | None = None, deadline: float | None = None) -> None:
    """Submit FILE, work it here, and write the results: all in one process.

    Uses REDIS_URL or [redis] url when set, else the embedded Redis the commands share; uses the
    configured providers, else the built-in simulator. Exit status: 0 all lines succeeded, 3 some
    lines failed, 4 the budget (--max-cost) ran out first, 2 bad usage, 130/143 stopped by
    Ctrl-C/SIGTERM (calls in flight are recorded; the batch is paused). The same command again
    (same input bytes and options) resumes a stopped run and sends no answered line again; for a
    run that is done it writes the results again with no provider call. --new starts afresh.
    --deadline: lines not answered by then expire; a deadline far enough off lets lines go to a
    configured lane (an official Batch API, up to its window late), and the run waits for it; it
    says on stderr, per lane, whether lines go there and why not. A batch found again keeps its own
    deadline (and says so when the one given now is another).

    \b
    Examples:
      batchrelay run examples/requests.jsonl -o results.jsonl
      batchrelay -c batchrelay.toml run big.jsonl -o out.jsonl --workers 2 --max-cost 5
      batchrelay -c batchrelay.toml run big.jsonl -o out.jsonl --deadline +26h
    """
    from batchrelay.cli.guard import sigterm_as_interrupt
    from batchrelay.cli.preflight import before_run
    from batchrelay.cli.runner import continue_command, environment, run_file

    sigterm_as_interrupt()  # a SIGTERM ends `run` as cleanly as Ctrl-C does (see cli/guard.py)
    setup_logging(logs, secrets_of(settings_of(ctx)))
    spec = BatchSpec.of(settings_of(ctx), endpoint=endpoint, providers=allow, max_cost=max_cost,
                        require_prices=require_prices, cache=cache, deadline=deadline)
    with environment(before_run(settings_of(ctx), file, out, errors, spec)) as env:
        if spec.needs_prices:
            check_prices(file, env.settings, spec.endpoint, spec.providers)
        report = run_async(run_file(env, file, out, errors, spec, workers=workers, show=not as_json,
                                    resume_same=not new, command=continue_command(sys.argv[1:]), logs=logs))
    print_report(report, as_json)
    sys.exit(report.exit_code)


@cli.command()
@click.option("--lines", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("demo-results.jsonl"), show_default=True)
@click.option("--force", is_flag=True, help="Overwrite the demo's files if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
@handles_errors
def demo(ctx: click.Context, lines: int, out: Path, force: bool, as_json: bool) -> None:
    """A no-setup tour: embedded Redis, two simulated providers (one flaky), a sample batch.

    Writes demo-input.jsonl (with a few deliberately bad lines) next to OUTPUT, runs it, and
    writes the results and errors files; it refuses to overwrite any of them unless --force.
    The flaky provider answers its first call with 429 and a quarter of the rest with 503, so
    the attempts in the results show retries and failover.

    \b
    Examples:
      batchrelay demo
      batchrelay demo --lines 1000 -o /tmp/demo.jsonl
    """
    from batchrelay.cli.demo import DEMO_PROVIDERS, refuse_overwrite, write_sample
    from batchrelay.cli.runner import environment, run_file

    sample = out.with_name("demo-input.jsonl")
    if not force:
        refuse_overwrite([sample, out, default_errors_path(out)])
    write_sample(sample, lines)
    settings = settings_of(ctx).with_providers([])
    with environment(settings, DEMO_PROVIDERS) as env:
        report = run_async(run_file(env, sample, out, None, BatchSpec.of(env.settings), show=not as_json))
    print_report(report, as_json)
    if report.interrupted is not None:
        sys.exit(report.exit_code)
    if not as_json:
        echo(f"input:   {sample} (the demo plants bad lines on purpose)")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="A name for the batch (default: the file name).")
@endpoint_option
@providers_option
@money_options
@completion_window_option
@deadline_option
@defer_options
@webhook_option
@cache_option
@click.option("--resume", is_flag=True, help="Return the unfinished batch of the same input and options, if any "
              "(a paused one goes back on the shared queue, as `resume` does).")
@click.option("--json", "as_json", is_flag=True, help="Print the submission as JSON.")
@click.pass_context
@handles_errors
def submit(ctx: click.Context, file: Path, name: str | None, endpoint: str, allow: tuple[str, ...] | None,
           max_cost: Decimal | None, require_prices: bool, completion_window: float | None, at: float | None,
           delay: float | None, webhook: str | None, resume: bool, as_json: bool, cache: bool | None = None,
           deadline: float | None = None) -> None:
    """Queue FILE as a new batch in Redis and print its id.

    Each line is an OpenAI Batch line, an Anthropic Message Batches line, or a bare request
    body; bad lines become error records with their line number and the rest runs.
    Lines not answered by the end of --completion-window (from the start) or by --deadline,
    whichever comes first, expire. Lines go to a lane (an official Batch API, at its lower price)
    only when that leaves the lane its window plus margin: a 24h lane needs --completion-window 26h
    or --deadline +26h, not 24h. It says on stderr, per lane, whether lines go there and why not.

    \b
    Examples:
      BATCH=$(batchrelay submit requests.jsonl)
      batchrelay status $BATCH --watch
      batchrelay submit requests.jsonl --max-cost 0.50 --completion-window 24h
      batchrelay submit requests.jsonl --deadline 2026-11-23T08:00:00Z   # or --deadline +26h
      batchrelay submit requests.jsonl --at 2026-11-22T05:00:00Z   # or --in 2h
      batchrelay submit requests.jsonl --webhook https://example.com/hooks/batch
    """
    from batchrelay.cli.lane_report import SUBMIT_KEPT_HINT, lane_report, submit_hint

    spec = BatchSpec.of(settings_of(ctx), name=name, endpoint=endpoint, providers=allow, max_cost=max_cost,
                        require_prices=require_prices, completion_window=completion_window,
                        start_at=start_at_of(at, delay), webhook=webhook, cache=cache, deadline=deadline)

    st, existing = run_async(submit_or_resume(settings_of(ctx), file, spec, resume))
    counts = st["counts"]
    start = st["start_at"] if existing else spec.start_at
    notes = lane_report(settings_of(ctx), file, spec, st["expires_at"], start=start,
                        hint=SUBMIT_KEPT_HINT if existing else submit_hint(spec))
    for note in notes:
        click.echo(note.text, err=True)
    if as_json:
        emit_json({"id": st["id"], "existing": existing, "status": st["status"], "lines": counts["total"],
                   "valid": counts["total"] - counts["invalid"], "invalid": counts["invalid"],
                   "start_at": start, "deadline": st["expires_at"], "deadline_given": spec.deadline,
                   "webhook": (st["webhook"] or {}).get("url") if existing else spec.webhook,
                   "notes": st["notes"], "lanes": [n.as_dict() for n in notes]})
    else:
        echo(st["id"])
        if st["status"] == Status.SCHEDULED and st["start_at"] is not None:
            when = datetime.fromtimestamp(st["start_at"], UTC).isoformat(timespec="seconds")
            click.echo(f"scheduled: starts at {when} (at the workers' first sweep after it)", err=True)
        if counts["invalid"]:
            click.echo(f"{counts['invalid']} of {counts['total']} lines are invalid (see the errors file of `results`)",
                       err=True)


@cli.command()
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="Show a progress bar until the batch finishes.")
@click.pass_context
@handles_errors
def status(ctx: click.Context, batch: str, as_json: bool, watch: bool) -> None:
    """Show a batch's status: counts, deadline, rate and ETA, lines held by lanes, cost, providers.

    A paused batch, one over its budget and one being cancelled or expired get no rate or ETA (nothing
    works them at a rate): status says what each waits for instead.

    While a lane (an official Batch API) holds lines, the ETA covers only the synchronous providers'
    lines; each lane's lines are shown with their parcels (state, upstream batch id) and the time by
    which, at the latest, they are answered upstream or handed back to the synchronous providers.

    \b
    Examples:
      batchrelay status batch_0123abcd
      batchrelay status batch_0123abcd --watch
    """
    from batchrelay.cli.lane_text import deadline_line, held_in_batch, lane_lines, rate_line, with_lanes
    from batchrelay.cli.status_text import waiting_line

    settings = settings_of(ctx)

    async def go() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        async with open_client(settings) as client:
            if watch:
                await _watch(client, settings, batch, show=True)
            return await client.status(batch), await client.providers()

    st, health = run_async(go())
    now = time.time()
    health = with_lanes(health, {p.name: p.kind for p in settings.ordered_providers()}, held_in_batch(st))
    if as_json:
        emit_json({**st, "providers": health})
        return
    echo(f"{st['id']}  {st['status']}  {st['name']}  ({st['input_format']})")
    if st["status"] == Status.SCHEDULED and st["start_at"] is not None:
        click.echo(f"  starts at {datetime.fromtimestamp(st['start_at'], UTC).isoformat(timespec='seconds')}")
    if (deadline := deadline_line(st, now)) is not None:
        click.echo(f"  {deadline}")
    click.echo("  " + "  ".join(f"{k}={v}" for k, v in st["counts"].items()))
    # a paused, over-budget or stopping batch is not worked at a rate: what it waits for instead
    if (waiting := waiting_line(st, settings.worker.cancel_grace_s, now)) is None:
        click.echo(f"  {rate_line(st)}")
    for line in lane_lines(st, now):
        echo(f"  {line}")
    if waiting is not None:
        echo(f"  {waiting}")
    click.echo(f"  {cost_line(st['cost'])}")
    if hook := st["webhook"]:
        last = f" (last: {hook['last']})" if hook["last"] else ""
        echo(f"  webhook {hook['status']} after {hook['attempts']} attempts{last}: {hook['url']}")
    for name, h in health.items():
        last = f"  last: {h['last']}" if h.get("last") else ""
        echo(f"  provider {name}: {health_text(h)}{last}")


async def _watch(client: AsyncClient, settings: Settings, batch: str, *, show: bool) -> dict[str, Any]:
    """Wait for the batch to end (or its budget to run out, or its `run` to pause), with a progress
    bar on a terminal that counts the lines lanes hold apart; its status then."""
    from batchrelay.cli.progress import waited_for, watch

    async with open_store(settings) as store:
        await watch(store, batch, show=show, ends=waited_for)
    return await client.status(batch)


@cli.command()
@click.argument("batch")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path),
              help="Errors JSONL (default: OUTPUT with .errors.jsonl).")
@click.option("--wait", is_flag=True, help="Wait for the batch to finish first.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_context
@handles_errors
def results(ctx: click.Context, batch: str, out: Path, errors: Path | None, wait: bool, as_json: bool) -> None:
    """Write a batch's results in input order (successes to OUTPUT, failures to the errors file).

    Exit status 3 when the batch has failed or invalid lines; with --wait, 4 when it stopped short of
    its end (budget exhausted, or paused: an interrupted `run`'s batch).

    \b
    Example:
      batchrelay results batch_0123abcd -o results.jsonl --wait
    """
    check_paths(out, errors)  # not after a long wait

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with open_client(settings_of(ctx)) as client:
            st = await (_watch(client, settings_of(ctx), batch, show=not as_json) if wait else client.status(batch))
            return st, await client.export(batch, out, errors)

    st, exported = run_async(go())
    counts = st["counts"]
    if as_json:
        st.pop("cost", None)
        emit_json({**st, **exported})
    else:
        if st["status"] not in FINISHED:
            resume = f" (`batchrelay resume {st['id']}` continues it)" if st["status"] == Status.PAUSED else ""
            echo(f"note: {st['id']} is {st['status']}; {counts['pending']} lines have no result yet{resume}", err=True)
        echo(f"{exported['results']} results -> {exported['results_file']}; "
             f"{exported['errors']} errors -> {exported['errors_file']}")
    short = wait and st["status"] in (Status.PAUSED, Status.BUDGET_EXHAUSTED)  # waited, and it will not end alone
    sys.exit(ExitCode.BUDGET if short else ExitCode.FAILED_LINES if unsuccessful(counts) else ExitCode.OK)


@cli.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
@handles_errors
def batches(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List batches, newest first.

    \b
    Examples:
      batchrelay batches
      batchrelay batches --limit 5 --json
    """
    async def go() -> list[dict[str, Any]]:
        async with open_client(settings_of(ctx)) as client:
            return await client.batches(limit)

    items = run_async(go())
    if as_json:
        emit_json(items)
        return
    rows = []
    for b in items:
        starts = (datetime.fromtimestamp(b["start_at"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
                  if b["status"] == Status.SCHEDULED and b["start_at"] is not None else "")
        c = b["counts"]
        rows.append([b["id"], b["name"], b["status"],
                     *(str(c[k]) for k in ("total", "succeeded", "failed", "invalid", "pending")), starts])
    print_table(["id", "name", "status", "total", "succeeded", "failed", "invalid", "pending", "starts"], rows)


for command in (providers, estimate, cost, budget, cancel, retry_command, worker, serve, simulate, resume_command,
                cache_group):
    cli.add_command(command)
accept_config_after(cli)


def main() -> None:
    cli(prog_name="batchrelay")

