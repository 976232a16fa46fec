"""`Client`: the blocking form of `AsyncClient`, on a private event loop of its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

from batchrelay.api.async_client import AsyncClient, Source
from batchrelay.config.settings import Settings
from batchrelay.spec import BatchSpec, Duration, Instant
from batchrelay.wire.dialect import Dialect

T = TypeVar("T")

RESULTS_BLOCK = 1000  # records handed from the private loop to a `Client.results` loop at a time


class Client:
    """The blocking form of `AsyncClient`, for plain scripts: the same methods, without `await`;
    `results` is an ordinary iterator. It owns a private event loop, so do not call it from async
    code (use `AsyncClient` there). Use it as a context manager, or call `close()`."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None,
                 config: str | os.PathLike[str] | None = None) -> None:
        self._client = AsyncClient(redis_url, settings=settings, config=config)
        self._runner: asyncio.Runner | None = None

    @property
    def settings(self) -> Settings:
        return self._client.settings

    @property
    def redis_url(self) -> str:
        return self._client.redis_url

    def _run(self, coro: Awaitable[T]) -> T:
        async def step() -> T:
            return await coro

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            if asyncio.iscoroutine(coro):
                coro.close()  # never awaited: no "was never awaited" warning
            raise RuntimeError("batchrelay.Client blocks and cannot run inside an event loop: "
                               "use batchrelay.AsyncClient in async code")
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(step())

    def __enter__(self) -> Client:
        self._run(self._client._connected())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.run(self._client.aclose())
        finally:
            runner.close()

    def submit(self, source: Source, spec: BatchSpec | None = None, *, name: str | None = None,
               endpoint: Dialect | None = None, providers: Iterable[str] | str | None = None,
               max_cost: Decimal | float | str | None = None, completion_window: Duration | None = None,
               start_at: Instant | None = None, webhook: str | None = None, require_prices: bool = False,
               idempotency_key: str | None = None, cache: bool | None = None, deadline: Instant | None = None) -> str:
        """See `AsyncClient.submit`."""
        return self._run(self._client.submit(source, spec, name=name, endpoint=endpoint, providers=providers,
                                             max_cost=max_cost, completion_window=completion_window,
                                             start_at=start_at, webhook=webhook, require_prices=require_prices,
                                             idempotency_key=idempotency_key, cache=cache, deadline=deadline))

    def status(self, batch_id: str) -> dict[str, Any]:
        """See `AsyncClient.status`."""
        return self._run(self._client.status(batch_id))

    def wait(self, batch_id: str, *, timeout: float | None = None, poll: float = 0.5,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """See `AsyncClient.wait`."""
        return self._run(self._client.wait(batch_id, timeout=timeout, poll=poll, on_update=on_update))

    def cancel(self, batch_id: str, *, wait: bool = True) -> dict[str, Any]:
        """See `AsyncClient.cancel`."""
        return self._run(self._client.cancel(batch_id, wait=wait))

    def cost(self, batch_id: str) -> dict[str, Any]:
        """See `AsyncClient.cost`."""
        return self._run(self._client.cost(batch_id))

    def budget(self, batch_id: str, max_cost: Decimal | float | str | None = None) -> dict[str, Any]:
        """See `AsyncClient.budget`."""
        return self._run(self._client.budget(batch_id, max_cost))

    def retry(self, batch_id: str) -> dict[str, Any]:
        """See `AsyncClient.retry`."""
        return self._run(self._client.retry(batch_id))

    def batches(self, limit: int = 50) -> list[dict[str, Any]]:
        """See `AsyncClient.batches`."""
        return self._run(self._client.batches(limit))

    def providers(self) -> dict[str, dict[str, Any]]:
        """See `AsyncClient.providers`."""
        return self._run(self._client.providers())

    def export(self, batch_id: str, results_path: str | os.PathLike[str],
               errors_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """See `AsyncClient.export`."""
        return self._run(self._client.export(batch_id, results_path, errors_path))

    def results(self, batch_id: str, *, errors: bool = True) -> Iterator[dict[str, Any]]:
        """See `AsyncClient.results`. Checks the batch exists now (BatchNotFound), then reads the
        records a block at a time as the loop goes on."""
        self._run(self._client._info(batch_id))
        return self._iter_results(batch_id, errors)

    def _iter_results(self, batch_id: str, errors: bool) -> Iterator[dict[str, Any]]:
        agen = self._client.results(batch_id, errors=errors)

        async def take() -> list[dict[str, Any]]:
            block: list[dict[str, Any]] = []
            async for record in agen:
                block.append(record)
                if len(block) >= RESULTS_BLOCK:
                    break
            return block

        try:
            while block := self._run(take()):
                yield from block
                if len(block) < RESULTS_BLOCK:
                    return
        finally:
            if self._runner is not None:
                self._runner.run(agen.aclose())
