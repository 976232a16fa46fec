"""The dashboard's HTTP side without a browser: a real `batchrelay serve`, its session cookie, CSRF,
same-origin, the login throttle, security headers; and the pure shaping of what the pages show."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrelay.money.ledger import SEP
from batchrelay.serve.dashboard import is_dashboard
from batchrelay.serve.dashboard.auth import Session, Sessions, csrf_ok, same_origin
from batchrelay.serve.dashboard.views import (
    Pace,
    error_classes,
    provider_totals,
    reason_of,
    series,
    spend_today,
)

from .conftest import drop_prefix, openai_line
from .servekit import KEY, Api, jsonl, serving

PICO = 10**12


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """One serve (no worker: batches stay in progress) for the module, under a prefix of its own."""
    prefix = f"brtest:{uuid.uuid4().hex[:10]}:"
    try:
        with serving(tmp_path_factory.mktemp("dash"), redis_url, prefix, worker=False) as api:
            yield api
    finally:
        drop_prefix(redis_url, prefix)


OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def login(api: Api, key: str = KEY) -> tuple[httpx.Client, httpx.Response]:
    """A client of its own (closed after the test) and its login's answer."""
    client = httpx.Client(base_url=api.base)
    OPEN.append(client)
    return client, client.post("/dashboard/api/login", json={"key": key}, headers={"Origin": api.base})


