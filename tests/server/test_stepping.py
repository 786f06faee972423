"""Stepped runs: one step at a time makes the trace Generate makes; runs are per session, bounded, freed when idle."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from components.server.stepping import SteppedRuns
from tiny import tiny_llama

from tempo_core import build_settings, generate, run


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


@pytest.fixture()
def runs():
    pool = ThreadPoolExecutor(1)
    yield SteppedRuns(pool, max_runs=3, idle_s=60)
    pool.shutdown()


def settings(**kw):
    return build_settings({"prompt": "once upon a time", "max_tokens": 10, "selection_threshold": 0.08,
                           "use_retroactive_pruning": True, "attention_threshold": 0.05, **kw})


def test_stepping_one_step_at_a_time_makes_the_trace_generate_makes(lm, runs):
    s = settings()
    stepped = runs.start("a", lambda: generate(lm, s))
    seen = []
    while not stepped.done:
        trace = runs.advance(stepped)
        seen.append(len(trace.steps))
    whole = run(lm, s)
    assert seen[:len(whole.steps)] == list(range(1, len(whole.steps) + 1))  # one step per press
    assert [[(c.token_id, c.pruned_at) for c in st.candidates] for st in trace.steps] == \
           [[(c.token_id, c.pruned_at) for c in st.candidates] for st in whole.steps]
    assert [c.prob for st in trace.steps for c in st.candidates] == \
           pytest.approx([c.prob for st in whole.steps for c in st.candidates], abs=1e-6)
    assert trace.stop_reason == whole.stop_reason
    assert runs.advance(stepped) is trace  # past the end nothing more happens


def test_runs_are_per_session_bounded_and_freed_when_idle(lm, runs):
    s = settings(max_tokens=4)
    for key in "abcd":
        runs.start(key, lambda: generate(lm, s))
    assert len(runs) == 3 and runs.get("a") is None  # the least recently used went first
    first = runs.get("b")
    runs.advance(first)
    assert runs.start("b", lambda: generate(lm, s)) is not first  # a new run replaces the session's old one
    runs.idle_s = 0.05
    time.sleep(0.1)
    assert len(runs) == 0 and runs.get("c") is None
    runs.drop("nobody")  # no error
