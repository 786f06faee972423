"""Does watching a run slow it down? The same request through /api/generate and through the streamed page
endpoint /generate, side by side on one server (the embedded model, `python app.py` in a subprocess).

    .venv/bin/python bench/bench_streaming.py [--steps 40 200] [--rounds 2] [--browser]

Per length: API wall time, streamed wall time (join -> last frame, read as a browser reads it: Gradio's queue
and server-sent events), their ratio, the number of frames and the bytes of the frame at the end of the run.
With --browser: time from the Generate click to the first tree node on screen on a warm page (Chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"Prompt": "Tell me a long story about a dragon who learns to read.", "Selection threshold": 0.1,
            "Max tokens": 40, "Min steps before EOS": 40}


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start")


def generate_inputs(url: str, steps: int) -> tuple[int, list]:
    cfg = httpx.get(url + "/config").json()
    dep = next(d for d in cfg["dependencies"] if d.get("api_name") == "generate")
    comps = {c["id"]: c for c in cfg["components"]}
    want = {**SETTINGS, "Max tokens": steps, "Min steps before EOS": steps}
    data = []
    for cid in dep["inputs"]:
        props = comps[cid].get("props", {})
        data.append(want.get(props.get("label"), props.get("value")))
    return dep["id"], data


def api_run(url: str, steps: int) -> float:
    body = {"prompt": SETTINGS["Prompt"], "selection_threshold": SETTINGS["Selection threshold"], "max_tokens": steps,
            "min_steps": steps, "use_retroactive_pruning": True, "attention_threshold": 0.02}
    t0 = time.perf_counter()
    r = httpx.post(url + "/api/generate", json=body, timeout=600)
    r.raise_for_status()
    assert len(r.json()["steps"]) == steps
    return time.perf_counter() - t0


def streamed_run(url: str, steps: int) -> dict:
    fn, data = generate_inputs(url, steps)
    session = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    httpx.post(url + "/gradio_api/queue/join", json={"data": data, "fn_index": fn, "session_hash": session,
                                                     "event_data": None, "trigger_id": None}).raise_for_status()
    sizes, first = [], None
    with httpx.stream("GET", url + "/gradio_api/queue/data", params={"session_hash": session}, timeout=600) as s:
        for line in s.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") in ("process_generating", "process_completed"):
                sizes.append(len(line.encode()))
                first = first or time.perf_counter() - t0
            if msg.get("msg") == "process_completed":
                assert msg["success"], msg
                break
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "frames": len(sizes), "first_frame_s": first,
            "last_frame_kb": sizes[-2] / 1e3 if len(sizes) > 1 else sizes[-1] / 1e3,
            "max_frame_kb": max(sizes[1:-1] or sizes) / 1e3, "total_kb": sum(sizes) / 1e3}


def first_tree_in_browser(url: str) -> float | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/?max_tokens=8", wait_until="load")
        page.locator("#generate").click()  # warm: plotly.js loaded, model warm
        page.locator("#status").get_by_text("Done").wait_for(timeout=120_000)
        page.locator("#prompt textarea").fill("Name three colours.")
        t0 = time.perf_counter()
        page.locator("#generate").click()
        page.wait_for_function("() => { const s = document.querySelector('#status');"
                               " return s && s.innerText.startsWith('Generating'); }", timeout=60_000)
        page.locator("#tempo-tree .points path").first.wait_for(timeout=60_000)
        dt = time.perf_counter() - t0
        browser.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[40, 200])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--browser", action="store_true")
    args = ap.parse_args()
    proc, url = start_server()
    try:
        api_run(url, 8)  # warm-up
        for steps in args.steps:
            api, streamed = [], []
            for _ in range(args.rounds):  # interleaved, so drift hits both alike
                api.append(api_run(url, steps))
                streamed.append(streamed_run(url, steps))
            a = statistics.median(api)
            s = statistics.median(r["wall_s"] for r in streamed)
            last = streamed[-1]
            print(f"{steps} steps: API {a:.2f} s, streamed {s:.2f} s, ratio {s / a:.3f}; frames {last['frames']}, "
                  f"first frame {last['first_frame_s']:.2f} s, frame at the end {last['last_frame_kb']:.1f} KB, "
                  f"largest {last['max_frame_kb']:.1f} KB, all frames {last['total_kb']:.0f} KB", flush=True)
        if args.browser:
            dt = first_tree_in_browser(url)
            print("first tree on screen after Generate (warm page):",
                  "no chromium" if dt is None else f"{dt:.2f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
