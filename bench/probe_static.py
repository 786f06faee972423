"""Probe: does HF generate compile the static-cache decode here? Times repeated calls (GPU, random 3B).

    python bench/probe_static.py [--tempo-attention]   # the latter: through TEMPO's registered attention
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_steps import random_model  # noqa: E402

lm = random_model("llama3b", "cuda", "bf16")
if "--tempo-attention" not in sys.argv:  # a user's plain model: SDPA (TEMPO's attention function breaks the graph)
    lm.model.set_attn_implementation("sdpa")
x = torch.randint(3, 100, (1, 256), device="cuda")
kw = dict(attention_mask=torch.ones_like(x), do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=2)
for label, extra in (("eager", {}), ("static", {"cache_implementation": "static"})):
    for m in (64, 64, 64, 1, 1, 64):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model.generate(x, max_new_tokens=m, min_new_tokens=m, **kw, **extra)
        torch.cuda.synchronize()
        print(label, m, f"{(time.perf_counter() - t) * 1e3:.1f} ms", flush=True)
