"""One error tree for batchrelay, and the exit codes of the command line.

    BatchrelayError                 every error this package raises on purpose
    ├── ConfigError                 bad or missing configuration (file, key, reason)
    ├── InputError                  a user-supplied file, argument or option cannot be used at all
    │   ├── InvalidValue            one value (an option, a field) cannot be used; also a ValueError
    │   ├── UnpricedModels          a budget or --require-prices, and a model without a known price
    │   ├── UploadError             an upload to `serve` that is not a usable multipart file
    │   │   └── UploadTooLarge      ... or one over a size or field limit (413)
    │   └── BodyRefused             a request body `serve` stops reading (the connection is closed)
    │       ├── BodyTooLarge        ... over its size limit (413)
    │       └── BodyIdle            ... silent for `[serve] body_timeout_s` (408)
    ├── RetryRefused                `retry` of a batch that has not ended
    ├── ResumeRefused               `run`/`resume` of a batch another live `run` (or the workers) has
    ├── StoreError                  Redis unreachable or a batch missing
    │   ├── BadRedisURL             a Redis URL that cannot be parsed
    │   └── BatchNotFound
    ├── EmbeddedRedisError          the embedded redis-server could not be started
    ├── BudgetRefusal               a call the batch's budget cannot take (the relay holds the line)
    │   ├── BudgetBusy              ... not until the reservations in flight settle
    │   ├── OverBudget              the limit left cannot cover the call's reservation
    │   └── Unpriced                no known price for the model at that provider: nothing to reserve
    └── ProviderError               one call to a provider failed (carries status, body, headers)
        ├── ProviderHTTPError       the provider answered with an error status
        ├── ProviderBadResponse     a 200 whose body is not a usable answer
        └── ProviderTransportError  connect error, timeout, connection reset
            └── ProviderTimeout

The CLI turns a BatchrelayError into a one-line message and its `exit_code` (an `ExitCode`); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The command line's exit statuses (the README lists them)."""

    OK = 0
    ERROR = 1  # a BatchrelayError that is not the user's doing (Redis down, a provider, ...)
    USAGE = 2  # bad usage, configuration or input
    FAILED_LINES = 3  # the batch has failed or invalid lines
    BUDGET = 4  # the budget (--max-cost) ran out before the batch was done
    UNCHECKED = 5  # `providers check`: none failed, but a provider could not be checked
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
    TERMINATED = 143  # SIGTERM, as a shell reports it


class BatchrelayError(Exception):
    exit_code = ExitCode.ERROR


class ConfigError(BatchrelayError):
    exit_code = ExitCode.USAGE


class InputError(BatchrelayError):
    exit_code = ExitCode.USAGE


class InvalidValue(InputError, ValueError):
    """One value a user gave cannot be used; the message says why, without naming where the value
    came from: the layer that read it does (click: the option, pydantic: the field, BatchSpec: the
    option's name). A ValueError too, so pydantic validators report it under its field."""


class UnpricedModels(InputError):
    """`--require-prices` (or `--max-cost`) and a model without a known price at some provider."""


class UploadError(InputError):
    """An upload to `batchrelay serve` that cannot be read as a multipart file (its HTTP answer: 400,
    or 413 when it is over the size limit)."""


class UploadTooLarge(UploadError):
    """The upload, or its form fields together, passed a limit: 413."""


class BodyRefused(InputError):
    """A request body `batchrelay serve` stops reading; `status` is its HTTP answer, after which the
    connection is closed (the rest of the body is never read)."""

    status = 400


class BodyTooLarge(BodyRefused):
    """A request body over its size limit (by its Content-Length, or as it streams in)."""

    status = 413


class BodyIdle(BodyRefused):
    """A request body that sent nothing for `[serve] body_timeout_s`."""

    status = 408


class RetryRefused(BatchrelayError):
    exit_code = ExitCode.USAGE


class ResumeRefused(BatchrelayError):
    exit_code = ExitCode.USAGE


class StoreError(BatchrelayError):
    pass


class BadRedisURL(StoreError):
    exit_code = ExitCode.USAGE


class BatchNotFound(StoreError):
    exit_code = ExitCode.USAGE

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r} in this Redis (see `batchrelay batches`)")
        self.batch_id = batch_id


class EmbeddedRedisError(BatchrelayError):
    pass


class BudgetRefusal(BatchrelayError):
    """A call the batch's budget cannot take. The relay catches these: the line waits (BudgetBusy,
    OverBudget) or tries another provider (Unpriced); they never reach a user as errors."""


class BudgetBusy(BudgetRefusal):
    """The batch's limit covers this call, but not beside the reservations in flight: the line waits
    a moment for them to settle (at or below what they reserved) and tries again."""


class OverBudget(BudgetRefusal):
    """The batch's limit cannot cover this call even once the calls in flight settle: the line waits
    with the batch (budget_exhausted) for a higher limit."""


class Unpriced(BudgetRefusal):
    """No known price for this model at this provider, so no reservation can be taken for it."""


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
