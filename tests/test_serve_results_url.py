"""An Anthropic batch's `results_url` (issue 14, item 10) is built from `[serve] public_url` or the
address the connection came in on, never from the request's Host header: the SDK fetches it with
the client's key."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.requests import Request

from batchrelay.config.settings import Settings
from batchrelay.serve.anthropic_api import _base
from batchrelay.serve.shared import Served

from .servekit import KEY, anthropic_request, poll, serving


def test_results_url_is_the_served_address_whatever_the_host_header_says(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix) as api:
        client = api.anthropic()
        created = client.messages.batches.create(requests=[anthropic_request(i) for i in range(1, 4)])  # type: ignore[misc]
        poll(lambda: client.messages.batches.retrieve(created.id), lambda b: b.processing_status == "ended")
        evil = {"x-api-key": KEY, "Host": "evil.example:1234"}
        expected = f"{api.base}/v1/messages/batches/{created.id}/results"
        assert httpx.get(f"{api.base}/v1/messages/batches/{created.id}", headers=evil).json()["results_url"] == expected
        listed = httpx.get(f"{api.base}/v1/messages/batches", headers=evil).json()["data"]
        assert [b["results_url"] for b in listed] == [expected]
        # the SDK fetches results_url
        assert [r.custom_id for r in client.messages.batches.results(created.id)] == ["m-1", "m-2", "m-3"]


def test_results_url_is_public_url_when_set(tmp_path: Path, redis_url: str, prefix: str) -> None:
    extra = 'public_url = "https://batches.example.com/relay/"'
    with serving(tmp_path, redis_url, prefix, serve_extra=extra) as api:
        client = api.anthropic()
        created = client.messages.batches.create(requests=[anthropic_request(1)])  # type: ignore[list-item]
        ended = poll(lambda: client.messages.batches.retrieve(created.id), lambda b: b.processing_status == "ended")
        assert ended.results_url == f"https://batches.example.com/relay/v1/messages/batches/{created.id}/results"


def test_the_served_address_of_an_ipv6_connection_is_bracketed() -> None:
    served = Served(Settings(), Path("files"))
    scope = {"type": "http", "server": ("::1", 8080), "headers": [(b"host", b"evil.example")]}
    assert _base(Request(scope), served) == "http://[::1]:8080"
    assert _base(Request({**scope, "server": ("10.1.2.3", 80)}), served) == "http://10.1.2.3:80"
