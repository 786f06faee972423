"""The live replica: decoding in a worker, deltas applied to the page's copy, frames that never slow decoding."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from gradio.utils import diff

from components.figures.commitment_strip import commitment_strip
from components.figures.curve import curve_view
from components.figures.heatmap import heatmap_view
from components.figures.text import text_view
from components.figures.tree import tree_view
from components.server.live import Pace, apply_delta, delta_of, live_traces
from tempo_core import Trace, build_settings, generate, run
from tempo_core.stop import RunStop
from tiny import tiny_llama

LONG = {"prompt": "the cat", "max_tokens": 200, "selection_threshold": 0.05, "use_retroactive_pruning": True,
        "attention_threshold": 0.05}


def _lm():
    return tiny_llama(seed=3)


@pytest.mark.parametrize("extra", [{}, {"commitment": True, "faithfulness": True, "max_tokens": 12},
                                   {"mode": "soft", "commitment": True, "faithfulness": True, "max_tokens": 12}])
def test_applying_each_steps_delta_gives_the_engines_trace_at_every_step(extra):
    """Every event's delta keeps the page's replica equal to the engine's trace, the analyses after the steps
    (faithfulness, the commitment strip) and a soft run included."""
    lm = _lm()
    s = build_settings({**LONG, **extra})
    replica = Trace("", "", {}, "", "", [])
    pruned_late = 0
    for event in generate(lm, s):
        apply_delta(replica, delta_of(event.trace, s.pruning_window, event.done))
        assert replica.to_dict() == event.trace.to_dict()
        pruned_late += sum(1 for c in event.pruned if c.pruned_at > 0)
    assert pruned_late > 0 or s.mode == "soft" or s.max_tokens < 200  # deltas carried changes to earlier steps
    final = event.trace
    assert bool(final.commitment) == s.commitment and bool(final.faithfulness) == s.faithfulness
    for build in (tree_view, heatmap_view, text_view, curve_view, commitment_strip):
        assert build(replica) == build(final)


def test_live_frames_end_with_the_finished_trace_and_never_block_decoding():
    lm = _lm()
    s = build_settings(LONG)
    frames = []
    for frame in live_traces(lambda: generate(lm, s), s.pruning_window, Pace(0.0)):
        trace = frame.trace
        frames.append((len(trace.steps), frame.done))
    reference = run(lm, s)
    assert frames[-1] == (len(reference.steps), True)
    decisions = lambda t: [[(c.token_id, c.prob, c.pruned_at, c.attention) for c in st.candidates]  # noqa: E731
                           for st in t.steps]
    assert decisions(trace) == decisions(reference)
    assert [n for n, _ in frames] == sorted(n for n, _ in frames)

    # a consumer that takes its time sees fewer frames, and the decoding is not held back by it
    gate = threading.Event()
    slow = []
    for frame in live_traces(lambda: generate(lm, s), s.pruning_window, Pace(0.0)):
        slow.append(len(frame.trace.steps))
        gate.wait(0.3 if not slow[1:] else 0)  # the first frame stalls; decoding goes on meanwhile
    assert slow[1] - slow[0] > 1 and slow[-1] == len(reference.steps)


def test_stop_ends_a_live_run_within_a_step():
    lm = _lm()
    s = build_settings(LONG)
    stop = RunStop()
    seen = []
    for frame in live_traces(lambda: generate(lm, s, stop), 3, Pace(0.0)):
        trace, done = frame.trace, frame.done
        seen.append(len(trace.steps))
        if len(seen) == 1:
            stop.stop()
            at_stop = len(trace.steps)
    assert trace.stop_reason == "stopped" and done
    assert len(trace.steps) <= at_stop + 2  # the step in flight, at most one more that was already queued


def test_a_frames_diff_carries_the_new_steps_not_the_whole_run():
    lm = _lm()
    s = build_settings(LONG)
    trace = run(lm, s)
    assert len(trace.steps) == 200
    before = copy.deepcopy(trace)
    before.steps = before.steps[:195]
    for view in (lambda t: tree_view(t, live=True), text_view, heatmap_view):
        old, new = view(before), view(trace)
        edits = diff(old, new)
        touched = [e for e in edits if e[0] != "replace" or e[1][:1] == ["steps"]]
        assert edits and len(str(edits)) < len(str(new)) / 5, (len(str(edits)), len(str(new)))
        # text: only the last steps' pieces are touched
        if "steps" in new:
            assert all(e[1][1] >= 195 - s.pruning_window - 1 for e in touched if e[1][:1] == ["steps"])


def test_a_run_that_fails_mid_way_reaches_the_page_as_its_error_never_a_hang():
    """An event the consumer cannot read, or an engine that raises, ends the frames with that error."""
    lm = _lm()
    s = build_settings(dict(LONG, max_tokens=5))

    def broken():
        events = generate(lm, s)
        yield next(events)
        raise RuntimeError("the model fell over")
    with pytest.raises(RuntimeError, match="fell over"):
        list(live_traces(broken, 3, Pace(0.0)))
    with pytest.raises(AttributeError):  # not an engine event: the error reaches the page instead of hanging it
        list(live_traces(lambda: iter([("a trace", True)]), 3, Pace(0.0)))


def test_progress_of_a_phase_after_the_steps_travels_with_the_frames():
    """The faithfulness phase says what it is doing; the frames carry it (the trace itself is not touched)."""
    lm = _lm()
    s = build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05, "faithfulness": True})
    events = list(generate(lm, s))
    said = [e.progress for e in events if e.progress]
    assert said
    frames = list(live_traces(lambda: iter(events), s.pruning_window, Pace(0.0)))
    assert [f.progress for f in frames if f.progress] and frames[-1].done and frames[-1].progress is None
    assert all("progress" not in f.trace.stats for f in frames)


def test_frames_get_rarer_as_the_run_grows_and_the_last_step_is_always_shown():
    """With a per-step gap, a frame showing n steps is followed by the next no sooner than n x the gap (the
    browser's cost of a frame grows with the steps it shows); the last frame is the finished run all the same."""
    lm = _lm()
    s = build_settings(dict(LONG, max_tokens=40))
    events = list(generate(lm, s))

    def paced():  # an engine that makes a step every 5 ms
        for event in events:
            time.sleep(0.005)
            yield event
    per_step = 0.004
    shown = []
    for frame in live_traces(paced, s.pruning_window, Pace(0.0, per_step_s=per_step)):
        shown.append((time.perf_counter(), len(frame.trace.steps), frame.done))
    assert shown[-1][1:] == (len(events[-1].trace.steps), True)
    for (t0, n0, _), (t1, _, done) in zip(shown, shown[1:]):
        if not done:
            assert t1 - t0 >= per_step * n0 - 1e-3, (n0, t1 - t0)
    eager = list(live_traces(paced, s.pruning_window, Pace(0.0)))  # without it, every step may be its own frame
    assert len(shown) < len(eager)


def test_the_pace_of_frames_follows_the_steps_shown_and_the_runs_served_within_its_bounds():
    pace = Pace(min_s=0.25, per_step_s=0.005, per_run_s=0.05, max_s=2.0)
    assert pace.gap(10, 1) == 0.25  # a short run alone: 4 frames a second
    assert pace.gap(200, 1) == pytest.approx(1.05)  # a long one: the browser's frame grows with the steps
    assert pace.gap(16, 30) == pytest.approx(1.58)  # a class of 30: each run's frames rarer
    assert pace.gap(200, 30) == 2.0
