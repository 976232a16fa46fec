"""One lane parcel moved on, step by step, by the worker holding its lease (issue #18).

`ParcelDriver.drive` leases the parcel and takes the steps lane_plan.next_step names, each from the
state kept in Redis, until one has to wait (gathering, an upstream batch still running, a create
that may still land) or the parcel is done; lane_send.py sends it up, lane_collect.py writes its
answers. A call to the upstream that fails leaves the lines alone: the parcel is looked at again
later (Retry-After honoured, a key or credit problem reported to the shared health, so routing stops
choosing the lane); an upstream that refuses a parcel for good gives its lines back, their attempts
saying what it said. A parcel not sent yet whose sending keeps failing (unreachable, 5xx) gives its
lines back after SEND_TRIES tries, the lane cooling meanwhile: no parcel from `creating` on (an
upstream batch may exist) is given up that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from redis.exceptions import RedisError

from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import ProviderError, Unpriced
from batchrelay.money.budget import most_it_may_cost
from batchrelay.providers.classify import Action, classify, retry_after_seconds
from batchrelay.providers.lane_client import LaneClient, NotReached
from batchrelay.results.outcome import Attempt, trimmed
from batchrelay.store.budget import Budget
from batchrelay.store.health import Health
from batchrelay.store.lanes import LaneStore, ParcelView
from batchrelay.store.store import Store
from batchrelay.wire.jobs import JobLine
from batchrelay.worker import lane_plan as plan
from batchrelay.worker.lane_collect import collect, lane_attempt
from batchrelay.worker.lane_send import create, find_created, refused, request_file, upload

log = logging.getLogger("batchrelay.worker.lanes")
# a parcel's lease, renewed between steps: a killed worker's parcel goes on this soon after
# (BATCHRELAY_LANE_LEASE_S sets it: the tests' kill points wait for one lapse)
LEASE_S = float(os.environ.get("BATCHRELAY_LANE_LEASE_S") or 60.0)
MAX_STEPS = 16  # steps per parcel per look (a parcel that keeps moving is looked at again next poll)
UPSTREAM_CANCELLING = ("cancelling", "canceling")
RESERVE_SLACK_S = 600.0  # a lane reservation outlives its parcel's last possible step by this much
# A parcel not sent yet (nothing upstream: nothing can be paid twice) whose sending fails this many
# times (unreachable, 5xx) gives its lines to the synchronous providers, and the lane cools
# for LANE_COOL_S in the shared health: routing hands it no new line meanwhile (a typo'd base_url
# must not hold a batch's lines until its deadline).
SEND_TRIES = 3
LANE_COOL_S = 300.0


class ParcelDriver:
    """Moves parcels on for one process (`holder`); their request files go in a folder of its own."""

    def __init__(self, store: Store, settings: Settings, health: Health, budget: Budget | None, parcels: LaneStore,
                 clients: dict[str, LaneClient], holder: str) -> None:
        self.store, self.settings, self.health, self.budget, self.parcels = store, settings, health, budget, parcels
        self.clients, self.holder = clients, holder
        self._folder: Path | None = None
        self.by_name = {p.name: p for p in settings.providers if p.is_lane}
        self._seen: dict[str, int] = {}  # pid -> the upstream's done count at this process's last poll
        self._creating: dict[str, asyncio.Lock] = {}  # lane -> held while this process creates one of its batches
        self.closed_at = 0.0  # when this process last closed a lane in the shared health (routing looks again)

    @property
    def folder(self) -> Path:
        if self._folder is None:  # made when a parcel is first sent: most processes never send one
            self._folder = Path(tempfile.mkdtemp(prefix="batchrelay-lanes-"))
        return self._folder

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    async def drive(self, pid: str) -> bool:
        """Lease the parcel and take its steps until one waits; False when another worker holds it."""
        ps = self.parcels
        if not await ps.lease(pid, self.holder, LEASE_S):
            return False
        # an upload or a create of hundreds of MB outlasts the lease: kept while any step runs
        renewing = asyncio.create_task(self._renew(pid))
        try:
            for _ in range(MAX_STEPS):
                p = await ps.parcel(pid)
                if p is None:
                    return True
                status = (await self.store.get_fields(p.batch, ["status"])).get("status", "")
                lane = self.by_name.get(p.lane)
                try:
                    if lane is None:
                        await self._release(p, None, plan.Release(not plan.stopping(status), "lane not configured"))
                        return True
                    if not await self._step(p, lane, status):
                        return True
                except ProviderError as e:
                    if lane is not None:
                        await self._failed(p, lane, e, status)
                    return True
                if renewing.done() or not await ps.lease(pid, self.holder, LEASE_S):
                    return True  # this process stalled past its lease: another worker goes on
            return True
        finally:
            renewing.cancel()
            with contextlib.suppress(RedisError, OSError):
                await ps.unlease(pid, self.holder)

    async def _renew(self, pid: str) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 4)
            with contextlib.suppress(RedisError, OSError):  # the next round tries again, before the lease lapses
                if not await self.parcels.lease(pid, self.holder, LEASE_S):
                    log.warning("lane parcel %s: its lease was lost (this process stalled)", pid)
                    return

    async def _step(self, p: ParcelView, lane: ProviderConfig, status: str) -> bool:
        """Take the parcel's next step; True when another may follow at once."""
        lc, ps, client, now = lane.lane, self.parcels, self.clients[lane.name], time.time()
        assert lc is not None
        step = plan.next_step(p, now=now, batch_status=status, lane=lc)
        match step:
            case plan.Done():
                await ps.finish(p.pid)
                return False
            case plan.Wait(after_s=after):
                await ps.schedule(p.pid, now + after)
                return False
            case plan.Seal():
                await ps.advance(p.pid, "gathering", "sealed", sealed_at=now)
                return True
            case plan.Upload():
                path = await self._file(p, lane)
                if path is not None:
                    await upload(ps, client, p, lane, path)
                return True
            case plan.Create():
                return await self._create(p, lane)
            case plan.Recover():
                found = await find_created(ps, client, p, lane, self.holder)
                if found is not False:
                    if found is True:
                        await ps.schedule(p.pid, now + lc.poll_min_s)
                    return found is not True
                then = plan.not_found(p, now=now, batch_status=status, lane=lc)
                if isinstance(then, plan.Create):
                    log.warning("lane %s: parcel %s was not created upstream; creating it again", lane.name, p.pid)
                    return await self._create(p, lane)
                if isinstance(then, plan.Release):
                    await self._release(p, lane, then)
                    return False
                assert isinstance(then, plan.Wait)
                await ps.schedule(p.pid, now + then.after_s)
                return False
            case plan.Poll(after_s=after):
                return await self._poll(p, lane, after)
            case plan.Cancel():
                assert p.upstream_id is not None
                # the cancel's wait for the upstream (cancel_wait_s) counts from now
                await ps.advance(p.pid, "created", "cancelling", must_end_by=min(p.must_end_by, now))
                log.info("lane %s: cancelling upstream batch %s of parcel %s (%s)", lane.name, p.upstream_id, p.pid,
                         "late" if now >= p.must_end_by else f"batch {status or 'gone'}")
                state = await client.cancel(p.upstream_id)
                return await self._ended(p, state.ended, state.status, lc.poll_min_s, state="cancelling")
            case plan.Collect():
                c = await collect(ps, client, p, lane, self.settings.worker)
                if c.back:
                    await self._give_back(p, lane.name, c.back, c.earlier, c.known, requeue=not plan.stopping(status))
                log.info("lane %s: parcel %s collected: %d answered, %d rejected, %d given back", lane.name, p.pid,
                         c.answered, c.rejected, len(c.back))
                await self._forget(p, lane)
                return False
            case plan.Release():
                await self._release(p, lane, step)
                return False
        raise AssertionError(f"unhandled step {step!r}")

    async def _poll(self, p: ParcelView, lane: ProviderConfig, after: float) -> bool:
        assert p.upstream_id is not None and lane.lane is not None
        client = self.clients[lane.name]
        state = await client.get(p.upstream_id)
        if state.ended:
            return await self._ended(p, True, state.status, after)
        if p.state == "cancelling" and state.status not in UPSTREAM_CANCELLING:
            state = await client.cancel(p.upstream_id)  # the cancel never reached it
            if state.ended:
                return await self._ended(p, True, state.status, after)
        done = state.succeeded + state.failed
        if state.status != p.upstream_status or self._seen.get(p.pid, done) != done:
            after = plan.poll_after(p, lane.lane, now=time.time(), progressed=True)
        self._seen[p.pid] = done
        return await self._ended(p, False, state.status, after)

    async def _ended(self, p: ParcelView, ended: bool, upstream_status: str, after: float, *,
                     state: str | None = None) -> bool:
        """Note what the upstream said of the parcel (in `state`, default as read): ended (collect
        next), or look again in `after`."""
        now, ps = time.time(), self.parcels
        if ended:
            self._seen.pop(p.pid, None)
            await ps.advance(p.pid, state or p.state, "ended", ended_at=now, upstream_status=upstream_status)
            return True
        await ps.save(p.pid, polls=p.polls + 1, upstream_status=upstream_status, next_poll_s=after)
        await ps.schedule(p.pid, now + after)
        return False

    async def _create(self, p: ParcelView, lane: ProviderConfig) -> bool:
        lc = lane.lane
        assert lc is not None
        path = await self._file(p, lane)
        if path is None:
            return False
        try:
            # one create of a lane at a time in this process too (Anthropic's recovery relies on it)
            async with self._creating.setdefault(lane.name, asyncio.Lock()):
                state = await create(self.parcels, self.clients[lane.name], p, lane, path, self.holder)
        except ProviderError as e:
            now = time.time()
            if refused(e):  # the upstream said no: nothing was created
                await self._report(lane, e)
                log.warning("lane %s refused parcel %s: %s", lane.name, p.pid, e.reason)
                await self.parcels.advance(p.pid, "creating", "failed", **said(e))
                return True
            if isinstance(e, NotReached):  # no connection was made: nothing was sent, nothing created
                if await self.parcels.advance(p.pid, "creating", "uploaded"):
                    await self._not_sent(replace(p, state="uploaded"), lane, e, "")
                return False
            ra = retry_after_seconds(e) or 0.0
            if e.status == 429:  # not created: send it again later
                await self.parcels.advance(p.pid, "creating", "uploaded")
            # else it may have been created: looked for (Recover) once this wait is over
            await self.parcels.schedule(p.pid, now + max(ra, min(lc.poll_min_s, lc.create_wait_s)))
            log.warning("lane %s: create of parcel %s failed (%s); looked at again later", lane.name, p.pid, e.reason)
            return False
        if state is not None:
            log.info("lane %s: parcel %s is upstream batch %s (%d lines)", lane.name, p.pid, state.id, p.n)
            path.unlink(missing_ok=True)  # it is upstream now
        return False

    async def _file(self, p: ParcelView, lane: ProviderConfig) -> Path | None:
        """The parcel's request file (built again after a restart); None when none of its lines is
        left to send (the parcel is done with). Built for its upload (still `sealed`), a budgeted
        batch's lines are reserved again (kept when they are: a crash in the chunk between the take
        and its reservations leaves none), those the limit cannot cover given back."""
        path = self.folder / f"batchrelay-{p.pid}.jsonl"
        if path.exists():
            return path
        keep = self._reserved if p.state == "sealed" and self.budget is not None else None
        path, n, left_out = await request_file(self.parcels, p, lane, self.settings.worker, self.folder, keep)
        if left_out:
            await self.parcels.release(p.batch, p.pid, left_out, {}, now=time.time(), requeue=True)
        if n != p.n:
            await self.parcels.save(p.pid, n=n)  # what goes upstream (a lost Anthropic create is told by it)
        if n:
            return path
        path.unlink(missing_ok=True)
        await self._release(p, lane, plan.Release(True, "no line of the parcel is left to send"))
        return None

    async def _reserved(self, p: ParcelView, jobs: list[JobLine]) -> set[int]:
        """Reserve the lines' budget (a reservation already made is kept); the lines refused."""
        lane = self.by_name[p.lane]
        assert self.budget is not None and lane.lane is not None
        lease_s = max(0.0, p.deadline - time.time()) + lane.lane.cancel_wait_s + RESERVE_SLACK_S
        refused_lines: set[int] = set()
        for job in jobs:
            try:
                amount = most_it_may_cost(lane, job.body, self.settings.worker.default_max_tokens)
            except Unpriced:
                continue
            if await self.budget.reserve(p.batch, amount, token=f"lane:{p.pid}:{job.line}", lease_s=lease_s) is None:
                refused_lines.add(job.line)
        return refused_lines

    async def _failed(self, p: ParcelView, lane: ProviderConfig, e: ProviderError, status: str) -> None:
        """A call to the upstream failed: its lines are untouched; the parcel is looked at again later
        (Retry-After honoured); a key or credit problem is reported to the shared health. An upstream
        still unreachable `cancel_wait_s` past `must_end_by` gets its lines given back."""
        assert lane.lane is not None
        await self._report(lane, e)
        if refused(e) and p.state in ("sealed", "uploaded"):  # the upload was refused: it will not go better
            await self.parcels.advance(p.pid, p.state, "failed", **said(e))
            return
        if p.state in plan.NOT_SENT and not refused(e) and e.status != 429:
            await self._not_sent(p, lane, e, status)
            return
        now = time.time()
        if p.upstream_id and now >= plan.cancel_given_up_at(p, lane.lane, stop=plan.stopping(status)):
            await self._release(p, lane, plan.Release(not plan.stopping(status), f"unreachable: {e.reason}"))
            return
        after = plan.poll_after(p, lane.lane, now=now, progressed=False, retry_after=retry_after_seconds(e))
        log.warning("lane %s: parcel %s (%s): %s; looked at again in %.0fs", lane.name, p.pid, p.state, e.reason,
                    after)
        await self.parcels.save(p.pid, polls=p.polls + 1, next_poll_s=after)
        await self.parcels.schedule(p.pid, now + after)

    async def _not_sent(self, p: ParcelView, lane: ProviderConfig, e: ProviderError, status: str) -> None:
        """Sending a parcel that is not upstream yet failed (unreachable, 5xx): the shared health is told
        (`providers` shows why); SEND_TRIES such failures in a row give its lines to the synchronous
        providers at once, the lane cooling LANE_COOL_S; else it is looked at again later."""
        assert lane.lane is not None
        tries, now = p.polls + 1, time.time()
        given_up = tries >= SEND_TRIES
        with contextlib.suppress(RedisError, OSError):
            await self.health.report(lane, None, "", "transient", retry_after=LANE_COOL_S if given_up else None,
                                     text=e.reason)
            self.closed_at = time.time() if given_up else self.closed_at
        if given_up:
            log.warning("lane %s: parcel %s (%s) could not be sent %d times (%s): its lines go to the synchronous "
                        "providers; no new line goes to the lane for %.0fs", lane.name, p.pid, p.state, tries,
                        e.reason, LANE_COOL_S)
            why = plan.Release(not plan.stopping(status), f"could not be sent to the lane {tries} times")
            await self._release(replace(p, error=e.reason[:300], error_status=e.status), lane, why)
            return
        after = plan.poll_after(p, lane.lane, now=now, progressed=False, retry_after=retry_after_seconds(e))
        log.warning("lane %s: parcel %s (%s): %s; tried again in %.0fs (%d of %d)", lane.name, p.pid, p.state,
                    e.reason, after, tries, SEND_TRIES)
        await self.parcels.save(p.pid, polls=tries, next_poll_s=after, **said(e))
        await self.parcels.schedule(p.pid, now + after)

    async def _report(self, lane: ProviderConfig, e: ProviderError) -> None:
        action = classify(e)
        if action in (Action.BENCH, Action.DISABLE):
            with contextlib.suppress(RedisError, OSError):
                await self.health.report(lane, None, "", "billing" if action is Action.BENCH else "auth",
                                         text=f"{e.status or ''} {e.reason}".strip())
                self.closed_at = time.time()

    async def _release(self, p: ParcelView, lane: ProviderConfig | None, why: plan.Release) -> None:
        """Give all the parcel's lines back (those it still holds), each with an attempt saying why."""
        name = lane.name if lane else p.lane
        lines = sorted(set((await self.parcels.parcel_lines(p.pid)).values()))
        claim = await self.parcels.claim_lines(p.batch, lines)
        earlier = {n: [Attempt.from_dict(a) for a in tried] for n, tried in claim.earlier.items()}
        # what the upstream said when sending it failed (its status, its words; no secret: lane_client redacts)
        said_ = p.error if p.state in (*plan.NOT_SENT, "failed") else None
        error = f"{why.why} ({said_})" if said_ else why.why
        back = {n: lane_attempt(name, p, p.upstream_id, p.error_status if said_ else None, error) for n in lines}
        abandoned = bool(p.upstream_id) and p.state in ("created", "cancelling")
        if abandoned:
            log.warning("lane %s: giving back the %d lines of parcel %s while upstream batch %s has not ended (%s): "
                        "an answer it still bills is not counted (metric batchrelay_lane_lines_abandoned_total)",
                        name, len(lines), p.pid, p.upstream_id, why.why)
        await self._give_back(p, name, back, earlier, {job.line for job in claim.jobs}, requeue=why.requeue,
                              abandoned=abandoned)
        await self._forget(p, lane)

    async def _give_back(self, p: ParcelView, name: str, back: dict[int, Attempt], earlier: dict[int, list[Attempt]],
                         known: set[int], *, requeue: bool, abandoned: bool = False) -> None:
        """Release the lines of `back`, each with its attempts and the lane's; only for the lines whose
        earlier attempts were read (`known`): a stopped batch's claim reads none, and the attempts
        kept (their cost goes into the stopped line's record) must not be written over."""
        attempts = {n: [x.as_dict() for x in trimmed([*earlier.get(n, []), a])] for n, a in back.items() if n in known}
        job = await self.parcels.release(p.batch, p.pid, list(back), attempts, now=time.time(), requeue=requeue,
                                         abandoned=name if abandoned else None)
        log.info("lane %s: parcel %s gave back %d lines%s", name, p.pid, len(back), f" (job {job})" if job else "")

    async def _forget(self, p: ParcelView, lane: ProviderConfig | None) -> None:
        """The parcel is over: its input file deleted (upstream and here), and it is marked collected."""
        if self._folder is not None:
            (self._folder / f"batchrelay-{p.pid}.jsonl").unlink(missing_ok=True)
        self._seen.pop(p.pid, None)
        if lane is not None and lane.lane is not None and lane.lane.delete_files and p.file_id:
            try:
                await self.clients[lane.name].delete_file(p.file_id)
            except ProviderError as e:
                log.info("lane %s: input file %s of parcel %s not deleted: %s", lane.name, p.file_id, p.pid, e.reason)
        await self.parcels.finish(p.pid)


def said(e: ProviderError) -> dict[str, str | int]:
    """What a failed call said, kept on its parcel for the lines' attempts: its reason and status."""
    return {"error": e.reason[:300], "error_status": e.status or 0}
