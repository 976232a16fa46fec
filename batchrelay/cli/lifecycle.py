"""`cancel`, `retry` and `resume`: a batch's life on the command line."""

from __future__ import annotations

from typing import Any

import click

from batchrelay.cli.kit import emit_json, handles_errors, open_client, open_store, run_async, settings_of
from batchrelay.cli.text import command_with, echo
from batchrelay.store.store import BatchInfo, Store


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


async def hand_to_workers(store: Store, batch: str) -> BatchInfo:
    """A paused batch (or one whose `run` died) back on the shared queue, as it is now; ResumeRefused
    while a live `run` works it, or for a batch in any other status."""
    from batchrelay.store.resume import resume, take_lease

    lease = await take_lease(store, batch)  # not while a live `run` works it
    try:
        await resume(store, batch, store.keys.queue)
    finally:
        await lease.release()
    return await store.info(batch)


@click.command("resume")
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print the batch as JSON.")
@click.pass_context
@handles_errors
def resume_command(ctx: click.Context, batch: str, as_json: bool) -> None:
    """Hand a paused BATCH (a `run` stopped by a signal) to the workers of the shared queue.

    Its pending lines are queued again; answered lines are not sent again. A batch whose `run` died
    (killed, a crash) is taken over once that run's lease has lapsed. To continue it in one
    process instead, run the same `batchrelay run` command again.

    \b
    Examples:
      batchrelay resume batch_0123abcd && batchrelay worker --burst
    """
    async def go() -> dict[str, Any]:
        async with open_store(settings_of(ctx)) as store:
            return (await hand_to_workers(store, batch)).as_dict()

    st = run_async(go())
    if as_json:
        emit_json(st)
        return
    echo(f"{st['id']}: {st['status']} on the shared queue, {st['counts']['pending']} lines pending; "
         f"`{command_with(settings_of(ctx).source)} worker --burst` finishes it")
