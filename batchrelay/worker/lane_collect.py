"""An ended upstream batch's answers, written like any call's (issue #18).

The results are read as a stream (OpenAI: the output file, then the error file; Anthropic: the
results) and written in blocks through the store's exactly-once write, which also un-holds the
lines and settles their budget reservations: a collect cut off by a crash is simply done again.
An answer is priced from the upstream usage at the lane's price and becomes the line's last attempt
(with the upstream batch's id). A request the upstream called bad is the line's result (rejected,
as a synchronous provider's 400 would be); any other failure, a line the upstream never ran
(expired, cancelled) and a line missing from the results go back to the synchronous providers, or to
the batch's cancel or expiry when it is stopping, with an attempt saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrelay.config.settings import ProviderConfig, WorkerConfig
from batchrelay.errors import ProviderHTTPError
from batchrelay.money.ledger import increments
from batchrelay.money.pricing import call_cost, price_of
from batchrelay.providers.classify import Action, classify
from batchrelay.providers.dialects import check_reply, usage_of
from batchrelay.providers.lane_client import LaneClient
from batchrelay.providers.lane_results import Answered, Errored, Read, Unanswered, read
from batchrelay.providers.lane_wire import UpstreamState
from batchrelay.results.outcome import Attempt, Outcome, Result
from batchrelay.results.records import outcome_record
from batchrelay.results.tally import call_tally
from batchrelay.store.lanes import LaneStore, ParcelView
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.reply import ProviderReply
from batchrelay.worker.lane_send import wire_of
from batchrelay.worker.relay import answer_body, wire_body

WRITE_BLOCK = 500
BLOCK = 1000  # lines read from the store at a time
Item = tuple[int, bytes, bool, dict[str, int], str | None]


@dataclass(slots=True)
class Collected:
    """What one pass over an upstream batch's results made of a parcel's lines."""

    writes: list[Item] = field(default_factory=list)  # the block not yet written
    tallies: list[dict[str, int]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # lines with a result line (the first one counts)
    back: dict[int, Attempt] = field(default_factory=dict)  # lines to give back, with the lane's attempt
    earlier: dict[int, list[Attempt]] = field(default_factory=dict)  # the lines' attempts before the lane's
    known: set[int] = field(default_factory=set)  # lines whose job and earlier attempts were read
    answered: int = 0
    rejected: int = 0
    written: int = 0  # records new in the store (a pass after a crash finds some written already)


def lane_attempt(lane: str, p: ParcelView, upstream_id: str | None, status: int | None, error: str,
                 action: Action = Action.FAILOVER) -> Attempt:
    """The lane's attempt at a line that got no answer from it (failed over, or rejected)."""
    started = p.sealed_at or p.first_at
    latency = max(0.0, ((p.ended_at or started) - started) * 1000)
    return Attempt(lane, status, latency, action.value, error[:500], started_at=started,
                   upstream_batch=upstream_id)


def answered_outcome(lane: ProviderConfig, p: ParcelView, state: UpstreamState, job: JobLine, body: dict[str, Any],
                     earlier: list[Attempt], cfg: WorkerConfig) -> Outcome:
    """ANSWERED: the answer in the job's dialect, priced from its usage at the lane's price (ValueError:
    a 200 that is no usable answer). Its notes are those the synchronous path gives the same line: what
    the request's translation did (`cfg`'s default max_tokens), then what the answer's did."""
    wire = wire_of(lane, job)
    check_reply(wire, body)
    usage = usage_of(wire, body)
    pmodel = lane.provider_model(str(job.body["model"]))
    cost = call_cost(price_of(lane, pmodel), usage, None, "computed")
    started = p.sealed_at or p.first_at
    latency = max(0.0, ((p.ended_at or started) - started) * 1000)
    attempt = Attempt(lane.name, 200, latency, started_at=started, model=pmodel, usage=usage, cost=cost,
                      upstream_batch=state.id)
    request_id = body.get("id") if isinstance(body.get("id"), str) else None
    _, asked = wire_body(job, wire, cfg)  # as lane_send built the request
    answer, notes = answer_body(job, lane, wire, ProviderReply(body, usage, latency, request_id))
    return Outcome(Result.ANSWERED, [*earlier, attempt], ProviderReply(answer, usage, latency, request_id), lane,
                   wire_dialect=wire if wire != job.dialect else None, notes=[*asked, *notes])


