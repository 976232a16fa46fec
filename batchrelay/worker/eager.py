"""arq's Worker, taking the next queued job as soon as one of its own ends.

arq polls its queue every `poll_delay` and starts jobs until its `max_jobs` slots are full; then it
returns (its semaphore has `max_jobs + 1` permits, so `start_jobs` does not wait for a slot), and a
job that ends leaves its slot empty until the next poll. Chunks whose lines are all answered from the
response cache end within milliseconds, so that wait, not the work, set the pace: about `max_jobs`
chunks per 0.1 s. Here a poll that started a job polls again: at once if a slot is free, or as soon
as a job ends (within the rest of the poll delay) if all are taken, also when that poll found them
all taken (returning then would add arq's whole delay: it sleeps what is left of it after an
iteration). A poll that starts nothing with a slot free changes nothing: the queue has nothing
ready, and arq's own delay applies.
"""

from __future__ import annotations

import asyncio

from arq.worker import Worker


class EagerWorker(Worker):
    """A Worker that refills a slot when its job ends rather than at the next poll."""

    _slot_freed: asyncio.Event | None = None
    _started_some = False

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        before = len(self.tasks)  # only grows here: done tasks are dropped after start_jobs
        # a job still running here stays at the queue's head: arq would ask Redis about it (4 round
        # trips) on every poll; it is known to be ours and running
        mine = {job_id.encode() for job_id, task in self.tasks.items() if not task.done()}
        await super().start_jobs([j for j in job_ids if j not in mine])
        self._started_some = len(self.tasks) > before

    async def _poll_iteration(self) -> None:
        if self._slot_freed is None:
            self._slot_freed = asyncio.Event()
        until = asyncio.get_running_loop().time() + self.poll_delay_s
        while True:
            self._started_some = False
            self._slot_freed.clear()  # before the poll: a job that ends during it is not missed
            await super()._poll_iteration()
            if not self.allow_pick_jobs:
                return
            full = self.job_counter >= self.max_jobs
            if not (self._started_some or full):
                return  # a slot is free and nothing (more) was ready: arq's own delay applies
            if full:  # more may be ready than there were slots: poll again once one is free
                try:
                    async with asyncio.timeout_at(until):
                        await self._slot_freed.wait()
                except TimeoutError:
                    return  # the delay has passed: arq's next poll follows at once (it sleeps only what is left)
