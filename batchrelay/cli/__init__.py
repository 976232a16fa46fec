"""The command line (click). An entry point: nothing else imports it."""

from batchrelay.cli.main import main

__all__ = ["main"]
