"""A lane's parcel on its way up: the request each line becomes, the request file, the upload and the
create, and finding a create that a crash cut off (issue #18; the plan is in lane_plan.py).

The upstream is never asked twice to create a parcel while a create may be in flight: the parcel is
marked `creating` before the request goes, and a parcel found `creating` is looked for upstream first
(OpenAI: by the metadata naming the parcel; Anthropic, whose batches carry no metadata: the batch
created after the mark that no other parcel recorded, with the parcel's line count, the creates of
one lane being serialized by a lease, and no new one made while a cut-off create of the lane is not
found yet: so at most one of the lane's creates is ever lost at a time), and created again only
`create_wait_s` after the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from batchrelay.config.settings import ProviderConfig, WorkerConfig
from batchrelay.errors import ProviderError
from batchrelay.providers.lane_client import LaneClient, NotReached
from batchrelay.providers.lane_wire import UpstreamState, custom_id, request_line
from batchrelay.providers.routing import OTHER
from batchrelay.store.lanes import LaneStore, ParcelView
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.relay import wire_body

BLOCK = 1000  # lines read from the store at a time while the request file is written
CLOCK_SLACK_S = 5.0  # the upstream's clock against ours, when its batches' times are compared with ours
NOT_STREAMED = ("stream", "stream_options")  # a batch request is answered whole


def wire_of(lane: ProviderConfig, job: JobLine) -> Dialect:
    """The dialect the lane is spoken to in for this job (its own, else the other: translated)."""
    return job.dialect if lane.speaks(job.dialect) else OTHER[job.dialect]


def lane_body(lane: ProviderConfig, job: JobLine, cfg: WorkerConfig) -> tuple[Dialect, dict[str, Any]]:
    """The body the lane's upstream must get for this line (ValueError: it has no form in that dialect)."""
    wire = wire_of(lane, job)
    if not lane.speaks(wire) or (wire != job.dialect and not lane.translate):
        raise ValueError(f"{lane.name} does not speak {job.dialect}")
    body, _ = wire_body(job, wire, cfg)
    body = {k: v for k, v in body.items() if k not in NOT_STREAMED}
    body["model"] = lane.provider_model(str(job.body["model"]))
    return wire, body


def lane_request(lane: ProviderConfig, batch_id: str, job: JobLine, cfg: WorkerConfig) -> bytes:
    """The line's request in the lane's upstream batch (a JSONL line)."""
    wire, body = lane_body(lane, job, cfg)
    return request_line(lane.kind, custom_id(batch_id, job.line), lane.path(wire), body)


def endpoint(lane: ProviderConfig) -> str:
    return lane.path(lane.dialects[0])


Keep = Callable[[ParcelView, list[JobLine]], Awaitable[set[int]]]


async def request_file(parcels: LaneStore, p: ParcelView, lane: ProviderConfig, cfg: WorkerConfig, folder: Path,
                       keep: Keep | None = None) -> tuple[Path, int, list[int]]:
    """The parcel's requests written to a file in `folder`; how many lines it has, and the lines
    `keep` refused (a budgeted batch's: their reservation could not be made): they are left out."""
    lines = sorted(set((await parcels.parcel_lines(p.pid)).values()))
    path, n, left_out = folder / f"batchrelay-{p.pid}.jsonl", 0, []
    with path.open("wb") as f:
        for i in range(0, len(lines), BLOCK):
            claim = await parcels.claim_lines(p.batch, lines[i:i + BLOCK])
            jobs = claim.jobs
            if keep is not None and claim.budgeted and (no := await keep(p, jobs)):
                left_out += sorted(no)
                jobs = [job for job in jobs if job.line not in no]
            f.write(b"".join(lane_request(lane, p.batch, job, cfg) for job in jobs))
            n += len(jobs)
    return path, n, left_out


async def upload(parcels: LaneStore, client: LaneClient, p: ParcelView, lane: ProviderConfig, path: Path) -> None:
    """OpenAI: the file uploaded (or found: an upload a crash cut off before its id was kept), its id
    kept; Anthropic has no upload (the requests go with the create)."""
    file_id = None
    if lane.kind == "openai-batch":
        name = path.name
        file_id = await client.find_file(name) or await client.upload(name, path)
        await parcels.advance(p.pid, "sealed", "uploaded", file_id=file_id)
    else:
        await parcels.advance(p.pid, "sealed", "uploaded")


