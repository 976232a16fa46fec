"""The dashboard in a real browser: Playwright driving Debian's chromium against a real `batchrelay
serve` and worker (tests/servekit.py) with the provider simulator behind them.

One serve, worker and browser for the module; each test has a fresh browser context (no cookie) and
sets the simulator up for itself. The provider answering 402 benches it for the rest of the module,
so that test comes last.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import drop_prefix, openai_line
from .servekit import KEY, Api, jsonl, poll, serving

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                             "(apt-get install -y chromium; .ci/run installs it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (a dev dependency)")
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    prefix = f"brtest:{uuid.uuid4().hex[:10]}:"
    try:
        with serving(tmp_path_factory.mktemp("dash"), redis_url, prefix) as api:
            yield api
    finally:
        drop_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, dash: Api) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors  # no script error on any page


def log_in(page: Any, dash: Api, key: str = KEY) -> None:
    page.goto(dash.base + "/")
    page.fill("#key", key)
    page.click("#login-button")


def submit(dash: Api, n: int, name: str = "in.jsonl") -> str:
    client = dash.openai()
    f = client.files.create(file=(name, jsonl([openai_line(i) for i in range(1, n + 1)])), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def status(dash: Api, batch: str) -> str:
    return str(dash.request("GET", f"/v1/batches/{batch}").json()["status"])


def test_log_in_refuses_a_wrong_key_and_accepts_a_client_key(page: Any, dash: Api) -> None:
    log_in(page, dash, "not-a-key")
    message = page.locator("#login-message")
    sync_api.expect(message).to_contain_text("not accepted")
    assert page.locator("#nav").is_hidden()
    page.fill("#key", KEY)
    page.click("#login-button")
    sync_api.expect(page.locator("h1")).to_have_text("Batches")
    assert page.locator("#nav").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "batchrelay_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != KEY
    assert KEY not in page.url
    page.click("#logout")
    sync_api.expect(page.locator("#login")).to_be_visible()


def test_a_running_batch_shows_its_progress_rising_without_a_reload(page: Any, dash: Api) -> None:
    dash.sim.configure(latency_ms=400, fail_status=0)
    batch = submit(dash, 16)  # 2 calls at a time (servekit's worker): about 3-4 s
    log_in(page, dash)
    page.wait_for_selector("#batch-rows")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.click(f"tr[data-batch='{batch}'] a")
    done = page.locator("#batch-done")
    sync_api.expect(done).to_be_visible()
    first = int(done.text_content() or 0)
    assert first < 16
    seen = {first}
    # polled from here: the page's CSP (no eval) refuses Playwright's wait_for_function
    seen.add(poll(lambda: int(done.text_content() or 0), lambda n: n > first, timeout=20))
    sync_api.expect(done).to_have_text("16", timeout=30_000)
    seen.add(16)
    assert len(seen) >= 3  # seen at the start, on the way, and at the end
    sync_api.expect(page.locator("#n-pending")).to_have_text("0")
    sync_api.expect(page.locator(".titlebar .badge")).to_have_text("completed")
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("svg.chart").count() == 2


def test_cancel_from_the_page(page: Any, dash: Api) -> None:
    dash.sim.configure(latency_ms=1500, fail_status=0)
    batch = submit(dash, 30)
    log_in(page, dash)
    page.wait_for_selector("#batch-rows")
    page.goto(f"{dash.base}/#/batch/{batch}")
    sync_api.expect(page.locator(".titlebar .badge")).to_have_text("in_progress")
    page.once("dialog", lambda d: d.accept())
    page.click("#cancel")
    sync_api.expect(page.locator("#action-message")).to_contain_text("cancel requested")
    assert status(dash, batch) in ("cancelling", "cancelled")
    # lines not started are cancelled at once (those of the chunks the worker holds get a grace, call_timeout + 5 s)
    sync_api.expect(page.locator(".titlebar .badge")).to_have_text(re.compile("^cancell(ing|ed)$"))
    poll(lambda: int(page.locator("#n-cancelled").text_content() or 0), lambda n: n >= 10, timeout=10)
    dash.sim.configure(latency_ms=0)


def test_a_batch_name_with_markup_is_shown_as_text(page: Any, dash: Api) -> None:
    dash.sim.configure(latency_ms=0, fail_status=0)
    name = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>.jsonl"
    batch = submit(dash, 1, name=name)
    log_in(page, dash)
    link = page.locator(f"tr[data-batch='{batch}'] td.name a")
    sync_api.expect(link).to_have_text(name)
    link.click()
    sync_api.expect(page.locator("#batch-name")).to_have_text(name)
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_the_batches_filter_by_status(page: Any, dash: Api) -> None:
    dash.sim.configure(latency_ms=0, fail_status=0)
    done = submit(dash, 1)
    poll(lambda: status(dash, done), lambda s: s == "completed", timeout=30)
    log_in(page, dash)
    page.wait_for_selector(f"tr[data-batch='{done}']")
    page.select_option("#status-filter", "completed")
    sync_api.expect(page.locator("#batch-rows tr").first).to_be_visible()
    poll(lambda: page.locator("#batch-rows .badge").all_text_contents(),
         lambda badges: bool(badges) and set(badges) == {"completed"}, timeout=10)
    assert "status=completed" in page.url


def test_the_pages_fit_a_phones_width(page: Any, dash: Api) -> None:
    dash.sim.configure(latency_ms=0, fail_status=0)
    batch = submit(dash, 2, name="a-rather-long-batch-name-that-must-wrap-on-a-phone-screen.jsonl")
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, dash)
    for hash_, ready in (("#/", "#batch-rows tr"), (f"#/batch/{batch}", "svg.chart"), ("#/providers", "[data-provider]")):
        page.goto(f"{dash.base}/{hash_}")
        page.wait_for_selector(ready)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, hash_  # no sideways scrolling


def test_a_provider_answering_402_shows_as_benched(page: Any, dash: Api) -> None:
    dash.sim.configure(latency_ms=0, fail_status=402)
    submit(dash, 2)
    log_in(page, dash)
    page.wait_for_selector("#batch-rows")
    page.click("#nav-providers")
    card = page.locator("[data-provider='sim']")
    sync_api.expect(card).to_have_attribute("data-state", "benched", timeout=30_000)
    sync_api.expect(card.locator(".badge")).to_have_text("benched")
    sync_api.expect(card).to_contain_text("until")
    sync_api.expect(card).to_contain_text("402")  # its last outcome
