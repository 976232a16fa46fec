"""Wrong keys, throttled per client address (`[serve] auth_failures_per_min`).

Each address has a bucket of `per_min` failures that refills at `per_min` a minute; a request with a
wrong key, or none, takes one. An address whose bucket is empty is answered 429 before its key is
looked at (a right key too), so guessing learns nothing while throttled. The address is the
connection's peer (uvicorn takes X-Forwarded-For only from its trusted proxies, 127.0.0.1 by
default). The table holds at most MAX_ADDRESSES (the one that failed longest ago is dropped first)
and forgets an address once its bucket is full again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_ADDRESSES = 10_000


class FailureThrottle:
    def __init__(self, per_min: int, *, most: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_min)
        self.rate = per_min / 60.0  # failures given back per second
        self.most = most
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (failures left, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def _left(self, address: str, now: float) -> float:
        held = self._buckets.get(address)
        if held is None:
            return self.capacity
        left, at = held
        return min(self.capacity, left + (now - at) * self.rate)

    def wait_s(self, address: str) -> float | None:
        """None when `address` may present a key now, else the seconds until it may."""
        left = self._left(address, self.clock())
        if left >= self.capacity:
            self._buckets.pop(address, None)  # refilled: nothing to remember
        return None if left >= 1 else (1 - left) / self.rate

    def failed(self, address: str) -> None:
        now = self.clock()
        self._buckets[address] = (self._left(address, now) - 1, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.most:
            self._buckets.popitem(last=False)
