"""The sweep's housekeeping log line says what it did in words (it read `stopped_lines 31`)."""

from __future__ import annotations

import pytest

from batchrelay.worker.housekeeping import housekeeping_text


@pytest.mark.parametrize(("done", "said"), [
    ({"started": 0, "expired": 0, "stopped_lines": 31, "forgotten": 0, "abandoned_submits": 0},
     "31 lines of cancelled or expired batches closed with their final record"),
    ({"started": 1, "expired": 1, "stopped_lines": 1, "forgotten": 2, "abandoned_submits": 1},
     "1 deferred batch started, 1 batch past its deadline expired, 1 line of cancelled or expired batches closed "
     "with its final record, 2 finished or paused batches forgotten (past the retention), 1 submit that never "
     "finished marked failed"),
    ({"started": 2, "expired": 3, "new_count": 4}, "2 deferred batches started, 3 batches past their deadline "
                                                   "expired, new count 4"),
    ({"started": 0, "expired": 0}, ""),
])
def test_the_counts_of_a_tick_read_as_words(done: dict[str, int], said: str) -> None:
    assert housekeeping_text(done) == said
