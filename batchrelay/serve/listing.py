"""Lists as both APIs page them (pure): a page size within the API's bounds, a sort order, and a
page of a sorted list after a cursor. A bad value is a `BadParam` naming the parameter, which each
API answers with a 400 in its own error shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from batchrelay.serve.params import BadParam, clip

T = TypeVar("T")


def page_size(raw: str | None, *, default: int, most: int, param: str = "limit") -> int:
    """The `limit` query parameter: an integer from 1 to `most`, `default` when absent."""
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise BadParam(param, f"{param} must be an integer from 1 to {most}, not {clip(raw)!r}") from None
    if not 1 <= n <= most:
        raise BadParam(param, f"{param} must be from 1 to {most}, not {clip(raw)}")
    return n


def descending(raw: str | None) -> bool:
    """The `order` query parameter (OpenAI): `desc` (the default, newest first) or `asc`."""
    if raw in (None, "desc"):
        return True
    if raw == "asc":
        return False
    raise BadParam("order", f"order must be 'asc' or 'desc', not {clip(raw)!r}")


def page_after(items: Sequence[T], key: Callable[[T], str], after: str | None, limit: int,
               param: str = "after") -> tuple[list[T], bool]:
    """The `limit` items after the one whose key is `after` (from the start without it), and whether
    more follow. A cursor that names no item is a BadParam: starting over would repeat a page."""
    start = 0
    if after is not None:
        found = next((i for i, item in enumerate(items) if key(item) == after), None)
        if found is None:
            raise BadParam(param, f"{param}: no object {clip(after)!r} in this list")
        start = found + 1
    return list(items[start:start + limit]), len(items) > start + limit
