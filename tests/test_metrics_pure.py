"""The fleet metrics' mapping from a store read to Prometheus families (serve/metrics.py), and the
worker's outcome mapping (worker/metrics.py): pure, tabled."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchrelay.money.ledger import SEP
from batchrelay.results.outcome import Result
from batchrelay.serve.metrics import STATES, FleetCollector, families, state_label
from batchrelay.store.fleet import Fleet
from batchrelay.worker.metrics import CALL_BUCKETS, STATUS_OF


def _ledger(**fields: int) -> dict[bytes, bytes]:
    """`provider__model__metric=n` as a ledger hash."""
    return {k.replace("__", SEP).encode(): str(v).encode() for k, v in fields.items()}


def _samples(fleet: Fleet, max_concurrency: dict[str, int | None] | None = None,
             lanes: frozenset[str] = frozenset()) -> dict[tuple[str, tuple], float]:
    """Every sample the fleet exposes, through prometheus_client's exposition and its own parser."""
    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(max_concurrency or {}, lanes)
    collector.fleet = fleet
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize(("state", "label"), [
    ("ok", "ok"), ("untried", "untried"), ("half-open", "half_open"), ("cooling", "cooling"),
    ("benched", "benched"), ("disabled", "disabled"), ("breaker open", "breaker_open"),
    ("some new state", "some_new_state"),
])
def test_each_health_state_has_a_label_value_without_spaces(state: str, label: str) -> None:
    assert state_label(state) == label


@pytest.mark.parametrize(("kind", "status"), [
    (Result.ANSWERED, "succeeded"), (Result.REJECTED, "failed"), (Result.FAILED, "failed"),
    (Result.DEFERRED, "deferred"), (Result.OVER_BUDGET, "parked"),
])
def test_a_worker_counts_each_line_outcome_under_its_status(kind: Result, status: str) -> None:
    assert STATUS_OF[kind] == status


def test_every_line_outcome_has_a_status() -> None:
    assert set(STATUS_OF) == set(Result)


def test_call_latency_buckets_span_a_tenth_of_a_second_to_two_minutes() -> None:
    assert CALL_BUCKETS[0] == 0.1 and CALL_BUCKETS[-1] == 120
    assert list(CALL_BUCKETS) == sorted(CALL_BUCKETS)


def test_lines_by_status_come_from_the_fleet_counts_with_every_status_present() -> None:
    got = _samples(Fleet(counts={f"lines{SEP}succeeded": 7, f"lines{SEP}invalid": 2}))
    assert {labels[0][1]: v for (name, labels), v in got.items() if name == "batchrelay_lines_total"} == {
        "succeeded": 7, "failed": 0, "invalid": 2, "cancelled": 0, "expired": 0}


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {}),
    ({f"calls{SEP}a{SEP}m{SEP}ok": 3, f"calls{SEP}a{SEP}m{SEP}rate_limited": 1},
     {("a", "m", "ok"): 3, ("a", "m", "rate_limited"): 1}),
    ({f"calls{SEP}a{SEP}m{SEP}ok": 1, f"calls{SEP}b{SEP}n{SEP}billing": 2, f"lines{SEP}failed": 9},
     {("a", "m", "ok"): 1, ("b", "n", "billing"): 2}),
    ({f"calls{SEP}a{SEP}m{SEP}new_class": 4}, {("a", "m", "new_class"): 4}),
])
def test_provider_calls_by_outcome_come_from_the_fleet_counts(fields: dict[str, int],
                                                              expected: dict[tuple[str, str, str], int]) -> None:
    got = {tuple(v for _, v in labels): n for (name, labels), n in _samples(Fleet(counts=fields)).items()
           if name == "batchrelay_provider_calls_total"}
    # labels sorted by name: (model, outcome, provider)
    assert {(p, m, o): n for (m, o, p), n in got.items() if n} == expected
    pairs = {(p, m) for p, m, _ in expected}
    assert len(got) >= 9 * len(pairs), "each (provider, model) with calls shows every outcome class"