def submit(api: Api, n: int = 3) -> str:
    client = api.openai()
    f = client.files.create(file=("in.jsonl", jsonl([openai_line(i) for i in range(1, n + 1)])), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def test_the_page_is_served_without_a_key_with_its_security_headers(dash: Api) -> None:
    r = httpx.get(dash.base + "/")
    assert r.status_code == 200 and "app.js" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert (r.headers["x-frame-options"], r.headers["referrer-policy"]) == ("DENY", "no-referrer")
    js = httpx.get(dash.base + "/dashboard/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text  # every value is set as text
    assert httpx.get(dash.base + "/dashboard/static/..%2Fauth.py").status_code == 404
    icon = httpx.get(dash.base + "/dashboard/static/favicon.svg")  # the page names it: no 401 for /favicon.ico
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon"' in r.text


@pytest.mark.parametrize("path", ["/dashboard/api/batches", "/dashboard/api/providers", "/dashboard/api/session"])
def test_json_endpoints_need_the_session_cookie_not_the_api_key(dash: Api, path: str) -> None:
    assert httpx.get(dash.base + path).status_code == 401
    r = httpx.get(dash.base + path, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 401 and r.headers["x-frame-options"] == "DENY"
    client, _ = login(dash)
    assert client.get(path).status_code == 200


def test_the_api_still_needs_its_key(dash: Api) -> None:
    client, _ = login(dash)
    assert client.get("/v1/batches").status_code == 401  # the cookie opens the dashboard only
    assert dash.request("GET", "/v1/batches").status_code == 200


def test_login_sets_an_httponly_strict_cookie_holding_a_session_token_not_the_key(dash: Api) -> None:
    client, r = login(dash)
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    token = rest.split(";")[0]
    assert name == "batchrelay_session" and KEY not in cookie and len(token) >= 40
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain http here; https requests get Secure (test_secure_cookie_over_https)
    assert r.json()["csrf"] and r.json()["csrf"] != token


def test_a_wrong_key_is_refused_with_a_clear_message(dash: Api) -> None:
    client, r = login(dash, "not-the-key")
    assert r.status_code == 401 and "not accepted" in r.json()["error"]
    assert "set-cookie" not in r.headers and client.get("/dashboard/api/batches").status_code == 401


def test_actions_need_the_csrf_token_and_the_same_origin(dash: Api) -> None:
    batch = submit(dash)
    client, r = login(dash)
    csrf = r.json()["csrf"]
    path = f"/dashboard/api/batches/{batch}/cancel"
    assert client.post(path, headers={"Origin": dash.base}).status_code == 403
    assert client.post(path, headers={"Origin": dash.base, "X-CSRF-Token": "x" * len(csrf)}).status_code == 403
    assert client.post(path, headers={"Origin": "http://evil.example", "X-CSRF-Token": csrf}).status_code == 403
    assert client.post(path, headers={"X-CSRF-Token": csrf}).status_code == 403  # no Origin, no Sec-Fetch-Site
    assert client.get(f"/dashboard/api/batches/{batch}").json()["batch"]["status"] == "in_progress"
    r = client.post(path, headers={"Origin": dash.base, "X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["batch"]["status"] in ("cancelling", "cancelled")


def test_budget_and_retry_actions(dash: Api) -> None:
    batch = submit(dash)
    client, r = login(dash)
    headers = {"Origin": dash.base, "X-CSRF-Token": r.json()["csrf"]}
    base = f"/dashboard/api/batches/{batch}"
    done = client.post(base + "/budget", headers=headers, json={"max_usd": "1.25"})
    assert done.status_code == 200 and done.json()["max_usd"] == "1.25"
    assert client.get(base).json()["budget"]["max_usd"] == "1.25"
    for bad in ({"max_usd": "-1"}, {"max_usd": "lots"}, {}):
        assert client.post(base + "/budget", headers=headers, json=bad).status_code == 400
    assert client.post(base + "/budget", headers=headers, json={"max_usd": "1" * 5000}).status_code == 413
    refused = client.post(base + "/retry", headers=headers)  # still running: nothing to retry yet
    assert refused.status_code == 409 and "in_progress" in refused.json()["error"]


def test_a_login_from_another_origin_is_refused(dash: Api) -> None:
    r = httpx.post(dash.base + "/dashboard/api/login", json={"key": KEY}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_logout_ends_the_session(dash: Api) -> None:
    client, r = login(dash)
    csrf = r.json()["csrf"]
    assert client.post("/dashboard/api/logout", headers={"Origin": dash.base, "X-CSRF-Token": csrf}).status_code == 200
    client.cookies.clear()
    token = r.cookies["batchrelay_session"]
    assert httpx.get(dash.base + "/dashboard/api/batches", cookies={"batchrelay_session": token}).status_code == 401


def test_the_batch_page_data_and_downloads(dash: Api) -> None:
    batch = submit(dash, 4)
    client, _ = login(dash)
    d = client.get(f"/dashboard/api/batches/{batch}").json()
    assert d["batch"]["counts"]["total"] == 4 and d["budget"]["max_usd"] is None
    r = client.get(f"/dashboard/api/batches/{batch}/results.jsonl")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"] and r.text == ""
    assert client.get("/dashboard/api/batches/batch_00000000000000000000000f").status_code == 404
    assert client.get("/dashboard/api/batches/nope").status_code == 404


def test_login_failures_count_toward_serves_throttle(tmp_path: Path, redis_url: str, prefix: str) -> None:
    # serving's own readiness polls (no key) take from the same bucket: at most 5 wrong logins get a 401
    with serving(tmp_path, redis_url, prefix, serve_extra="auth_failures_per_min = 5", worker=False) as api:
        codes = [login(api, "wrong")[1].status_code for _ in range(6)]
        assert 401 in codes and codes[-1] == 429 and codes.index(429) <= 5
        _, r = login(api)  # the right key too, while throttled
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "try again" in r.json()["error"]
        assert api.request("GET", "/v1/batches").status_code == 429  # one throttle for the API and the dashboard


def test_secure_cookie_over_https(dash: Api) -> None:
    from starlette.requests import Request
    from starlette.responses import Response

    from batchrelay.serve.dashboard.auth import set_cookie

    scope = {"type": "http", "scheme": "https", "path": "/", "headers": [], "server": ("h", 443), "query_string": b""}
    response = Response()
    set_cookie(response, Request(scope), Session("t", "c", 0.0), 60)
    assert "secure" in response.headers["set-cookie"].lower()


# --- pure parts ----------------------------------------------------------------------------------

def _request(headers: dict[str, str], scheme: str = "http") -> Any:
    from starlette.requests import Request

    return Request({"type": "http", "scheme": scheme, "path": "/", "query_string": b"", "server": ("h", 80),
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})


@pytest.mark.parametrize(("headers", "public_url", "ok"), [
    ({"host": "h:8080", "origin": "http://h:8080"}, None, True),
    ({"host": "h:8080", "origin": "http://h:8081"}, None, False),
    ({"host": "h:8080", "origin": "https://h:8080"}, None, False),
    ({"host": "127.0.0.1:8080", "origin": "https://batches.example.com"}, "https://batches.example.com/x", True),
    ({"host": "h", "origin": "null"}, None, False),
    ({"host": "h", "sec-fetch-site": "same-origin"}, None, True),
    ({"host": "h", "sec-fetch-site": "cross-site"}, None, False),
    ({"host": "h"}, None, False),
])
def test_same_origin(headers: dict[str, str], public_url: str | None, ok: bool) -> None:
    assert same_origin(_request(headers), public_url) is ok


@pytest.mark.parametrize(("path", "ours"), [("/", True), ("/dashboard/api/batches", True), ("/v1/batches", False),
                                            ("/metrics", False), ("/dashboardx", False)])
def test_which_paths_are_the_dashboards(path: str, ours: bool) -> None:
    assert is_dashboard(path) is ours


def test_sessions_lapse_and_are_bounded() -> None:
    now = [100.0]
    s = Sessions(ttl_s=10, most=2, clock=lambda: now[0])
    a, b = s.new(), s.new()
    assert s.get(a.token) == a and s.get(None) is None and s.get("forged") is None
    s.new()
    assert s.get(a.token) is None and s.get(b.token) == b  # the oldest went first
    now[0] = 111
    assert s.get(b.token) is None
    assert csrf_ok(b, b.csrf) and not csrf_ok(b, None) and not csrf_ok(b, b.csrf + "x")


def test_series_fills_gaps_and_follows_a_running_batch_to_now() -> None:
    buckets = {10: {"succeeded": 3, "cost": 2 * PICO}, 12: {"failed": 1, "succeeded": 1}}
    assert series(buckets, now=13 * 60 + 5, running=True) == [
        {"t": 600, "lines": 3, "cost_usd": 2.0}, {"t": 660, "lines": 0, "cost_usd": 0.0},
        {"t": 720, "lines": 2, "cost_usd": 0.0}, {"t": 780, "lines": 0, "cost_usd": 0.0}]
    assert len(series(buckets, now=10**6, running=False)) == 3
    assert len(series({0: {"succeeded": 1}}, now=10**6, running=True)) == 120  # the last two hours only
    assert series({}, now=0, running=True) == []


def test_error_classes_group_the_sample_with_reasons_in_either_shape() -> None:
    openai_rec = {"error": {"code": "provider_error", "message": "502 from sim"}, "batchrelay": {"error": "provider_error"}}
    anthropic_rec = {"result": {"type": "errored", "error": {"type": "error", "error": {"type": "x", "message": "<b>bad</b>"}}},
                     "batchrelay": {"error": "invalid_input"}}
    invalid = {"error": {"code": "invalid_input", "message": "line 11: body.model: Field required"},
               "batchrelay": {"error": "invalid_input"}}
    sample = [(i, openai_rec) for i in range(1, 8)] + [(9, anthropic_rec), (11, invalid)]
    got = error_classes(sample)
    assert [(c["class"], c["count"]) for c in got] == [("provider_error", 7), ("invalid_input", 2)]
    assert got[0]["samples"][0] == {"line": 1, "reason": "502 from sim"} and len(got[0]["samples"]) == 5
    assert got[1]["samples"] == [{"line": 9, "reason": "<b>bad</b>"},
                                 {"line": 11, "reason": "body.model: Field required"}]  # its line said once
    assert reason_of({}) == ""


def test_provider_totals_and_spend_today() -> None:
    counts = {f"calls{SEP}a{SEP}m{SEP}ok": 5, f"calls{SEP}a{SEP}m2{SEP}billing": 2, f"lines{SEP}succeeded": 5,
              f"spend{SEP}1{SEP}a": 3 * PICO, f"spend{SEP}0{SEP}a": 9 * PICO}
    ledger = {f"a{SEP}m{SEP}input".encode(): b"10", f"a{SEP}m{SEP}output".encode(): b"4",
              f"a{SEP}m{SEP}cost".encode(): b"7"}
    assert provider_totals(counts, ledger) == {"a": {"calls": 7, "ok": 5, "billing": 2, "tokens": 14}}
    assert spend_today(counts, now=86400 * 1.5) == {"a": "3"}


def test_pace_is_the_rate_over_the_last_minute() -> None:
    now = [0.0]
    pace = Pace(clock=lambda: now[0])
    assert pace.observe({"a": {"calls": 0, "tokens": 0}}) == {}
    now[0] = 30
    assert pace.observe({"a": {"calls": 10, "tokens": 100}}) == {"a": {"calls_per_min": 20.0, "tokens_per_min": 200.0}}
    now[0] = 100
    assert pace.observe({"a": {"calls": 10, "tokens": 100}})["a"]["calls_per_min"] == 0.0  # idle for the last minute
