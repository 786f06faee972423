"""Stepped runs: one step at a time makes the trace Generate makes; runs are per session, bounded, freed when idle."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from components.server.stepping import SteppedRuns
from page_client import wait_until
from tiny import tiny_llama

from tempo_core import build_settings, generate, run
from tempo_core.serving.scheduler import Batcher


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


@pytest.fixture()
def runs():
    pool = ThreadPoolExecutor(1)
    yield SteppedRuns(pool, Batcher(pool), max_runs=3, idle_s=60)
    pool.shutdown()


def settings(**kw):
    return build_settings({"prompt": "once upon a time", "max_tokens": 10, "selection_threshold": 0.08,
                           "use_retroactive_pruning": True, "attention_threshold": 0.05, **kw})


def test_stepping_one_step_at_a_time_makes_the_trace_generate_makes(lm, runs):
    s = settings()
    stepped = runs.start("a", lambda stop: generate(lm, s, stop, cooperative=True))
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
        runs.start(key, lambda stop: generate(lm, s, stop, cooperative=True))
    assert len(runs) == 3 and runs.get("a") is None  # the least recently used went first
    first = runs.get("b")
    runs.advance(first)
    assert runs.start("b", lambda stop: generate(lm, s, stop, cooperative=True)) is not first  # a new run replaces the session's old one
    runs.idle_s = 0.05
    time.sleep(0.1)
    assert len(runs) == 0 and runs.get("c") is None
    runs.drop("nobody")  # no error


def test_paused_runs_are_bounded_by_their_caches_bytes_least_recently_used_first(lm):
    """The bytes a paused run is charged are its KV cache's real size; past `max_bytes` together, the least
    recently used runs go first and the run just advanced stays."""
    from tempo_core.runtime.sizes import kv_cache_bytes
    from tempo_core.sequence import ParallelSequence
    s = settings(max_tokens=6)
    trace = run(lm, s.replace(use_retroactive_pruning=False))
    seq = ParallelSequence(lm, s.replace(use_retroactive_pruning=False), trace.prompt_token_ids)
    seq.prefill()
    for st in trace.steps:
        seq.feed([c.token_id for c in st.candidates], st.position)
    real = sum(t.nbytes for layer in seq.cache.layers for t in (layer.keys, layer.values))
    rows = len(trace.prompt_token_ids) + trace.stats["physical_tokens"]
    assert kv_cache_bytes(lm.model.config, rows, 4) == real

    bytes_of = lambda t: kv_cache_bytes(lm.model.config, len(t.prompt_token_ids) + t.stats["physical_tokens"], 4)  # noqa: E731
    pool = ThreadPoolExecutor(1)
    try:
        runs = SteppedRuns(pool, Batcher(pool), max_runs=10, idle_s=60, bytes_of=bytes_of)
        one = runs.start("probe", lambda stop: generate(lm, s, stop, cooperative=True))
        runs.advance(one)
        runs.max_bytes = int(2.5 * one.cache_bytes)  # room for about two runs after one step each
        runs.drop("probe")
        for key in "abcd":
            runs.advance(runs.start(key, lambda stop: generate(lm, s, stop, cooperative=True)))
            assert runs.cache_bytes <= runs.max_bytes
        assert runs.get("a") is None and runs.get("b") is None and runs.get("d") is not None
        runs.get("c")
        last = runs.get("d")  # used after "c": "c" is now the least recently used
        assert len(runs) == 2
        runs.max_bytes = runs.cache_bytes - 1  # one byte short: the next step must free something
        runs.advance(last)  # "d" grows; "c" goes, never the run just advanced
        assert runs.get("d") is last and runs.get("c") is None and runs.cache_bytes == last.cache_bytes
    finally:
        pool.shutdown()


def test_health_reports_the_paused_runs_and_their_caches(lm, live_server):
    import httpx
    url, fastapi_app = live_server(lm)
    stepped = fastapi_app.state.shared.stepped
    health = httpx.get(url + "/health", timeout=10).json()
    assert (health["step_runs"], health["step_cache_bytes"], health["step_cache_limit_bytes"]) == (0, 0, 1024 * 2**20)
    paused = stepped.start("someone", lambda stop: generate(lm, settings(max_tokens=4), stop, cooperative=True))
    stepped.advance(paused)
    health = httpx.get(url + "/health", timeout=10).json()
    assert health["step_runs"] == 1 and health["step_cache_bytes"] == paused.cache_bytes > 0
    # research jobs (baselines, sweeps, studies) are counted too
    assert (health["research_active"], health["research_waiting"]) == (0, 0)
    with fastapi_app.state.shared.research_slots.hold():
        health = httpx.get(url + "/health", timeout=10).json()
        assert (health["research_active"], health["research_waiting"]) == (1, 0)


def test_a_press_has_a_time_limit_and_stop_reaches_a_press_still_running(lm):
    """A press past `press_s` ends the run as a Generate run ends at the time limit (here the press that would
    measure faithfulness over many paths); Stop on a paused run only halts Play, and ends a running press."""
    pool = ThreadPoolExecutor(1)
    try:
        runs = SteppedRuns(pool, Batcher(pool), press_s=60)
        s = settings(max_tokens=3, faithfulness=True, faithfulness_paths=64, selection_threshold=0.0)
        paused = runs.start("a", lambda stop: generate(lm, s, stop, cooperative=True))
        runs.advance(paused)
        runs.stop("a")  # nothing running: the run stays, paused
        assert not paused.done and not paused.stop.is_set() and runs.advance(paused).steps
        runs.press_s = 0.0  # the next press is over its limit at once
        trace = runs.advance(paused)
        assert paused.done and trace.stop_reason == "time_limit" and len(trace.steps) == 2

        runs.press_s = 60
        slow = runs.start("b", lambda stop: generate(lm, s, stop, cooperative=True))
        while len(runs.advance(slow).steps) < 3:
            pass
        pressing = threading.Thread(target=runs.advance, args=(slow,))
        pressing.start()  # the last press: the faithfulness meter over 64 paths a step
        assert wait_until(lambda: slow.busy, timeout=10, interval=0.001)  # a press lasts milliseconds
        runs.stop("b")
        pressing.join(timeout=30)
        assert slow.done and slow.trace.stats.get("faithfulness_skipped") == "stopped"
    finally:
        pool.shutdown()
