"""The response cache's key for a request: a pure function (store/cache.py keeps the answers).

An answer is an answer to the request, whoever gave it: the key is the SHA-256 of the dialect and
the request body with its keys sorted (at every depth), the body's own `model` (the job's model
name, not a provider's), and without what does not change the answer: `stream`, `stream_options`.
`custom_id` is not in the body, and no provider, key or header is ever part of it. While the cache
is on, identical requests get identical answers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from batchrelay.wire.dialect import Dialect

NOT_KEYED = frozenset({"stream", "stream_options"})


def canonical_request(dialect: Dialect, body: dict[str, Any]) -> bytes:
    """The bytes the key hashes: the dialect, a newline, the body as sorted JSON without NOT_KEYED."""
    kept = {k: v for k, v in body.items() if k not in NOT_KEYED}
    return dialect.encode() + b"\n" + orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def cache_key(dialect: Dialect, body: dict[str, Any]) -> str:
    """64 hex digits naming the request's answer in the cache."""
    return hashlib.sha256(canonical_request(dialect, body)).hexdigest()
