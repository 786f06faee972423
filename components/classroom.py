"""Step mode and predict-then-reveal: a run a student advances one logical step at a time.

A stepped run is the engine's own event generator, paused between steps (so a stepped run makes exactly the trace
Generate makes). Each session holds at most one; they live in memory, at most `max_runs` at once, and one unused
for `idle_s` seconds is dropped (its KV cache with it).

Predict then reveal: before a step is shown, the student sees its candidates and the near misses in alphabetical
order, without probabilities, and ticks the ones they think pass the selection threshold; the reveal marks each
pick right or wrong, keeps a running score, and only then asks a question to think about.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tempo_core import Step, StepEvent, Trace

from .views import show_token


@dataclass
class Score:
    right: int = 0
    total: int = 0

    def __str__(self) -> str:
        return f"{self.right}/{self.total}" + (f" ({self.right / self.total:.0%})" if self.total else "")


@dataclass
class SteppedRun:
    events: Iterator[StepEvent]
    trace: Trace | None = None  # the run so far (the engine's live trace)
    done: bool = False
    hidden: bool = False  # the newest step was made but waits for the student's prediction
    playing: bool = False
    score: Score = field(default_factory=Score)
    last_used: float = field(default_factory=time.monotonic)


class SteppedRuns:
    """The sessions' paused runs. Advancing one runs a single engine step on the model's executor, queued
    fairly behind other runs' steps."""

    def __init__(self, executor: Executor, max_runs: int = 40, idle_s: float = 300.0):
        self.executor, self.max_runs, self.idle_s = executor, max_runs, idle_s
        self._runs: OrderedDict[str, SteppedRun] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, session: str, events: Callable[[], Iterator[StepEvent]]) -> SteppedRun:
        """A new stepped run for `session` (replacing its previous one). `events` is called on the model thread."""
        run = SteppedRun(iter(()))
        run.events = self.executor.submit(events).result()
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
        """One logical step (or the run's end). Returns the trace so far."""
        def step() -> None:
            event = next(run.events, None)
            if event is not None:
                run.trace, run.done = event.trace, event.done
                # a phase after the steps (faithfulness) reports progress events: keep going to the end
                while event.progress and not run.done:
                    event = next(run.events)
                    run.trace, run.done = event.trace, event.done
            else:
                run.done = True
        if not run.done:
            self.executor.submit(step).result()
        run.last_used = time.monotonic()
        return run.trace

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
        self.executor.submit(run.events.close)  # frees the KV cache; on the model thread, after any running step


# --- predict then reveal -------------------------------------------------------------------------------------

def _choices(st: Step) -> list[tuple[str, float, bool]]:
    """(unique label, probability, passed the threshold) for the step's candidates, then its near misses."""
    texts = [c.shown for c in st.candidates] + [a["text"] for a in st.alternatives]
    probs = [c.prob for c in st.candidates] + [a["prob"] for a in st.alternatives]
    passed = [True] * len(st.candidates) + [False] * len(st.alternatives)
    seen: dict[str, int] = {}
    labels = []
    for t in texts:
        label = show_token(t)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return list(zip(labels, probs, passed))


def prediction_choices(st: Step) -> list[str]:
    """The tokens a student chooses from: the step's candidates and its near misses, alphabetically (the order
    gives nothing away), each label unique."""
    return sorted(label for label, _, _ in _choices(st))


@dataclass
class Reveal:
    marks: list[tuple[str, float, bool, bool]]  # (token, probability, passed the threshold, the student ticked it)
    right: int  # choices judged correctly (ticked and passed, or left and did not)
    total: int


def score_prediction(st: Step, picked: list[str]) -> Reveal:
    """Each choice is right when the student ticked it exactly if it passed the threshold."""
    chosen = set(picked)
    marks = sorted(((label, p, ok, label in chosen) for label, p, ok in _choices(st)), key=lambda m: -m[1])
    right = sum(ok == ticked for _, _, ok, ticked in marks)
    return Reveal(marks, right, len(marks))


def reveal_markdown(st: Step, reveal: Reveal, score: Score) -> str:
    """The reveal as a short list (it fits the narrow column of a phone or the form)."""
    lines = []
    for label, p, ok, ticked in reveal.marks:
        verdict = "✓" if ok == ticked else "✗"
        you = "you ticked it" if ticked else "you left it"
        lines.append(f"- **{verdict}** `{label}` p = {p:.3f}: {'kept' if ok else 'not kept'} ({you})")
    return (f"**Step {st.step}: {reveal.right} of {reveal.total} right** · running score {score}\n\n"
            f"Threshold {st.selection_threshold:g}: every token at or above it is kept.\n\n" + "\n".join(lines))


def reflection_question(trace: Trace, index: int) -> str:
    """A question to think about, asked after the reveal (never before)."""
    st = trace.steps[index]
    pruned_now = [c for s in trace.steps for c in s.candidates if c.pruned_at == index]
    if pruned_now:
        return (f"**Think:** This step pruned {', '.join(repr(show_token(c.shown)) for c in pruned_now)}: later tokens paid "
                "it too little attention. Would you have cut it? What would the text lose if it stayed?")
    if len(st.candidates) > 1:
        top = max(st.candidates, key=lambda c: c.prob)
        return (f"**Think:** {len(st.candidates)} tokens share position {st.position}. The next step sees all of them at "
                f"once: how much should it trust {show_token(top.shown)!r} over the others, and why?")
    if st.alternatives and st.alternatives[0]["prob"] > st.selection_threshold / 2:
        alt = st.alternatives[0]
        return (f"**Think:** {show_token(alt['text'])!r} missed the threshold with p = {alt['prob']:.2f}. At what threshold "
                "would it have joined the set, and would the text still make sense?")
    return "**Think:** Only one token passed. Is the model sure here, or is the threshold too strict? Look at the near misses."
