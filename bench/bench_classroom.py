"""A class of N students pressing Generate within a few seconds of each other, on the embedded model.

    .venv/bin/python bench/bench_classroom.py [--students 30] [--tokens 16] [--spread 3] [--env K=V ...]

Starts `app.py` in its own process (as a Space would run it), then N `gradio_client` sessions, each with its own
prompt, submit `/generate` at random moments within `--spread` seconds and stream the run. For each: seconds
from its submit to the first frame that shows a step, and to the finished run. Prints p50/p95/max and errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the moon", "volcanoes", "bees", "the ocean", "trains", "music", "rain", "chess", "bread", "robots",
          "rivers", "the sun", "cats", "maps", "clocks", "ice", "forests", "bridges", "stars", "deserts",
          "birds", "paper", "glass", "snow", "wind", "islands", "caves", "apples", "light", "sound"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env={**os.environ, **env,
                            "GRADIO_SERVER_PORT": str(port)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:  # type: ignore[union-attr]
        if "open http" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc
    raise SystemExit("the server did not start")


def student(url: str, prompt: str, tokens: int, delay: float, go: threading.Event, out: dict) -> None:
    from gradio_client import Client
    try:
        client = Client(url, verbose=False)
        go.wait()
        time.sleep(delay)
        t0 = time.perf_counter()
        job = client.submit(prompt=prompt, max_tokens=tokens, selection_threshold=0.1, api_name="/generate")
        for frame in job:
            status = str(frame[4])
            out["frames"], out["last"] = out.get("frames", 0) + 1, status[:40]
            if "first" not in out and (status.startswith("Generating") or status.startswith("Done")):
                out["first"] = time.perf_counter() - t0
            if status.startswith("**Error"):
                out["error"] = status
        out["done"] = time.perf_counter() - t0
        out["status"] = status
    except Exception as exc:  # noqa: BLE001 - counted as a failed student
        out["error"] = repr(exc)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--spread", type=float, default=3.0, help="seconds over which the class presses Generate")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds before a run counts as stalled")
    ap.add_argument("--env", nargs="*", default=[], help="server environment, K=V")
    args = ap.parse_args()
    port = free_port()
    server = start_server(port, dict(kv.split("=", 1) for kv in args.env))
    url = f"http://127.0.0.1:{port}/"
    try:
        rng = random.Random(0)
        go, results = threading.Event(), [dict() for _ in range(args.students)]
        threads = [threading.Thread(target=student, daemon=True, args=(url, f"Tell me one fact about {TOPICS[i % len(TOPICS)]}.",
                                                          args.tokens, rng.uniform(0, args.spread), go, results[i]))
                   for i in range(args.students)]
        for t in threads:
            t.start()
        time.sleep(3.0)  # every client connected
        t0 = time.perf_counter()
        go.set()
        for t in threads:  # a student whose run never finishes is reported as stalled
            t.join(timeout=max(1.0, args.timeout - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
    first = [r["first"] for r in results if "first" in r]
    done = [r["done"] for r in results if "done" in r and "error" not in r]
    errors = [r.get("error") or f"stalled after {r.get('frames', 0)} frames at {r.get('last')!r}"
              for r in results if "error" in r or "done" not in r]
    summary = {"students": args.students, "tokens": args.tokens, "spread_s": args.spread, "env": args.env,
               "first_frame_s": {"p50": round(statistics.median(first), 2), "p95": round(pct(first, 0.95), 2),
                                 "max": round(max(first), 2)} if first else None,
               "completion_s": {"p50": round(statistics.median(done), 2), "p95": round(pct(done, 0.95), 2),
                                "max": round(max(done), 2)} if done else None,
               "errors": len(errors), "wall_s": round(wall, 1)}
    print(json.dumps(summary))
    for e in errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
