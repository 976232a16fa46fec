"""A batch's status: the one list of names, used by the Python code and (filled in when a script
is loaded, see scripts.py) by the Lua scripts.

    validating -> [scheduled ->] in_progress -> completed | failed
                     |  (budget_exhausted <-> in_progress: the spending limit, store/budget.py)
                     +-> cancelling -> cancelled        (lifecycle.cancel)
                     +-> expiring   -> expired          (past its completion window)
                     (paused <-> in_progress: a `run` stopped by a signal; `run` again or `resume`)

A `paused` batch's completion window keeps running (it was asked for from submit on, and a user who
walks away from a paused batch gets it expired like any other); `cancel` stops it; retention forgets
it once it has been paused longer than the retention (lifecycle.tick).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    VALIDATING = "validating"  # its lines are being written (submit)
    SCHEDULED = "scheduled"  # deferred: waits for its start_at, no chunk enqueued
    IN_PROGRESS = "in_progress"
    BUDGET_EXHAUSTED = "budget_exhausted"  # its lines wait for a higher spending limit
    CANCELLING = "cancelling"
    EXPIRING = "expiring"
    COMPLETED = "completed"
    FAILED = "failed"  # its submit never finished
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    PAUSED = "paused"  # a `run` stopped by a signal: nothing works it until it is resumed (store/resume.py)


FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
# claims take nothing from these: not started yet, stopped, being stopped, or over budget
STOPPED = frozenset({Status.SCHEDULED, Status.FAILED, Status.CANCELLED, Status.CANCELLING, Status.EXPIRED,
                     Status.EXPIRING, Status.BUDGET_EXHAUSTED, Status.PAUSED})
# a stop (cancel, expiry) is two-phase: the interim status while calls in flight may finish, then the final one
INTERIM = {Status.CANCELLED: Status.CANCELLING, Status.EXPIRED: Status.EXPIRING}
FINAL = {interim: final for final, interim in INTERIM.items()}
# a batch past its completion window is expired from these (a scheduled batch's window starts at its start)
EXPIRABLE = frozenset({Status.VALIDATING, Status.IN_PROGRESS, Status.BUDGET_EXHAUSTED, Status.PAUSED})
