"""Wrong keys are throttled per client address (issue 14, item 11c): past `[serve]
auth_failures_per_min` wrong or missing keys, an address gets 429 with Retry-After in the API's
error shape, without its key being looked at (a right key too); other addresses are unaffected."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from batchrelay.serve.throttle import FailureThrottle

from .servekit import KEY, serving


def test_wrong_keys_past_the_limit_get_429_with_retry_after_and_other_addresses_are_unaffected(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, serve_extra="auth_failures_per_min = 10", worker=False) as api:
        statuses: list[int] = []
        with httpx.Client(base_url=api.base) as guesser:  # 127.0.0.1, as servekit's start-up probe (1 failure)
            for i in range(150):
                r = guesser.get("/v1/batches", headers={"Authorization": f"Bearer guess-{i}"})
                statuses.append(r.status_code)
            for i in range(150):
                r = guesser.get("/v1/messages/batches", headers={"x-api-key": f"guess-{i}"})
                statuses.append(r.status_code)
            assert set(statuses) == {401, 429} and 5 <= statuses.count(401) <= 12
            assert statuses[:8] == [401] * 8 and statuses[-100:] == [429] * 100

            r = guesser.get("/v1/batches", headers={"Authorization": "Bearer guess"})
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "requests"
            r = guesser.get("/v1/messages/batches", headers={"x-api-key": "guess"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json() == {"type": "error", "error": {"type": "rate_limit_error",
                                                           "message": r.json()["error"]["message"]}}
            # Throttled means the key is not looked at: a right key from this address waits too.
            assert guesser.get("/v1/batches", headers={"Authorization": f"Bearer {KEY}"}).status_code == 429
        with pytest.raises(openai.RateLimitError):
            api.openai("wrong").batches.list()
        with pytest.raises(anthropic.RateLimitError):
            api.anthropic().messages.batches.list()

        port = api.base.rsplit(":", 1)[1]
        elsewhere = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                 transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        keyless = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                               transport=httpx.HTTPTransport(local_address="127.0.0.3"))
        with elsewhere, keyless:
            assert elsewhere.get("/v1/batches", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert elsewhere.get("/v1/batches", headers={"Authorization": "Bearer wrong"}).status_code == 401
            # no key at all counts as a wrong one
            assert [keyless.get("/v1/batches").status_code for _ in range(12)] == [401] * 10 + [429] * 2


def test_the_throttle_forgets_refilled_addresses_and_keeps_at_most_its_cap() -> None:
    now = [0.0]
    throttle = FailureThrottle(6, most=100, clock=lambda: now[0])
    for _ in range(6):
        assert throttle.wait_s("10.0.0.1") is None
        throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == pytest.approx(10.0)  # 6 a minute: one back every 10 s
    now[0] += 10
    assert throttle.wait_s("10.0.0.1") is None
    now[0] += 60
    assert throttle.wait_s("10.0.0.1") is None and len(throttle) == 0  # full again: forgotten

    for i in range(1000):
        throttle.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(throttle) == 100  # the oldest dropped
    assert throttle.wait_s("10.1.3.231") is None  # i = 999: 5 left
