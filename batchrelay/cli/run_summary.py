"""What `batchrelay run` prints when it ends: the batch's counts, where its results went, what it
cost (and what the response cache saved), or, when it was interrupted, how to continue it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from batchrelay.cli.kit import emit_json
from batchrelay.cli.text import counted, echo
from batchrelay.store.status import Status

if TYPE_CHECKING:
    from batchrelay.cli.runner import RunReport


def cost_notes(c: dict[str, Any]) -> list[str]:
    """The remarks on a run's cost (`cost_summary`): unknown prices, discrepancies, cache hits."""
    notes = [f"{c['unpriced_calls']} calls of unknown price"] if c["unpriced_calls"] else []
    if c["discrepancies"]:
        notes.append(f"{c['discrepancies']} calls whose reported cost is over 1 % off the computed one")
    if c.get("cache_hits"):
        notes.append(f"{counted(c['cache_hits'], 'line')} answered from the cache, saving ${c['saved_usd']}")
    return notes


def print_report(report: RunReport, as_json: bool) -> None:
    if report.interrupted is not None:
        click.echo(report.next_steps(), err=True)
    if as_json:
        emit_json(report.as_dict())
        return
    if report.interrupted is not None or report.exported is None:
        return
    b = report.batch
    when = "earlier (no provider called now)" if report.done_before else f"in {report.seconds:.1f}s"
    echo(f"{b.id}: {b.status} {when}: {b.succeeded} succeeded, {b.failed} failed, "
         f"{b.invalid} invalid of {counted(b.total, 'line')}")
    echo(f"results: {report.exported.results_path} ({counted(report.exported.results, 'line')})")
    if report.exported.errors:
        echo(f"errors:  {report.exported.errors_path} ({counted(report.exported.errors, 'line')})")
    notes = cost_notes(report.cost)
    click.echo(f"cost:    ${report.cost['usd']}" + (f" ({'; '.join(notes)})" if notes else ""))
    if b.status == Status.BUDGET_EXHAUSTED:
        click.echo(f"budget exhausted: {counted(b.pending, 'line')} not sent. Raise it with `batchrelay budget {b.id} "
                   "--max-cost USD` and finish them with `batchrelay worker --burst` (same Redis)", err=True)
