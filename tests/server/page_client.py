"""Helpers for tests that drive a served page: its events called the way the browser calls them, and waiting."""

from __future__ import annotations

import json
import time

import httpx


class PageClient:
    """Calls the page's events the way its frontend does (queue/join + SSE), under a session hash we choose."""

    def __init__(self, url: str, fastapi_app, session: str):
        self.url, self.session = url, session
        self.demo = fastapi_app.state.demo
        self.fns = {getattr(f.fn, "__name__", None): (i, f) for i, f in self.demo.fns.items()}

    def form(self, **settings) -> list:
        """run_stream's inputs (the form) in order: the form's defaults with `settings` changed."""
        _, fn = self.fns["run_stream"]
        assert len(fn.inputs) == len(fn.input_keyword_names)  # the form and nothing else
        return [settings.get(name, comp.value) for name, comp in zip(fn.input_keyword_names, fn.inputs)]

    def call(self, name: str, data: list, timeout: float = 120, seen: list | None = None) -> dict:
        """The event's output; `seen` collects every message the queue sent (progress included)."""
        index, fn = self.fns[name]
        if not fn.queue:
            r = httpx.post(self.url + "/gradio_api/run/predict",
                           json={"data": data, "fn_index": index, "session_hash": self.session}, timeout=timeout)
            r.raise_for_status()
            return r.json()
        r = httpx.post(self.url + "/gradio_api/queue/join", json={"data": data, "fn_index": index,
                                                                  "session_hash": self.session, "event_data": None,
                                                                  "trigger_id": None}, timeout=timeout)
        r.raise_for_status()
        with httpx.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": self.session},
                          timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if seen is not None:
                        seen.append(msg)
                    if msg.get("msg") == "process_completed":
                        assert msg["success"], msg
                        return msg["output"]
        raise AssertionError("no result")


def wait_until(cond, timeout: float = 300.0, interval: float = 0.05) -> bool:
    """True as soon as `cond()` is (asked every `interval` seconds), False after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False
