"""The static caches CUDA graphs are captured on: borrowed from the model's pool, cleared and reused run after
run, read only as far as the run has filled them; and why a run does not use graphs, in its trace."""

import dataclasses

import pytest
import torch

from tempo_core import build_settings, run
from tempo_core.engine import ParallelSequence, tempo_events
from tempo_core.graphs import SlotPool, graphs_unavailable
from tiny import tiny_llama


@pytest.fixture()
def lm():
    return tiny_llama(seed=0)


def settings(**kw):
    base = dict(prompt="once upon a time", max_tokens=16, selection_threshold=0.04, raw_prompt=True,
                use_retroactive_pruning=True, attention_threshold=0.05)
    return build_settings({**base, **kw})


def last(events):
    trace = None
    for event in events:
        trace = event.trace
    return trace


def decisions(trace):
    return [[(c.token_id, c.pruned_at, round(c.prob, 5)) for c in st.candidates] for st in trace.steps]


def test_a_run_past_the_first_window_equals_the_dynamic_run(lm):
    """Sets of 4 for 70 steps fill ~285 rows of a 512-row cache: the first forwards attend over a 256-key window
    (the keys past it are never read), the later ones over 512; candidates, pruning and probabilities are the
    dynamic cache's."""
    s = settings(selection_threshold=0.0, max_parallel_tokens=4, max_tokens=70, min_steps=70)
    dynamic = run(lm, s)
    static = last(tempo_events(lm, s, static_cache=True))
    assert dynamic.stats["physical_tokens"] + len(dynamic.prompt_token_ids) > 256
    assert lm.slots.idle[0].capacity == 512
    assert any(c.pruned_at is not None for st in dynamic.steps for c in st.candidates)
    assert decisions(static) == decisions(dynamic)


def test_a_slot_is_given_back_cleared_and_reused(lm):
    first = settings()
    last(tempo_events(lm, first, static_cache=True))
    assert lm.slots.lent == 0 and len(lm.slots.idle) == 1
    slot = lm.slots.idle[0]
    second = settings(prompt="the cat sat on the mat", selection_threshold=0.1)
    reused = last(tempo_events(lm, second, static_cache=True))
    assert lm.slots.idle == [slot]  # the same cache, not a new one
    assert decisions(reused) == decisions(run(lm, second))  # nothing of the first run leaks into the second

    events = tempo_events(lm, first, static_cache=True)
    next(events), next(events)
    assert lm.slots.lent == 1
    events.close()  # a run stopped half-way gives its cache back too
    assert lm.slots.lent == 0 and lm.slots.idle == [slot]


def test_when_every_slot_is_lent_a_run_decodes_on_a_dynamic_cache(lm):
    lm.slots = SlotPool(limit=1)
    s = settings()
    holder = ParallelSequence(lm, s, [1, 2, 3], static_cache=True)
    assert holder.slot is not None
    trace = last(tempo_events(lm, s, static_cache=True))
    assert lm.slots.lent == 1  # only the holder's
    assert decisions(trace) == decisions(run(lm, s))
    holder.close()
    assert lm.slots.lent == 0


def test_the_trace_says_why_steps_are_not_replayed_from_cuda_graphs(lm):
    s = settings(max_tokens=3)
    assert run(lm, s).stats["cuda_graphs"] == "off: the model runs on cpu"
    assert run(dataclasses.replace(lm, cuda_graphs=False), s).stats["cuda_graphs"].startswith("off: switched off")
    on_gpu = dataclasses.replace(lm, device=torch.device("cuda"))  # the reasons, without a GPU
    assert graphs_unavailable(on_gpu, s) is None
    assert "disable_kv_cache" in graphs_unavailable(on_gpu, settings(disable_kv_cache=True))
    lm.model.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1}
    try:
        assert graphs_unavailable(on_gpu, s) == "the model is spread over 2 devices (graphs need one)"
    finally:
        del lm.model.hf_device_map