def one_result(c: Collected, lane: ProviderConfig, p: ParcelView, state: UpstreamState, line: int, job: JobLine,
               r: Read, earlier: list[Attempt], cfg: WorkerConfig) -> None:
    """Add the result `r` of a pending `line` to the pass `c`: a record to write, or a line to give back."""
    if isinstance(r, Answered):
        try:
            out = answered_outcome(lane, p, state, job, r.body, earlier, cfg)
        except ValueError as e:
            c.back[line] = lane_attempt(lane.name, p, state.id, 200, f"upstream errored: {e}", Action.RETRY)
            return
        c.answered += 1
    elif isinstance(r, Errored):
        body = r.body if isinstance(r.body, bytes) else orjson.dumps(r.body)
        err = ProviderHTTPError(lane.name, r.message, status=r.status, body=body)
        action = classify(err)
        if r.status is None or action is not Action.FAIL_LINE:
            c.back[line] = lane_attempt(lane.name, p, state.id, r.status, f"upstream errored: {r.message}", action)
            return
        attempt = lane_attempt(lane.name, p, state.id, r.status, r.message, action)
        out = Outcome(Result.REJECTED, [*earlier, attempt], provider=lane, error=err,
                      message=f"{lane.name} rejected the request: {r.message}"[:1000])
        c.rejected += 1
    else:
        assert isinstance(r, Unanswered)
        c.back[line] = lane_attempt(lane.name, p, state.id, None, f"upstream {r.why}: its batch did not run it")
        return
    billed = out.billed
    c.writes.append((line, outcome_record(p.batch, job, out, billed), out.ok, increments(billed), None))
    c.tallies.append(call_tally(out.attempts, str(job.body["model"])))


async def collect(parcels: LaneStore, client: LaneClient, p: ParcelView, lane: ProviderConfig,
                  cfg: WorkerConfig) -> Collected:
    """Read the ended upstream batch's results and write them; what is left to give back is in `back`."""
    assert p.upstream_id is not None
    state = await client.get(p.upstream_id)
    cids = await parcels.parcel_lines(p.pid)
    lines = sorted(set(cids.values()))
    jobs: dict[int, JobLine] = {}
    c = Collected()
    for i in range(0, len(lines), BLOCK):
        claim = await parcels.claim_lines(p.batch, lines[i:i + BLOCK])
        jobs.update((job.line, job) for job in claim.jobs)
        c.known.update(job.line for job in claim.jobs)
        c.earlier.update((n, [Attempt.from_dict(a) for a in tried]) for n, tried in claim.earlier.items())
    async for raw in client.results(state):
        r = read(lane.kind, raw)
        line = cids.get(r.custom_id)
        if line is None or line in c.seen:
            continue  # not one of ours, or a repeat: the first result of a line counts
        c.seen.add(line)
        job = jobs.get(line)
        if job is None:  # written by an earlier pass (then no longer held), or its batch has stopped
            c.back[line] = lane_attempt(lane.name, p, state.id, None, "upstream answered after the batch stopped")
            continue
        one_result(c, lane, p, state, line, job, r, c.earlier.get(line, []), cfg)
        if len(c.writes) >= WRITE_BLOCK:
            await _flush(parcels, p, c)
    await _flush(parcels, p, c)
    for line in lines:
        if line not in c.seen:
            c.back[line] = lane_attempt(lane.name, p, state.id, None, "upstream expired: not in its results")
    return c


async def _flush(parcels: LaneStore, p: ParcelView, c: Collected) -> None:
    if c.writes:
        c.written += await parcels.write_results(p.batch, p.pid, c.writes, c.tallies)
        c.writes, c.tallies = [], []
        await parcels.save(p.pid, collected=c.answered + c.rejected)
