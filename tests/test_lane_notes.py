"""What `submit` and `run` say about each configured lane (money/lane_notes.py) and about a deadline
the batch they found does not take (cli/lane_report.py). Pure, table-tested."""

from __future__ import annotations

from typing import Any

import pytest

from batchrelay.cli.lane_report import deadline_note, held_notes, submit_hint
from batchrelay.config.settings import ProviderConfig, RoutingConfig, Settings
from batchrelay.money.estimate import OutputGuess, estimate_jobs
from batchrelay.money.lane_cost import span
from batchrelay.money.lane_notes import lane_notes
from batchrelay.spec import BatchSpec
from batchrelay.store.lane_status import BatchLanes, ParcelStatus
from batchrelay.store.lanes import ParcelView
from batchrelay.wire.jobs import JobLine

NOW = 1_000_000.0
H = 3600.0
NEEDS = 25 * H  # a lane's default window (24 h) and margin (1 h)
HINT = "--deadline +{until} or later (or --completion-window {needs})"


def prov(name: str, rate: str, **kw: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": name, "base_url": "http://127.0.0.1:1",
                                          "prices": {"*": {"input": rate, "output": rate}}, **kw})


LANE = prov("batch", "1", kind="openai-batch")
SHORT = prov("short", "1", kind="openai-batch", window_s=H, margin_s=600, priority=200)  # needs 70 min
RESELLER = prov("reseller", "2", priority=1)
CHEAPER = prov("cheaper", "0.5", priority=1)


