"""cProfile of TEMPO's Python side per step (random Llama-3B on GPU, or the embedded model on CPU)."""
import cProfile
import pstats
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model  # noqa: E402
from tempo_core import build_settings, run  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 1
lm = random_model("llama3b", "cuda", "bf16")
s = build_settings(dict(prompt="What is the capital of France?", raw_prompt=True, selection_threshold=0.0,
                        max_parallel_tokens=k, max_tokens=32, min_steps=32))
run(lm, s)
prof = cProfile.Profile()
prof.enable()
trace = run(lm, s)
prof.disable()
print("mean step ms", trace.timings["mean_step_ms"])
pstats.Stats(prof).sort_stats("tottime").print_stats(22)
