"""BatchSpec: a batch's options, checked once, whichever way the batch comes in.

The command line (`submit`, `run`), the Python API (`Client.submit`), `serve` and `[[schedules]]`
all build a BatchSpec and hand it to the store's submit (store/submit.py), which keeps it with the
batch. Each option goes through its parser in parse.py, so a value refused by one way in is refused,
with the same reason, by every other.

    spec = BatchSpec.of(settings, name="nightly", max_cost="0.50", completion_window="24h")
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from batchrelay import parse
from batchrelay.errors import InputError, InvalidValue
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import MAX_LINE_BYTES

if TYPE_CHECKING:
    from batchrelay.config.settings import Settings

Duration = timedelta | float | str
Instant = datetime | float | str


class BatchSpec(BaseModel):
    """`name`: the batch's name (default: the input's file name), without control characters.
    `endpoint`: the dialect of bare request bodies. `providers`: only these configured providers
    may serve the batch. `max_cost`: a spending limit in USD. `require_prices`: refuse an input
    file with a model of unknown price (a budget implies it). `completion_window`: lines not
    answered this many seconds after the start expire. `start_at` (unix time): the batch is
    `scheduled` until then. `deadline` (unix time, after the start): lines not answered by then
    expire, as with `completion_window` (the earlier of the two counts); it also decides whether
    lines may go to a lane (an official Batch API: cheaper, but up to its window late).
    `webhook`: a URL the batch object is POSTed to when the batch ends.
    `chunk_size` and `max_line_bytes` come from `[worker]` (`BatchSpec.of` fills them in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    endpoint: Dialect = "chat"
    providers: tuple[str, ...] | None = None
    max_cost: Decimal | None = None
    require_prices: bool = False
    completion_window: float | None = None
    start_at: float | None = None
    deadline: float | None = None
    webhook: str | None = None
    chunk_size: int = Field(default=50, ge=1)
    max_line_bytes: int = Field(default=MAX_LINE_BYTES, ge=1)
    cache: bool = False  # answer identical requests from the response cache (default: `[cache] enabled`)

    @classmethod
    def of(cls, settings: Settings, base: BatchSpec | None = None, **options: Any) -> BatchSpec:
        """The options (None or False: not given) over `base`'s, with `[worker]`'s chunk size and line limit;
        provider names are checked against the configured ones. InputError names every bad option."""
        w = settings.worker
        data: dict[str, Any] = {"chunk_size": w.chunk_size, "max_line_bytes": w.max_line_bytes,
                                "cache": settings.cache.enabled}
        if base is not None:
            data.update(base.model_dump(exclude_unset=True))
        data.update((k, v) for k, v in options.items() if v is not None and (v is not False or k == "cache"))
        return cls.checked(data, known_providers=[p.name for p in settings.providers])

    @classmethod
    def checked(cls, data: Mapping[str, Any], known_providers: Iterable[str] | None = None) -> BatchSpec:
        """`data` as a BatchSpec, or InputError naming each bad option and why (`option: reason; ...`)."""
        try:
            return cls.model_validate(data, context={"providers": known_providers})
        except ValidationError as e:
            raise InputError("; ".join(_problem(err) for err in e.errors())) from None

    def named(self, default: str) -> BatchSpec:
        """This spec, with `default` (parsed as a name) as its name unless it has one."""
        return self if self.name else self.model_copy(update={"name": parse.batch_name(default)})

    @property
    def needs_prices(self) -> bool:
        """Every model must have a known price before the batch is accepted (a budget needs prices)."""
        return self.require_prices or self.max_cost is not None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else parse.batch_name(v)

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint(cls, v: str) -> Dialect:
        return parse.dialect(v)

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, v: str | Iterable[str] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        return parse.allow_list(v, (info.context or {}).get("providers"))

    @field_validator("max_cost", mode="before")
    @classmethod
    def _max_cost(cls, v: Decimal | float | str | None) -> Decimal | None:
        return None if v is None else parse.usd_amount(v)

    @field_validator("completion_window", mode="before")
    @classmethod
    def _window(cls, v: Duration | None) -> float | None:
        return None if v is None else parse.duration_s(v)

    @field_validator("start_at", mode="before")
    @classmethod
    def _start_at(cls, v: Instant | None) -> float | None:
        return None if v is None else parse.instant(v)

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, v: Instant | None, info: ValidationInfo) -> float | None:
        """A deadline that has passed, or that is not after the start, would expire every line unsent."""
        if v is None:
            return None
        deadline, now = deadline_at(v), time.time()
        start = info.data.get("start_at")
        if deadline <= now:
            raise InvalidValue(f"{_utc(deadline)} has passed (it is {_utc(now)} now)")
        if start is not None and deadline <= start:
            raise InvalidValue(f"{_utc(deadline)} is not after the batch's start, {_utc(start)}")
        return deadline

    def expires_at(self, now: float) -> float | None:
        """When the batch's unanswered lines expire (submitted at `now`): the start plus the
        completion window, or the deadline, whichever comes first; None: never."""
        start = max(now, self.start_at or now)
        ends = [t for t in (None if self.completion_window is None else start + self.completion_window,
                            self.deadline) if t is not None]
        return min(ends) if ends else None

    @field_validator("webhook", mode="before")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        return None if v is None else parse.webhook_url(v)


def deadline_at(value: Instant) -> float:
    """A deadline as unix time: what `start_at` takes (a datetime, unix seconds, an ISO-8601 string),
    or a string `+DURATION` counted from now (`+26h`, `+2d`)."""
    if isinstance(value, str) and value.strip().startswith("+"):
        try:
            return time.time() + parse.duration_s(value.strip()[1:])
        except InvalidValue:
            raise InvalidValue(f"{value!r} is not a time from now like +26h (more than 0)") from None
    try:
        return parse.instant(value)
    except InvalidValue:
        raise InvalidValue(f"{value!r} is not an ISO-8601 time like 2026-11-22T05:00:00Z, "
                           "nor a time from now like +26h") from None


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _problem(err: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "options"
    cause = (err.get("ctx") or {}).get("error")
    return f"{where}: {cause if cause is not None else err['msg']}"
