"""The progress bar `run`, `status --watch` and `results --wait` draw on a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from batchrelay.cli.progress import Bar
from batchrelay.cli.text import counted


def _counts(total: int, succeeded: int = 0, failed: int = 0, invalid: int = 0) -> dict[str, int]:
    done = succeeded + failed + invalid
    return {"total": total, "done": done, "succeeded": succeeded, "failed": failed, "invalid": invalid,
            "cancelled": 0, "expired": 0, "pending": total - done}


def _drawn(bar: Bar, console: Console) -> str:
    assert bar.progress is not None
    console.print(bar.progress.get_renderable())
    out = console.file.getvalue()  # type: ignore[attr-defined]
    bar.close()
    return str(out)


def _terminal(width: int = 80) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def test_the_bar_counts_failed_and_invalid_lines_apart_as_the_summary_does() -> None:
    console = _terminal()
    bar = Bar("batch_0123456789abcdef01234567", show=True, console=console)
    bar.update(_counts(3, invalid=3))
    drawn = _drawn(bar, console)
    assert "0 failed" in drawn and "3 invalid" in drawn and "3 failed" not in drawn


def test_the_first_frame_shows_the_real_total_and_the_batch_once() -> None:
    console = _terminal()
    bar = Bar("batch_0123456789abcdef01234567", show=True, console=console)
    bar.update(_counts(200))
    drawn = _drawn(bar, console)
    assert "0/200" in drawn and "0/1" not in drawn
    assert drawn.count("batch_0123456789abcdef01234567") == 1


@pytest.mark.parametrize("total", [5, 100_000])
def test_the_elapsed_and_remaining_times_are_whole_at_80_columns(total: int) -> None:
    console = _terminal(80)
    bar = Bar("batch_0123456789abcdef01234567", show=True, console=console)
    bar.update(_counts(total, succeeded=total // 2, failed=12, invalid=3))
    line = _drawn(bar, console).splitlines()[-1]
    assert "…" not in line and line.rstrip().endswith("0:00:00 -:--:--"), line
    assert len(line.rstrip()) <= 80


def test_no_bar_off_a_terminal() -> None:
    console = Console(file=io.StringIO(), width=80)
    bar = Bar("batch_x", show=True, console=console)
    bar.update(_counts(5))
    bar.close()
    assert bar.progress is None and console.file.getvalue() == ""  # type: ignore[attr-defined]


@pytest.mark.parametrize(("n", "text"), [(0, "0 lines"), (1, "1 line"), (2, "2 lines")])
def test_counts_take_the_noun_in_the_right_number(n: int, text: str) -> None:
    assert counted(n, "line") == text


def test_the_elapsed_time_keeps_running_while_lanes_hold_the_lines_left() -> None:
    now = [1000.0]
    console = _terminal()
    bar = Bar("batch_0123456789abcdef01234567", show=True, console=console, clock=lambda: now[0])
    counts = _counts(50, succeeded=17)
    bar.update(counts, lanes=33)
    now[0] += 4
    bar.update(counts, lanes=33)
    now[0] += 3600 + 61  # nothing changes while the lane's upstream batch runs: the clock still does
    line = [x for x in _drawn(bar, console).splitlines() if "17/50" in x][-1]  # the last frame drawn
    assert "33 in lanes" in line and line.rstrip().endswith("1:01:05 -:--:--"), line
