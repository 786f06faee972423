"""A stranger's client: Gradio's HTTP queue protocol spoken by hand (what the page's frontend would send, and what
it never would), raw sockets, and a real `app.py` server in a process of its own whose CPU and memory we read."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

ROOT = Path(__file__).resolve().parents[2]


def wait_until(cond: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """`cond()`'s first true value, or None once `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    return None


def fresh_session() -> str:
    return secrets.token_hex(6)


class Server:
    """`python app.py` on a free loopback port with `env`, the way `make app` starts it. `url`, `pid`; `cpu_s()`
    and `rss_bytes()` read /proc; `stop()` ends it (SIGTERM, then SIGKILL after 20 s)."""

    def __init__(self, env: dict[str, str], log_path: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_ANALYTICS_ENABLED": "False", **env}
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=full_env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        up = wait_until(lambda: self.proc.poll() is not None or self.healthy(), timeout=300, interval=0.5)
        assert up and self.proc.poll() is None, f"the server did not start: {log_path.read_text()[-3000:]}"
        self.config = httpx.get(self.url + "/config", timeout=30).json()

    def healthy(self, timeout: float = 2.0) -> dict | None:
        try:
            r = httpx.get(self.url + "/health", timeout=timeout)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def cpu_s(self) -> float:
        """CPU seconds the server's process has used (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def fn(self, api_name: str) -> dict:
        return next(d for d in self.config["dependencies"] if d.get("api_name") == api_name)

    def inputs(self, api_name: str, **by_label: Any) -> list:
        """The event's inputs as the page would send them: each component's default value, those named by
        their label (`Prompt`, `Max tokens`, ...) replaced."""
        components = {c["id"]: c for c in self.config["components"]}
        values = []
        for cid in self.fn(api_name)["inputs"]:
            props = components[cid]["props"]
            values.append(by_label.get(props.get("label"), props.get("value")))
        return values

    def join(self, api_name: str, data: list, session: str, headers: dict | None = None,
             client: httpx.Client | None = None) -> httpx.Response:
        body = {"data": data, "fn_index": self.fn(api_name)["id"], "session_hash": session, "event_data": None,
                "trigger_id": None}
        return (client or httpx).post(self.url + "/gradio_api/queue/join", json=body, headers=headers or {},
                                      timeout=30)

    def listen(self, session: str, timeout: float = 600, headers: dict | None = None) -> Iterator[dict]:
        """The session's queue messages as they come, until its stream closes."""
        with httpx.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": session},
                          headers=headers or {}, timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    yield msg
                    if msg.get("msg") == "close_stream":
                        return

    def call(self, api_name: str, data: list, session: str | None = None, timeout: float = 600,
             headers: dict | None = None) -> tuple[httpx.Response, list[dict]]:
        """Join and read the stream to the end, as the page does: (the join's answer, every message)."""
        session = session or fresh_session()
        r = self.join(api_name, data, session, headers)
        if r.status_code != 200:
            return r, []
        return r, list(self.listen(session, timeout, headers))

    def upload(self, content: bytes, name: str = "trace.json") -> str:
        """A file sent through Gradio's upload route, as the page's file widget sends it: its server path."""
        r = httpx.post(self.url + "/gradio_api/upload", files={"files": (name, content, "application/json")},
                       timeout=30)
        r.raise_for_status()
        return r.json()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def file_data(path: str, name: str = "t.json") -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def completed(messages: list[dict]) -> dict | None:
    return next((m for m in messages if m.get("msg") == "process_completed"), None)


def shown_text(messages: list[dict]) -> str:
    """Every string in the event's outputs (what the page would show: statuses, errors, tables)."""
    out: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    for m in messages:
        walk(m.get("output"))
    return "\n".join(out)
