"""`run` and `demo`: submit, work in-process (or in N worker processes), watch, export.

Stopped by a signal, `run` lets the calls in flight finish, pauses its batch and says how to go on;
the same command again (same input bytes, same options: store/resume.py) continues that batch, and
one whose batch is done writes its results again without a provider call. With its embedded Redis
gone it ends at once (guard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from arq.worker import Worker

from batchrelay.cli.guard import Guard, Terminated, abort_others
from batchrelay.cli.lane_report import (
    KEPT_HINT,
    RUN_HINT,
    deadline_note,
    held_notes,
    lane_names,
    lane_report,
)
from batchrelay.cli.logs import LogSetup, write_stderr
from batchrelay.cli.progress import watch
from batchrelay.cli.text import command_with, printable
from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import BadRedisURL, BatchrelayError, ConfigError, EmbeddedRedisError, ExitCode, StoreError
from batchrelay.money.lane_notes import LaneNote
from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.connection import check_reachable
from batchrelay.store.embedded import EmbeddedRedis
from batchrelay.store.export import Exported, check_paths, check_writable, export
from batchrelay.store.ids import new_batch_id
from batchrelay.store.keys import Keys
from batchrelay.store.lane_status import batch_lanes
from batchrelay.store.resume import Lease, batch_of, fingerprint, pause, resume, take_lease
from batchrelay.store.spending import cost_summary, ledger_of
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.submit import submit_file
from batchrelay.store.sweeper import requeue_pending
from batchrelay.worker.worker import build_worker, run_worker, stop_worker

MAX_REQUEUE_ROUNDS = 3
IN_FLIGHT_ABANDONED = ("the calls in flight were abandoned, not recorded: their lines are sent again when it goes "
                       "on.")
QUIET = LogSetup(level="warning")  # `run`'s own output is its progress and summary

def continue_command(args: Sequence[str]) -> str:
    """The command line an interrupted run prints to continue it: its own, without `--new` (which
    would start afresh rather than continue). Pure."""
    return shlex.join(["batchrelay", *(a for a in args if a != "--new")])

@dataclass(frozen=True, slots=True)
class RunReport:
    batch: BatchInfo
    exported: Exported | None  # None: stopped by a signal before the end
    seconds: float
    cost: dict[str, Any]
    interrupted: signal.Signals | None = None
    config: str | None = None  # the config file the run read, for the commands it suggests
    command: str | None = None  # the command line that continues it (the same one)
    done_before: bool = False  # the same command had finished it already: its results were only written again
    abandoned: bool = False  # a second signal stopped it at once: the calls in flight were not waited for
    deadline_given: float | None = None  # this run's --deadline (the batch keeps its own: `deadline`)
    deadline_note: str | None = None  # the batch found keeps another deadline than the one given now
    lanes: tuple[LaneNote, ...] = ()  # whether its lines go to each configured lane, and why not

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted is not None:
            return ExitCode.TERMINATED if self.interrupted == signal.SIGTERM else ExitCode.INTERRUPTED
        if self.batch.status == Status.BUDGET_EXHAUSTED:
            return ExitCode.BUDGET
        return ExitCode.FAILED_LINES if self.batch.unsuccessful else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        files = {} if self.exported is None else {"results_file": str(self.exported.results_path),
                                                  "errors_file": str(self.exported.errors_path)}
        stop = {} if self.interrupted is None else {"interrupted": self.interrupted.name,
                                                     "calls_abandoned": self.abandoned}
        return {**self.batch.as_dict(), "seconds": round(self.seconds, 3), "cost": self.cost,
                "already_done": self.done_before, "deadline": self.batch.expires_at,
                "deadline_given": self.deadline_given, "deadline_note": self.deadline_note,
                "lanes": [n.as_dict() for n in self.lanes], **files, **stop}

    def next_steps(self) -> str:
        """What an interrupted run says: where its batch is and how to go on."""
        b, name = self.batch, self.interrupted.name if self.interrupted else "?"
        cmd = command_with(self.config)
        steps = [(printable(self.command), "the same command continues it here: recorded answers are not asked again")
                 ] if self.command else []
        steps += [(f"{cmd} resume {b.id}", "or hand it to workers, then:"),
                  (f"{cmd} worker --burst", "finish it (any number of workers, anywhere)"),
                  (f"{cmd} results {b.id} -o OUT --wait", "and write its results"),
                  (f"{cmd} status {b.id}", "where it stands"),
                  (f"{cmd} cancel {b.id}", "or give up the lines left")]
        width = max(len(c) for c, _ in steps)
        in_flight = IN_FLIGHT_ABANDONED if self.abandoned else "the calls in flight were recorded."
        return "\n".join([f"Interrupted ({name}): batch {b.id} {b.status} with {b.pending} of {b.total} lines left; "
                          f"{in_flight} To go on:",
                          *(f"  {c.ljust(width)}   # {what}" for c, what in steps)])


@dataclass(frozen=True, slots=True)
class Environment:
    settings: Settings  # with the built-in simulators as its providers when none are configured
    url: str
    embedded: EmbeddedRedis | None  # the embedded Redis this process joined, if it uses that one


@contextlib.contextmanager
def environment(
    settings: Settings, sim_providers: dict[str, dict[str, Any]] | None = None, *, simulate: bool = True,
) -> Iterator[Environment]:
    """Redis (REDIS_URL, [redis] url, else the embedded one) and providers (configured, else the
    built-in simulators if `simulate`)."""
    with contextlib.ExitStack() as stack:
        embedded = None if settings.redis_url else EmbeddedRedis()
        url = stack.enter_context(embedded) if embedded else str(settings.redis_url)
        if simulate and not settings.providers:
            sims = sim_providers or {"simulator": {}}
            providers = []
            for priority, (name, faults) in enumerate(sims.items(), start=1):
                base = stack.enter_context(SimulatorProcess(faults))
                providers.append(ProviderConfig(name=name, base_url=base, priority=priority))
            settings = settings.with_providers(providers)
        yield Environment(settings, url, embedded)


def _relay_stderr(proc: subprocess.Popen[bytes]) -> threading.Thread:
    """A worker's log lines, written through this process's stderr: above `run`'s progress bar (rich
    proxies sys.stderr while it draws), not through it; each line whole."""
    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            write_stderr(line.decode(errors="replace"))

    thread = threading.Thread(target=relay, daemon=True, name=f"worker-{proc.pid}-stderr")
    thread.start()
    return thread


@contextlib.contextmanager
def _worker_processes(env: Environment, n: int, queue: str, guard: Guard,
                      logs: LogSetup) -> Iterator[list[subprocess.Popen[bytes]]]:
    with tempfile.TemporaryDirectory(prefix="batchrelay-") as tmp:
        cfg = Path(tmp) / "config.json"  # env var names only: no secret is written here
        cfg.write_text(json.dumps(env.settings.model_dump(mode="json", exclude={"source"})))
        child_env = {**os.environ, "BATCHRELAY_CONFIG": str(cfg), "REDIS_URL": env.url}
        # sessions of their own: a terminal's Ctrl-C reaches `run`, which passes it on once (see Guard)
        procs = [subprocess.Popen([sys.executable, "-m", "batchrelay", "worker", "--burst", *logs.child_args(),
                                   "--queue", queue], env=child_env, start_new_session=True, stderr=subprocess.PIPE)
                 for _ in range(n)]
        relays = [_relay_stderr(p) for p in procs]
        try:
            yield procs
        finally:
            stop_all(procs, grace=1 if guard.redis_gone else 30)
            for r in relays:
                r.join(timeout=5)  # the last lines of a worker that has exited


def _drain_in_process(worker: Worker, task: asyncio.Task[None], signum: signal.Signals, now: bool) -> None:
    if worker.main_task is None:
        task.cancel()  # it has not started: nothing is in flight
    else:
        stop_worker(worker, signum, now=now)


def _drain_processes(procs: list[subprocess.Popen[bytes]], _signum: signal.Signals, _now: bool) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # a worker's first SIGTERM drains it, its second stops it


async def _work(env: Environment, store: Store, batch_id: str, workers: int, show: bool, queue: str,
                guard: Guard, logs: LogSetup) -> BatchInfo:
    for _round in range(MAX_REQUEUE_ROUNDS + 1):
        if workers <= 1:
            worker = build_worker(env.settings, env.url, burst=True, handle_signals=False, queue=queue)
            task = asyncio.create_task(run_worker(worker))
            guard.drain = functools.partial(_drain_in_process, worker, task)
            try:
                info = await watch(store, batch_id, show=show, until_done=task.done)
                await task  # burst: returns once the queue is empty; raises what the worker raised
            finally:
                guard.drain = None
        else:
            with _worker_processes(env, workers, queue, guard, logs) as procs:
                def exited(procs: list[subprocess.Popen[bytes]] = procs) -> bool:
                    return all(p.poll() is not None for p in procs)
                guard.drain = functools.partial(_drain_processes, procs)
                try:
                    info = await watch(store, batch_id, show=show, until_done=exited)
                    while not exited():
                        await asyncio.sleep(0.05)
                finally:
                    guard.drain = None
        if guard.stopped or info.finished or info.status == Status.BUDGET_EXHAUSTED:
            return info  # over budget: its lines wait for `batchrelay budget` to raise the limit
        # workers left with lines pending: arq dropped a chunk; put it back and go again
        await requeue_pending(store, batch_id)
    raise BatchrelayError(
        f"batch {batch_id} still has {info.pending} pending lines after {MAX_REQUEUE_ROUNDS} requeues")


async def _reachable(url: str) -> None:
    """A wrong REDIS_URL (or [redis] url) is a usage error under `run`, which needs no Redis of its own."""
    where = "REDIS_URL" if os.environ.get("REDIS_URL") else "[redis] url"
    try:
        await check_reachable(url, advice=f"`run` needs no Redis of its own: unset {where} to use the embedded Redis.")
    except BadRedisURL:
        raise
    except StoreError as e:
        raise ConfigError(str(e)) from None


async def run_file(
    env: Environment, path: Path, out: Path, errors: Path | None, spec: BatchSpec, *, workers: int = 1,
    show: bool = True, resume_same: bool = False, command: str | None = None, logs: LogSetup = QUIET,
) -> RunReport:
    """Submit `path` as a batch with the options `spec` gives, work it, and export its records.
    `resume_same`: continue the batch of the same input and options (store/resume.py) if it was
    interrupted, and only write the results of one that is done. `command`: the command line that
    continues the run, for the message of an interrupted one. `logs`: the log options its worker
    processes get (the caller set up this process's own)."""
    started = time.perf_counter()
    check_paths(out, errors, inputs=[path])  # before any money is spent, not after
    check_writable(out, errors)
    if env.embedded is None:
        await _reachable(env.url)
    given = spec.expires_at(time.time())
    fp = await asyncio.to_thread(fingerprint, path, spec, lane_names(env.settings))
    batch_id: str | None = None
    said: str | None = None
    notes: list[LaneNote] = []
    async with Guard(env.embedded) as guard:
        try:
            async with await Store.connect(env.url, Keys(env.settings.redis.prefix)) as store:
                # a queue of its own: this run's workers touch no other batch left in the same Redis
                queue = f"{store.keys.queue}:run:{uuid.uuid4().hex[:12]}"
                prior = await batch_of(store, fp) if resume_same else None
                if prior is not None and prior.status in (Status.COMPLETED, Status.PAUSED, Status.IN_PROGRESS):
                    said = deadline_note(prior.id, prior.expires_at, given, prior.status == Status.COMPLETED)
                if prior is not None and prior.status == Status.COMPLETED:
                    again = ("--cache applies to new batches (add --new to run the file again with the cache)"
                             if spec.cache else "--new runs the file again")
                    click.echo(f"batch {prior.id} (same input and options) is already complete: its results are "
                               f"written again from Redis and no provider is called; {again}", err=True)
                    if said:
                        click.echo(said, err=True)
                    batch_id, info, stopped, done_before = prior.id, prior, False, True
                    exported: Exported | None = await export(store, batch_id, out, errors)
                else:
                    done_before = False
                    batch_id, lease = await _start(store, path, spec, queue, fp, prior)
                    if said:
                        click.echo(said, err=True)
                    async with lease.kept():
                        kept = prior if prior is not None and batch_id == prior.id else None
                        notes = await asyncio.to_thread(lane_report, env.settings, path, spec,
                                                        kept.expires_at if kept else given,
                                                        hint=KEPT_HINT if kept else RUN_HINT)
                        if kept is not None and notes:  # lines a lane took before the pause are there already
                            notes = held_notes(notes, await batch_lanes(store, batch_id))
                        for lane_note in notes:
                            click.echo(lane_note.text, err=True)
                        if prior is None or batch_id != prior.id:
                            await submit_file(store, path, spec, queue=queue, batch_id=batch_id, fingerprint=fp)
                        info = await _work(env, store, batch_id, workers, show, queue, guard, logs)
                        stopped = guard.signum is not None and not info.finished  # else it ended before the signal
                        if stopped:
                            await pause(store, batch_id, queue)
                            info, exported = await store.info(batch_id), None
                        else:
                            exported = await export(store, batch_id, out, errors)
                _rows, spent, budget = await ledger_of(store, batch_id)
        except asyncio.CancelledError:
            if not guard.stopped:
                raise
            guard.absorb()
            if guard.redis_gone:
                await abort_others()
                raise _redis_gone(env, batch_id) from None
            # before the batch was queued, or after its work (while pausing it or writing it out)
            note = (f"Interrupted: see `batchrelay status {batch_id}`" if batch_id else
                    "Interrupted before the batch was queued: nothing was sent.")
            raise (Terminated if guard.signum == signal.SIGTERM else KeyboardInterrupt)(note) from None
    return RunReport(info, exported, time.perf_counter() - started, cost_summary(spent, budget),
                     guard.signum if stopped else None, env.settings.source, command, done_before,
                     abandoned=stopped and guard.signals > 1, deadline_given=spec.deadline, deadline_note=said,
                     lanes=tuple(notes))


async def _start(store: Store, path: Path, spec: BatchSpec, queue: str, fp: str,
                 prior: BatchInfo | None) -> tuple[str, Lease]:
    """The batch this run works, with its lease: `prior` resumed on `queue` when it was interrupted
    (paused, or in progress with its `run` dead), else a new id (submitted by the caller)."""
    if prior is not None and prior.status in (Status.PAUSED, Status.IN_PROGRESS):
        lease = await take_lease(store, prior.id)  # ResumeRefused while another run lives
        try:
            await resume(store, prior.id, queue)
        except BaseException:
            await lease.release()
            raise
        click.echo(f"resuming batch {prior.id}: {prior.total - prior.pending:,} of {prior.total:,} lines already "
                   "answered", err=True)
        return prior.id, lease
    if prior is not None:
        click.echo(f"batch {prior.id} (same input and options) is {prior.status}: starting a new batch", err=True)
    batch_id = new_batch_id()
    return batch_id, await take_lease(store, batch_id)


def _redis_gone(env: Environment, batch_id: str | None) -> EmbeddedRedisError:
    log = env.embedded.dir / "redis.log" if env.embedded else "?"
    kept = (f"; {batch_id} keeps what was recorded until then: `batchrelay status {batch_id}` starts it again"
            if batch_id else "")
    return EmbeddedRedisError(f"the embedded Redis stopped under `run` (its log: {log}){kept}")