async def create(parcels: LaneStore, client: LaneClient, p: ParcelView, lane: ProviderConfig, path: Path,
                 holder: str) -> UpstreamState | None:
    """Mark the parcel `creating`, create its upstream batch and record it; None when another create of
    the lane is in flight or the parcel moved meanwhile (it is looked at again later)."""
    cfg = lane.lane
    assert cfg is not None
    serial = lane.kind == "anthropic-batch"  # its batches carry no metadata: creates go one at a time

    async def give_up() -> None:
        if serial:
            await parcels.create_lease(lane.name, holder, 0)

    if serial and not await parcels.create_lease(lane.name, holder, max(cfg.create_wait_s, 1.0)):
        await parcels.schedule(p.pid, time.time() + cfg.poll_min_s)
        return None
    mine = (p.creating_at or 0.0) if p.state == "creating" else float("inf")  # created again: not found
    if serial and any(q != p.pid and at < mine for q, at in (await parcels.creating(lane.name)).items()):
        # another parcel's create was cut off and is not found yet: were this one created now, and that
        # one's lost too, the two would be told apart by their times alone. Its recovery comes first
        # (the older of two such parcels goes first: they never wait for each other).
        await give_up()
        await parcels.schedule(p.pid, time.time() + cfg.poll_min_s)
        return None
    if not await parcels.advance(p.pid, p.state, "creating", creating_at=time.time()):
        await give_up()
        return None
    keeping = asyncio.create_task(_keep_create_lease(parcels, lane, holder)) if serial else None
    try:
        state = await client.create(pid=p.pid, batch_id=p.batch, path=path, endpoint=endpoint(lane),
                                    file_id=p.file_id)
    except ProviderError as e:
        if refused(e) or e.status == 429 or isinstance(e, NotReached):  # nothing was created: no need to wait
            await give_up()
        raise  # else it may have been: the lease lapses after create_wait_s, while it is looked for
    finally:
        if keeping is not None:
            keeping.cancel()
    await parcels.record(p.pid, state.id, due_at=time.time() + cfg.poll_min_s)
    await give_up()
    return state


async def _keep_create_lease(parcels: LaneStore, lane: ProviderConfig, holder: str) -> None:
    """While a create's body (up to 256 MB) is on its way, no other create of the lane may start."""
    assert lane.lane is not None
    ttl = max(lane.lane.create_wait_s, 1.0)
    while True:
        await asyncio.sleep(ttl / 4)
        with contextlib.suppress(RedisError, OSError):
            await parcels.create_lease(lane.name, holder, ttl)


async def find_created(parcels: LaneStore, client: LaneClient, p: ParcelView, lane: ProviderConfig,
                       holder: str) -> UpstreamState | bool:
    """The upstream batch a create cut off by a crash made, recorded now; False when there is none (yet);
    True when another create of the lane is in flight (looked for later)."""
    cfg = lane.lane
    assert cfg is not None
    since = (p.creating_at or time.time()) - 60
    if lane.kind == "openai-batch":
        found = [s for s in await client.list_recent(since) if s.metadata.get("batchrelay_parcel") == p.pid]
    else:
        if not await parcels.create_lease(lane.name, holder, max(cfg.create_wait_s, 1.0)):
            return True
        recorded = await parcels.recorded(lane.name)
        after = (p.creating_at or 0.0) - CLOCK_SLACK_S
        found = [s for s in await client.list_recent(since)
                 if s.id not in recorded and s.total == p.n and (s.created_at or 0.0) >= after]
    if not found:
        return False
    state = min(found, key=lambda s: s.created_at or 0.0)  # newest first: the first made after the mark
    recorded_now = await parcels.record(p.pid, state.id, due_at=time.time())
    await parcels.create_lease(lane.name, holder, 0)
    return state if recorded_now else True


def refused(e: ProviderError) -> bool:
    """A 4xx that says no for good (not a timeout, a conflict or a rate limit): nothing was done."""
    return e.status is not None and 400 <= e.status < 500 and e.status not in (408, 409, 429)
