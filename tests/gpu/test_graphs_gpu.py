"""On a GPU: a set replayed from a captured CUDA graph (the default on CUDA) makes the run the eager forward makes,
with the same fused kernels; the second run of a shape reuses its graphs; isolated siblings get the logits they
would get alone. Speed lives in bench/bench_graphs.py."""

import pytest
import torch
from on_gpu import max_prob_gap, needs_cuda, on_cuda, same_decisions

from tempo_core import build_settings
from tempo_core.engine import tempo_events
from tempo_core.runtime.fused import fused_kernels
from tempo_core.sequence import ParallelSequence

pytestmark = [pytest.mark.gpu, needs_cuda]


def last(events):
    trace = None
    for event in events:
        trace = event.trace
    return trace


@pytest.mark.parametrize("pruning", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_a_graphed_run_equals_the_eager_run_on_the_same_kernels(k, pruning):
    lm = on_cuda()
    s = build_settings(dict(prompt="the cat sat on the mat", raw_prompt=True, selection_threshold=0.0,
                            max_parallel_tokens=k, max_tokens=24, min_steps=24, use_retroactive_pruning=pruning,
                            attention_threshold=0.02))
    with fused_kernels(lm.model):  # the graphs' kernels everywhere, the prefill included
        eager = last(tempo_events(lm, s, static_cache=True, cuda_graphs=False))
        graphed = last(tempo_events(lm, s))
        again = last(tempo_events(lm, s))
    assert graphed.stats["cuda_graphs"] == "on" and graphed.stats["graphed_steps"] == len(graphed.steps)
    assert same_decisions(eager, graphed) and max_prob_gap(eager, graphed) < 1e-4
    assert same_decisions(graphed, again)
    assert lm.runtime.slots.lent == 0  # every run gave its cache back


def test_isolated_siblings_get_the_logits_they_would_get_alone():
    lm = on_cuda()
    prompt = list(range(5, 60))
    seq = ParallelSequence(lm, build_settings(dict(prompt="x", raw_prompt=True)), prompt)
    try:
        siblings = seq.prefill().topk(4).indices.tolist()
        _, logits, _ = seq.feed(siblings, len(prompt))
    finally:
        seq.close()
    with torch.inference_mode():
        for token, got in zip(siblings, logits):
            alone = lm.model(torch.tensor([prompt + [token]], device="cuda")).logits[0, -1]
            assert torch.allclose(got.float(), alone.float(), atol=1e-4, rtol=1e-4)
