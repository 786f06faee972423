"""What a shared server costs under hostile or heavy use, on the embedded model (README: What a visitor can...).

    .venv/bin/python bench/bench_serving.py [--prompt-tokens 3000] [--waiting 40]

1. Peak RSS growth of one run with retroactive pruning on a long prompt (the prefill used to keep an N x N
   fp32 attention map per scored layer).
2. /health round-trip times on a real server while one long run holds the model and N API requests wait.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_prompt_rss(lm, prompt_tokens: int) -> dict:
    from tempo_core import build_settings, run
    words = " ".join(["the quick brown fox jumps over the lazy dog"] * (prompt_tokens // 9 + 1))
    ids = lm.tokenizer(words)["input_ids"][:prompt_tokens]
    prompt = lm.tokenizer.decode(ids)
    s = build_settings({"prompt": prompt, "raw_prompt": True, "max_tokens": 8, "selection_threshold": 0.05,
                        "use_retroactive_pruning": True})
    before = peak_rss_mb()
    t0 = time.perf_counter()
    trace = run(lm, s)
    return {"prompt_tokens": len(trace.prompt_token_ids), "peak_rss_growth_mb": round(peak_rss_mb() - before, 1),
            "seconds": round(time.perf_counter() - t0, 2), "steps": len(trace.steps)}


def health_under_load(lm, waiting: int) -> dict:
    import httpx
    import uvicorn

    import app as tempo_app
    from tempo_core.serving.limits import Limits
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limits = Limits(mcts_simulations=1000, max_forward_passes=10**7, max_tokens_fed=10**8, max_seconds=600,
                    max_waiting=waiting + 1)
    fastapi_app = tempo_app.build_app(lm, concurrency=1, limits=limits)
    srv = uvicorn.Server(uvicorn.Config(fastapi_app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url, slots = f"http://127.0.0.1:{port}", fastapi_app.state.shared.slots
    hang_up_s = 20.0  # every client gives up (closes its connection) after this long

    def post(body: dict) -> None:
        try:
            httpx.post(url + "/api/generate", json=body, timeout=hang_up_s)
        except httpx.TimeoutException:
            pass
    pool = ThreadPoolExecutor(waiting + 1)
    pool.submit(post, {"prompt": "Tell me a story.", "use_mcts": True, "mcts_simulations": 500, "max_tokens": 200})
    while slots.active < 1:
        time.sleep(0.05)
    for _ in range(waiting):
        pool.submit(post, {"prompt": "Hi", "max_tokens": 4})
    t_sent = time.perf_counter()
    while slots.waiting < waiting:
        time.sleep(0.05)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        httpx.get(url + "/health", timeout=30)
        times.append((time.perf_counter() - t0) * 1e3)
    while slots.active or slots.waiting:
        time.sleep(0.05)
    freed = time.perf_counter() - t_sent - hang_up_s
    pool.shutdown()
    fastapi_app.state.shared.stops.forget_all()
    srv.should_exit = True
    return {"waiting": waiting, "health_ms_median": round(statistics.median(times), 1),
            "health_ms_max": round(max(times), 1), "seconds_to_free_after_clients_left": round(max(0.0, freed), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=3000)
    ap.add_argument("--waiting", type=int, default=40)
    args = ap.parse_args()
    from tempo_core import load_model
    lm = load_model(None)
    print("long prompt + pruning:", long_prompt_rss(lm, args.prompt_tokens), flush=True)
    print("/health under load:", health_under_load(lm, args.waiting), flush=True)


if __name__ == "__main__":
    main()
