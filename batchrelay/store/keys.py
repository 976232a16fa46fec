"""Every Redis key batchrelay uses, under one configurable prefix.

Batch state is ours; arq only moves chunk jobs, on a queue named under the same prefix so several
batchrelay installations (or other arq users) can share one Redis. arq's own keys (`arq:job:ID`,
...) are outside the prefix, but every job id starts with it (queue.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import job_key_prefix

from batchrelay.config.settings import DEFAULT_PREFIX


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def batches(self) -> str:
        """Sorted set of batch ids scored by creation time."""
        return f"{self.prefix}batches"

    @property
    def queue(self) -> str:
        """The arq queue (a sorted set owned by arq)."""
        return f"{self.prefix}queue"

    @property
    def health(self) -> str:
        """Hash: per provider `name:field` (disabled/bench/cool/open until, probe, last outcome)."""
        return f"{self.prefix}health"

    @property
    def breaker(self) -> str:
        """Hash: per provider error-rate window (`name:ws`, `name:calls`, `name:fails`)."""
        return f"{self.prefix}breaker"

    @property
    def webhooks(self) -> str:
        """Sorted set: batch ids whose completion webhook is not delivered yet, scored by when it is next due."""
        return f"{self.prefix}webhooks"

    @property
    def held(self) -> str:
        """Hash: chunk job id -> `{worker} {batch id}`, while that worker process runs the chunk (heartbeat.py)."""
        return f"{self.prefix}held"

    def worker(self, worker_id: str) -> str:
        """String with a short TTL: the worker process's heartbeat (its host and pid), renewed while it lives."""
        return f"{self.prefix}worker:{worker_id}"

    @staticmethod
    def arq_job(job_id: str) -> str:
        """String: arq's own record of a queued job (outside the prefix; the id carries it, queue.py)."""
        return job_key_prefix + job_id

    def rate(self, provider: str) -> str:
        """Hash: the provider's pacing state (theoretical arrival times, 429 back-off factor)."""
        return f"{self.prefix}rate:{provider}"

    def concurrency(self, provider: str) -> str:
        """Sorted set: leases of calls in flight, scored by when they lapse."""
        return f"{self.prefix}conc:{provider}"

    def meta(self, batch_id: str) -> str:
        """Hash: id, name, status, times, counts."""
        return f"{self.prefix}batch:{batch_id}"

    def lines(self, batch_id: str) -> str:
        """Hash: line number -> normalised request JSON."""
        return f"{self.prefix}batch:{batch_id}:lines"

    def pending(self, batch_id: str) -> str:
        """Set of line numbers that have no result yet."""
        return f"{self.prefix}batch:{batch_id}:pending"

    def results(self, batch_id: str) -> str:
        """Hash: line number -> final result record JSON (success or error)."""
        return f"{self.prefix}batch:{batch_id}:results"

    def first_try(self, batch_id: str) -> str:
        """Hash: line number -> when it was first tried (for the per-line deadline)."""
        return f"{self.prefix}batch:{batch_id}:first"

    def attempts(self, batch_id: str) -> str:
        """Hash: line number -> JSON list of the attempts of a deferred line, until its result is written."""
        return f"{self.prefix}batch:{batch_id}:attempts"

    def chunks(self, batch_id: str) -> str:
        """Hash: chunk job id -> its line numbers, comma-separated (queue.py; for re-enqueueing)."""
        return f"{self.prefix}batch:{batch_id}:chunks"

    @property
    def files(self) -> str:
        """Sorted set of the uploaded files' ids (`serve`), scored by when they were uploaded."""
        return f"{self.prefix}files"

    def file(self, file_id: str) -> str:
        """Hash: an uploaded file's id, bytes, created_at, filename, purpose (`serve`; bytes on disk)."""
        return f"{self.prefix}files:{file_id}"

    def custom_ids(self, batch_id: str) -> str:
        """Hash: custom_id -> the line that first used it (duplicates are found here while submitting)."""
        return f"{self.prefix}batch:{batch_id}:ids"

    def ledger(self, batch_id: str) -> str:
        """Hash: `provider SEP model SEP metric` -> integer (tokens, calls, pico-dollars); see ledger.py."""
        return f"{self.prefix}batch:{batch_id}:ledger"

    def minutes(self, batch_id: str) -> str:
        """Hash: the batch's per-minute buckets, `minute SEP count` (lines that ended, by the meta count
        they added to) and `minute SEP cost` (pico-dollars); minute = unix time // 60."""
        return f"{self.prefix}batch:{batch_id}:minutes"

    @property
    def fleet_ledger(self) -> str:
        """Hash: the ledger of every batch ever finished here, summed (never forgotten with a batch)."""
        return f"{self.prefix}fleet:ledger"

    @property
    def fleet_counts(self) -> str:
        """Hash: counters over every batch: `lines SEP status`, `calls SEP provider SEP model SEP outcome`,
        `spend SEP day SEP provider` (pico-dollars billed that UTC day, day = unix time // 86400)."""
        return f"{self.prefix}fleet:counts"

    def budget(self, batch_id: str) -> str:
        """Hash: max, spent, reserved (pico-dollars) and `r:{token}` reservations; see store/budget.py."""
        return f"{self.prefix}batch:{batch_id}:budget"

    def budget_leases(self, batch_id: str) -> str:
        """Sorted set: reservation tokens scored by when they lapse (ms)."""
        return f"{self.prefix}batch:{batch_id}:budget:leases"

    def schedule_tick(self, name: str, tick: int) -> str:
        """String, set NX by the one worker that runs schedule `name` at this minute (expires in a day)."""
        return f"{self.prefix}schedule:{name}:{tick}"

    def schedule_done(self, name: str) -> str:
        """Set of input file identities (absolute path|size|mtime_ns) the schedule has submitted."""
        return f"{self.prefix}schedule:{name}:done"

    def schedule_batches(self, name: str) -> str:
        """Hash: batch id -> input path, of the schedule's batches whose results are not exported yet."""
        return f"{self.prefix}schedule:{name}:batches"

    def schedule_export(self, name: str, batch_id: str) -> str:
        """String, set NX (a lease) by the worker exporting that batch's results."""
        return f"{self.prefix}schedule:{name}:export:{batch_id}"

    @property
    def cache_entries(self) -> str:
        """Hash: cache key -> a stored answer, compressed (store/cache.py)."""
        return f"{self.prefix}cache:entries"

    @property
    def cache_index(self) -> str:
        """Sorted set: cache keys scored by when their answer was stored (ms): TTL and oldest-first eviction."""
        return f"{self.prefix}cache:index"

    @property
    def cache_stats(self) -> str:
        """Hash: the cache's entries, bytes, hits, misses, saved (pico-dollars), stored, evicted."""
        return f"{self.prefix}cache:stats"

    def cache_lease(self, key: str) -> str:
        """String (SET NX PX): the single-flight lease of the worker sending this cache key's request."""
        return f"{self.prefix}cache:lease:{key}"

    def run_lease(self, batch_id: str) -> str:
        """String with a short TTL: `host pid token` of the `run` working the batch, renewed while it lives."""
        return f"{self.prefix}batch:{batch_id}:run"

    def fingerprint(self, fingerprint: str) -> str:
        """String: the id of the latest batch of this run fingerprint (resume.py); goes with that batch."""
        return f"{self.prefix}fingerprint:{fingerprint}"

    def idempotency(self, key_hash: str) -> str:
        """String, set NX: the batch submitted with this idempotency key (its sha256); goes with that batch."""
        return f"{self.prefix}idempotency:{key_hash}"

    # lanes (store/lanes.py): a parcel is the lines of one batch gathered for one upstream batch

    @property
    def lane_parcels(self) -> str:
        """Sorted set: parcel ids scored by when their next step is due (ms); a collected parcel leaves it."""
        return f"{self.prefix}lane:parcels"

    def lane_parcel(self, pid: str) -> str:
        """Hash: a parcel's lane, batch, state, counts, times and upstream ids (store/lanes.py ParcelView)."""
        return f"{self.prefix}lane:parcel:{pid}"

    def lane_parcel_lines(self, pid: str) -> str:
        """Hash: the parcel's custom_id -> line (lua/lane_take.lua builds it as lane_parcel(pid) + ':lines')."""
        return f"{self.lane_parcel(pid)}:lines"

    def lane_held(self, batch_id: str) -> str:
        """Hash: line -> the parcel holding it; a held line is in no chunk, and no stop or sweep touches it."""
        return f"{self.prefix}batch:{batch_id}:lane"

    def lane_gather(self, batch_id: str) -> str:
        """Hash: lane -> the batch's parcel still gathering lines on that lane (at most one per lane)."""
        return f"{self.prefix}batch:{batch_id}:lane:gather"

    def lane_recorded(self, lane: str) -> str:
        """Set: the upstream batch ids recorded for the lane's parcels (a lost create is sought among the others)."""
        return f"{self.prefix}lane:upstream:{lane}"

    def lane_lease(self, pid: str) -> str:
        """String (SET NX PX): the worker working the parcel now."""
        return f"{self.prefix}lane:lease:{pid}"

    def lane_creating(self, lane: str) -> str:
        """String (SET NX PX): the worker creating an upstream batch on the lane (one create in flight per lane)."""
        return f"{self.prefix}lane:creating:{lane}"

    def batch_keys(self, batch_id: str) -> list[str]:
        return [
            self.meta(batch_id),
            self.lines(batch_id),
            self.pending(batch_id),
            self.results(batch_id),
            self.chunks(batch_id),
            self.first_try(batch_id),
            self.attempts(batch_id),
            self.custom_ids(batch_id),
            self.ledger(batch_id),
            self.minutes(batch_id),
            self.budget(batch_id),
            self.budget_leases(batch_id),
            self.run_lease(batch_id),
            self.lane_held(batch_id),
            self.lane_gather(batch_id),
        ]
