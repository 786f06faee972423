"""On two GPUs: a model split across devices (device_map, as `load_model` does for models larger than one GPU)
runs TEMPO's eager path and gives what the same weights give on one device.

    python bench/check_multi_gpu.py      # needs 2 CUDA devices (the `device` tool's nvidia-h200-x2)

Checks, fp32, a tiny random Llama of 4 layers, layers 0-1 on cuda:0 and 2-3 (with the head) on cuda:1:
1. threshold 1.0: the split TEMPO run equals HF greedy `generate` of the split model, token for token;
2. threshold 0.05 with pruning: the split run's candidates, pruning decisions and probabilities (1e-4) equal
   the single-device run's (which replays its steps from CUDA graphs, the default on one GPU);
3. the single-device run equals the same run with graphs off, and each trace says which path it took.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from accelerate import dispatch_model  # noqa: E402

from tempo_core import build_settings, run, wrap_model  # noqa: E402
from tiny import tiny_llama  # noqa: E402

assert torch.cuda.device_count() >= 2, "needs two CUDA devices"
single = tiny_llama(seed=0, layers=4)
single = wrap_model(single.model.to("cuda:0"), single.tokenizer, name="tiny-one-gpu")
split = tiny_llama(seed=0, layers=4)  # the same weights (same seed)
device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 0,
              "model.layers.2": 1, "model.layers.3": 1, "model.norm": 1, "lm_head": 1}
split_model = dispatch_model(split.model, device_map=device_map)
split = wrap_model(split_model, split.tokenizer, name="tiny-split")
print("split devices:", sorted({str(p.device) for p in split.model.parameters()}), "input device:", split.device)

s = build_settings(dict(prompt="once upon a time", max_tokens=16, selection_threshold=1.0))
trace = run(split, s)
ids = torch.tensor([trace.prompt_token_ids], device=split.device)
out = split.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                           temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
ours = [st.candidates[0].token_id for st in trace.steps]
greedy_ok = ours == out[:len(ours)]
print("1. threshold 1.0, split TEMPO == split HF greedy:", greedy_ok, ours[:8], out[:8])

s = build_settings(dict(prompt="once upon a time", max_tokens=16, selection_threshold=0.05,
                        use_retroactive_pruning=True, attention_threshold=0.05))
a, b = run(split, s), run(single, s)
same = ([[(c.token_id, c.pruned_at) for c in st.candidates] for st in a.steps]
        == [[(c.token_id, c.pruned_at) for c in st.candidates] for st in b.steps])
worst = max(abs(ca.prob - cb.prob) for x, y in zip(a.steps, b.steps) for ca, cb in zip(x.candidates, y.candidates))
print(f"2. branching with pruning, split == single device: {same}; max |dprob| {worst:.2e}; "
      f"{sum(len(st.candidates) for st in a.steps)} candidates, {a.stats.get('pruned', 0)} pruned")
single.cuda_graphs = False
eager = run(single, s)
eager_same = ([[(c.token_id, c.pruned_at) for c in st.candidates] for st in eager.steps]
              == [[(c.token_id, c.pruned_at) for c in st.candidates] for st in b.steps])
print(f"3. single device, graphed == eager: {eager_same}; paths: split {a.stats['cuda_graphs']!r}, single "
      f"{b.stats['cuda_graphs']!r} ({b.stats['graphed_steps']} graphed steps)")
paths_ok = b.stats["cuda_graphs"] == "on" and a.stats["cuda_graphs"].startswith("off: the model is spread")
print("PASS" if greedy_ok and same and worst < 1e-4 and eager_same and paths_ok else "FAIL")
