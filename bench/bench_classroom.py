"""A class of N students pressing Generate within a few seconds of each other, on the embedded model.

    .venv/bin/python bench/bench_classroom.py [--students 30] [--tokens 16] [--spread 3] [--env K=V ...]
                                              [--client light|gradio]

Starts `app.py` in its own process (as a Space would run it). Once N students have the page open (loaded, and its
load event run, which is when Gradio makes a session's state), each presses Generate with its own prompt at a
random moment within `--spread` seconds and streams the run, the way the page does (Gradio's queue protocol;
`--client gradio`: through gradio_client, whose own CPU cost shares the server's cores). For each: seconds from
the press to the first frame that shows a step, and to the finished run. Prints p50/p95/max, errors, the CPU
seconds the server and the clients used meanwhile, and how fast the machine was (`machine_s`: 20 fp32 matmuls of
2048x2048, timed before the server starts).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

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


class Generate:
    """What a page sends when Generate is pressed, found once from the app's config: the `/generate` event, its
    inputs' defaults (the form as it loads) and which output is the status line."""

    def __init__(self, url: str):
        from gradio_client import Client
        client = Client(url, verbose=False)
        params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
        self.names = [p["parameter_name"] for p in params]
        self.defaults = [p["parameter_default"] for p in params]
        self.fn_index = next(i for i, d in enumerate(client.config["dependencies"]) if d.get("api_name") == "generate")
        self.endpoint = client.endpoints[self.fn_index]
        ids = {c["id"]: c for c in client.config["components"]}
        outputs = client.config["dependencies"][self.fn_index]["outputs"]
        self.status = next(i for i, o in enumerate(outputs) if ids[o].get("props", {}).get("elem_id") == "status")
        # what a page runs as it opens (a share link's form), with the inputs' values as the page loads; Gradio
        # makes a session's state on its first event
        self.on_load = [(i, [ids[c].get("props", {}).get("value") for c in d["inputs"]])
                        for i, d in enumerate(client.config["dependencies"])
                        if any(t[1] == "load" for t in d.get("targets", []))]

    def data(self, **values) -> list:
        data = [values.get(name, default) for name, default in zip(self.names, self.defaults)]
        return list(self.endpoint.insert_empty_state(*data))


def open_page(url: str, generate: Generate) -> str:
    """Open the page the way a browser does: load it, then run its load events (which is when Gradio makes the
    session's state). Returns the session's hash."""
    where = urllib.parse.urlsplit(url)
    page = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
    page.request("GET", "/")
    page.getresponse().read()
    session = uuid.uuid4().hex
    for fn_index, data in generate.on_load:
        for msg in queue_events(url, session, fn_index, data):
            if msg.get("msg") == "process_completed" and not msg.get("success"):
                raise RuntimeError(f"opening the page: {str(msg.get('output'))[:200]}")
    return session


def queue_events(url: str, session: str, fn_index: int, data: list) -> Iterator[dict]:
    """Join Gradio's queue with one event of `session` and yield the messages of its stream until it ends."""
    where = urllib.parse.urlsplit(url)
    host, port = where.hostname, where.port
    join = http.client.HTTPConnection(host, port, timeout=60)
    join.request("POST", "/gradio_api/queue/join", json.dumps({
        "data": data, "fn_index": fn_index, "trigger_id": fn_index, "session_hash": session, "event_data": None}),
        {"Content-Type": "application/json"})
    answer = join.getresponse()
    if answer.status != 200:
        raise RuntimeError(f"join: HTTP {answer.status} {answer.read()[:200]!r}")
    answer.read()
    stream = http.client.HTTPConnection(host, port, timeout=300)
    stream.request("GET", f"/gradio_api/queue/data?session_hash={session}")
    for line in stream.getresponse():
        if line.startswith(b"data:"):
            msg = json.loads(line[5:])
            yield msg
            if msg.get("msg") in ("process_completed", "close_stream"):
                return


def page_frames(url: str, session: str, generate: Generate, **values) -> Iterator[str]:
    """Press Generate the way the page does (Gradio's queue protocol: join, then read the event stream) and yield
    the status line of each frame. Light on the client's CPU, as a browser on its own machine would be."""
    status = ""
    for msg in queue_events(url, session, generate.fn_index, generate.data(**values)):
        if msg.get("msg") in ("process_generating", "process_completed"):
            out = (msg.get("output") or {})
            if out.get("error"):
                raise RuntimeError(out["error"])
            value = (out.get("data") or [None] * (generate.status + 1))[generate.status]
            if isinstance(value, str):  # a whole value
                status = value
            elif isinstance(value, list):  # a streamed frame: edits against the last one
                for op, _, v in value:
                    status = v if op == "replace" else status + v if op == "append" else status
            yield status


