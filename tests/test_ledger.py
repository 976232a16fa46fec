"""The cost ledger: a line's billed calls become its `batchrelay.cost` and the batch's ledger, once."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from batchrelay.money.ledger import SEP, Billed, Row, increments, line_cost, rows, total
from batchrelay.money.pricing import CallCost
from batchrelay.spec import BatchSpec
from batchrelay.store.store import Store
from batchrelay.store.submit import new_batch_id
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.reply import Usage


def cc(computed: str | None, reported: str | None = None, source: str = "computed", min_charge: bool = False
       ) -> CallCost:
    return CallCost(None if computed is None else D(computed), None if reported is None else D(reported),
                    source, min_charge)  # type: ignore[arg-type]


def f(provider: str, model: str, metric: str) -> str:
    return f"{provider}{SEP}{model}{SEP}{metric}"


@pytest.mark.parametrize(("calls", "expected"), [
    ([], {}),
    # one answer: tokens, one request, its cost in pico-dollars; zeros are left out
    ([Billed("a", "m", Usage(100, 20), cc("0.0000005625"))],
     {f("a", "m", "requests"): 1, f("a", "m", "input"): 100, f("a", "m", "output"): 20,
      f("a", "m", "cost"): 562_500}),
    # cached, cache-write and reasoning tokens each have a metric
    ([Billed("a", "m", Usage(100, 20, cached_input_tokens=30, cache_write_tokens=10, reasoning_tokens=5), cc("0.001"))],
     {f("a", "m", "requests"): 1, f("a", "m", "input"): 100, f("a", "m", "output"): 20, f("a", "m", "cached"): 30,
      f("a", "m", "cache_write"): 10, f("a", "m", "reasoning"): 5, f("a", "m", "cost"): 10**9}),
    # a failed call that was still billed, then the answer at another provider
    ([Billed("a", "m", Usage(10, 0), cc("0.00001"), failed=True), Billed("b", "m2", Usage(10, 5), cc("0.00002"))],
     {f("a", "m", "requests"): 1, f("a", "m", "failed"): 1, f("a", "m", "input"): 10, f("a", "m", "cost"): 10**7,
      f("b", "m2", "requests"): 1, f("b", "m2", "input"): 10, f("b", "m2", "output"): 5,
      f("b", "m2", "cost"): 2 * 10**7}),
    # no known price: counted as unpriced, never as a cost of 0
    ([Billed("a", "m", Usage(1, 1), cc(None))],
     {f("a", "m", "requests"): 1, f("a", "m", "input"): 1, f("a", "m", "output"): 1, f("a", "m", "unpriced"): 1}),
    # a reported cost (billed) 10 % off the computed one, and a minimum charge
    ([Billed("a", "m", Usage(1, 1), cc("0.001", "0.0011", "reported")),
      Billed("a", "m", Usage(1, 1), cc("0.005", None, "computed", min_charge=True))],
     {f("a", "m", "requests"): 2, f("a", "m", "input"): 2, f("a", "m", "output"): 2,
      f("a", "m", "cost"): 1_100_000_000 + 5 * 10**9, f("a", "m", "reported"): 1_100_000_000,
      f("a", "m", "min_charge"): 1, f("a", "m", "discrepancies"): 1}),
    # a provider with no price of its own but a reported cost is billed that
    ([Billed("a", "m", Usage(1, 1), cc(None, "0.002", "reported"))],
     {f("a", "m", "requests"): 1, f("a", "m", "input"): 1, f("a", "m", "output"): 1,
      f("a", "m", "cost"): 2 * 10**9, f("a", "m", "reported"): 2 * 10**9}),
], ids=["none", "one-answer", "cache-and-reasoning", "failover-billed-failure", "unpriced", "reported-and-min",
        "reported-only"])
def test_increments(calls: list[Billed], expected: dict[str, int]) -> None:
    assert increments(calls) == expected


def test_increments_of_the_same_provider_and_model_add_up() -> None:
    calls = [Billed("a", "m", Usage(3, 4), cc("0.000000000007")) for _ in range(5)]
    assert increments(calls) == {f("a", "m", "requests"): 5, f("a", "m", "input"): 15, f("a", "m", "output"): 20,
                                 f("a", "m", "cost"): 35}


def test_line_cost_of_one_answer() -> None:
    d = line_cost([Billed("a", "m", Usage(100, 20, cached_input_tokens=40), cc("0.0000005625"))])
    assert d == {"usd": "0.0000005625", "calls": 1, "computed_usd": "0.0000005625", "reported_usd": None,
                 "min_charge_applied": False, "source": "computed",
                 "tokens": {"input_tokens": 100, "output_tokens": 20, "cached_input_tokens": 40,
                            "cache_write_tokens": 0, "reasoning_tokens": 0}}


def test_line_cost_of_no_billed_call_is_zero_not_unknown() -> None:
    d = line_cost([])
    assert (d["usd"], d["calls"], d["computed_usd"], d["reported_usd"]) == ("0", 0, "0", None)
    assert "price" not in d and "source" not in d and "failed_calls_usd" not in d


def test_line_cost_sums_every_billed_call_and_names_the_failed_ones() -> None:
    calls = [Billed("a", "m", Usage(10, 0), cc("0.00001"), failed=True),
             Billed("a", "m", Usage(10, 0), cc("0.005", min_charge=True), failed=True),
             Billed("b", "m", Usage(10, 5, reasoning_tokens=2), cc("0.00002"))]
    d = line_cost(calls)
    assert D(d["usd"]) == D("0.00001") + D("0.005") + D("0.00002") == D(d["computed_usd"])
    assert D(d["failed_calls_usd"]) == D("0.00501")
    assert d["calls"] == 3 and d["min_charge_applied"] is True
    assert d["tokens"] == {"input_tokens": 30, "output_tokens": 5, "cached_input_tokens": 0, "cache_write_tokens": 0,
                           "reasoning_tokens": 2}


def test_line_cost_with_an_unknown_price_is_unknown() -> None:
    calls = [Billed("a", "m", Usage(10, 0), cc("0.00001"), failed=True), Billed("b", "m", Usage(10, 5), cc(None))]
    d = line_cost(calls)
    assert d["usd"] is None and d["computed_usd"] is None and d["price"] == "unknown"
    assert d["failed_calls_usd"] == "0.00001"  # the known part of the failed calls is still shown


@pytest.mark.parametrize(("costs", "usd", "reported", "source", "pct"), [
    ([cc("0.001", "0.0011", "reported")], "0.0011", "0.0011", "reported", "10.00"),
    ([cc("0.001", "0.001005", "reported")], "0.001005", "0.001005", "reported", None),  # 0.5 %: not flagged
    # the largest gap of the line's calls is the one shown; computed-source calls still keep what was reported
    ([cc("0.001", "0.0012", "computed"), cc("0.002", "0.0021", "reported")], "0.0031", "0.0033", "reported", "20.00"),
    ([cc("0", "0.001", "reported")], "0.001", "0.001", "reported", "100.00"),
])
def test_line_cost_shows_reported_costs_and_the_largest_discrepancy(costs: list[CallCost], usd: str, reported: str,
                                                                    source: str, pct: str | None) -> None:
    d = line_cost([Billed("a", "m", Usage(1, 1), c) for c in costs])
    assert (d["usd"], d["reported_usd"], d["source"], d.get("discrepancy_pct")) == (usd, reported, source, pct)


def test_rows_and_total_read_the_ledger_hash() -> None:
    raw = {k.encode(): str(v).encode() for k, v in {
        f("b", "m", "requests"): 2, f("b", "m", "cost"): 3 * 10**9, f("a", "z", "requests"): 1,
        f("a", "z", "cost"): 562_500, f("a", "z", "unpriced"): 1, f("a", "m", "reported"): 7}.items()}
    rs = rows(raw)
    assert [(r.provider, r.model) for r in rs] == [("a", "m"), ("a", "z"), ("b", "m")]  # sorted
    assert rs[1].cost == D("0.0000005625") and rs[1]["unpriced"] == 1 and rs[1]["failed"] == 0
    t = total(rs)
    assert (t.provider, t.model, t["requests"], t["unpriced"], t["reported"]) == ("*", "*", 3, 1, 7)
    assert t.cost == D("0.0030005625")
    d = rs[2].as_dict()
    assert (d["provider"], d["model"], d["cost_usd"], d["reported_usd"], d["requests"], d["failed"]) == \
        ("b", "m", "0.003", None, 2, 0)
    assert Row("x", "y").as_dict()["cost_usd"] == "0"
    assert rows({}) == [] and total([]).cost == 0


async def _batch(store: Store, n: int) -> str:
    batch = new_batch_id()
    await store.create_batch(batch, BatchSpec(), source="t")
    jobs = [JobLine(i, f"c{i}", "bare", "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            for i in range(1, n + 1)]
    await store.add_lines(batch, jobs, [], [])
    await store.finish_submit(batch, {"total": n, "max_line": n})
    return batch


async def test_the_ledger_in_redis_equals_the_sum_of_the_lines(store: Store) -> None:
    batch = await _batch(store, 3)
    lines = {
        1: [Billed("a", "m", Usage(100, 20), cc("0.0000005625"))],
        2: [Billed("a", "m", Usage(10, 0), cc("0.00001"), failed=True),
            Billed("b", "m", Usage(11, 7, cached_input_tokens=3), cc("0.123456789012"))],
        3: [Billed("b", "m", Usage(5, 5), cc(None))],
    }
    for line, calls in lines.items():
        assert await store.write_result(batch, line, b"{}", line != 3, increments(calls))
    rs = rows(await store.ledger(batch))
    assert [(r.provider, r.model) for r in rs] == [("a", "m"), ("b", "m")]
    a, b = rs
    assert (a["requests"], a["failed"], a["input"], a["output"]) == (2, 1, 110, 20)
    assert a.cost == D("0.0000005625") + D("0.00001")
    assert (b["requests"], b["unpriced"], b["cached"], b["input"]) == (2, 1, 3, 16)
    assert b.cost == D("0.123456789012")
    t = total(rs)
    known = [D(line_cost(calls)["usd"]) for calls in lines.values() if line_cost(calls)["usd"] is not None]
    assert t.cost == sum(known)
    assert t["requests"] == sum(len(c) for c in lines.values()) == 4
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.failed) == ("completed", 2, 1)


async def test_a_rerun_of_a_finished_line_counts_nothing_twice(store: Store) -> None:
    batch = await _batch(store, 2)
    calls = [Billed("a", "m", Usage(100, 20), cc("0.001"))]
    assert await store.write_result(batch, 1, b'{"first":1}', True, increments(calls)) is True
    before = await store.ledger(batch)
    # the same line again (an arq rerun of its chunk), with the calls of that second run
    again = [Billed("a", "m", Usage(100, 20), cc("0.001")), Billed("b", "m", Usage(1, 1), cc("0.5"))]
    assert await store.write_result(batch, 1, b'{"second":1}', True, increments(again)) is False
    assert await store.ledger(batch) == before
    (row,) = rows(before)
    assert (row.provider, row["requests"], row.cost) == ("a", 1, D("0.001"))
    assert (await store.info(batch)).succeeded == 1


async def test_a_result_without_billed_calls_writes_no_ledger(store: Store) -> None:
    batch = await _batch(store, 1)
    assert await store.write_result(batch, 1, b"{}", False, increments([]))
    assert await store.ledger(batch) == {}
    assert await store.redis.exists(store.keys.ledger(batch)) == 0


async def test_large_ledger_amounts_stay_exact_integers_in_redis(store: Store) -> None:
    batch = await _batch(store, 2)
    big = [Billed("a", "m", Usage(10**9, 10**9), cc("4503.599627370497"))]  # 2^52 + 1 pico-dollars
    await store.write_result(batch, 1, b"{}", True, increments(big))
    await store.write_result(batch, 2, b"{}", True, increments(big))
    (row,) = rows(await store.ledger(batch))
    assert row["cost"] == 2 * (2**52 + 1)  # past 2^53: Redis adds integers, never floats
    assert row.cost == D("9007.199254740994") and row["input"] == 2 * 10**9
