"""Aggregate TEMPO steps/s with N runs at once: one forward per tick for all runs (serving.scheduler.Batcher) against
the round robin it replaced (a forward per run per step: the same Batcher with a tick budget of one run's rows).

    python bench/bench_batching.py                              # embedded SmolLM2-135M, this machine
    python bench/bench_batching.py --random-config llama3b      # random weights, Llama-3.2-3B shape (GPU, bf16)

Every run has a set of exactly --k candidates per step (threshold 0, max_parallel_tokens k; EOS may not end a
run) and its own prompt. On a GPU the round robin is timed both ways today's runs go: each run replaying CUDA
graphs (while the pool has static-cache slots) and eager, and the batched ticks with the runs' caches in the
model's K/V store and each tick's forward replayed from a captured graph (batchgraph.py, the CUDA default), in the
store with eager forwards, and in tensors of their own. Variants alternate within each
round. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_steps import PROMPTS, random_model, sync  # noqa: E402
from tempo_core import build_settings, load_model  # noqa: E402
from tempo_core.engine import tempo_events  # noqa: E402
from tempo_core.runtime.kvstore import kv_store  # noqa: E402
from tempo_core.serving.scheduler import Batcher  # noqa: E402


def run_settings(runs: int, k: int, steps: int, pruning: bool = False) -> list:
    """`runs` runs' settings, each its own prompt, every step a set of exactly `k` (threshold 0, EOS may not end a
    run before `steps`); `pruning`: retroactive pruning on, as the page starts (attention of every layer recorded)."""
    words = " ".join(PROMPTS).split()
    return [build_settings(dict(prompt=" ".join(words[i % 7:i % 7 + 6 + i % 5]), max_tokens=steps, min_steps=steps,
                                selection_threshold=0.0, max_parallel_tokens=k, raw_prompt=True,
                                use_retroactive_pruning=pruning)) for i in range(runs)]


def serve(lm, runs: int, k: int, steps: int, max_rows: int, graphs: bool, shared_kv: bool = True,
          no_batcher: bool = False, batch_graphs: bool = True, pruning: bool = False) -> dict:
    """`runs` runs of `steps` steps served by one Batcher; aggregate steps/s and the wall time. `shared_kv` False:
    the runs keep their caches in tensors of their own even where the model has a K/V store (kvstore.py).
    `batch_graphs` False: the batched forwards stay eager where they would replay captured graphs (batchgraph.py).
    `no_batcher`: the runs made one after another on this thread, as the CLI makes a run (no Batcher, no model
    thread): what a single run cost before the server batched."""
    store = kv_store(lm) or False
    lm.runtime.kv_store = store if shared_kv else False
    captured, lm.runtime.batch_graphs = lm.runtime.batch_graphs, lm.runtime.batch_graphs if batch_graphs else False
    settings = run_settings(runs, k, steps, pruning)
    finished = threading.Semaphore(0)
    errors: list[BaseException] = []
    made = [0]

    def on_event(event, error):
        if error is not None:
            errors.append(error)
        elif event.done:
            made[0] += len(event.trace.steps)
        if error is not None or event.done:
            finished.release()

    if no_batcher:
        sync(lm.device)
        t0 = time.perf_counter()
        for s in settings:
            made[0] += len(list(tempo_events(lm, s, cuda_graphs=graphs))[-1].trace.steps)
        sync(lm.device)
        wall = time.perf_counter() - t0
        lm.runtime.kv_store, lm.runtime.batch_graphs = store, captured
        return {"wall_s": wall, "steps": made[0], "steps_per_s": made[0] / wall, "ticks": 0}
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(pool, max_rows=max_rows)
        sync(lm.device)
        t0 = time.perf_counter()
        for s in settings:
            batcher.add(lambda s=s: tempo_events(lm, s, cooperative=True, cuda_graphs=graphs), on_event)
        for _ in settings:
            finished.acquire()
        sync(lm.device)
        wall = time.perf_counter() - t0
    lm.runtime.kv_store, lm.runtime.batch_graphs = store, captured
    if errors:
        raise errors[0]
    return {"wall_s": wall, "steps": made[0], "steps_per_s": made[0] / wall, "ticks": batcher.ticks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random-config", choices=["llama3b"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--runs", default="1,4,16,32")
    ap.add_argument("--k", type=int, default=2, help="candidates per step in every run")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-rows", type=int, default=256, help="the batched variant's tick budget")
    ap.add_argument("--only", help="comma list of variants to time (default: all)")
    ap.add_argument("--pruning", action="store_true", help="retroactive pruning on in every run (the page's start)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.random_config:
        dev = "cuda" if args.device == "auto" else args.device
        lm = random_model(args.random_config, dev, "bf16" if args.dtype == "auto" else args.dtype)
    else:
        lm = load_model(None, None if args.device == "auto" else args.device,
                        None if args.dtype == "auto" else args.dtype)
    variants = {"batched": dict(max_rows=args.max_rows, graphs=False),
                "round robin": dict(max_rows=1, graphs=False)}
    if lm.device.type == "cuda":
        variants["batched eager"] = dict(max_rows=args.max_rows, graphs=False, batch_graphs=False)
        variants["batched own caches"] = dict(max_rows=args.max_rows, graphs=False, shared_kv=False,
                                              batch_graphs=False)
        variants["round robin graphed"] = dict(max_rows=1, graphs=True)
        variants["batched graphed alone"] = dict(max_rows=args.max_rows, graphs=True)
        variants["graphed no batcher"] = dict(max_rows=args.max_rows, graphs=True, no_batcher=True)
    if args.only:
        variants = {name: kw for name, kw in variants.items() if name in args.only.split(",")}
    for kw in variants.values():
        kw["pruning"] = args.pruning
    serve(lm, 2, args.k, 4, args.max_rows, lm.device.type == "cuda", pruning=args.pruning)  # warm-up (captures)
    rows = []
    for n in (int(x) for x in args.runs.split(",")):
        times: dict[str, list[float]] = {name: [] for name in variants}
        if lm.device.type == "cuda":  # the batch graphs of this many runs' shapes are captured before timing
            serve(lm, n, args.k, args.steps, args.max_rows, graphs=False, pruning=args.pruning)
        for _ in range(args.rounds):
            for name, kw in variants.items():
                times[name].append(serve(lm, n, args.k, args.steps, **kw)["steps_per_s"])
        row = {"runs": n, **{name: statistics.median(v) for name, v in times.items()}}
        baselines = [v for name, v in row.items() if name.startswith("round robin")]  # (not the no-batcher line)
        if "batched" in row and baselines:
            row["speed-up"] = row["batched"] / max(baselines)
        rows.append(row)
        print(" | ".join(f"{name} {value:.1f}" if isinstance(value, float) else f"{name} {value}"
                         for name, value in row.items()), flush=True)
    print(json.dumps({"model": lm.name, "device": torch.cuda.get_device_name() if lm.device.type == "cuda"
                      else "cpu", "k": args.k, "steps": args.steps, "pruning": args.pruning, "rows": rows}))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
