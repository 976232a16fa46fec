"""`cancel` and `retry`: a batch's life on the command line."""

from __future__ import annotations

from typing import Any

import click

from batchrelay.cli.kit import emit_json, handles_errors, open_client, run_async, settings_of
from batchrelay.cli.text import echo


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
    echo(f"{st['id']}: {st['status']}: {c['succeeded']} succeeded, {c['failed']} failed, "
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
        echo(f"{batch}: {done['lines']} lines queued again; a running `batchrelay worker` takes them")
    else:
        echo(f"{batch}: no failed, cancelled or expired lines to retry")