def test_spend_and_tokens_come_from_the_fleet_ledger_and_cache_rows_go_to_cache_metrics() -> None:
    fleet = Fleet(ledger=_ledger(a__m__cost=1_500_000_000, a__m__input=100, a__m__cached=40, a__m__output=7,
                                 a__m__requests=3, a__m__unpriced=1,
                                 cache__m__cache_hits=5, cache__m__saved=250_000_000_000))
    got = _samples(fleet)
    assert got[("batchrelay_spend_usd_total", (("model", "m"), ("provider", "a")))] == 0.0015
    tokens = {dict(labels)["kind"]: v for (name, labels), v in got.items() if name == "batchrelay_tokens_total"}
    assert tokens == {"input": 100, "cached": 40, "cache_write": 0, "output": 7, "reasoning": 0}
    assert got[("batchrelay_calls_unpriced_total", (("model", "m"), ("provider", "a")))] == 1
    assert got[("batchrelay_cache_hits_total", (("model", "m"),))] == 5
    assert got[("batchrelay_cache_saved_usd_total", (("model", "m"),))] == 0.25
    assert not any(dict(labels).get("provider") == "cache" for _, labels in got)


def test_batches_by_status_show_every_status_and_pending_and_queued_are_gauges() -> None:
    got = _samples(Fleet(batches={"completed": 3, "in_progress": 1}, pending=12, queued=2))
    by_status = {dict(labels)["status"]: v for (name, labels), v in got.items() if name == "batchrelay_batches"}
    assert by_status["completed"] == 3 and by_status["in_progress"] == 1 and by_status["paused"] == 0
    assert got[("batchrelay_lines_pending", ())] == 12
    assert got[("batchrelay_queue_jobs", ())] == 2


@pytest.mark.parametrize(("described", "max_concurrency", "state", "limit"), [
    ({"state": "ok"}, None, "ok", None),
    ({"state": "benched", "for_s": 800}, None, "benched", None),
    ({"state": "breaker open"}, 8, "breaker_open", 8),
    ({"state": "cooling", "concurrency_limit": 2}, 8, "cooling", 2),
    ({"state": "ok", "concurrency_limit": 16}, 8, "ok", 8),
    ({"state": "half-open"}, None, "half_open", None),
])
def test_a_provider_shows_one_state_at_1_and_its_in_flight_limit_while_one_holds(
    described: dict, max_concurrency: int | None, state: str, limit: int | None
) -> None:
    got = _samples(Fleet(providers={"p": described}), {"p": max_concurrency})
    states = {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "batchrelay_provider_state"}
    assert states == {s: (1.0 if s == state else 0.0) for s in STATES}
    assert got.get(("batchrelay_provider_inflight_limit", (("provider", "p"),))) == limit


@pytest.mark.parametrize(("health", "open_parcels", "state"), [
    ("untried", {}, "idle"),  # a lane's health never sees a call succeed: `untried` would say nothing
    ("untried", {"created": 1, "gathering": 1}, "waiting_upstream"),
    ("ok", {"created": 1}, "waiting_upstream"),
    ("half-open", {"cancelling": 1}, "waiting_upstream"),
    ("benched", {"created": 1}, "benched"),  # a state that says more is kept
    ("disabled", {}, "disabled"),
    ("cooling", {"created": 2}, "cooling"),
])
def test_a_lane_shows_the_state_status_and_providers_show_and_its_parcels_by_state(
    health: str, open_parcels: dict[str, int], state: str
) -> None:
    got = _samples(Fleet(providers={"lane": {"state": health}, "sync": {"state": "untried"}}, lanes={"lane": open_parcels}),
                   lanes=frozenset({"lane"}))
    states = {dict(labels)["state"]: v for (name, labels), v in got.items()
              if name == "batchrelay_provider_state" and dict(labels)["provider"] == "lane"}
    assert states == {s: (1.0 if s == state else 0.0) for s in STATES}
    parcels = {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "batchrelay_lane_parcels"}
    assert parcels == {k: float(v) for k, v in open_parcels.items()}
    assert got[("batchrelay_provider_state", (("provider", "sync"), ("state", "untried")))] == 1.0  # not a lane


def test_an_empty_store_exposes_every_family_without_error() -> None:
    names = {f.name for f in families(Fleet())}
    assert {"batchrelay_lines", "batchrelay_lines_pending", "batchrelay_batches", "batchrelay_provider_calls",
            "batchrelay_spend_usd", "batchrelay_tokens", "batchrelay_provider_state"} <= names
