"""On a GPU: the CUDA-graphed TEMPO step against the eager one, and its speed against HF static-cache greedy.

    python bench/check_graphs.py [--layers 28] [--steps 32]

Random Llama-3.2-3B shape, bf16. For k forced to 1, 2, 4, 8 (threshold 0, max_parallel_tokens k), with and
without pruning: the graphed run's candidates and pruning decisions against the eager static-cache run's, the
largest probability difference, and ms per step of both (the graphed run's first steps of each bucket include
its capture; the mean of the second half is reported too).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model, static_step_ms  # noqa: E402
from tempo_core import build_settings  # noqa: E402
from tempo_core.engine import tempo_events  # noqa: E402
from tempo_core.events import encode_prompt  # noqa: E402


def run(lm, s, **kw):
    trace, t0 = None, time.perf_counter()
    for event in tempo_events(lm, s, **kw):
        trace = event.trace
    torch.cuda.synchronize()
    return trace, time.perf_counter() - t0


ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=32)
a = ap.parse_args()
lm = random_model("llama3b", "cuda", "bf16")
prompt = "Explain the theory of relativity simply."
ok = True
for pruning in (False, True):
    for k in (1, 2, 4, 8):
        s = build_settings(dict(prompt=prompt, raw_prompt=True, selection_threshold=0.0, max_parallel_tokens=k,
                                max_tokens=a.steps, min_steps=a.steps, use_retroactive_pruning=pruning,
                                attention_threshold=0.02))
        eager, _ = run(lm, s, static_cache=True)
        graphed, t_capture = run(lm, s, cuda_graphs=True)  # captures
        graphed2, _ = run(lm, s, cuda_graphs=True)
        same = ([[(c.token_id, c.pruned_at) for c in st.candidates] for st in eager.steps]
                == [[(c.token_id, c.pruned_at) for c in st.candidates] for st in graphed.steps])
        dprob = max(abs(x.prob - y.prob) for p, q in zip(eager.steps, graphed.steps)
                    for x, y in zip(p.candidates, q.candidates))
        half = a.steps // 2
        e_ms = statistics.mean(st.time_ms for st in eager.steps[half:])
        g_ms = statistics.mean(st.time_ms for st in graphed2.steps[half:])
        ok &= same
        print(f"pruning={pruning!s:5} k={k}: same candidates & pruning {same}, max |dprob| {dprob:.4f}; "
              f"eager {e_ms:.1f} ms/step, graphed {g_ms:.1f} ms/step; first graphed run {t_capture:.1f} s",
              flush=True)
_, ids = encode_prompt(lm, build_settings(dict(prompt=prompt, raw_prompt=True)))
print(f"HF static-cache greedy: {static_step_ms(lm, ids, a.steps):.1f} ms/step")
print("SAME" if ok else "DIFFERENT")