def student(url: str, prompt: str, tokens: int, delay: float, ready: threading.Semaphore, go: threading.Event,
            out: dict, light: Generate | None) -> None:
    try:
        if light is None:
            from gradio_client import Client
            client = Client(url, verbose=False)
        else:
            session = open_page(url, light)
        ready.release()
        go.wait()
        time.sleep(delay)
        t0 = time.perf_counter()
        values = dict(prompt=prompt, max_tokens=tokens, selection_threshold=0.1)
        frames = (page_frames(url, session, light, **values) if light is not None else
                  (str(f[4]) for f in client.submit(**values, api_name="/generate")))
        for status in frames:
            out["frames"], out["last"] = out.get("frames", 0) + 1, status[:40]
            if "first" not in out and (status.startswith("Generating") or status.startswith("Done")):
                out["first"] = time.perf_counter() - t0
            if status.startswith("**Error"):
                out["error"] = status
        out["done"] = time.perf_counter() - t0
        out["status"] = status
    except Exception as exc:  # noqa: BLE001 - counted as a failed student
        out["error"] = repr(exc)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_seconds() -> float:
    """Seconds for 20 fp32 2048x2048 matmuls: how fast this shared machine is right now (it varies by 1.5x over a
    day), so rounds run at different times can be compared."""
    import torch
    a = torch.randn(2048, 2048)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    return round(time.perf_counter() - t0, 2)


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
    ap.add_argument("--client", choices=("light", "gradio"), default="light",
                    help="light: Gradio's queue protocol over plain HTTP, about what a browser costs its machine; "
                         "gradio: a gradio_client per student (about 0.14 s of this machine's CPU per Generate, "
                         "on the server's cores)")
    args = ap.parse_args()
    machine_s = machine_seconds()
    port = free_port()
    server = start_server(port, dict(kv.split("=", 1) for kv in args.env))
    url = f"http://127.0.0.1:{port}/"
    try:
        rng = random.Random(0)
        light = Generate(url) if args.client == "light" else None
        ready, go, results = threading.Semaphore(0), threading.Event(), [dict() for _ in range(args.students)]
        threads = [threading.Thread(target=student, daemon=True, args=(
            url, f"Tell me one fact about {TOPICS[i % len(TOPICS)]}.", args.tokens, rng.uniform(0, args.spread), ready,
            go, results[i], light)) for i in range(args.students)]
        for t in threads:
            t.start()
        # the class has the page open before anyone presses Generate (30 page loads at once take the server ~5 s
        # of CPU, which is not what this measures)
        for _ in threads:
            ready.acquire(timeout=120)
        time.sleep(1.0)
        cpu0, server_cpu0 = os.times(), _cpu_seconds(server.pid)
        t0 = time.perf_counter()
        go.set()
        for t in threads:  # a student whose run never finishes is reported as stalled
            t.join(timeout=max(1.0, args.timeout - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        used = os.times()
        clients_cpu = used.user + used.system - (cpu0.user + cpu0.system)
        server_cpu = _cpu_seconds(server.pid) - server_cpu0
    finally:
        server.terminate()
    first = [r["first"] for r in results if "first" in r]
    done = [r["done"] for r in results if "done" in r and "error" not in r]
    errors = [r.get("error") or f"stalled after {r.get('frames', 0)} frames at {r.get('last')!r}"
              for r in results if "error" in r or "done" not in r]
    summary = {"students": args.students, "tokens": args.tokens, "spread_s": args.spread, "env": args.env,
               "client": args.client,
               "first_frame_s": {"p50": round(statistics.median(first), 2), "p95": round(pct(first, 0.95), 2),
                                 "max": round(max(first), 2)} if first else None,
               "completion_s": {"p50": round(statistics.median(done), 2), "p95": round(pct(done, 0.95), 2),
                                "max": round(max(done), 2)} if done else None,
               "errors": len(errors), "wall_s": round(wall, 1),
               # CPU seconds while the class ran, of the server and of this process's clients (same 2 cores)
               "server_cpu_s": round(server_cpu, 1), "clients_cpu_s": round(clients_cpu, 1), "machine_s": machine_s}
    print(json.dumps(summary))
    for e in errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
