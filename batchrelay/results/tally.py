"""What a finished line adds to the fleet's counts besides itself: its provider calls, by provider,
the job's model and outcome class. Written with the line's result, in the same Lua step, so each
call is counted once, when its line ends (store/lua/_result_line.lua). Pure and table-tested.

Outcome classes follow the failover table (providers/classify.py): `ok` for an answer, then by what
the failure made the relay do: `transient` (retried), `rate_limited` (a 429 that failed over),
`billing` (benched), `auth` (disabled), `model` (model cooled), `bad_request` (the line failed),
`unavailable` (any other failover; a timeout or a dropped connection is `transient`), `error`
(anything else).
"""

from __future__ import annotations

from collections.abc import Iterable

from batchrelay.money.ledger import SEP
from batchrelay.providers.classify import Action
from batchrelay.results.outcome import Attempt

OUTCOMES = ("ok", "transient", "rate_limited", "billing", "auth", "model", "bad_request", "unavailable", "error")
_BY_ACTION = {Action.RETRY: "transient", Action.BENCH: "billing", Action.DISABLE: "auth",
              Action.COOL_MODEL: "model", Action.FAIL_LINE: "bad_request", Action.FAILOVER: "unavailable"}
GAP = "…"  # the provider of the entry that stands for attempts a long record left out (outcome.py)


def outcome_of(a: Attempt) -> str:
    """The outcome class of one provider call."""
    if a.action is None:
        return "ok" if a.status == 200 else "error"
    if a.action == Action.FAILOVER and a.status == 429:
        return "rate_limited"
    try:
        return _BY_ACTION[Action(a.action)]
    except ValueError:
        return "error"


def call_field(provider: str, model: str, outcome: str) -> str:
    return f"calls{SEP}{provider}{SEP}{model}{SEP}{outcome}"


def line_field(count: str) -> str:
    return f"lines{SEP}{count}"


def call_tally(attempts: Iterable[Attempt], model: str) -> dict[str, int]:
    """The fleet counts' increments for a line's calls (`model`: the job's)."""
    out: dict[str, int] = {}
    for a in attempts:
        if a.provider == GAP:
            continue
        f = call_field(a.provider, model, outcome_of(a))
        out[f] = out.get(f, 0) + 1
    return out
