"""What one running simulator remembers: its config, the request log, counters, the credit balance
and the rate window. `app.py` reads and changes it between awaits only, so it needs no locks.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from batchrelay.sim.faults import FaultKind, FaultState, RateWindow, SimConfig
from batchrelay.sim.presets import PROVIDERS

# Request headers the full log keeps (plus every x-*): what a fidelity test checks a client sent.
CAPTURED = frozenset({b"authorization", b"tt-api-key", b"x-api-key", b"anthropic-version", b"content-type"})
Headers = tuple[tuple[bytes, bytes], ...]
# Headers that carry a credential: the log shows them redacted (`shown`), as it shows `api_key` in the config.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key"})
SECRET_SUFFIXES = ("-key", "-token", "-secret")
TAIL, LONG_SECRET = 4, 16  # a secret this long shows its last 4 characters


@dataclass(slots=True)
class Entry:
    """One logged call. Logged when it arrives; `response` is filled in once it is answered."""

    t: float
    method: str
    path: str
    model: str | None
    status: int
    headers: Headers
    raw: bytes  # the request body
    kind: FaultKind  # "error" also for calls turned away before `decide`
    # The answered body: bytes as sent, or for a stream the payload its events were made from.
    response: bytes | dict[str, Any] | None = None
    answered: float | None = None  # when the answer (or the stream's head) was sent; None while waiting

    def answer(self, response: bytes | dict[str, Any]) -> None:
        self.response, self.answered = response, time.time()

    def brief(self) -> dict[str, Any]:
        return {"t": self.t, "answered": self.answered, "path": self.path, "model": self.model,
                "status": self.status, "kind": self.kind}


def captured(raw_headers: list[tuple[bytes, bytes]]) -> Headers:
    return tuple(h for h in raw_headers if h[0] in CAPTURED or h[0][:2] == b"x-")


def redacted(secret: str) -> str:
    """A key as the simulator shows it: `***`, its last 4 characters when it is long enough (16) that
    they give little away, and a fingerprint (8 hex digits of its sha256) that tells two keys apart
    (a test sees which key came by comparing with `redacted(key)`). Pure."""
    tail = secret[-TAIL:] if len(secret) >= LONG_SECRET else ""
    return f"***{tail} sha256:{hashlib.sha256(secret.encode()).hexdigest()[:8]}"


def shown(name: str, value: str) -> str:
    """A logged header's value: a credential's redacted, after its scheme (`Bearer ***wxyz sha256:…`). Pure."""
    if name not in SECRET_HEADERS and not name.endswith(SECRET_SUFFIXES):
        return value
    scheme, space, rest = value.partition(" ")
    return f"{scheme} {redacted(rest)}" if space and scheme.isalpha() else redacted(value)


def shown_headers(headers: Headers) -> dict[str, str]:
    """An entry's headers as the full log shows them (`shown`)."""
    return {name: shown(name, value.decode("latin-1")) for name, value in
            ((k.decode("latin-1"), v) for k, v in headers)}


class SimState:
    """Mutable state of one running simulator. Only touched between awaits, so no locks are needed."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.provider = PROVIDERS[config.preset]
        self.faults = FaultState(seed=config.seed)
        # Slotted entries, not dicts: a benchmark logs every one of its calls and the log is rarely read.
        self.log: list[Entry] = []
        self.dropped = 0  # entries dropped from the log's start (config.log_limit); `since` counts them
        self.by_status: dict[int, int] = {}
        # Never reset, so ids stay unique for the life of the process even across /_sim/reset.
        self.numbers = 0
        self.balance = config.credits  # USD left; None = unlimited
        self.window = RateWindow()

    def record(self, entry: Entry) -> None:
        self.log.append(entry)
        self.by_status[entry.status] = self.by_status.get(entry.status, 0) + 1
        limit = self.config.log_limit
        if len(self.log) > limit + limit // 10:  # trimmed in steps, not on every call
            extra = len(self.log) - limit
            del self.log[:extra]
            self.dropped += extra

    @property
    def calls(self) -> int:
        return self.dropped + len(self.log)

    def entries(self, since: int) -> list[Entry]:
        """The logged calls from call number `since` on (those dropped by `log_limit` are gone)."""
        return self.log[max(0, since - self.dropped):]

    def configure(self, new: SimConfig, update: dict[str, Any], reset: bool) -> None:
        self.config, self.provider = new, PROVIDERS[new.preset]
        if reset:
            self.faults.reset(new.seed)
            self.balance = new.credits
            self.window.clear()
            return
        if "seed" in update:
            # A new seed means a new random sequence now, not at some later reset.
            self.faults.reseed(new.seed)
        if "credits" in update:
            self.balance = new.credits

    def reset(self) -> None:
        self.faults.reset(self.config.seed)
        self.log.clear()
        self.dropped = 0
        self.by_status.clear()
        self.balance = self.config.credits
        self.window.clear()

    def config_view(self) -> dict[str, Any]:
        key = self.config.api_key
        return {**self.config.model_dump(mode="json"), "credits": self.balance,
                "api_key": None if key is None else redacted(key)}
