"""What a sweep's housekeeping did (store/lifecycle.py `tick`: its counts by key), in words for the
log: `housekeeping: 31 lines of cancelled or expired batches closed with their final record`."""

from __future__ import annotations

# what lifecycle.tick's counts mean, in words (its keys); `{n}` is the count, `{s}` its plural ending
_HOUSEKEEPING = {
    "started": "{n} deferred batch{es} started",
    "expired": "{n} batch{es} past {their} deadline expired",
    "stopped_lines": "{n} line{s} of cancelled or expired batches closed with {their} final record",
    "forgotten": "{n} finished or paused batch{es} forgotten (past the retention)",
    "abandoned_submits": "{n} submit{s} that never finished marked failed",
}


def housekeeping_text(done: dict[str, int]) -> str:
    """`31 lines of cancelled or expired batches closed with their final record, 1 batch ...` (the
    non-zero counts of a tick, in words; a key without words reads `key n`). Pure."""
    def one(key: str, n: int) -> str:
        form = _HOUSEKEEPING.get(key, key.replace("_", " ") + " {n}")
        many = n != 1
        return form.format(n=n, s="s" if many else "", es="es" if many else "", their="their" if many else "its")
    return ", ".join(one(k, v) for k, v in done.items() if v)
