"""results/tally.py: each provider call's outcome class, and a line's calls as fleet-count fields."""

from __future__ import annotations

import pytest

from batchrelay.providers.classify import Action
from batchrelay.results.outcome import Attempt
from batchrelay.results.tally import OUTCOMES, call_field, call_tally, outcome_of


@pytest.mark.parametrize(("status", "action", "outcome"), [
    (200, None, "ok"),
    (500, Action.RETRY, "transient"),
    (None, Action.RETRY, "transient"),  # a timeout or a dropped connection
    (200, Action.RETRY, "transient"),  # an answer that could not be read
    (429, Action.FAILOVER, "rate_limited"),
    (503, Action.FAILOVER, "unavailable"),
    (402, Action.BENCH, "billing"),
    (429, Action.BENCH, "billing"),  # "insufficient_quota"
    (401, Action.DISABLE, "auth"),
    (404, Action.COOL_MODEL, "model"),
    (400, Action.FAIL_LINE, "bad_request"),
    (418, None, "error"),
    (500, "something new", "error"),
])
def test_outcome_of_a_call(status: int | None, action: str | None, outcome: str) -> None:
    assert outcome_of(Attempt("p", status, 1.0, action)) == outcome
    assert outcome in OUTCOMES


def test_a_lines_calls_are_counted_by_provider_model_and_outcome() -> None:
    attempts = [Attempt("a", 429, 1.0, Action.FAILOVER), Attempt("b", 500, 1.0, Action.RETRY),
                Attempt("b", 500, 1.0, Action.RETRY), Attempt("…", None, 0.0, error="3 more attempts not kept"),
                Attempt("b", 200, 1.0)]
    assert call_tally(attempts, "gpt-4o-mini") == {
        call_field("a", "gpt-4o-mini", "rate_limited"): 1, call_field("b", "gpt-4o-mini", "transient"): 2,
        call_field("b", "gpt-4o-mini", "ok"): 1}
    assert call_tally([], "m") == {}
