"""The multi-host test's eyes inside its client namespace (the test itself, in the root namespace,
cannot reach the hosts' addresses): every 0.2 s one JSON line on stdout with the monotonic time
(one clock for every namespace of a machine), the batch's status and pending lines (from Redis) and
each worker's lines ended and chunk jobs running (from its Prometheus metrics; null while unreachable).

    python -m tests.multihost_probe REDIS_URL PREFIX BATCH NAME=METRICS_URL...
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from batchrelay.store.keys import Keys


def worker_view(client: httpx.Client, url: str) -> dict[str, float] | None:
    try:
        text = client.get(url).text
    except httpx.HTTPError:
        return None
    lines = running = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "batchrelay_worker_lines_total":
                lines += s.value
            elif s.name == "batchrelay_worker_chunk_jobs_running":
                running += s.value
    return {"lines": lines, "running": running}


def main(argv: list[str]) -> None:
    url, prefix, batch, *workers = argv
    targets = dict(w.split("=", 1) for w in workers)
    keys = Keys(prefix)
    db = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    with httpx.Client(timeout=0.5) as client:
        while True:
            row: dict[str, Any] = {"t": time.monotonic()}
            try:
                status = db.hget(keys.meta(batch), "status")
                row["status"] = (status or b"?").decode()  # type: ignore[union-attr]
                row["pending"] = int(db.scard(keys.pending(batch)))  # type: ignore[arg-type]
            except (redis.RedisError, OSError):
                row["status"], row["pending"] = "?", None
            row["workers"] = {name: worker_view(client, u) for name, u in targets.items()}
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
            sys.stdout.flush()
            time.sleep(0.2)


if __name__ == "__main__":
    main(sys.argv[1:])
