"""`-c FILE`: the config file, given before the command (`batchrelay -c x.toml run ...`) or after
it (`batchrelay run -c x.toml ...`)."""

from __future__ import annotations

import sys

import click

from batchrelay.cli.text import echo
from batchrelay.config.settings import load_settings
from batchrelay.errors import BatchrelayError


def load_config(ctx: click.Context, config_path: str | None) -> None:
    """The settings of `config_path` (None: ./batchrelay.toml if present) for every command of this
    invocation; a config error is one clean line and its exit status."""
    try:
        ctx.find_object(dict)["settings"] = load_settings(config_path)  # type: ignore[index]
    except BatchrelayError as e:
        echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)


def _config_after(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        load_config(ctx, value)


def accept_config_after(group: click.Group) -> None:
    """Give every command of `group` (and of its groups) a `-c/--config` of its own. It is eager, so
    it is read before the options checked against the config (`--providers`), wherever it was typed."""
    for command in group.commands.values():
        if command.name != "simulate":  # a provider of its own: it reads no config
            command.params.append(click.Option(
                ["-c", "--config"], type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                callback=_config_after, help="Config file (may also go before the command)."))
        if isinstance(command, click.Group):
            accept_config_after(command)
