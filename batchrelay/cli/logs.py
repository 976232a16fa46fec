"""The log of the long-running commands (`worker`, `serve`, `run`): `--log-format text|json`,
`--log-level`, `--log-http`, and the one handler on stderr they all write through.

What each level shows: `debug` every provider call and line, arq's per-job lines and (serve) the
access log; `info` (the default of `worker` and `serve`) what a worker does with chunks and batches,
failed calls and retries, start-up; `warning` (the default of `run`, whose own output is its progress
and summary) failovers, benched or cooling providers, Redis outages, chunks retried; `error` what
went wrong inside batchrelay. httpx's one line per request is off unless `--log-http` (or the
worker's `--verbose`): a big batch's log would be nothing else.

Every record goes through logformat's RedactingFilter first: the values of the configured key
variables and anything shaped like a credential never reach a log line.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import click

from batchrelay.cli.logformat import ArqPerJob, JsonFormatter, RedactingFilter, Redactor, TextFormatter
from batchrelay.config.settings import Settings

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")
HTTP_LOGGERS = ("httpx", "httpcore")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
log = logging.getLogger("batchrelay.cli")


@dataclass(frozen=True, slots=True)
class LogSetup:
    """What the logging options asked for."""

    format: str = "text"
    level: str = "info"
    http: bool = False
    level_given: bool = field(default=False, compare=False)  # --log-level was typed (not the default)

    @property
    def access_log(self) -> bool:
        """serve's access log (one line per request) is shown at debug only."""
        return self.level == "debug"

    def child_args(self) -> list[str]:
        """The same options for a worker process `run` starts."""
        return ["--log-format", self.format, "--log-level", self.level, *(["--log-http"] if self.http else [])]

    def aliased(self, *, quiet: bool, verbose: bool) -> LogSetup:
        """The worker's older flags: --quiet is --log-level warning, --verbose is --log-level debug
        with --log-http."""
        if quiet and verbose:
            raise click.UsageError("give --quiet or --verbose, not both")
        if (quiet or verbose) and self.level_given:
            raise click.UsageError("give --log-level or --quiet/--verbose, not both")
        if quiet:
            return replace(self, level="warning")
        if verbose:
            return replace(self, level="debug", http=True)
        return self


def log_options(default_level: str = "info") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--log-format`, `--log-level` and `--log-http`, given to the command as one `logs: LogSetup`."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, log_format: str, log_level: str | None, log_http: bool, **kwargs: Any) -> Any:
            setup = LogSetup(log_format, log_level or default_level, log_http, level_given=log_level is not None)
            return f(*args, logs=setup, **kwargs)

        wrapper = click.option("--log-http", is_flag=True,
                               help="Also log each HTTP request to the providers (httpx's own line).")(wrapper)
        wrapper = click.option("--log-level", type=click.Choice(list(LEVELS)), default=None,
                               help=f"Log this and above (default: {default_level}).")(wrapper)
        return click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
                            help="text for a person; json: one JSON object per line for a log shipper.")(wrapper)

    return decorate


_writing = threading.Lock()


def write_stderr(line: str) -> None:
    """One whole line to whatever sys.stderr is at the time: under `run`'s progress bar that is rich's
    proxy, which prints it above the bar instead of through it. One writer at a time (the log, and
    `run`'s threads relaying its worker processes' lines)."""
    with _writing:
        sys.stderr.write(line if line.endswith("\n") else line + "\n")
        sys.stderr.flush()


class _Stderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_stderr(self.format(record))
        except Exception:
            self.handleError(record)


def secrets_of(settings: Settings) -> list[str]:
    """The values of every key variable the config names: provider keys, serve's client keys, the
    webhook signing secret."""
    names = [p.api_key_env for p in settings.providers] + list(settings.serve.api_keys_env)
    names.append(settings.webhooks.secret_env)
    return [v for name in names if name and (v := os.environ.get(name))]


def setup_logging(setup: LogSetup, secrets: Iterable[str] = ()) -> None:
    """One handler on the root logger, on stderr, in the asked format, redacting `secrets`; arq's
    per-job lines at debug; httpx's request lines only if asked for. Calling it again replaces it."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "batchrelay", False)]:
        root.removeHandler(h)
    handler = _Stderr()
    handler.batchrelay = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if setup.format == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(Redactor(secrets)))
    root.addHandler(handler)
    level = LEVELS[setup.level]
    root.setLevel(level)
    logging.getLogger("batchrelay").setLevel(logging.NOTSET)
    # httpcore's own lines are a trace of each connection: never wanted in an operator's log
    logging.getLogger("httpx").setLevel(logging.INFO if setup.http else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(max(level, logging.INFO))  # not its "Using selector" at debug
    arq = logging.getLogger("arq.worker")
    for f in [f for f in arq.filters if isinstance(f, ArqPerJob)]:
        arq.removeFilter(f)
    arq.addFilter(ArqPerJob())
    for name in UVICORN_LOGGERS:  # uvicorn runs with log_config=None: its records come here
        logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger(name).handlers.clear()
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if setup.access_log else logging.WARNING)


def json_logging() -> bool:
    """Whether this process logs JSON (its notices then go through the log too)."""
    return any(getattr(h, "batchrelay", False) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)


def notice(text: str, level: int = logging.INFO) -> None:
    """A line for whoever runs the command: plain on stderr, or a log record when the log is JSON
    (every line of the stream is then a JSON object)."""
    if json_logging():
        log.log(level, text)
    else:
        from batchrelay.cli.text import echo

        echo(text, err=True)
