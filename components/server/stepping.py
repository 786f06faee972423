"""Step mode: a run a student advances one logical step at a time.

A stepped run is the engine's own event generator, paused between steps (so a stepped run makes exactly the trace
Generate makes). Each session holds at most one; they live in memory, at most `max_runs` at once and their KV
caches at most `max_bytes` together (the least recently used dropped first; the run just advanced is kept), and
one unused for `idle_s` seconds is dropped (its KV cache with it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tempo_core import StepEvent, Trace
from tempo_core.serving.scheduler import Batcher
from tempo_core.config import TempoSettings
from tempo_core.stop import RunStop

from ..figures.predict import Score


@dataclass
class SteppedRun:
    events: Iterator[StepEvent]
    trace: Trace | None = None  # the run so far (the engine's live trace)
    done: bool = False
    hidden: bool = False  # the newest step was made but waits for the student's prediction
    playing: bool = False
    score: Score = field(default_factory=Score)
    last_used: float = field(default_factory=time.monotonic)
    cache_bytes: int = 0  # its KV cache after the last step (`SteppedRuns.bytes_of`)
    stop: RunStop | None = None  # the run's stop flag: its clock restarts at every press (`SteppedRuns.press_s`)
    busy: bool = False  # a press is running
    closed: bool = False  # dropped (replaced, expired, evicted): its generator is closed once no press runs
    settings: TempoSettings | None = None  # what it was made from: a press with other settings starts a new run
    notice: str = ""  # said once in the status after the next press (why a new run began)


class SteppedRuns:
    """The sessions' paused runs. Advancing one serves a single engine step with every other run's (`batcher`,
    on the model's thread); creating and closing their generators runs on that thread too (`executor`)."""

    def __init__(self, executor: Executor, batcher: Batcher, max_runs: int = 40, idle_s: float = 300.0, max_bytes: int | None = None,
                 bytes_of: Callable[[Trace], int] = lambda trace: 0, press_s: float | None = None):
        """`bytes_of(trace)`: the KV cache a run holds once it has made `trace` (runtime.sizes.kv_cache_bytes).
        `press_s`: the time one press may take (a step, or the analyses after the last one): past it the run
        ends with stop_reason "time_limit", as a Generate run does at the server's time limit."""
        self.executor, self.batcher = executor, batcher
        self.max_runs, self.idle_s, self.press_s = max_runs, idle_s, press_s
        self.max_bytes, self.bytes_of = max_bytes, bytes_of
        self._runs: OrderedDict[str, SteppedRun] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, session: str, events: Callable[[RunStop], Iterator[StepEvent]]) -> SteppedRun:
        """A new stepped run for `session` (replacing its previous one). `events(stop)` is called on the model
        thread; the run checks `stop` between steps (Stop during a press, and each press's time limit)."""
        run = SteppedRun(iter(()), stop=RunStop())
        run.events = self.executor.submit(events, run.stop).result()
        with self._lock:
            self._expire()
            old = self._runs.pop(session, None)
            self._runs[session] = run
            while len(self._runs) > self.max_runs:  # the least recently used goes first
                _, dropped = self._runs.popitem(last=False)
                self._close(dropped)
        if old is not None:
            self._close(old)
        return run

    def get(self, session: str) -> SteppedRun | None:
        with self._lock:
            self._expire()
            run = self._runs.get(session)
            if run is not None:
                run.last_used = time.monotonic()
                self._runs.move_to_end(session)
            return run

    def advance(self, run: SteppedRun) -> Trace:
        """One logical step (or the run's end), served with every other run's steps (the batcher). Returns the
        trace so far. A phase after the steps (faithfulness) reports progress events: a press goes to its end."""
        if not run.done:
            pressed, failed = threading.Event(), []

            def on_event(event: StepEvent | None, error: BaseException | None) -> None:
                if event is None:
                    failed.append(error)
                else:
                    run.trace, run.done = event.trace, event.done
                if event is None or event.done:
                    pressed.set()

            run.stop.start_clock(self.press_s)
            run.busy = True
            try:
                self.batcher.add(lambda: run.events, on_event, run.stop.extend, pause_after=lambda e: not e.progress,
                                 paused=pressed.set)
                pressed.wait()
            finally:
                run.busy = False
                run.stop.start_clock(None)  # a paused run has no clock running
                if run.closed:  # dropped during the press: its cache goes now
                    self.executor.submit(run.events.close)
            if failed:
                run.done = True
                raise failed[0]
        run.last_used = time.monotonic()
        if run.trace is not None:  # a finished run's generator has ended: its cache is gone
            run.cache_bytes = 0 if run.done else self.bytes_of(run.trace)
            self._fit_bytes(keep=run)
        return run.trace

    @property
    def cache_bytes(self) -> int:
        """The paused runs' KV caches together (what /health reports)."""
        with self._lock:
            return sum(r.cache_bytes for r in self._runs.values())

    def _fit_bytes(self, keep: SteppedRun) -> None:
        """Drop the least recently used runs (never `keep`) until the caches fit `max_bytes`."""
        if self.max_bytes is None:
            return
        dropped = []
        with self._lock:
            total = sum(r.cache_bytes for r in self._runs.values())
            for key in list(self._runs):
                if total <= self.max_bytes:
                    break
                if self._runs[key] is not keep:
                    total -= self._runs[key].cache_bytes
                    dropped.append(self._runs.pop(key))
        for run in dropped:
            self._close(run)

    def pause(self, session: str) -> None:
        """Halt the session's Play (its run stays, paused)."""
        run = self.get(session)
        if run is not None:
            run.playing = False

    def stop(self, session: str) -> None:
        """Stop: halt Play, and end a press still running (the run then ends, stop_reason "stopped")."""
        run = self.get(session)
        if run is not None:
            run.playing = False
            if run.busy:
                run.stop.stop()

    def end(self, session: str) -> SteppedRun | None:
        """Stop pressed in step mode: the session's stepped run ends (a press still running stops at its next step)
        and is dropped; the run it was, if any."""
        self.stop(session)
        with self._lock:
            run = self._runs.pop(session, None)
        if run is not None:
            self._close(run)
        return run

    def drop(self, session: str) -> None:
        with self._lock:
            run = self._runs.pop(session, None)
        if run is not None:
            self._close(run)

    def close_all(self) -> None:
        """Drop every paused run (their generators closed on the model thread)."""
        with self._lock:
            runs, self._runs = list(self._runs.values()), OrderedDict()
        for run in runs:
            self._close(run)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._runs)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, r in self._runs.items() if now - r.last_used > self.idle_s]:
            self._close(self._runs.pop(key))

    def _close(self, run: SteppedRun) -> None:
        run.playing = False
        run.closed = True
        if run.busy:  # a press is running: it ends at its next step (advance then closes the run)
            run.stop.stop()
        else:
            self.executor.submit(run.events.close)  # frees the KV cache; on the model thread, between ticks
