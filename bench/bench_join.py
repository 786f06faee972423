"""Seconds from a run joining N busy runs to its first step: does the first step wait one tick or two?

    .venv/bin/python bench/bench_join.py [--busy 29] [--joins 8] [--rounds 2]

N runs of the page's defaults (threshold 0.1, retroactive pruning; EOS may not end them) are served by one Batcher
on the embedded model, as a class's runs are on the server. Once they are mid-run, short runs join one at a time
at random moments; for each, the seconds from joining to its first step event. Alternates the Batcher feeding a
run's first set in the tick that ends its prompt (`early_first_sets`, the default) with leaving it to the next
tick. Not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_classroom import TOPICS  # noqa: E402
from tempo_core import build_settings, generate, load_model  # noqa: E402
from tempo_core.serving.scheduler import Batcher  # noqa: E402
from tempo_core.serving.warmup import warm_prompt_head  # noqa: E402


def settings(topic: str, steps: int):
    return build_settings(dict(prompt=f"Tell me one fact about {topic}.", max_tokens=steps, min_steps=steps,
                               selection_threshold=0.1, use_retroactive_pruning=True))


def first_steps(lm, pool: ThreadPoolExecutor, busy: int, joins: int, early: bool, seed: int) -> list[float]:
    """Seconds to the first step of each of `joins` runs joining `busy` runs mid-run."""
    batcher, stop = Batcher(pool, early_first_sets=early), threading.Event()
    started, errors = threading.Semaphore(0), []

    def keep_busy(i):
        def on_event(event, error):
            if error is not None:
                errors.append(error)
            if error is not None or (event.index == 2 and not event.progress):
                started.release()
        batcher.add(lambda: generate(lm, settings(TOPICS[i % len(TOPICS)], 1000), stop, cooperative=True),
                    on_event)
    for i in range(busy):
        keep_busy(i)
    for _ in range(busy):
        started.acquire()
    if errors:
        raise SystemExit(f"a busy run failed: {errors[0]!r}")
    rng, seconds = random.Random(seed), []
    for j in range(joins):
        time.sleep(rng.uniform(0.2, 1.0))
        first = threading.Event()
        t0 = time.perf_counter()
        batcher.add(lambda j=j: generate(lm, settings(TOPICS[(busy + j) % len(TOPICS)], 2), cooperative=True),
                    lambda event, error, first=first: first.set())
        first.wait()
        seconds.append(time.perf_counter() - t0)
    stop.set()
    while batcher.active:
        time.sleep(0.05)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=29)
    ap.add_argument("--joins", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    pool = ThreadPoolExecutor(1)  # the model's thread: loaded on it, served on it (server/shared.model_executor)
    lm = pool.submit(load_model, None, None, None, False).result()
    pool.submit(warm_prompt_head, lm, settings("x", 1)).result()
    seconds: dict[str, list[float]] = {"first set in the tick its prompt ends": [], "first set the tick after": []}
    for r in range(args.rounds):
        for name, early in (("first set in the tick its prompt ends", True), ("first set the tick after", False)):
            got = first_steps(lm, pool, args.busy, args.joins, early, seed=r)
            seconds[name] += got
            print(f"round {r}, {name}: {[round(x, 2) for x in got]}", flush=True)
    print(json.dumps({"busy": args.busy, **{name: {"p50": round(statistics.median(v), 2),
                                                  "max": round(max(v), 2)} for name, v in seconds.items()}}))
    pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    main()
