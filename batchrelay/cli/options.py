"""The options of a batch on the command line (`submit`, `run`, `estimate`, `budget`).

Each value goes through the parser every other way in uses (parse.py), so the command line refuses
what the Python API and `serve` refuse, for the same reason; click adds which option it was. The
options then become one BatchSpec (spec.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from batchrelay import parse
from batchrelay.cli.kit import settings_of
from batchrelay.errors import InvalidValue
from batchrelay.spec import deadline_at
from batchrelay.wire.dialect import DIALECTS


class Parsed(click.ParamType):  # type: ignore[type-arg]
    """A value parsed by one of parse.py's parsers; the InvalidValue it raises is a usage error."""

    def __init__(self, name: str, parser: Callable[[Any], Any]) -> None:
        self.name = name
        self.parser = parser

    def parse(self, value: Any, ctx: click.Context | None) -> Any:
        return self.parser(value)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value, ctx)
        except InvalidValue as e:
            self.fail(str(e), param, ctx)


class ProviderNames(Parsed):
    """Comma-separated names of configured providers. `unconfigured`: the names allowed when the
    config has no provider (the built-in simulator a command falls back on)."""

    def __init__(self, unconfigured: Iterable[str] = ()) -> None:
        super().__init__("NAMES", parse.allow_list)
        self.unconfigured = tuple(unconfigured)

    def parse(self, value: Any, ctx: click.Context | None) -> tuple[str, ...] | None:
        if ctx is None:
            return parse.allow_list(value)
        configured = [p.name for p in settings_of(ctx).providers]
        return parse.allow_list(value, configured or self.unconfigured)


USD = Parsed("USD", parse.usd_amount)
DURATION = Parsed("DURATION", parse.duration_s)
INSTANT = Parsed("TIME", parse.instant)
URL = Parsed("URL", parse.webhook_url)
DEADLINE = Parsed("TIME", deadline_at)

endpoint_option = click.option(
    "--endpoint", type=Parsed("DIALECT", parse.dialect), metavar=f"[{'|'.join(DIALECTS)}]", default="chat",
    show_default=True,
    help="Dialect of bare request bodies (batch-format lines say their own).")

providers_option = click.option("--providers", "allow", type=ProviderNames(),
                                help="Only these providers (comma-separated names) may serve this batch.")

completion_window_option = click.option(
    "--completion-window", type=DURATION, metavar="DURATION",
    help="Expire the lines not answered within this long (e.g. 24h): they get `expired` records.")

deadline_option = click.option(
    "--deadline", type=DEADLINE, metavar="TIME",
    help="Expire the lines not answered by this ISO-8601 time (e.g. 2026-11-22T05:00:00Z) or this long from now "
         "(e.g. +26h); with --completion-window the earlier counts. A deadline that leaves a lane (an official "
         "Batch API) its window plus margin lets lines go there, at its price.")

webhook_option = click.option(
    "--webhook", type=URL, metavar="URL",
    help="POST the batch object to this http(s) URL when the batch ends (retried until accepted).")


def money_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--max-cost` and `--require-prices`, shared by `submit` and `run`."""
    f = click.option("--require-prices", is_flag=True,
                     help="Refuse the batch if a model has no known price at a provider that may serve it.")(f)
    return click.option("--max-cost", type=USD, metavar="USD",
                        help="Stop spending at this many USD (plus calls in flight); implies --require-prices. "
                             "Raise it later with `batchrelay budget`.")(f)


def defer_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--at` and `--in`: when a submitted batch starts (see `start_at_of`)."""
    f = click.option("--in", "delay", type=DURATION, metavar="DURATION",
                     help="Start the batch this long from now (e.g. 2h); it is `scheduled` until then.")(f)
    return click.option("--at", "at", type=INSTANT, metavar="TIME",
                        help="Start the batch at this ISO-8601 time (e.g. 2026-11-22T05:00:00Z); a past "
                             "time starts it at the workers' next sweep.")(f)


def start_at_of(at: float | None, delay: float | None) -> float | None:
    """`--at` / `--in` as the batch's start (unix time); None starts it at once."""
    if at is not None and delay is not None:
        raise click.UsageError("give --at or --in, not both")
    return at if at is not None else (time.time() + delay if delay is not None else None)


cache_option = click.option(
    "--cache/--no-cache", "cache", default=None,
    help="Answer identical requests from the response cache and store new answers in it "
         "(default: [cache] enabled). Identical requests then get identical answers.")
