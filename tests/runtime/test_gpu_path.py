"""The GPU fast path's pieces, checked on the CPU: the static caches CUDA graphs are captured on (borrowed from
the model's pool, cleared and reused run after run, read only as far as the run has filled them), why a run does
not use graphs (in its trace), and the GPU's grouped-query attention with a mask. The graphs themselves need a
GPU: tests/gpu/test_graphs_gpu.py compares them with the eager path there."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_llama

from tempo_core import build_settings, run
from tempo_core.engine import tempo_events
from tempo_core.runtime.attention import stacked_gqa_attention
from tempo_core.runtime.graphs import SlotPool, graphs_unavailable
from tempo_core.sequence import ParallelSequence

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


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
    return [[(c.token_id, c.pruned_at) for c in st.candidates] for st in trace.steps]


def same_run(a, b, tol=1e-5):
    """The same candidates and pruning decisions, probabilities within fp32 noise."""
    return decisions(a) == decisions(b) and all(abs(x.prob - y.prob) < tol for p, q in zip(a.steps, b.steps)
                                                for x, y in zip(p.candidates, q.candidates))


def test_a_run_that_outgrows_its_cache_moves_to_a_larger_one_and_equals_the_dynamic_run(lm):
    """Sets of 4 for 70 steps fill ~285 rows: the run starts in a 256-row cache sized for sets of one, moves to
    a 512-row one with its rows copied over, and its forwards attend over a 256- then a 512-key window.
    Candidates, pruning and probabilities are the dynamic cache's."""
    s = settings(selection_threshold=0.0, max_parallel_tokens=4, max_tokens=70, min_steps=70)
    dynamic = run(lm, s)
    static = last(tempo_events(lm, s, static_cache=True))
    assert dynamic.stats["physical_tokens"] + len(dynamic.prompt_token_ids) > 256
    assert sorted(slot.capacity for slot in lm.runtime.slots.idle) == [256, 512] and lm.runtime.slots.lent == 0
    assert any(c.pruned_at is not None for st in dynamic.steps for c in st.candidates)
    assert same_run(static, dynamic)


def test_a_run_that_cannot_grow_goes_on_on_a_dynamic_cache(lm):
    """With one slot and no larger one to move to, the run's rows move to a DynamicCache half-way; same run."""
    lm.runtime.slots = SlotPool(limit=1)
    s = settings(selection_threshold=0.0, max_parallel_tokens=4, max_tokens=70, min_steps=70)
    static = last(tempo_events(lm, s, static_cache=True))
    pool = lm.runtime.slots
    assert [slot.capacity for slot in pool.idle] == [256] and pool.lent == 0  # given back when it left
    assert same_run(static, run(lm, s))


def test_a_slot_is_given_back_cleared_and_reused(lm):
    first = settings()
    last(tempo_events(lm, first, static_cache=True))
    assert lm.runtime.slots.lent == 0 and len(lm.runtime.slots.idle) == 1
    slot = lm.runtime.slots.idle[0]
    second = settings(prompt="the cat sat on the mat", selection_threshold=0.1)
    reused = last(tempo_events(lm, second, static_cache=True))
    assert lm.runtime.slots.idle == [slot]  # the same cache, not a new one
    assert same_run(reused, run(lm, second))  # nothing of the first run leaks into the second

    events = tempo_events(lm, first, static_cache=True)
    next(events), next(events)
    assert lm.runtime.slots.lent == 1
    events.close()  # a run stopped half-way gives its cache back too
    assert lm.runtime.slots.lent == 0 and lm.runtime.slots.idle == [slot]


def test_when_every_slot_is_lent_a_run_decodes_on_a_dynamic_cache(lm):
    lm.runtime.slots = SlotPool(limit=1)
    s = settings()
    holder = ParallelSequence(lm, s, [1, 2, 3], static_cache=True)
    assert holder.place.slot is not None
    trace = last(tempo_events(lm, s, static_cache=True))
    assert lm.runtime.slots.lent == 1  # only the holder's
    assert same_run(trace, run(lm, s))
    holder.close()
    assert lm.runtime.slots.lent == 0


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


@pytest.mark.parametrize("groups,q_len", [(1, 1), (3, 1), (3, 4), (4, 16)])
def test_stacked_gqa_attention_equals_attention_over_repeated_kv(groups, q_len):
    torch.manual_seed(groups * 100 + q_len)
    kv_heads, kv_len, dim = 2, 37, 16
    q = torch.randn(1, kv_heads * groups, q_len, dim)
    k, v = torch.randn(1, kv_heads, kv_len, dim), torch.randn(1, kv_heads, kv_len, dim)
    mask = torch.rand(1, 1, q_len, kv_len) > 0.3
    mask[..., 0] = True  # every row sees something
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1),
                                              attn_mask=mask, scale=0.25)
    got = stacked_gqa_attention(q, k, v, mask, 0.25)
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-5


def test_fused_kernels_give_the_models_own_logits_and_are_undone(lm, monkeypatch):
    """The fused block's RMSNorm, rotary and SiLU x up (their math, uncompiled here: compiling needs a GPU to pay
    off) give the model's own logits; the instance forwards and the rotary wrapper are there only while a block
    is open, nested blocks included."""
    from transformers.models.llama import modeling_llama

    from tempo_core.runtime import fused
    monkeypatch.setattr(fused, "fusable", lambda model: True)
    for name in ("rms_norm", "rotary", "silu_mul"):
        monkeypatch.setattr(fused, f"_{name}", getattr(fused, f"_{name}_math"))
    patched = [m for m in lm.model.modules() if type(m).__name__ in ("LlamaRMSNorm", "LlamaMLP")]
    original_rotary = modeling_llama.apply_rotary_pos_emb
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.inference_mode():
        plain = lm.model(ids).logits
        with fused.fused_kernels(lm.model):
            with fused.fused_kernels(lm.model):
                assert all("forward" in vars(m) for m in patched)
                assert modeling_llama.apply_rotary_pos_emb is not original_rotary
                inside = lm.model(ids).logits
            assert all("forward" in vars(m) for m in patched)  # the outer block is still open
    assert not any("forward" in vars(m) for m in patched) and modeling_llama.apply_rotary_pos_emb is original_rotary
    assert (inside - plain).abs().max() < 1e-5
    assert not fused._failed


def test_fused_kernels_do_nothing_off_a_cuda_llama(lm):
    from tempo_core.runtime import fused
    assert not fused.fusable(lm.model)  # on the CPU
    with fused.fused_kernels(lm.model):
        assert not any("forward" in vars(m) for m in lm.model.modules() if type(m).__name__ == "LlamaRMSNorm")


def test_the_pool_size_comes_from_tempo_graph_slots(monkeypatch):
    monkeypatch.setenv("TEMPO_GRAPH_SLOTS", "3")
    assert SlotPool().limit == 3
    monkeypatch.setenv("TEMPO_GRAPH_SLOTS", "none")  # not a whole number >= 1: logged, the default kept
    assert SlotPool().limit == 32
