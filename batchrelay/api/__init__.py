"""The Python API: submit batches, watch them, read their results and cancel them from Python.

    from batchrelay import Client

    with Client() as client:  # REDIS_URL, else [redis] url, else the embedded Redis the commands share
        batch = client.submit([{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}])
        client.wait(batch)
        for record in client.results(batch):
            print(record["batchrelay"]["line"], record.get("error"))

`AsyncClient` is the same API with `await` (and `async for` over `results`); `Client` runs an
`AsyncClient` on a private event loop of its own, so it is for plain (synchronous) code: inside a
running event loop use `AsyncClient`. Neither is safe to share between threads.

A source is a JSONL file's path, a binary file object, or any iterable of dicts (each a batch line in
one of the three input formats, see the README). An iterable is streamed: items are serialised one
at a time as they are read, never collected into a list, so a generator of millions of lines is fine.
Workers (`batchrelay worker`) sharing the Redis do the work; this API only talks to Redis.
"""

from batchrelay.api.async_client import AsyncClient, Source
from batchrelay.api.client import Client
from batchrelay.spec import BatchSpec

__all__ = ["AsyncClient", "BatchSpec", "Client", "Source"]
