"""The lanes of a worker process (issue #18): lines handed to official Batch APIs, and their parcels
driven to the end.

`take` runs in each chunk job, after the cache hits: the lines whose best route is a lane (routing's
`lane_for`: the batch's deadline leaves the lane's window and margin, the lane ranks first, the line
has not failed on it, the lane is not benched or disabled) leave the chunk for the lane's gathering
parcel in one atomic step (store/lanes.py), their budget reserved for as long as the parcel may live.

`poll_due` runs in every worker process that has a lane, every `TICK_S` (`keep_moving`, beside the
chunk jobs: a worker busy with them, or a burst worker whose queue holds a deferred job, still
cancels a late upstream batch at its `must_end_by`): each parcel that is due is leased, and moved on
step by step as lane_plan.next_step says (lane_send.py sends it up, lane_collect.py writes its
answers), until a step has to wait (gathering, an upstream batch still running, a create that may
still land) or the parcel is done. Every step starts from the state kept in Redis, so a worker
killed anywhere leaves the parcel to the next one once its lease lapses. A burst worker (`run`'s)
moves on, and waits for, the parcels of the batches on its own queue only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
from redis.exceptions import RedisError

from batchrelay.config.settings import Settings
from batchrelay.errors import Unpriced
from batchrelay.money.budget import Refusal, most_it_may_cost
from batchrelay.providers.lane_client import LaneClient
from batchrelay.providers.lane_wire import custom_id
from batchrelay.providers.routing import lane_for
from batchrelay.store.budget import Budget
from batchrelay.store.health import Health
from batchrelay.store.lanes import LaneStore
from batchrelay.store.store import Claim, Store
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.lane_send import lane_request
from batchrelay.worker.lane_steps import RESERVE_SLACK_S, ParcelDriver

log = logging.getLogger("batchrelay.worker.lanes")
PARALLEL = 4  # parcels moved on at once by one process
TICK_S = 0.5  # a process looks for due parcels this often (one ZRANGEBYSCORE when none is due)
HEALTH_TTL_S = 5.0  # how long a process trusts its look at which lanes are benched or disabled
CLOSED = ("disabled", "benched", "cooling", "breaker open")  # a lane cools after its parcels cannot be sent


class Lanes:
    """The lanes of a process: `take` (chunk hook), `poll_due` (cron, burst), `open` (burst)."""

    def __init__(self, store: Store, settings: Settings, budget: Budget | None, health: Health,
                 http: httpx.AsyncClient, *, queue: str | None = None) -> None:
        self.store, self.settings, self.budget, self.health, self.http = store, settings, budget, health, http
        # a burst worker's (`run`'s) queue: it moves on and waits for the parcels of the batches on it
        # only; a long-running worker (None) moves on every parcel, a dead run's included
        self.queue = queue
        self._polling = asyncio.Lock()
        self.providers = settings.ordered_providers()
        self.by_name = {p.name: p for p in self.providers if p.is_lane}
        self.parcels = LaneStore(store)
        self.clients = {name: LaneClient(p, http) for name, p in self.by_name.items()}
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._closed: tuple[float, frozenset[str]] = (-HEALTH_TTL_S, frozenset())
        self.driver = ParcelDriver(store, settings, health, budget, self.parcels, self.clients, self.holder)

    async def close(self) -> None:
        await self.http.aclose()
        self.driver.close()

    @property
    def configured(self) -> bool:
        return bool(self.by_name)

    async def open(self) -> int:
        """Parcels not collected yet (of the batches on this process's queue, when it has one): a
        burst worker keeps going while there are any."""
        return await self.parcels.open_parcels(queue=self.queue)

    async def keep_moving(self, stopped: Callable[[], bool]) -> None:
        """Move on the due parcels every TICK_S until `stopped()` (a draining worker starts no step);
        a Redis outage or an upstream's failure is logged and tried again at the next tick."""
        while not stopped():
            try:
                await self.poll_due()
            except (RedisError, OSError) as e:
                log.warning("lanes: parcels not moved on (%s: %s); tried again shortly", type(e).__name__, e)
            except Exception as e:  # a bug must not stop this process's lanes for good
                log.error("lanes: parcels not moved on: %r", e, exc_info=e)
            await asyncio.sleep(TICK_S)

    # -- take: the chunk hook --------------------------------------------------------------------

    async def take(self, batch_id: str, job_id: str, claim: Claim, jobs: list[JobLine]) -> list[JobLine]:
        """Hand the lines a lane should serve to it; the jobs left for the synchronous providers."""
        deadline = claim.deadline
        if not self.by_name or deadline is None or not jobs:
            return jobs
        now, r, cfg = time.time(), self.settings.routing, self.settings.worker
        # a rerun of a chunk whose worker died after a lane took its lines: they are the lane's, not ours
        held = await self.parcels.held(batch_id, [job.line for job in jobs])
        jobs = [job for job in jobs if job.line not in held]
        closed = await self._closed_lanes(now)
        rest: list[JobLine] = []
        groups: dict[str, list[tuple[JobLine, int, Decimal | None]]] = {}
        for job in jobs:
            failed_on = {str(a.get("provider")) for a in claim.earlier.get(job.line, ())} & self.by_name.keys()
            lane = lane_for(job.dialect, str(job.body["model"]), self.providers, strategy=r.strategy, routes=r.routes,
                            allow=claim.allow, deadline=deadline, now=now, skip=closed | failed_on)
            if lane is None:
                rest.append(job)
                continue
            try:
                size = len(lane_request(lane, batch_id, job, cfg))
                amount = most_it_may_cost(lane, job.body, cfg.default_max_tokens) if claim.budgeted else None
            except (ValueError, Unpriced):
                rest.append(job)  # no form in the lane's dialect, or no price to reserve: it goes synchronous
                continue
            if lane.lane is not None and size > lane.lane.max_bytes:
                rest.append(job)  # no parcel of the lane can ever hold it (left in the chunk, it was never sent)
                continue
            groups.setdefault(lane.name, []).append((job, size, amount))
        for name, items in groups.items():
            lc = self.by_name[name].lane
            assert lc is not None
            taken = await self.parcels.take(name, batch_id, job_id, [(j.line, custom_id(batch_id, j.line), size)
                                                                      for j, size, _ in items],
                                            deadline=deadline, must_end_by=deadline - lc.margin_s,
                                            max_lines=lc.max_lines, max_bytes=lc.max_bytes, gather_s=lc.gather_s,
                                            now=now)
            # a line not taken is held by a lane already (a rerun of this chunk) or has its result
            if taken and claim.budgeted:
                took = set(taken)
                await self._reserve(batch_id, {j.line: a for j, _, a in items if j.line in took},
                                    deadline - now + lc.cancel_wait_s + RESERVE_SLACK_S)
        return rest

    async def _reserve(self, batch_id: str, amounts: dict[int, Decimal | None], lease_s: float) -> None:
        """Reserve the budget of lines a lane took, for as long as their parcel may live. A line the
        reservations in flight leave no room for now (Refusal.WAIT) stays in its parcel unreserved:
        the parcel's upload reserves it again (lane_steps), and gives it back then if it still does
        not fit; sent back now, the next chunk would hand it to the lane again at once, round and
        round. A line the limit cannot cover at all (EXHAUSTED: the batch is budget_exhausted) goes
        back to the synchronous providers, where it waits with the batch for a higher limit."""
        assert self.budget is not None
        held = await self.parcels.held(batch_id, list(amounts))
        refused: dict[str, list[int]] = {}
        for line, amount in amounts.items():
            pid = held.get(line)
            if pid is None or amount is None:
                continue
            got = await self.budget.try_reserve(batch_id, amount, token=f"lane:{pid}:{line}", lease_s=lease_s)
            if got is Refusal.EXHAUSTED:
                refused.setdefault(pid, []).append(line)
        for pid, lines in refused.items():
            await self.parcels.release(batch_id, pid, lines, {}, now=time.time(), requeue=True)

    async def _closed_lanes(self, now: float) -> frozenset[str]:
        """Lanes the shared health has benched (billing), disabled (auth) or cooling (unreachable): not chosen
        meanwhile."""
        at, closed = self._closed
        if now - at > HEALTH_TTL_S or self.driver.closed_at >= at:  # or this process closed one since
            snap = await self.health.snapshot(list(self.by_name))
            closed = frozenset(n for n, s in snap.items() if s["state"] in CLOSED)
            self._closed = (now, closed)
        return closed

    # -- poll_due: the cron ------------------------------------------------------------------------

    async def poll_due(self) -> int:
        """Move on every parcel that is due; how many were looked at. One pass at a time in a process
        (its parcels' leases are its own: two passes could drive one parcel twice): a call while a
        pass runs returns 0."""
        if self._polling.locked():
            return 0
        async with self._polling:
            return await self._poll_due()

    async def _poll_due(self) -> int:
        pids = await self.parcels.due(time.time(), queue=self.queue)
        if not pids:
            return 0
        gate = asyncio.Semaphore(PARALLEL)

        async def one(pid: str) -> bool:
            async with gate:
                return await self.driver.drive(pid)

        got = await asyncio.gather(*(one(pid) for pid in pids), return_exceptions=True)
        for e in got:
            if isinstance(e, RedisError | OSError):
                raise e
            if isinstance(e, BaseException):
                log.error("lane parcel failed inside batchrelay: %r", e, exc_info=e)
        return sum(1 for x in got if x is True)
