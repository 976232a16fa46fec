"""batchrelay: bulk JSONL LLM requests through Redis and arq workers to cheap, unreliable providers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchrelay._version import __version__

__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from batchrelay.api import AsyncClient, Client


def __getattr__(name: str) -> Any:
    """`Client` and `AsyncClient` are imported on first use, so `import batchrelay` stays light."""
    if name in ("Client", "AsyncClient"):
        from batchrelay import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
