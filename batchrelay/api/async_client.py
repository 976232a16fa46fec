"""`AsyncClient`: the Python API for async code (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import orjson

from batchrelay.config.settings import Settings, load_settings
from batchrelay.errors import InputError
from batchrelay.spec import BatchSpec, Duration, Instant
from batchrelay.store.embedded import EmbeddedRedis, embedded_url
from batchrelay.store.ids import new_batch_id
from batchrelay.store.keys import Keys
from batchrelay.store.lifecycle import cancel as cancel_batch
from batchrelay.store.resume import claim_key, fingerprint, keep_key, release_key
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.dialect import Dialect

Source: TypeAlias = "str | os.PathLike[str] | io.BufferedIOBase | io.RawIOBase | Iterable[Mapping[str, Any]]"



class _JSONLReader:
    """A `readline` over an iterable of dicts: each item is serialised (orjson) when it is reached,
    one line at a time, and handed out in pieces of at most `size` bytes when asked to."""

    __slots__ = ("_buf", "_items", "_number", "_pos")

    def __init__(self, items: Iterable[Any]) -> None:
        self._items: Iterator[Any] | None = iter(items)
        self._buf, self._pos, self._number = b"", 0, 0

    def readline(self, size: int = -1, /) -> bytes:
        if self._pos >= len(self._buf):
            if self._items is None:
                return b""
            try:
                item = next(self._items)
            except StopIteration:
                self._items, self._buf, self._pos = None, b"", 0
                return b""
            self._number += 1
            try:
                self._buf = orjson.dumps(item) + b"\n"  # orjson escapes every newline inside
            except TypeError as e:
                raise InputError(f"item {self._number} of the source cannot be written as JSON: {e}") from None
            self._pos = 0
        end = len(self._buf) if size is None or size < 0 else self._pos + size
        piece = self._buf[self._pos:end]
        self._pos += len(piece)
        return piece


def _kind(value: object) -> str:
    return type(value).__name__


class AsyncClient:
    """batchrelay from async code. Connects on `async with` (or on first use) and closes on exit
    or `aclose()`.

    Settings come from `settings`, else the config file `config`, else the usual lookup
    (`BATCHRELAY_CONFIG`, `./batchrelay.toml`, defaults). The Redis URL is `redis_url`, else the
    settings' (`REDIS_URL` wins over `[redis] url`), else the embedded Redis that the commands
    share (joined on connect, left on close: see store/embedded.py)."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None,
                 config: str | os.PathLike[str] | None = None) -> None:
        self.settings = settings if settings is not None else load_settings(config)
        configured = redis_url or self.settings.redis_url
        self._embedded = None if configured else EmbeddedRedis()
        self.redis_url = configured or embedded_url()
        self._store: Store | None = None
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncClient:
        await self._connected()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _connected(self) -> Store:
        if self._store is not None:
            return self._store
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._store is None:
                if self._embedded is not None:
                    await asyncio.to_thread(self._embedded.start)
                try:  # StoreError with the masked URL
                    self._store = await Store.connect(self.redis_url, Keys(self.settings.redis.prefix))
                except BaseException:
                    await self.aclose()
                    raise
        return self._store

    async def aclose(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.aclose()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)

    async def submit(self, source: Source, spec: BatchSpec | None = None, *, name: str | None = None,
                     endpoint: Dialect | None = None, providers: Iterable[str] | str | None = None,
                     max_cost: Decimal | float | str | None = None, completion_window: Duration | None = None,
                     start_at: Instant | None = None, deadline: Instant | None = None,
                     webhook: str | None = None, require_prices: bool = False, idempotency_key: str | None = None,
                     cache: bool | None = None) -> str:
        """Queue a new batch; returns its id. Bad lines become error records (with their line
        number) and the rest of the batch runs. The options are `spec`'s (a BatchSpec), with those
        given here over them; InputError names every option that cannot be used.

        `endpoint`: the dialect of bare request bodies ("chat", the default, or "messages").
        `providers`: only these configured providers may serve the batch. `max_cost`: a spending
        limit in USD; for a path it implies checking that every model has a known price first
        (UnpricedModels otherwise), for an iterable (which can be read only once) a call of a model
        without a known price is refused when it comes up. `completion_window`: seconds, a
        timedelta or "24h". `start_at`: a datetime, unix time or ISO-8601 string; the batch is
        `scheduled` until then (workers start it). `deadline`: what `start_at` takes, or "+26h" (from
        now); lines not answered by then expire (with `completion_window` too: the earlier counts),
        and lines may go to a lane (an official Batch API) only when it leaves the lane its window
        plus margin. `webhook`: an http(s) URL the batch object is
        POSTed to when the batch ends (see the README). `require_prices` (a path only): refuse the
        batch (UnpricedModels) unless every model has a known price, as `max_cost` implies. `cache`:
        use the response cache (default: `[cache] enabled`; identical requests get identical answers).
        `idempotency_key`: a submit with a key already used returns that key's batch (while it is
        in Redis) and queues nothing: a producer that retries a submit never pays twice."""
        if idempotency_key is None:
            return await self._submit(source, spec, name=name, endpoint=endpoint, providers=providers,
                                      max_cost=max_cost, completion_window=completion_window, start_at=start_at,
                                      deadline=deadline, webhook=webhook, require_prices=require_prices, cache=cache)
        store, batch_id = await self._connected(), new_batch_id()
        if (earlier := await claim_key(store, idempotency_key, batch_id)) is not None:
            return earlier
        try:
            await self._submit(source, spec, name=name, endpoint=endpoint, providers=providers, max_cost=max_cost,
                               completion_window=completion_window, start_at=start_at, deadline=deadline,
                               webhook=webhook, require_prices=require_prices, batch_id=batch_id, cache=cache)
        except BaseException:
            with contextlib.suppress(Exception):
                await release_key(store, idempotency_key, batch_id)
            raise
        await keep_key(store, idempotency_key, batch_id)
        return batch_id

    async def _submit(self, source: Source, spec: BatchSpec | None = None, *, name: str | None = None,
                      endpoint: Dialect | None = None, providers: Iterable[str] | str | None = None,
                      max_cost: Decimal | float | str | None = None, completion_window: Duration | None = None,
                      start_at: Instant | None = None, deadline: Instant | None = None, webhook: str | None = None,
                      require_prices: bool = False, batch_id: str | None = None,
                      cache: bool | None = None) -> str:
        spec = BatchSpec.of(self.settings, spec, name=name, endpoint=endpoint, providers=providers,
                            max_cost=max_cost, completion_window=completion_window, start_at=start_at,
                            deadline=deadline, webhook=webhook, require_prices=require_prices, cache=cache)
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if spec.needs_prices:
                self._check_prices(path, spec)
            lanes = [p.name for p in self.settings.providers if p.is_lane]  # may it use one: resume.py
            fp = await asyncio.to_thread(fingerprint, path, spec, lanes)
            try:
                stream = path.open("rb")
            except OSError as e:
                raise InputError(f"{path}: cannot read input file: {e.strerror}") from None
            with stream:
                store = await self._connected()
                res = await submit_stream(store, stream, spec.named(path.name), source=str(path), batch_id=batch_id,
                                          fingerprint=fp)
            return res.batch_id
        if isinstance(source, io.TextIOBase):
            raise TypeError("a text file object: open the file in binary mode ('rb'), or pass its path")
        if isinstance(source, bytes | bytearray | memoryview | Mapping):
            raise TypeError(f"source must be a path, a binary file or an iterable of dicts, not {_kind(source)}")
        if isinstance(source, io.BufferedIOBase | io.RawIOBase):
            reader: Any = source
            label = str(getattr(source, "name", "<stream>"))
        elif isinstance(source, Iterable):
            reader, label = _JSONLReader(source), "<python>"
        else:
            raise TypeError(f"source must be a path, a binary file or an iterable of dicts, not {_kind(source)}")
        store = await self._connected()
        res = await submit_stream(store, reader, spec.named(label), source=label, batch_id=batch_id)
        return res.batch_id

    def _check_prices(self, path: Path, spec: BatchSpec) -> None:
        from batchrelay.money.estimate import require_prices  # pricing data is loaded only when a budget asks for it

        require_prices(path, self.settings, spec.endpoint, spec.providers)

    async def _status(self, store: Store, info: BatchInfo) -> dict[str, Any]:
        from batchrelay.store.spending import status_object

        return await status_object(store, info)

    async def _info(self, batch_id: str) -> BatchInfo:
        return await (await self._connected()).info(batch_id)

    async def status(self, batch_id: str) -> dict[str, Any]:
        """The batch as `batchrelay status --json` shows it: id, status, counts, rate, ETA and the
        running cost (`cost`: usd, requests, and the budget if it has one). BatchNotFound if unknown."""
        store = await self._connected()
        return await self._status(store, await store.info(batch_id))

    async def wait(self, batch_id: str, *, timeout: float | None = None, poll: float = 0.5,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until the batch is finished (completed, failed, cancelled, expired), its budget is
        exhausted or it is paused (an interrupted `run`'s batch: nothing works it until it is resumed);
        returns its status. TimeoutError after `timeout` seconds. `on_update` is called with the
        batch's status (without its cost) at every poll."""
        store = await self._connected()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await store.info(batch_id)
            if on_update is not None:
                on_update(info.as_dict())
            if info.finished or info.status in (Status.BUDGET_EXHAUSTED, Status.PAUSED):
                return await self._status(store, info)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} is still {info.status} after {timeout:g}s "
                                   f"({info.pending} of {info.total} lines pending)")
            pause = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)

    async def batches(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` batches, newest first, each as `status` shows it without its cost."""
        store = await self._connected()
        return [b.as_dict() for b in await store.list_batches(limit)]

    async def providers(self) -> dict[str, dict[str, Any]]:
        """Each configured provider's health as every worker sees it (cooldowns, bench, breaker, last
        outcome), in priority order."""
        from batchrelay.store.health import Health

        store = await self._connected()
        names = [p.name for p in self.settings.ordered_providers()]
        return await Health(store, self.settings.health).snapshot(names)

    async def export(self, batch_id: str, results_path: str | os.PathLike[str],
                     errors_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Write the batch's records so far in input order: successes to `results_path`, the rest to
        `errors_path` (default: the results file's name with .errors.jsonl). Each file appears whole
        or not at all. Returns the file names and how many records each got."""
        from batchrelay.store.export import export

        store = await self._connected()
        done = await export(store, batch_id, Path(results_path), None if errors_path is None else Path(errors_path))
        return {"results_file": str(done.results_path), "results": done.results,
                "errors_file": str(done.errors_path), "errors": done.errors}

    async def retry(self, batch_id: str) -> dict[str, Any]:
        """Queue the batch's failed, cancelled and expired lines again (their earlier attempts and
        cost stay on record); returns how many lines and chunks went back, and on which queue.
        RetryRefused unless the batch has ended (completed, cancelled or expired)."""
        from batchrelay.store.lifecycle import retry

        done = await retry(await self._connected(), batch_id, self.settings.worker.chunk_size)
        return {"batch": batch_id, "lines": done.lines, "chunks": done.chunks, "queue": done.queue}

    async def cost(self, batch_id: str) -> dict[str, Any]:
        """What the batch has cost so far: `rows` by provider and model (requests, failed, tokens,
        cost_usd, reported_usd, flags) and `total` (usd, requests, and the budget if it has one)."""
        from batchrelay.store.spending import cost_summary, ledger_of

        store = await self._connected()
        await store.info(batch_id)  # BatchNotFound for an unknown id
        rows, total, budget = await ledger_of(store, batch_id)
        return {"batch": batch_id, "rows": [r.as_dict() for r in rows], "total": cost_summary(total, budget)}

    async def budget(self, batch_id: str, max_cost: Decimal | float | str | None = None) -> dict[str, Any]:
        """The batch's budget (max, spent, reserved, remaining in USD); with `max_cost`, set it first:
        lines waiting on a spent budget go back on the queue (`requeued_chunks`) for the workers."""
        from batchrelay.store.budget import Budget

        limit = None if max_cost is None else BatchSpec.checked({"max_cost": max_cost}).max_cost
        store = await self._connected()
        await store.info(batch_id)  # BatchNotFound for an unknown id
        b = Budget(store)
        requeued = 0 if limit is None else await b.raise_and_requeue(batch_id, limit)
        status = (await store.info(batch_id)).status
        return {"batch": batch_id, "status": status, **(await b.info(batch_id)).as_dict(), "requeued_chunks": requeued}

    async def results(self, batch_id: str, *, errors: bool = True) -> AsyncGenerator[dict[str, Any], None]:
        """The batch's result records so far, in input order (one per finished line: the output
        format of the README, with a `batchrelay` object carrying `line`). `errors=False` skips
        failed, invalid, cancelled and expired lines. BatchNotFound if unknown."""
        store = await self._connected()
        async for ok, raw in store.iter_results(batch_id):
            if ok or errors:
                yield orjson.loads(raw)

    async def cancel(self, batch_id: str, *, wait: bool = True) -> dict[str, Any]:
        """Cancel the batch: lines not started get `cancelled` records at once; calls in flight get
        up to call_timeout + 5 s to come back with their answer (with `wait`, this waits for them),
        then the rest are cancelled too. Returns its status. A finished batch is left as it is."""
        store = await self._connected()
        info = await cancel_batch(store, batch_id, self.settings.worker.cancel_grace_s, wait=wait)
        return await self._status(store, info)
