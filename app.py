"""TEMPO Explorer: a Gradio Blocks app (Hugging Face Spaces style) with a JSON API beside it.

    python app.py     # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; TEMPO_MODEL picks the model

One model is shared by every user; each run keeps its own trace (plain data) in the session's state. Every
request is bounded (README: "What a visitor can and cannot make the server do"); nothing is written to disk.
This file only assembles: the tabs lay themselves out and wire their own listeners (components/tabs/), on the
state they share (components/server/shared.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse

from components.server import frame_diff
from components.server.api import BodyLimit, add_routes
from components.server.connections import server_config
from components.server.queue_guard import QueueGuard
from components.server.queue_watch import QueueWatch
from components.server.shared import Shared, env_int, model_executor
from components.server.uploads import MAX_UPLOAD_BYTES
from components.tabs.explore import Explore
from components.tabs.learn import Learn
from components.tabs.page import Page
from components.tabs.widgets import CSS as WIDGET_CSS
from components.tabs.widgets import PLOTLY_JS, RANGE_NOTE_HEAD
from tempo_core import LoadedModel, ModelError, SettingsError, __version__
from tempo_core.serving.limits import Limits

log = logging.getLogger("tempo.app")

CSS = WIDGET_CSS + """
#status {min-height: 1.6em}
#run-buttons {position: sticky; top: 0; z-index: 5; background: var(--block-background-fill)}
#run-buttons button {min-width: 70px}
.legend-line p {font-size: 12.5px; color: #666; margin: 0}
.tempo-downloads a {margin-right: .4em}
#sweep-table th {white-space: nowrap; word-break: keep-all}
/* the Examples tables fit a phone: cells wrap instead of the table scrolling sideways */
@media (max-width: 600px) {
  .table-wrap {overflow-x: hidden !important}
  .table-wrap table {table-layout: fixed; width: 100%}
  .table-wrap td, .table-wrap th {white-space: normal !important; overflow-wrap: anywhere; padding: 4px !important;
                                  font-size: 12px}
}
#sweep-table {overflow-x: auto}
"""

INTRO = """# TEMPO Explorer
Decoding that keeps **every** token above a probability threshold: the candidates of a step share **one
position** in **one sequence**, and later attention prunes the ones nobody looks at. Press **Generate** and
watch the tree grow; click any node or token for its details."""


@dataclass
class Site:
    """The page and its two top tabs (Explore holds Compare, Research and Replay & export beside its figures)."""
    blocks: gr.Blocks
    page: Page
    explore: Explore
    learn: Learn


def build_demo(shared: Shared) -> Site:
    """The page: a classroom server (TEMPO_DEMO) opens on the Learn walkthrough, any other on Explore."""
    classroom = shared.limits.demo
    with gr.Blocks(title="TEMPO Explorer", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        page = Page(shared, demo)  # its states sit outside any Tabs (a State among tabs shows as a phantom tab)
        with gr.Tabs(selected="learn" if classroom else "explore") as page.top:
            # tabs appear in the order they are made: a classroom's walkthrough first
            made = {tab: tab(shared, page) for tab in ((Learn, Explore) if classroom else (Explore, Learn))}
        page.connect()  # "a trace arrived" hooks after every event that shows one, whichever tab made it
        demo.unload(shared.end_session)
    return Site(demo, page, made[Explore], made[Learn])


def build_app(lm: LoadedModel, concurrency: int | None = None, limits: Limits | None = None,
              executor: ThreadPoolExecutor | None = None) -> FastAPI:
    """FastAPI app: /health, /api/generate, /api/v2/generate, /download/..., /docs, and the Gradio UI at /.
    `executor`: the threads the model was loaded on (model_executor), which then make every run."""
    shared = Shared(lm, limits or Limits.from_env(), concurrency or env_int("TEMPO_CONCURRENCY", 32),
                    env_int("TEMPO_RESEARCH_CONCURRENCY", 1), env_int("TEMPO_VIEW_CONCURRENCY", 2), executor=executor)
    api = FastAPI(title="TEMPO Explorer API", version=__version__,
                  description="Generate with TEMPO; the answer is the JSON trace (schema in the README).")
    add_routes(api, lm, shared.slots, shared.store, shared.limits, shared.batcher, shared.stepped,
               shared.research_slots, queue=lambda: api.state.queue_watch.report())
    api.add_api_route("/assets/plotly.min.js", lambda: FileResponse(PLOTLY_JS, headers={
        "Cache-Control": "public, max-age=86400"}), methods=["GET"], include_in_schema=False)
    frame_diff.install()  # Gradio's own frame diff corrupts figures whose lists shrink (server/frame_diff.py)
    site = build_demo(shared)
    demo = site.blocks
    # api_open=False: Gradio's /run/<name> would otherwise call a queued function directly, past every limit
    demo.queue(max_size=env_int("TEMPO_QUEUE_SIZE", 64), api_open=False)
    demo.max_threads = shared.concurrency + 40  # a streaming run waits for its steps in a worker thread
    demo.state_session_capacity = env_int("TEMPO_MAX_SESSIONS", 200)
    api = gr.mount_gradio_app(api, demo, path="/", css=CSS, theme=gr.themes.Soft(primary_hue="indigo"),
                              head=RANGE_NOTE_HEAD, max_file_size=f"{MAX_UPLOAD_BYTES // 1_000_000}mb")
    api.state.shared, api.state.demo, api.state.site = shared, demo, site
    shared.waiting_runs = lambda session_hash: waiting_model_events(demo, session_hash)
    api.state.queue_watch = QueueWatch(demo, on_gone=shared.client_gone)
    api.add_middleware(QueueGuard, watch=api.state.queue_watch)  # Gradio's queue, as a stranger may speak it
    api.add_middleware(BodyLimit)  # outermost: no body over the limit reaches the guard or any route
    return api


def waiting_model_events(demo: gr.Blocks, session_hash: str) -> int:
    """How many of a session's events wait in Gradio's queue for the model ("model" concurrency group). Reads
    the queue's own list (gradio 6.31's `event_queue_per_concurrency_id`); 0 if that ever changes shape."""
    try:
        waiting = demo._queue.event_queue_per_concurrency_id.get("model")
        return sum(1 for event in (waiting.queue if waiting else []) if event.session_hash == session_hash)
    except AttributeError:
        log.warning("cannot read Gradio's queue: a Stop sent before the page's Generate reaches only running runs")
        return 0


def main() -> None:
    from tempo_core import load_model
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        executor = model_executor(env_int("TEMPO_MODEL_THREADS", 1))
        # On a ZeroGPU Space each run borrows a GPU for its own call, so graphs captured in one call could not be
        # replayed in the next: there they are off unless TEMPO_CUDA_GRAPHS asks for them.
        zero_gpu = importlib.util.find_spec("spaces") is not None and "TEMPO_CUDA_GRAPHS" not in os.environ
        lm = executor.submit(load_model, os.environ.get("TEMPO_MODEL"), os.environ.get("TEMPO_DEVICE"),
                             os.environ.get("TEMPO_DTYPE"), False if zero_gpu else None).result()
        fastapi_app = build_app(lm, executor=executor)
    except (ModelError, SettingsError) as exc:
        raise SystemExit(f"error: {exc}")
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    print(f"TEMPO Explorer: model {lm.name} on {lm.device} — open http://{host}:{port}", flush=True)
    uvicorn.Server(server_config(fastapi_app, host, port, read_timeout_s=env_int("TEMPO_READ_TIMEOUT_S", 10),
                                 max_connections=env_int("TEMPO_MAX_CONNECTIONS", 512), log_level="warning")).run()


if __name__ == "__main__":
    main()
