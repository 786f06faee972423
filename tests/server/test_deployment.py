"""Deployment: a ZeroGPU Space, the run-time requirements, and the knobs a Space sets in its environment."""

from __future__ import annotations

import sys
import types

import pytest
from fastapi.testclient import TestClient
from tiny import tiny_llama

import app as tempo_app
from components.server.shared import Shared
from tempo_core import Trace, build_settings
from tempo_core.serving.limits import Limits
from tempo_core.stop import RunStop


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def test_zerogpu_runs_model_work_under_the_spaces_decorator(lm, monkeypatch):
    seen = {}

    def gpu(duration):
        def wrap(fn):
            def wrapped(*args):
                seen["duration"] = duration(*args)
                return fn(*args)
            return wrapped
        return wrap
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    shared = Shared(lm, Limits(max_seconds=30))
    events = list(shared.decode(build_settings({"prompt": "the cat", "max_tokens": 3}), RunStop()))
    shared.close()
    assert seen["duration"] == 40 and events[-1].done is True
    assert isinstance(events[-1].trace, Trace)  # plain data leaves the GPU function, no tensors


def test_requirements_hold_only_what_the_app_needs_at_run_time():
    from pathlib import Path
    root = Path(tempo_app.__file__).parent
    runtime = {line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
               for line in (root / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")}
    assert not runtime & {"pytest", "playwright", "httpx", "gradio_client"}
    dev = (root / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and "pytest" in dev and "playwright" in dev
    assert "torch==2.13.0" in (root / "requirements.txt").read_text()


def test_the_servers_knobs_come_from_the_environment(lm, monkeypatch):
    env = {"TEMPO_APP_MAX_TOKENS": "50", "TEMPO_APP_MAX_SECONDS": "7.5", "TEMPO_API_MAX_WAITING": "3",
           "TEMPO_QUEUE_SIZE": "9", "TEMPO_MAX_SESSIONS": "11", "TEMPO_VIEW_CONCURRENCY": "3",
           "TEMPO_RESEARCH_CONCURRENCY": "2", "TEMPO_CONCURRENCY": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fastapi_app = tempo_app.build_app(lm)
    shared, demo = fastapi_app.state.shared, fastapi_app.state.demo
    assert shared.limits.max_tokens == 50 and shared.limits.max_seconds == 7.5
    assert shared.limits.max_waiting == 3 and shared.slots.limit == 2 and shared.research_slots.limit == 2
    assert shared.view_concurrency == 3 and demo._queue.max_size == 9 and demo.state_session_capacity == 11
    r = TestClient(fastapi_app).post("/api/generate", json={"prompt": "x", "max_tokens": 60})
    assert "[1, 50] on this server" in r.json()["detail"][0]["msg"]
    monkeypatch.setenv("TEMPO_APP_MAX_SECONDS", "soon")
    with pytest.raises(ValueError, match="TEMPO_APP_MAX_SECONDS: must be a positive number, got 'soon'"):
        Limits.from_env()
