"""Decoding at full speed while the page draws at its own pace.

A run's engine events are consumed in a worker thread, which never waits for a frame: after each step it puts a
small `StepDelta` (copies of the steps that step could change, and the trace-level fields) on a queue. The
page's generator drains the queue at a bounded frame rate, applies the deltas to its own replica of the trace
and draws from that. So drawing never slows decoding, and a frame always shows a consistent trace.
"""

from __future__ import annotations

import copy
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

from tempo_core import Step, StepEvent, Trace
from tempo_core.forward import ForwardRequest
from tempo_core.serving.scheduler import Batcher

_CONSTANT = ("model", "mode", "settings", "prompt", "prompt_text", "prompt_token_ids")  # set once, never mutated
_CHANGING = ("text", "clean_text", "stop_reason", "timings", "stats", "faithfulness", "commitment")


@dataclass
class StepDelta:
    """What one engine event changed: the newest steps (a step can change earlier ones within the pruning
    window), the total step count, and the trace-level fields. `done` marks the finished trace; `progress` says
    what a phase after the steps (faithfulness) is doing."""
    first: int  # index of steps[0] in the run
    steps: list[Step]
    fields: dict
    done: bool = False
    progress: str | None = None
    error: BaseException | None = None


@dataclass
class Frame:
    """What the page draws: the replica of the run's trace, whether it has finished, and the phase in progress."""
    trace: Trace
    done: bool
    progress: str | None = None


def delta_of(trace: Trace, window: int, done: bool, sent: int | None = None, progress: str | None = None
             ) -> StepDelta:
    """The delta that brings a replica holding the first `sent` steps (None: all but the last) up to `trace`.
    Steps before the pruning window cannot change any more, so only those the replica lacks are copied; a run
    that starts with many steps at once (continue from here feeds its prefix in one event) sends them all, and
    the last delta (`done`) carries the whole trace, so the replica ends equal to the engine's trace."""
    first = 0 if done else max(0, len(trace.steps) - window - 1)
    if sent is not None:
        first = min(first, sent)
    fields = {k: getattr(trace, k) for k in _CONSTANT} | {k: copy.copy(getattr(trace, k)) for k in _CHANGING}
    return StepDelta(first, copy.deepcopy(trace.steps[first:]), fields, done, progress)


def apply_delta(replica: Trace, delta: StepDelta) -> None:
    """Bring `replica` up to date with `delta` (in place)."""
    del replica.steps[delta.first:]
    replica.steps.extend(delta.steps)
    for k, v in delta.fields.items():
        setattr(replica, k, v)


def step_by_step(batcher: Batcher, events: Callable[[], Iterator[StepEvent | ForwardRequest]],
                 on_event: Callable[[StepEvent | None, BaseException | None], None],
                 waited: Callable[[float], None] | None = None) -> None:
    """Serve `events()` on the model's thread with every other run (`batcher`): each tick advances every run by a
    step, the TEMPO runs' rows in one forward (tempo_core/serving/), so a class that presses Generate together
    all see their first steps within seconds, and a long run or a long prompt never holds the model.

    `on_event(event, error)` is called on the model's thread after each step (once with (None, error) if the
    run fails); `waited(seconds)` with the time the run spent behind other runs' work (its clock stands still)."""
    batcher.add(events, on_event, waited)


@dataclass(frozen=True)
class Pace:
    """How far apart frames are: `min_s`, or more for what the frame generator cannot measure itself, up to
    `max_s`: `per_step_s` per step shown (the browser's time to take in a frame grows with the steps it shows)
    and `per_run_s` per run being served (each run's frames cost the server's event loop and its clients, while
    the runs share the model; a class of 30 drawing 4 frames a second each would take a core from decoding)."""
    min_s: float = 0.1
    per_step_s: float = 0.0
    per_run_s: float = 0.0
    max_s: float = 2.0

    def gap(self, steps: int, runs: int) -> float:
        return max(self.min_s, min(self.max_s, self.per_step_s * steps + self.per_run_s * runs))


def live_traces(events: Callable[[], Iterator[StepEvent | ForwardRequest]], window: int, pace: Pace = Pace(),
                batcher: Batcher | None = None, waited: Callable[[float], None] | None = None) -> Iterator[Frame]:
    """Run `events()` (the engine's events) step by step on `batcher` (the model's own thread, shared by every
    run: see `Shared.batcher`) or a thread of its own; yield a `Frame` of the replica at most every
    `pace.gap(...)` seconds, and at least 3x the last frame's consumer time apart; always the last state.

    The consumer's time between frames is measured from when this generator resumes, so a slow frame makes
    frames rarer, never the decoding slower."""
    q: queue.SimpleQueue[StepDelta] = queue.SimpleQueue()

    sent = 0  # steps the replica has been sent so far

    def on_event(event: StepEvent | None, error: BaseException | None) -> None:
        nonlocal sent
        if event is None:
            q.put(StepDelta(0, [], {}, True, error=error))
            return
        q.put(delta_of(event.trace, window, event.done, sent, event.progress))
        sent = len(event.trace.steps)

    own = ThreadPoolExecutor(1, thread_name_prefix="tempo-decode") if batcher is None else None
    served = batcher or Batcher(own)
    step_by_step(served, events, on_event, waited)
    try:
        yield from _frames(q, lambda steps: pace.gap(steps, served.active))
    finally:
        if own is not None:
            own.shutdown(wait=False)


def _frames(q: "queue.SimpleQueue[StepDelta]", gap: Callable[[int], float]) -> Iterator[Frame]:
    replica = Trace("", "", {}, "", "", [])
    progress: str | None = None
    next_frame, pending = 0.0, False
    while True:
        try:  # with a frame pending, wait no longer than until it is due
            delta = q.get(timeout=max(0.0, next_frame - time.perf_counter()) if pending else None)
        except queue.Empty:
            delta = None
        if delta is not None:
            if delta.error is not None:
                raise delta.error
            apply_delta(replica, delta)
            progress = delta.progress
            pending = True
            if not delta.done and time.perf_counter() < next_frame:
                continue
        done = delta is not None and delta.done
        t0 = time.perf_counter()
        yield Frame(replica, done, progress)
        if done:
            return
        pending = False
        next_frame = time.perf_counter() + max(gap(len(replica.steps)), 3 * (time.perf_counter() - t0))
