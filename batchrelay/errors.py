"""One error tree for batchrelay.

    BatchrelayError                 every error this package raises on purpose
    ├── ConfigError                 bad or missing configuration (file, key, reason)
    ├── InputError                  a user-supplied file or argument cannot be used at all
    ├── StoreError                  Redis unreachable or a batch missing
    │   └── BatchNotFound
    ├── EmbeddedRedisError          the embedded redis-server could not be started
    └── ProviderError               one call to a provider failed (carries status, body, headers)
        ├── ProviderHTTPError       the provider answered with an error status
        ├── ProviderBadResponse     a 200 whose body is not a usable answer
        └── ProviderTransportError  connect error, timeout, connection reset
            └── ProviderTimeout

The CLI turns a BatchrelayError into a one-line message and an exit code; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BatchrelayError(Exception):
    exit_code = 1


class ConfigError(BatchrelayError):
    exit_code = 2


class InputError(BatchrelayError):
    exit_code = 2


class UnpricedModels(InputError):
    """`--require-prices` (or `--max-cost`) and a model without a known price at some provider."""


class StoreError(BatchrelayError):
    pass


class BadRedisURL(StoreError):
    exit_code = 2


class BatchNotFound(StoreError):
    exit_code = 2

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r} in this Redis (see `batchrelay batches`)")
        self.batch_id = batch_id


class EmbeddedRedisError(BatchrelayError):
    pass


class ProviderError(BatchrelayError):
    """A failed call. `status` is None when no HTTP response arrived."""

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.reason = message
        self.status = status
        self.body = body
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}


class ProviderHTTPError(ProviderError):
    pass


class ProviderBadResponse(ProviderError):
    """A 200 that is not a usable answer. Some still carry the usage the provider bills for:
    `billed` is then a `(Usage, reported cost or None)` pair, so the call can be paid for."""

    billed: tuple[Any, Any] | None = None


class ProviderTransportError(ProviderError):
    pass


class ProviderTimeout(ProviderTransportError):
    pass
