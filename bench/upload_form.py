"""Upload form: time and peak memory of `serve`'s multipart reader (read_form) as the body grows.

    python bench/upload_form.py [--mib 4,16,64]

Two bodies per size, fed in 64 KiB chunks to read_form as Starlette hands them over: ordinary
JSONL lines, and lines full of near-boundaries (`\\r\\n--XyZ-`, `\\r\\n--Xy`), the parser's slow path.
Linear means: ms per MiB stay flat from size to size. Flat memory: the tracemalloc peak of the plain
body does not grow (tracemalloc is left off for the timings; it slows the near-boundary path 20-fold).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.requests import Request

from batchrelay.serve.upload_form import read_form

CHUNK = 64 * 1024
HEAD = (b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n')
TAIL = b"\r\n--XyZ--\r\n"
LINES = {"plain": b'{"custom_id": "r1", "body": {"model": "m", "messages": []}}\n',
         "near-boundaries": b'{"x": "\r\n--XyZ-\r\n--Xy"}\n'}


def chunks(line: bytes, mib: int) -> Iterator[bytes]:
    piece = line * (CHUNK // len(line))
    yield HEAD
    for _ in range(mib * 2**20 // len(piece)):
        yield piece
    yield TAIL


async def run(line: bytes, mib: int, dest: Path, trace: bool) -> tuple[float, float, int]:
    it = chunks(line, mib)

    async def receive() -> dict[str, Any]:
        chunk = next(it, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    scope = {"type": "http", "method": "POST", "path": "/v1/files", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=XyZ")]}
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    _, _, size = await read_form(Request(scope, receive), dest, 2**40)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    return seconds, peak / 2**20, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", default="4,16,64", help="body sizes in MiB, comma-separated")
    sizes = [int(x) for x in ap.parse_args().mib.split(",")]
    with tempfile.TemporaryDirectory(prefix="brbench-") as d:
        dest = Path(d) / "f"
        for kind, line in LINES.items():
            for mib in sizes:
                seconds, _, size = asyncio.run(run(line, mib, dest, trace=False))
                peak = asyncio.run(run(line, mib, dest, trace=True))[1] if kind == "plain" else None
                print(f"{kind:16} {size / 2**20:6.1f} MiB {seconds:7.3f} s {seconds / size * 2**30:8.2f} ms/MiB"
                      + (f"  peak {peak:.2f} MiB" if peak is not None else ""))

if __name__ == "__main__":
    main()
