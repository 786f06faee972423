"""The stop flag every mode checks between steps (MCTS between simulations, an analysis between forwards).

A `RunStop` also trips by itself at a deadline; the run then ends with `stop_reason == "time_limit"`, keeping what
it made. Any `threading.Event` works as a stop flag; a plain one reports "stopped".
"""

from __future__ import annotations

import threading
import time


class RunStop(threading.Event):
    """A stop flag that also trips by itself once `deadline` (time.monotonic) has passed.

    `reason` is what the run reports as its `stop_reason`: "stopped" (someone pressed Stop, or the client went
    away) or "time_limit"."""

    def __init__(self, max_seconds: float | None = None):
        super().__init__()
        self.start_clock(max_seconds)
        self.reason = "stopped"

    def start_clock(self, max_seconds: float | None) -> None:
        """(Re)start the deadline: a run queued for the model is timed from when it starts."""
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def extend(self, seconds: float) -> None:
        """Time the run spent waiting behind other runs' steps does not count against its limit."""
        if self.deadline is not None:
            self.deadline += seconds

    def is_set(self) -> bool:
        if not super().is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "time_limit"
            super().set()
        return super().is_set()

    def stop(self, reason: str = "stopped") -> None:
        if not super().is_set():
            self.reason = reason
        self.set()


def stop_reason(stop: threading.Event) -> str:
    """What a run reports when `stop` ended it."""
    return getattr(stop, "reason", "stopped")
