"""What every CLI command shares: settings from the context, clean errors, JSON output, a store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from batchrelay.cli.guard import Terminated
from batchrelay.cli.logs import json_logging
from batchrelay.cli.text import echo
from batchrelay.config.settings import Settings
from batchrelay.errors import BatchrelayError, ExitCode
from batchrelay.store.embedded import redis_for_async
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store

if TYPE_CHECKING:
    from batchrelay.api import AsyncClient

T = TypeVar("T")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def run_async(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def settings_of(ctx: click.Context) -> Settings:
    return ctx.find_object(dict)["settings"]  # type: ignore[index,no-any-return]


def handles_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except BatchrelayError as e:
            if json_logging():  # every line on stderr is a JSON object
                logging.getLogger("batchrelay.cli").error("Error: %s", e, extra={"error": type(e).__name__})
            else:
                echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM where the command asked for it (guard.py)
            click.echo(str(e) or "Interrupted.", err=True)
            sys.exit(ExitCode.TERMINATED if isinstance(e, Terminated) else ExitCode.INTERRUPTED)
    return wrapper


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    async with redis_for_async(settings.redis_url) as url, \
            await Store.connect(url, Keys(settings.redis.prefix)) as store:
        yield store


@contextlib.asynccontextmanager
async def open_client(settings: Settings) -> AsyncIterator[AsyncClient]:
    """The Python API (api.py) the commands are built on, connected."""
    from batchrelay.api import AsyncClient

    async with AsyncClient(settings=settings) as client:
        yield client


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
