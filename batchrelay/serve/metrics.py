"""`GET /metrics` of `batchrelay serve`: the fleet's Prometheus metrics, read from Redis at each scrape.

Every figure is fleet-wide (store/fleet.py): whichever worker ran a line, and whether or not its
batch has been forgotten since, it is counted here once. Labels are bounded: statuses, outcome
classes, providers, models and token kinds, never a batch id, a queue or a line. The mapping from
a `Fleet` to metric families (`families`) is pure and table-tested; the collector hands the latest
read to prometheus_client, in a registry of this app's own (never the process-global one).

Scraping needs a client key (`Authorization: Bearer`, as the API) unless `[serve] metrics_public`
is set: then `PublicMetrics`, in front of the key check, answers it itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from batchrelay.config.lanes import IDLE, WAITING, lane_state
from batchrelay.money.ledger import CACHE, SEP, rows
from batchrelay.money.pricing import usd
from batchrelay.results.tally import OUTCOMES
from batchrelay.serve.shared import Served
from batchrelay.store.fleet import Fleet, read_fleet
from batchrelay.store.lanes import ABANDONED
from batchrelay.store.status import Status

PATH = "/metrics"
LINE_STATUSES = ("succeeded", "failed", "invalid", "cancelled", "expired")
TOKEN_KINDS = ("input", "cached", "cache_write", "output", "reasoning")
# store/health.py's states as label values (snake_case: no space in a PromQL matcher)
STATE_LABEL = {"ok": "ok", "untried": "untried", "half-open": "half_open", "cooling": "cooling",
               "benched": "benched", "disabled": "disabled", "breaker open": "breaker_open",
               IDLE: "idle", WAITING: "waiting_upstream"}
STATES = tuple(STATE_LABEL.values())


def state_label(state: str) -> str:
    """A health state as its label value; one this table does not know yet keeps its own name, snake_cased."""
    return STATE_LABEL.get(state, state.replace(" ", "_").replace("-", "_"))


def _lines(fleet: Fleet) -> Iterator[Metric]:
    lines = CounterMetricFamily("batchrelay_lines", "Lines that ended, by final status (invalid: refused at submit).",
                                labels=["status"])
    for status in LINE_STATUSES:
        lines.add_metric([status], fleet.counts.get(f"lines{SEP}{status}", 0))
    yield lines
    yield GaugeMetricFamily("batchrelay_lines_pending", "Lines without a result yet, over the unfinished batches.",
                            value=fleet.pending)
    batches = GaugeMetricFamily("batchrelay_batches", "Batches in the store, by status.", labels=["status"])
    for status in Status:
        batches.add_metric([status.value], fleet.batches.get(status.value, 0))
    known = {s.value for s in Status}
    for status, n in sorted(fleet.batches.items()):
        if status not in known:
            batches.add_metric([status], n)
    yield batches
    yield GaugeMetricFamily("batchrelay_queue_jobs", "Jobs on the arq queues: chunk jobs waiting or running (and a "
                            "due sweep or webhook job).", value=fleet.queued)


def _calls(fleet: Fleet) -> Iterator[Metric]:
    calls = CounterMetricFamily("batchrelay_provider_calls", "Provider calls, counted when their line ended, by "
                                "provider, the job's model and outcome class.", labels=["provider", "model", "outcome"])
    found: dict[tuple[str, str, str], int] = {}
    for name, n in fleet.counts.items():
        parts = name.split(SEP)
        if len(parts) == 4 and parts[0] == "calls":
            found[(parts[1], parts[2], parts[3])] = n
    pairs = sorted({(p, m) for p, m, _ in found})
    for provider, model in pairs:  # every outcome of a pair that has calls: its error rate starts at 0, not absent
        for outcome in OUTCOMES:
            calls.add_metric([provider, model, outcome], found.pop((provider, model, outcome), 0))
    for (provider, model, outcome), n in sorted(found.items()):
        calls.add_metric([provider, model, outcome], n)
    yield calls


def _lanes(fleet: Fleet) -> Iterator[Metric]:
    abandoned = CounterMetricFamily("batchrelay_lane_lines_abandoned", "Lines a lane gave back while their upstream "
                                    "batch had not ended (its cancel not finished after cancel_wait_s, or the "
                                    "upstream unreachable): the upstream may still bill them, so they may be paid "
                                    "twice; by lane.", labels=["provider"])
    for name, n in sorted(fleet.counts.items()):
        kind, _, lane = name.partition(SEP)
        if kind == ABANDONED and lane:
            abandoned.add_metric([lane], n)
    yield abandoned


def _ledger(fleet: Fleet) -> Iterator[Metric]:
    spend = CounterMetricFamily("batchrelay_spend_usd", "What providers billed, in USD (the ledgers' cost), by "
                                "provider and the provider's model name.",
                                labels=["provider", "model"])
    tokens = CounterMetricFamily("batchrelay_tokens", "Tokens billed, by provider, model and kind (cached and "
                                 "cache_write are parts of input).", labels=["provider", "model", "kind"])
    unpriced = CounterMetricFamily("batchrelay_calls_unpriced", "Billed calls whose price is unknown (their cost is "
                                   "not in batchrelay_spend_usd_total).", labels=["provider", "model"])
    hits = CounterMetricFamily("batchrelay_cache_hits", "Lines answered from the response cache, by the job's model.",
                               labels=["model"])
    saved = CounterMetricFamily("batchrelay_cache_saved_usd", "What the cached answers had cost when they were paid "
                                "for, by the job's model.", labels=["model"])
    for row in rows(fleet.ledger):
        if row.provider == CACHE:
            hits.add_metric([row.model], row["cache_hits"])
            saved.add_metric([row.model], float(usd(row["saved"])))
            continue
        spend.add_metric([row.provider, row.model], float(row.cost))
        unpriced.add_metric([row.provider, row.model], row["unpriced"])
        for kind in TOKEN_KINDS:
            tokens.add_metric([row.provider, row.model, kind], row[kind])
    yield from (spend, tokens, unpriced, hits, saved)
    c = fleet.cache
    lookups = CounterMetricFamily("batchrelay_cache_lookups", "Response cache lookups, by result.", labels=["result"])
    lookups.add_metric(["hit"], c.get("hits", 0))
    lookups.add_metric(["miss"], c.get("misses", 0))
    yield lookups
    yield GaugeMetricFamily("batchrelay_cache_entries", "Answers in the response cache.", value=c.get("entries", 0))
    yield GaugeMetricFamily("batchrelay_cache_bytes", "Size of the response cache's answers, compressed.",
                            value=c.get("bytes", 0))


def _providers(fleet: Fleet, max_concurrency: Mapping[str, int | None], lanes: frozenset[str]) -> Iterator[Metric]:
    state = GaugeMetricFamily("batchrelay_provider_state", "1 for each provider's health state now, 0 for the others "
                              "(shared by every worker; a lane: idle, or waiting_upstream while it has parcels).",
                              labels=["provider", "state"])
    parcels = GaugeMetricFamily("batchrelay_lane_parcels", "A lane's upstream batches not collected yet, by the "
                                "state of their parcel (gathering ... created, cancelling, ended).",
                                labels=["provider", "state"])
    limit = GaugeMetricFamily("batchrelay_provider_inflight_limit", "Calls a provider may have in flight now, over "
                              "every worker, while a limit holds (max_concurrency, its slow start or a 429).",
                              labels=["provider"])
    for name, d in sorted(fleet.providers.items()):
        held = fleet.lanes.get(name, {})
        now = state_label(lane_state(str(d.get("state")), bool(held)) if name in lanes else str(d.get("state")))
        for parcel_state, n in sorted(held.items()):
            parcels.add_metric([name, parcel_state], n)
        for s in (*STATES, *(() if now in STATES else (now,))):
            state.add_metric([name, s], 1 if s == now else 0)
        limits = [n for n in (d.get("concurrency_limit"), max_concurrency.get(name)) if n]
        if limits:
            limit.add_metric([name], min(limits))
    yield state
    yield limit
    yield parcels


def families(fleet: Fleet, max_concurrency: Mapping[str, int | None] | None = None,
             lanes: frozenset[str] = frozenset()) -> list[Metric]:
    """Every fleet metric of one read; `max_concurrency`: the configured limit of each provider; `lanes`:
    the providers that are lanes."""
    return [*_lines(fleet), *_calls(fleet), *_lanes(fleet), *_ledger(fleet),
            *_providers(fleet, max_concurrency or {}, lanes)]


class FleetCollector(Collector):
    """Hands prometheus_client the families of the latest read (`fleet`, set before each exposition)."""

    def __init__(self, max_concurrency: Mapping[str, int | None], lanes: frozenset[str] = frozenset()) -> None:
        self.fleet = Fleet()
        self.max_concurrency, self.lanes = max_concurrency, lanes

    def collect(self) -> Iterable[Metric]:
        return families(self.fleet, self.max_concurrency, self.lanes)


class FleetMetrics:
    """The /metrics endpoint: one read of the store per scrape, exposed from a registry of its own."""

    def __init__(self, served: Served) -> None:
        self.served = served
        providers = served.settings.ordered_providers()
        self.names = [p.name for p in providers]
        self.collector = FleetCollector({p.name: p.max_concurrency for p in providers},
                                        frozenset(p.name for p in providers if p.is_lane))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    async def endpoint(self, _request: Request) -> Response:
        fleet = await read_fleet(self.served.db, self.names, self.served.settings.health)
        self.collector.fleet = fleet  # no await between this and the exposition: a scrape sees its own read
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_route(served: Served) -> Route:
    return Route(PATH, FleetMetrics(served).endpoint, methods=["GET"])


class PublicMetrics:
    """With `[serve] metrics_public`, GET /metrics is answered here, in front of the key check;
    otherwise (and for every other request) it only passes the request on."""

    def __init__(self, app: ASGIApp, route: Route, public: bool) -> None:
        self.app, self.route, self.public = app, route, public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.public and scope["type"] == "http" and scope["path"] == PATH and scope["method"] in ("GET", "HEAD"):
            await self.route.handle(scope, receive, send)
            return
        await self.app(scope, receive, send)
