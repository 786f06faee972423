"""Where a tick of N batched runs spends its time on the GPU (random Llama-3B shape, bf16): per-run Python, the
forward, and how many kernels a tick launches.

    python3 bench/profile_batch_tick.py [--runs 32] [--k 2]

N runs of exactly k candidates per step are served by one Batcher, the ticks driven on this thread; after 4 warm
ticks, 4 ticks are profiled (torch.profiler). Prints the wall time per tick, the time inside `forward_batch`, the
kernels launched per tick, and the CPU ops that cost most. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batching import run_settings  # noqa: E402
from bench_steps import random_model  # noqa: E402
from tempo_core import batch as batch_module  # noqa: E402
from tempo_core.engine import tempo_events  # noqa: E402
from tempo_core.serving.scheduler import Batcher  # noqa: E402


def manual_batcher(lm, runs: int, k: int, steps: int, pruning: bool = False) -> Batcher:
    """A Batcher holding `runs` runs as bench_batching.py makes them, its ticks driven by the caller."""
    batcher = Batcher(None)  # no executor: the caller drives its ticks
    for s in run_settings(runs, k, steps, pruning):
        batcher.add(lambda s=s: tempo_events(lm, s, cooperative=True, cuda_graphs=False), lambda e, err: None)
    return batcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=32)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--ticks", type=int, default=4)
    ap.add_argument("--own-caches", action="store_true", help="runs keep caches of their own, not the K/V store")
    ap.add_argument("--eager-forward", action="store_true", help="no captured batch forwards (batchgraph.py)")
    ap.add_argument("--whole", type=int, metavar="STEPS",
                    help="first serve the runs with STEPS steps each from start to end, timing every tick")
    args = ap.parse_args()
    lm = random_model("llama3b", "cuda", "bf16")
    if args.own_caches:
        lm.runtime.kv_store = False
    if args.own_caches or args.eager_forward:
        lm.runtime.batch_graphs = False
    if args.whole:
        for _ in range(2):  # the first a warm-up
            whole_runs(lm, args.runs, args.k, args.whole)
    batcher = manual_batcher(lm, args.runs, args.k, 64)
    for _ in range(4):
        batcher.tick()
    spent = [0.0]
    plain = batch_module.forward_batch

    def timed(requests):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = plain(requests)
        torch.cuda.synchronize()
        spent[0] += time.perf_counter() - t0
        return out
    batch_module.forward_batch = timed
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.ticks):
        batcher.tick()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.ticks
    print(f"caches: {'own' if args.own_caches else 'in the K/V store'}; forward: "
          f"{'eager' if lm.runtime.batch_graphs is False else 'captured graphs'}; "
          f"{args.runs} runs, k = {args.k}: {wall * 1e3:.1f} ms a tick, of which forward_batch "
          f"{spent[0] / args.ticks * 1e3:.1f} ms; the rest (each run's step in Python) "
          f"{(wall - spent[0] / args.ticks) / args.runs * 1e3:.2f} ms a run")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.ticks):
            batcher.tick()
        torch.cuda.synchronize()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(f"kernels launched per tick: {launches / args.ticks:.0f}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


def whole_runs(lm, runs: int, k: int, steps: int, pruning: bool = False) -> None:
    """`runs` runs of `steps` steps from their start to their end, as bench_batching.py serves them: each tick's ms
    (the first ones feed the prompts, the last ones end the runs)."""
    batcher = manual_batcher(lm, runs, k, steps, pruning)
    ticks = []
    while batcher.active:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        batcher.tick()
        torch.cuda.synchronize()
        ticks.append((time.perf_counter() - t0) * 1e3)
    print(f"{runs} runs of {steps} steps: {sum(ticks):.0f} ms in {len(ticks)} ticks "
          f"({runs * steps / sum(ticks) * 1e3:.0f} steps/s): " + " ".join(f"{t:.0f}" for t in ticks))


if __name__ == "__main__":
    main()
