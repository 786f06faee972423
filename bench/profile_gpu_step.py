"""Profile TEMPO steps on a random Llama-3B (GPU): where does a k-row step spend its time?"""
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model  # noqa: E402
from tempo_core import build_settings, run  # noqa: E402

lm = random_model("llama3b", "cuda", "bf16")
s = build_settings(dict(prompt="What is the capital of France?", raw_prompt=True, selection_threshold=0.0,
                        max_parallel_tokens=int(sys.argv[1]) if len(sys.argv) > 1 else 4, max_tokens=8, min_steps=8))
run(lm, s)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    run(lm, s)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
