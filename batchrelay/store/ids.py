"""The ids the store hands out, each of one exact shape: a batch `batch_` and a file `file-`, then
24 lowercase hex digits.

An id of any other shape names nothing, and is refused before a Redis key is built from it: a batch
key is `batch:<id>`, so `batch_<hex>:lines` would name one of that batch's other keys (its request
lines, its pending set...). Every door that takes an id from outside (`serve`, the CLI through the
Python API) goes through `Store.info`, `lifecycle.request_stop` or `checked_batch_id`.
"""

from __future__ import annotations

import re
import uuid

from batchrelay.errors import BatchNotFound

HEX = "[0-9a-f]{24}"  # the part of an id that is its own (`serve`'s other ids are built on it)
BATCH_ID = re.compile(f"batch_({HEX})")
FILE_ID = re.compile(f"file-{HEX}")


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex[:24]


def is_batch_id(text: str) -> bool:
    return BATCH_ID.fullmatch(text) is not None


def is_file_id(text: str) -> bool:
    return FILE_ID.fullmatch(text) is not None


def checked_batch_id(batch_id: str) -> str:
    """The id, when it has a batch id's shape; BatchNotFound (as for an unknown batch) when not."""
    if not is_batch_id(batch_id):
        raise BatchNotFound(batch_id)
    return batch_id
