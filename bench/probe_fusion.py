"""Probe (GPU): would fusing the small elementwise kernels (RMSNorm, rotary) speed the graphed TEMPO step up?

Times the graph replay alone for k = 1 and 8 (window 256) as shipped, then with LlamaRMSNorm's forward and
`apply_rotary_pos_emb` replaced by torch.compile'd versions (fresh pool, so graphs are captured again).
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model  # noqa: E402
from check_graphs import replay_ms  # noqa: E402
from tempo_core import build_settings  # noqa: E402
from tempo_core.engine import tempo_events  # noqa: E402

lm = random_model("llama3b", "cuda", "bf16")


def measure(label):
    lm.runtime.slots = None
    out = []
    for k in (1, 8):
        s = build_settings(dict(prompt="Explain the theory of relativity simply.", raw_prompt=True,
                                selection_threshold=0.0, max_parallel_tokens=k, max_tokens=24, min_steps=24))
        t0 = time.perf_counter()
        trace = [e for e in tempo_events(lm, s)][-1].trace
        first = time.perf_counter() - t0
        trace = [e for e in tempo_events(lm, s)][-1].trace
        step = sum(st.time_ms for st in trace.steps[12:]) / 12
        slot = next(x for x in lm.runtime.slots.idle if x.graphs and x.graphs.graphs)
        key = next(key for key in slot.graphs.graphs if key[0] == k)
        out.append(f"k={k}: replay {replay_ms(slot.graphs, key):.2f} ms, step {step:.2f} ms, first run {first:.1f} s, "
                   f"tokens {[c.token_id for c in trace.steps[-1].candidates][:3]}")
    print(label, "|", " | ".join(out), flush=True)


measure("shipped")


@torch.compile(dynamic=True, fullgraph=True)
def rms(x, weight, eps: float):
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


for mod in lm.model.modules():
    if type(mod).__name__.endswith("RMSNorm"):
        mod.forward = (lambda m: (lambda x: rms(x, m.weight, m.variance_epsilon)))(mod)
measure("+compiled RMSNorm")

from transformers.models.llama import modeling_llama as ml  # noqa: E402


@torch.compile(dynamic=True, fullgraph=True)
def rope(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rot(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)
    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


ml.apply_rotary_pos_emb = rope
measure("+compiled rotary")


@torch.compile(dynamic=True, fullgraph=True)
def silu_mul(g, u):
    return torch.nn.functional.silu(g) * u


for mod in lm.model.modules():
    if type(mod).__name__ == "LlamaMLP":
        mod.forward = (lambda m: (lambda x: m.down_proj(silu_mul(m.gate_proj(x), m.up_proj(x)))))(mod)
measure("+compiled SiLU*up")
