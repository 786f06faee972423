"""The scheduler: many runs served on the model's thread in ticks, their rows in one forward a tick (runner.py)."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..events import StepEvent
from ..forward import ForwardRequest
from .runner import forward_batch

OnEvent = Callable[[StepEvent | None, BaseException | None], None]


@dataclass
class _Run:
    make: Callable[[], Iterator[StepEvent | ForwardRequest]]
    on_event: OnEvent
    waited: Callable[[float], None] | None
    pause_after: Callable[[StepEvent], bool] | None
    paused: Callable[[], None] | None
    events: Iterator[StepEvent | ForwardRequest] | None = None
    pending: ForwardRequest | None = None
    last_seen: float = field(default_factory=lambda: time.monotonic())
    own_s: float = 0.0


class Batcher:
    """Serves runs on the model's thread (`executor`, one worker) in ticks: each tick advances every run by one
    step, their rows in one forward of at most `max_rows` rows (runs left out go first next tick), and any other
    work a run does (an analysis piece, a mode that does its own forwards) as one unit of its turn. Runs join and
    leave between ticks; between two ticks the executor runs whatever else was queued on it."""

    def __init__(self, executor: Executor | None, max_rows: int = 256, early_first_sets: bool = True):
        """`executor` None: nothing is scheduled, the caller drives `tick()` itself (the server's start warming the
        batch forwards, benches). `early_first_sets`: the tick that ends a run's prompt also feeds its first set (see
        `tick`); off, that set waits for the next tick (bench/bench_join.py compares the two)."""
        self.executor, self.max_rows, self.early_first_sets = executor, max_rows, early_first_sets
        self._runs: deque[_Run] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.ticks = 0
        self.batched_forwards = 0
        self.rows = 0
        self.grouped_runs = 0  # runs' turns whose attention went in a padded group call (BatchForward)

    def add(self, make: Callable[[], Iterator[StepEvent | ForwardRequest]], on_event: OnEvent,
            waited: Callable[[float], None] | None = None, pause_after: Callable[[StepEvent], bool] | None = None,
            paused: Callable[[], None] | None = None) -> None:
        """Serve the run `make()` (called on the model thread) until it ends. `on_event(event, error)` gets each of
        its events on the model thread, and (None, error) once if it fails; `waited(seconds)` the time it spent
        behind other runs' work. With `pause_after`, the run leaves after an event for which it is true (step
        mode: one press), and `paused()` is called; adding `lambda: the same iterator` resumes it."""
        run = _Run(make, on_event, waited, pause_after, paused)
        with self._lock:
            self._runs.append(run)
            if self._scheduled or self.executor is None:
                return
            self._scheduled = True
        self.executor.submit(self._serve)

    @property
    def alone(self) -> bool:
        """Asked while a run starts (inside its `make`, where it is counted): no other run is being served, so it
        may keep CUDA graphs and take its turns alone (on an H200 a graphed run beats batching only while it is
        alone, bench/README.md); among others it goes eager and batches with them."""
        return self.active <= 1

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._runs)

    def _serve(self) -> None:
        try:
            self.tick()
        except BaseException as exc:  # noqa: BLE001 - a fault of the batcher itself ends every run, not the server
            with self._lock:
                runs, self._runs = list(self._runs), deque()
            for run in runs:
                _report(run, exc)
        finally:
            with self._lock:
                self._scheduled = bool(self._runs)
            if self._scheduled:
                self.executor.submit(self._serve)  # other work queued on the executor meanwhile goes first

    def tick(self) -> None:
        """Advance every run to its next forward (delivering the events on the way), then serve those forwards
        in one. Runs whose prompt that forward ended then plan their first sets, fed in a second forward: a run's
        first step shows one tick after it joins, not two (with a class of 30 a tick is most of a second)."""
        with self._lock:
            runs = list(self._runs)
        batch: list[_Run] = []  # runs whose pending forward goes in this tick's one forward
        rows, left_out, gone = 0, [], []
        for run in runs:
            if rows >= self.max_rows:
                left_out.append(run)
                continue
            run.own_s = 0.0
            rows += self._turn(run, batch, gone)
        self._feed(batch, rows, gone)
        starting: list[_Run] = []
        rows = 0
        for run in batch:
            if self.early_first_sets and run not in gone and run.pending.ends_prompt and rows < self.max_rows:
                rows += self._turn(run, starting, gone)
        self._feed(starting, rows, gone)
        self.ticks += 1
        now = time.monotonic()
        for run in runs:
            if run in left_out:
                continue
            if run.waited is not None:
                run.waited(max(0.0, now - run.last_seen - run.own_s))
            run.last_seen = now
        with self._lock:
            for run in gone:
                self._runs.remove(run)
            for run in reversed(left_out):  # first in line next tick
                self._runs.remove(run)
                self._runs.appendleft(run)

    def _turn(self, run: _Run, batch: list[_Run], gone: list[_Run]) -> int:
        """Advance `run` (`gone` if it leaves) and put its pending forward in `batch`, or serve it now if it cannot
        share one; the rows it adds to `batch`. Its time counts in `run.own_s`."""
        t0 = time.monotonic()
        rows = 0
        if not self._advance(run):
            gone.append(run)
        elif run.pending is not None and run.pending.logits is None:
            if run.pending.seq.batchable:
                batch.append(run)
                rows = len(run.pending.token_ids)
            else:
                run.pending.seq.serve(run.pending)  # a static cache or graphs: a forward of its own
        run.own_s += time.monotonic() - t0
        return rows

    def _feed(self, batch: list[_Run], rows: int, gone: list[_Run]) -> None:
        """Serve the pending forwards of `batch` in one forward (one per model); a failure ends those runs."""
        if not batch:
            return
        t0 = time.monotonic()
        shares = [len(run.pending.token_ids) / max(1, rows) for run in batch]
        try:
            for group in _by_model([run.pending for run in batch]):
                self.grouped_runs += forward_batch(group)
        except BaseException as exc:  # noqa: BLE001 - every run in the failed forward reports it
            for run in batch:
                _report(run, exc)
                gone.append(run)
        spent = time.monotonic() - t0
        for run, share in zip(batch, shares):
            # a run's clock counts its rows' share of the forward; the rest is other runs' work it waited behind
            # (beside another run's 128-row prompt chunk a 2-row step pays 2/130 of the forward)
            run.own_s += spent * share
        self.batched_forwards += 1
        self.rows += rows

    def _advance(self, run: _Run) -> bool:
        """Resume `run` until it asks for a forward, ends or pauses; False once it has left. After a forward it
        resumes through one event to its next request; otherwise one event ends its turn (one unit per tick)."""
        served = run.pending is not None
        run.pending = None
        try:
            if run.events is None:
                run.events = run.make()
            while True:
                item = next(run.events)
                if isinstance(item, ForwardRequest):
                    run.pending = item
                    return True
                run.on_event(item, None)
                if item.done:
                    return False
                if run.pause_after is not None and run.pause_after(item):
                    if run.paused is not None:
                        run.paused()
                    return False
                if not served:
                    return True
                served = False
        except StopIteration:
            _report(run, RuntimeError("the run produced no events"))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which reports it
            _report(run, exc)
        return False


def _report(run: _Run, error: BaseException) -> None:
    """Hand `error` to the run's consumer; a consumer that fails on it too is not the batcher's to bear."""
    try:
        run.on_event(None, error)
    except BaseException:  # noqa: BLE001
        pass


def _by_model(requests: list[ForwardRequest]) -> list[list[ForwardRequest]]:
    groups: dict[int, list[ForwardRequest]] = {}
    for req in requests:
        groups.setdefault(id(req.seq.lm), []).append(req)
    return list(groups.values())
