"""On a GPU: how long the server's start spends capturing a class's batch forwards (engine.warm_batch_graphs), and
how long a class's first ticks take after it, against a cold start (random Llama-3.2-3B shape, bf16).

    python3 bench/warm_start_gpu.py [--cold]

Prints the warm-up's seconds and shapes, then the ticks of 32 runs of 16 steps with pruning on from start to end
(profile_batch_tick.whole_runs). Run it once with --cold (no warm-up: the first ticks capture and compile) and once
without, each in a fresh process. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_steps import random_model  # noqa: E402
from profile_batch_tick import whole_runs  # noqa: E402
from tempo_core import build_settings  # noqa: E402
from tempo_core.serving.warmup import warm_batch_graphs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="no warm-up: the class's first ticks capture")
    args = ap.parse_args()
    lm = random_model("llama3b", "cuda", "bf16")
    if not args.cold:
        t0 = time.perf_counter()
        shapes = warm_batch_graphs(lm, build_settings({"prompt": "warm-up", "raw_prompt": True,
                                                       "use_retroactive_pruning": True}))
        print(f"warm-up: {shapes} shapes in {time.perf_counter() - t0:.1f} s")
    whole_runs(lm, 32, 2, 16, pruning=True)  # pruning on, as the page starts and as the warm-up captured


if __name__ == "__main__":
    main()
