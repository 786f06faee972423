"""Where a graphed TEMPO step's time goes outside the graph replay (GPU): cProfile of one warmed-up run.

    python bench/profile_graphed_step.py [k] [steps]
"""
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model  # noqa: E402
from tempo_core import build_settings  # noqa: E402
from tempo_core.engine import tempo_events  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 8
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 32
lm = random_model("llama3b", "cuda", "bf16")
s = build_settings(dict(prompt="Explain the theory of relativity simply.", raw_prompt=True, selection_threshold=0.0,
                        max_parallel_tokens=k, max_tokens=steps, min_steps=steps, use_retroactive_pruning=True,
                        attention_threshold=0.02))
for _ in range(2):
    t0 = time.perf_counter()
    trace = [e for e in tempo_events(lm, s)][-1].trace
    torch.cuda.synchronize()
    print(f"{(time.perf_counter() - t0) / steps * 1e3:.2f} ms/step ({trace.stats['cuda_graphs']})")
prof = cProfile.Profile()
prof.enable()
[e for e in tempo_events(lm, s)]
torch.cuda.synchronize()
prof.disable()
st = pstats.Stats(prof)
st.sort_stats("tottime").print_stats(25)
st.sort_stats("cumulative").print_stats(30)
