"""Shared fixtures: the embedded model, and real servers on loopback (the app the way a browser or a script
reaches it). Tests are laid out like the code: the engine's algorithm (engine/) and its wings (runtime/, serving/,
analysis/), then figures/, server/, tabs/; hostile/ drives a real server from outside (make test-hostile)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import pytest

try:
    import gradio  # noqa: F401
except ImportError:  # the floor environment (make test-floor) has the engine and its figures, not the page
    collect_ignore = ["server", "tabs", "hostile"]


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct (converted from its GGUF once, then cached)."""
    from tempo_core import load_model
    return load_model()


@pytest.fixture()
def live_server() -> Callable:
    """`live_server(lm, **build_app_kwargs) -> (base url, FastAPI app)`: the whole app (page, queue and API) served
    by uvicorn in a thread on a free loopback port. Every server a test starts stops when the test ends (its runs
    told to stop first)."""
    import uvicorn

    import app as tempo_app
    from components.server.connections import server_config
    started: list[tuple[uvicorn.Server, threading.Thread, object]] = []

    def start(lm, **kwargs) -> tuple[str, object]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        fastapi_app = tempo_app.build_app(lm, **kwargs)
        srv = uvicorn.Server(server_config(fastapi_app, "127.0.0.1", port, log_level="error"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.time() + 60
        while not srv.started and time.time() < deadline:
            time.sleep(0.05)
        assert srv.started, "the test server did not start within 60 s"
        started.append((srv, thread, fastapi_app))
        return f"http://127.0.0.1:{port}", fastapi_app

    yield start
    for srv, thread, fastapi_app in started:
        fastapi_app.state.shared.stops.forget_all()
        srv.should_exit = True
    for srv, thread, _ in started:
        thread.join(timeout=30)


@pytest.fixture()
def built_page() -> Callable:
    """`built_page(lm, limits=None) -> app.Site`: the page built in-process (no server), its tabs' handlers called
    directly the way Gradio calls them. The model threads stop when the test ends."""
    import app as tempo_app
    from components.server.shared import Shared
    from tempo_core.serving.limits import Limits
    made: list[Shared] = []

    def build(lm, limits: Limits | None = None):
        shared = Shared(lm, limits or Limits())
        made.append(shared)
        return tempo_app.build_demo(shared)

    yield build
    for shared in made:
        shared.close()
