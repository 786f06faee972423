"""On two GPUs: a model split across devices (device_map, as `load_model` does for models larger than one GPU)
runs TEMPO's eager path and gives what the same weights give on one device (fp32, a tiny random Llama of 4
layers, layers 0-1 on cuda:0 and 2-3 with the head on cuda:1)."""

import pytest
import torch
from on_gpu import max_prob_gap, on_cuda, same_decisions

from tempo_core import build_settings, run, wrap_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]


@pytest.fixture(scope="module")
def split_and_single():
    from accelerate import dispatch_model
    single = on_cuda(seed=0, layers=4, device="cuda:0")
    split = on_cuda(seed=0, layers=4, device="cpu")  # the same weights (same seed), then spread
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 0,
                  "model.layers.2": 1, "model.layers.3": 1, "model.norm": 1, "lm_head": 1}
    return wrap_model(dispatch_model(split.model, device_map=device_map), split.tokenizer, name="tiny-split"), single


def test_a_split_run_at_threshold_one_is_greedy_decoding(split_and_single):
    split, _ = split_and_single
    trace = run(split, build_settings(dict(prompt="once upon a time", max_tokens=16, selection_threshold=1.0)))
    ids = torch.tensor([trace.prompt_token_ids], device=split.device)
    out = split.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                               temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    ours = [st.candidates[0].token_id for st in trace.steps]
    assert ours == out[:len(ours)]


def test_a_split_run_equals_the_one_device_run_graphed_or_eager(split_and_single):
    split, single = split_and_single
    s = build_settings(dict(prompt="once upon a time", max_tokens=16, selection_threshold=0.05,
                            use_retroactive_pruning=True, attention_threshold=0.05))
    a, b = run(split, s), run(single, s)
    assert same_decisions(a, b) and max_prob_gap(a, b) < 1e-4
    assert b.stats["cuda_graphs"] == "on" and a.stats["cuda_graphs"].startswith("off: the model is spread")
    single.cuda_graphs = False
    try:
        assert same_decisions(run(single, s), b)
    finally:
        single.cuda_graphs = True
