"""`cancel`, `retry` and the `--completion-window` option: a batch's life on the command line."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import click

from batchrelay.cli.kit import emit_json, handles_errors, open_client, run_async, settings_of

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Duration(click.ParamType):  # type: ignore[type-arg]
    """`90s`, `30m`, `24h`, `7d` (or plain seconds) as seconds."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not m or float(m.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 24h or 7d", param, ctx)
        return float(m.group(1)) * UNITS[m.group(2) or "s"]


DURATION = _Duration()

class _Instant(click.ParamType):  # type: ignore[type-arg]
    """An ISO-8601 time (`2026-11-22T05:00:00Z`; without an offset, local time) as unix time."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return datetime.fromisoformat(str(value).strip()).timestamp()
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time like 2026-11-22T05:00:00Z", param, ctx)


INSTANT = _Instant()


def start_at_of(at: float | None, delay: float | None) -> float | None:
    """`--at` / `--in` as the batch's start (unix time); None starts it at once."""
    if at is not None and delay is not None:
        raise click.UsageError("give --at or --in, not both")
    return at if at is not None else (time.time() + delay if delay is not None else None)


def defer_options(f: Any) -> Any:
    f = click.option("--in", "delay", type=DURATION, metavar="DURATION",
                     help="Start the batch this long from now (e.g. 2h); it is `scheduled` until then.")(f)
    return click.option("--at", "at", type=INSTANT, metavar="TIME",
                        help="Start the batch at this ISO-8601 time (e.g. 2026-11-22T05:00:00Z); a past "
                             "time starts it at the workers' next sweep.")(f)


completion_window_option = click.option(
    "--completion-window", type=DURATION, metavar="DURATION",
    help="Expire the lines not answered within this long (e.g. 24h): they get `expired` records.")


@click.command()
@click.argument("batch")
@click.option("--no-wait", is_flag=True, help="Return at once; workers finish the cancel.")
@click.option("--json", "as_json", is_flag=True, help="Print the batch as JSON.")
@click.pass_context
@handles_errors
def cancel(ctx: click.Context, batch: str, no_wait: bool, as_json: bool) -> None:
    """Cancel BATCH: lines not started are marked cancelled, lines in flight may finish.

    Calls already sent get up to call_timeout (plus a few seconds) to come back with their answer;
    then every line still without a result is marked cancelled. Results so far stay exportable
    with `results`; `retry` puts the cancelled lines back.

    \b
    Examples:
      batchrelay cancel batch_0123abcd
      batchrelay cancel batch_0123abcd --no-wait --json
    """
    async def go() -> dict[str, Any]:
        async with open_client(settings_of(ctx)) as client:
            return await client.cancel(batch, wait=not no_wait)

    st = run_async(go())
    if as_json:
        emit_json(st)
        return
    c = st["counts"]
    click.echo(f"{st['id']}: {st['status']}: {c['succeeded']} succeeded, {c['failed']} failed, "
               f"{c['cancelled']} cancelled, {c['pending']} still running")


@click.command("retry")
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print what was requeued as JSON.")
@click.pass_context
@handles_errors
def retry_command(ctx: click.Context, batch: str, as_json: bool) -> None:
    """Queue BATCH's failed, cancelled and expired lines again (invalid input lines stay as they are).

    Each retried line keeps its earlier attempts and their cost; a running `batchrelay worker`
    picks the lines up.

    \b
    Examples:
      batchrelay retry batch_0123abcd
      batchrelay retry batch_0123abcd --json
    """
    async def go() -> dict[str, Any]:
        async with open_client(settings_of(ctx)) as client:
            return await client.retry(batch)

    done = run_async(go())
    if as_json:
        emit_json(done)
        return
    if done["lines"]:
        click.echo(f"{batch}: {done['lines']} lines queued again; a running `batchrelay worker` takes them")
    else:
        click.echo(f"{batch}: no failed, cancelled or expired lines to retry")
