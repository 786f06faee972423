"""A short run beside a long unit of model work, on the embedded model and one model thread (serving.scheduler.Batcher).

    python bench/bench_beside.py [--long-tokens 8000] [--rounds 1]

Starts one heavy run (an ~8000-token prompt with pruning; a run with the faithfulness meter over 32 paths; MCTS
at the page's caps) or research job (a threshold sweep; the baselines: TEMPO, greedy and HF beam search), and 1 s
later (the meter: 1 s into its analysis) a 2-token run. Reports when the short run got its first step and its
answer (seconds from its start), and when the heavy work ended and why (a time limit of --limit-s seconds).
Research jobs run on a thread of their own beside the model's, as on the server (Shared.research_executor).
Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempo_core import build_settings, generate, load_model  # noqa: E402
from tempo_core.analysis.baselines import baselines  # noqa: E402
from tempo_core.analysis.sweep import sweep  # noqa: E402
from tempo_core.serving.scheduler import Batcher  # noqa: E402
from tempo_core.stop import RunStop, stop_reason  # noqa: E402

LETTERS = "qzxjkvbwyfgpmhdcul"  # one token each, two characters with the space: 8000 tokens fit the 20,000 characters


def heavy_settings(kind: str, tokens: int) -> dict:
    if kind == "long prompt":
        return dict(prompt=" ".join(LETTERS[i * 7 % len(LETTERS)] for i in range(tokens)), max_tokens=8,
                    use_retroactive_pruning=True, raw_prompt=True)
    if kind == "faithfulness x32":
        return dict(prompt="Tell me a story about a dragon.", max_tokens=24, selection_threshold=0.02,
                    faithfulness=True, faithfulness_paths=32)
    if kind == "mcts at caps":
        return dict(prompt="Tell me a story about a dragon.", mode="mcts", mcts_simulations=20, mcts_depth=8,
                    max_tokens=24)
    # research jobs: the page's defaults, at the Research tab's lengths
    return dict(prompt="Tell me a story about a dragon.", max_tokens=200, selection_threshold=0.05,
                use_retroactive_pruning=True)


RESEARCH = {"sweep x5": lambda lm, s, stop: sweep(lm, s, [0.02, 0.05, 0.1, 0.2, 0.3], stop),
            "baselines": lambda lm, s, stop: baselines(lm, s, stop=stop)}


def research_beside(lm, kind: str, limit_s: float) -> dict:
    """A research job on a thread of its own (as the server runs one) and, 1 s in, a short run on the model's."""
    out: dict = {"heavy": kind}
    stop = RunStop(limit_s)
    with ThreadPoolExecutor(1) as research, ThreadPoolExecutor(1) as pool:
        t_heavy = time.monotonic()
        job = research.submit(RESEARCH[kind], lm, build_settings(heavy_settings(kind, 0)), stop)
        time.sleep(1.0)
        out.update(short_run(Batcher(pool), lm, limit_s))
        result = job.result()
        out["heavy_end_s"] = round(time.monotonic() - t_heavy, 2)
        traces = result if isinstance(result, list) else [result["tempo"], result["greedy"]]
        out["heavy_stop"] = stop_reason(stop) if stop.is_set() else traces[-1].stop_reason
    return out


def short_run(batcher: Batcher, lm, limit_s: float) -> dict:
    """A 2-token run served by `batcher`: seconds to its first step and to its answer."""
    out, done, t0 = {}, threading.Event(), time.monotonic()

    def on_short(event, error):
        if error is not None:
            out["short_error"] = repr(error)
            done.set()
            return
        if "short_first_s" not in out and event.trace.steps:
            out["short_first_s"] = round(time.monotonic() - t0, 2)
        if event.done:
            out["short_done_s"] = round(time.monotonic() - t0, 2)
            done.set()

    batcher.add(lambda: generate(lm, build_settings(dict(prompt="Hi!", max_tokens=2)), RunStop(limit_s),
                                 cooperative=True), on_short)
    done.wait(600)
    return out


def beside(lm, kind: str, tokens: int, limit_s: float) -> dict:
    out: dict = {"heavy": kind}
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(pool)
        t_heavy = time.monotonic()
        heavy_stop = RunStop(limit_s)

        analysing, heavy_done = threading.Event(), threading.Event()

        def on_heavy(event, error):
            if event is not None and event.progress and not analysing.is_set():
                out["heavy_prompt_tokens"] = len(event.trace.prompt_token_ids)
                analysing.set()
            if error is not None or event.done:
                out.setdefault("heavy_prompt_tokens", len(event.trace.prompt_token_ids) if event else None)
                out["heavy_end_s"] = round(time.monotonic() - t_heavy, 2)
                out["heavy_stop"] = repr(error) if error else event.trace.stop_reason
                heavy_done.set()

        batcher.add(lambda: generate(lm, build_settings(heavy_settings(kind, tokens)), heavy_stop, cooperative=True),
                    on_heavy, heavy_stop.extend)
        if kind.startswith("faithfulness"):  # the short run comes during the meter
            analysing.wait(120)
        time.sleep(1.0)
        out.update(short_run(batcher, lm, limit_s))
        heavy_done.wait(2 * limit_s)  # the heavy run ends by its time limit
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long-tokens", type=int, default=8000)
    ap.add_argument("--limit-s", type=float, default=10.0, help="the heavy run's time limit")
    ap.add_argument("--only", help="comma list of heavy kinds (default: all)")
    args = ap.parse_args()
    lm = load_model(None)
    for kind in args.only.split(",") if args.only else ("long prompt", "faithfulness x32", "mcts at caps",
                                                          *RESEARCH):
        result = (research_beside(lm, kind, args.limit_s) if kind in RESEARCH else
                  beside(lm, kind, args.long_tokens, args.limit_s))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