def notes(providers: list[ProviderConfig], deadline: float | None, strategy: str = "cheapest",
          lanes: list[ProviderConfig] | None = None, ahead_s: float = 0.0, **routing: Any) -> list[tuple[Any, ...]]:
    s = Settings(routing=RoutingConfig(strategy=strategy, **routing)).with_providers(providers)  # type: ignore[arg-type]
    jobs = [JobLine(i, f"c{i}", "bare", "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 10}) for i in (1, 2, 3)]
    est = estimate_jobs(jobs, s, output=OutputGuess(tokens=10), deadline=deadline, now=NOW)
    out = lane_notes(est, lanes if lanes is not None else [p for p in providers if p.is_lane], NOW, HINT, ahead_s)
    return [(n.lane, n.used, n.lines, n.reason, n.text) for n in out]


# three lines of 12 input and 10 output tokens: $0.000066 at the lane's $1 per 1M, $0.000132 at the reseller's $2
CASES: list[tuple[str, dict[str, Any], list[tuple[Any, ...]]]] = [
    ("the deadline allows it: its lines go there, at its share of the price", {"deadline": NOW + 30 * H},
     [("batch", True, 3, None, "lane batch: 3 lines go there; they may wait up to 24h, for 50 % of the synchronous "
                               "price ($0.000066 instead of $0.000132)")]),
    ("exactly window + margin", {"deadline": NOW + NEEDS}, [("batch", True, 3, None, "lane batch: 3 lines go there; "
                                                              "they may wait up to 24h, for 50 % of the synchronous "
                                                              "price ($0.000066 instead of $0.000132)")]),
    ("no deadline", {"deadline": None},
     [("batch", False, 0, "no_deadline", "lane batch not used: the batch has no deadline; the lane needs 25h (window "
                                         "24h + margin 1h): --deadline +25h or later (or --completion-window 25h) "
                                         "lets 3 lines go there")]),
    ("a 24h completion window leaves no room for the margin", {"deadline": NOW + 24 * H},
     [("batch", False, 0, "deadline", "lane batch not used: deadline leaves 24h, the lane needs 25h (window 24h + "
                                      "margin 1h); --deadline +25h or later (or --completion-window 25h) lets 3 lines "
                                      "go there")]),
    ("just short never reads as enough", {"deadline": NOW + NEEDS - 120},
     [("batch", False, 0, "deadline", "lane batch not used: deadline leaves 24.9h, the lane needs 25h (window 24h + "
                                      "margin 1h); --deadline +25h or later (or --completion-window 25h) lets 3 lines "
                                      "go there")]),
    ("a deferred batch: the deadline it needs counts from now", {"deadline": NOW + H, "ahead_s": 2 * H},
     [("batch", False, 0, "deadline", "lane batch not used: deadline leaves 1h, the lane needs 25h (window 24h + "
                                      "margin 1h); --deadline +27h or later (or --completion-window 25h) lets 3 lines "
                                      "go there")]),
    ("a cheaper synchronous provider ranks first", {"deadline": NOW + 30 * H, "providers": [CHEAPER, LANE]},
     [("batch", False, 0, "ranked_behind", "lane batch not used: another provider ranks before it for every line "
                                           "(routing.strategy, priority, routes, --providers)")]),
    ("priority puts the reseller first", {"deadline": NOW + 30 * H, "strategy": "priority",
                                          "providers": [RESELLER, prov("batch", "1", kind="openai-batch",
                                                                       priority=50)]},
     [("batch", False, 0, "ranked_behind", "lane batch not used: another provider ranks before it for every line "
                                           "(routing.strategy, priority, routes, --providers)")]),
    ("two lanes: the deadline lets only the short one in", {"deadline": NOW + 2 * H,
                                                            "providers": [RESELLER, LANE, SHORT]},
     [("batch", False, 0, "deadline", "lane batch not used: deadline leaves 2h, the lane needs 25h (window 24h + "
                                      "margin 1h); --deadline +25h or later (or --completion-window 25h) lets 3 lines "
                                      "go there"),
      ("short", True, 3, None, "lane short: 3 lines go there; they may wait up to 1h, for 50 % of the synchronous "
                               "price ($0.000066 instead of $0.000132)")]),
    ("two lanes, both allowed: the first one takes the lines", {"deadline": NOW + 30 * H,
                                                                "providers": [RESELLER, LANE, SHORT]},
     [("batch", True, 3, None, "lane batch: 3 lines go there; they may wait up to 24h, for 50 % of the synchronous "
                               "price ($0.000066 instead of $0.000132)"),
      ("short", False, 0, "ranked_behind", "lane short not used: another provider ranks before it for every line "
                                           "(routing.strategy, priority, routes, --providers)")]),
    ("a route that leaves the lane out", {"deadline": NOW + 30 * H, "routes": {"m": ["reseller"]}},
     [("batch", False, 0, "ranked_behind", "lane batch not used: another provider ranks before it for every line "
                                           "(routing.strategy, priority, routes, --providers)")]),
    ("no lane the batch may use: nothing to say", {"deadline": NOW + 30 * H, "lanes": []}, []),
]


@pytest.mark.parametrize(("why", "given", "said"), CASES, ids=[c[0] for c in CASES])
def test_each_lane_says_whether_the_batch_s_lines_go_there_and_why_not(
        why: str, given: dict[str, Any], said: list[tuple[Any, ...]]) -> None:
    kw = {"providers": [RESELLER, LANE], **given}
    assert notes(kw.pop("providers"), kw.pop("deadline"), **kw) == said


def test_a_note_as_json_carries_the_numbers() -> None:
    s = Settings(routing=RoutingConfig(strategy="cheapest")).with_providers([RESELLER, LANE])
    jobs = [JobLine(1, "c1", "bare", "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})]
    (note,) = lane_notes(estimate_jobs(jobs, s, deadline=NOW + 24 * H, now=NOW), [LANE], NOW, HINT)
    d = note.as_dict()
    assert {k: d[k] for k in ("name", "used", "lines", "needs_s", "deadline_leaves_s", "reason")} == {
        "name": "batch", "used": False, "lines": 0, "needs_s": NEEDS, "deadline_leaves_s": 24 * H,
        "reason": "deadline"}
    assert d["text"] == note.text


@pytest.mark.parametrize(("health", "said"), [
    ({"state": "disabled", "for_s": 3594.0, "last": "401 list files: HTTP 401: Incorrect API key provided."},
     ("disabled", "lane batch not used: disabled for 59.9m after HTTP 401 (check its key; `batchrelay providers check` "
                  "re-enables it)")),
    ({"state": "benched", "for_s": 1790.2, "last": "402 create the batch of p1: HTTP 402: no credit"},
     ("benched", "lane batch not used: benched for 29.9m after HTTP 402 (check its credit; `batchrelay providers "
                 "check` takes it off the bench)")),
    ({"state": "cooling", "for_s": 299.5, "last": "list files: ConnectError: All connection attempts failed"},
     ("cooling", "lane batch not used: cooling for 5m after list files: ConnectError: All connection attempts "
                 "failed (it could not be reached; new lines go to it again when this ends)")),
    ({"state": "ok", "last": "401 an old one"}, (None, "lane batch: 3 lines go there; they may wait up to 24h, for "
                                                       "50 % of the synchronous price ($0.000066 instead of "
                                                       "$0.000132)")),
    ({"state": "untried"}, (None, "lane batch: 3 lines go there; they may wait up to 24h, for 50 % of the "
                                  "synchronous price ($0.000066 instead of $0.000132)")),
])
def test_a_lane_the_shared_health_has_closed_is_said_not_used_and_why(
        health: dict[str, Any], said: tuple[str | None, str]) -> None:
    """Whatever the deadline allows: a disabled lane takes no line (the fresh-clone check saw "33
    lines go there" while all went to the reseller)."""
    s = Settings(routing=RoutingConfig(strategy="cheapest")).with_providers([RESELLER, LANE])
    jobs = [JobLine(i, f"c{i}", "bare", "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 10}) for i in (1, 2, 3)]
    est = estimate_jobs(jobs, s, output=OutputGuess(tokens=10), deadline=NOW + 30 * H, now=NOW)
    (note,) = lane_notes(est, [LANE], NOW, HINT, health={"batch": health, "other": {"state": "disabled"}})
    assert (note.reason, note.text) == said and note.used == (said[0] is None)
    assert note.as_dict()["used"] is note.used and note.as_dict()["reason"] == said[0]


@pytest.mark.parametrize(("kept", "given", "done", "said"), [
    (NOW, NOW, False, None),
    (NOW, NOW + 59, False, None),  # `--deadline +26h` again a few seconds later: the same instant
    (None, None, True, None),
    (NOW, NOW + 2 * H, False, "note: batch B (same input and options) keeps its deadline 1970-01-12T13:46:40Z; this "
                              "run's deadline 1970-01-12T15:46:40Z is not applied (--new starts a batch with it)"),
    (NOW, NOW + 2 * H, True, "note: batch B (same input and options) ran with its deadline 1970-01-12T13:46:40Z; this "
                             "run's deadline 1970-01-12T15:46:40Z is not applied (--new starts a batch with it)"),
    (None, NOW, True, "note: batch B (same input and options) ran with no deadline; this run's deadline "
                      "1970-01-12T13:46:40Z is not applied (--new starts a batch with it)"),
    (NOW, None, False, "note: batch B (same input and options) keeps its deadline 1970-01-12T13:46:40Z; this run "
                       "gives none (--new starts a batch without one)"),
])
def test_a_batch_found_again_says_when_it_keeps_another_deadline(
        kept: float | None, given: float | None, done: bool, said: str | None) -> None:
    assert deadline_note("B", kept, given, done) == said


@pytest.mark.parametrize(("options", "hint"), [
    ({}, "--deadline +{until} or later (or --completion-window {needs} or more)"),
    ({"deadline": "+2h"}, "--deadline +{until} or later"),
    ({"completion_window": "24h"}, "--completion-window {needs} or more"),
    ({"deadline": "+2h", "completion_window": "24h"}, "--deadline +{until} or later with --completion-window {needs} "
                                                      "or more"),
])
def test_submit_suggests_the_options_it_was_given(options: dict[str, Any], hint: str) -> None:
    assert submit_hint(BatchSpec(**options)) == hint


@pytest.mark.parametrize(("seconds", "up"), [(90000, "25h"), (90001, "25.1h"), (97200 - 1, "27h"), (44.2, "45s"),
                                             (5400, "1.5h")])
def test_a_suggested_span_is_rounded_up(seconds: float, up: str) -> None:
    assert span(seconds, up=True) == up


def _parcel(pid: str, lane: str, state: str, must_end_by: float) -> ParcelView:
    return ParcelView(pid=pid, lane=lane, batch="B", state=state, n=40, bytes=4000, deadline=NOW + 30 * H,
                      must_end_by=must_end_by, first_at=NOW, sealed_at=NOW, file_id="f", creating_at=NOW,
                      upstream_id="u", upstream_status="in_progress", polls=3, next_poll_s=60, ended_at=None,
                      collected=0)


def test_a_resumed_batch_says_its_lines_already_upstream_are_there_not_that_they_go_there() -> None:
    go = lane_notes(estimate_jobs([JobLine(i, f"c{i}", "bare", "chat", {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"}]}) for i in (1, 2, 3)], Settings(routing=RoutingConfig(
            strategy="cheapest")).with_providers([RESELLER, LANE, SHORT]), deadline=NOW + 30 * H, now=NOW),
        [LANE, SHORT], NOW, HINT)
    held = BatchLanes((ParcelStatus(_parcel("B-p1", "batch", "created", NOW + 29 * H), 33),
                       ParcelStatus(_parcel("B-p2", "batch", "collected", NOW + 29 * H), 0)))  # answered: not held
    said = held_notes(go, held)
    assert [(n.lane, n.used, n.lines, n.text) for n in said] == [
        ("batch", True, 33, "lane batch: 33 lines already there (parcel created, answered by 1970-01-13T18:46:40Z at "
                            "the latest)"),
        (go[1].lane, go[1].used, go[1].lines, go[1].text)]  # a lane holding none keeps its note
    assert "go there" in go[0].text and held_notes(go, BatchLanes()) == go
