"""TEMPO Explorer: a Gradio Blocks app (Hugging Face Spaces style) with a JSON API beside it.

    python app.py     # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; TEMPO_MODEL picks the model

One model is shared by every user; each run keeps its own trace (plain data) in the session's state.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Iterator
from urllib.parse import urlencode

import gradio as gr
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from components.controls import (EXAMPLES, RESEARCH_EXAMPLES, RESEARCH_FIELDS, build_controls, enforce_caps,
                                 form_values, settings_from_form)
from components.figures import attention_figure, report_html, text_html, threshold_figure, tree_figure
from components.inspect import find_node, node_choices, node_details, read_trace_file, trace_at
from components.research_tab import build_research_tab
from tempo_core import LoadedModel, ModelError, SettingsError, Trace, __version__, build_settings, generate
from tempo_core.config import FIELDS, TempoSettings

log = logging.getLogger("tempo.app")
CONCURRENCY = int(os.environ.get("TEMPO_CONCURRENCY", "1"))
MIN_FRAME_S = 0.1  # redraw at most ~10 times a second; the last step is always drawn
DOWNLOADS = os.path.join(tempfile.gettempdir(), "tempo-explorer-downloads")

CSS = """
.tempo-text {font-family: ui-monospace, monospace; font-size: 15px; line-height: 1.9}
.tempo-text .tok {cursor: pointer; padding: 0 1px; border-radius: 3px}
.tempo-text .tok:hover {background: #fff3c4}
.tempo-text .pruned {text-decoration: line-through; opacity: .55}
.tempo-text .set {background: #f1edff; border-radius: 4px}
.tempo-text .clean {margin-top: .6em; font-family: sans-serif; font-size: 14px; color: #444}
#status {min-height: 1.6em}
"""

# Clicking a token in the text, or a node of the Plotly tree, selects that candidate (gr.Plot has no click
# event, so the tree's plotly_click is hooked here and sent through this component's trigger()).
TEXT_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-node]');
  if (t) trigger('click', {node: t.dataset.node});
});
setInterval(() => {
  document.querySelectorAll('#tempo-tree .js-plotly-plot, #tempo-heatmap .js-plotly-plot').forEach((gd) => {
    if (!gd.on || gd.__tempoHooked) return;
    gd.__tempoHooked = true;
    gd.on('plotly_click', (ev) => {
      const p = ev.points && ev.points[0];
      if (p && typeof p.customdata === 'string') trigger('click', {node: p.customdata});
    });
  });
}, 700);
"""

INTRO = """# TEMPO Explorer
**Threshold-Enabled Multipath Parallel Output**: every token above the selection threshold is kept, all of a
step's candidates share **one position** in **one sequence** (siblings masked from each other, one KV cache),
and later tokens' attention prunes them retroactively. Pick a prompt and press **Generate**; the tree grows
step by step. Click a token (in the text or the tree) to inspect it."""


class Runs:
    """Per-session stop flags and a global cap on concurrent generations (UI and API share it)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.slots = threading.BoundedSemaphore(limit)
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def stop_flag(self, session: str) -> threading.Event:
        with self._lock:
            ev = self._stops[session] = threading.Event()
            return ev

    def stop(self, session: str) -> None:
        with self._lock:
            ev = self._stops.get(session)
        if ev is not None:
            ev.set()


def status_line(trace: Trace, running: bool) -> str:
    n = len(trace.steps)
    if n == 0:
        return "Starting…" if running else f"no steps ({trace.stop_reason})"
    last = trace.steps[-1]
    rate = trace.timings.get("steps_per_s", 0.0)
    pruned = trace.stats.get("pruned", 0)
    head = "Generating" if running else f"Done ({trace.stop_reason.replace('_', ' ')})"
    return (f"{head} · step {n} · set size {len(last.candidates)} · mean set "
            f"{trace.stats.get('mean_set_size', 0):.2f} · {pruned} pruned · {rate:.1f} steps/s")


def views(trace: Trace, selected: str | None = None, current: int | None = None):
    return (tree_figure(trace, selected=selected), attention_figure(trace),
            threshold_figure(trace, current_step=len(trace.steps) - 1 if current is None else current),
            text_html(trace))


def share_query(s: TempoSettings) -> str:
    """Query string of the settings that differ from the defaults (opening it fills the form)."""
    defaults = build_settings({}).to_dict()
    changed = {k: v for k, v in s.to_dict().items() if v != defaults[k]}
    return "?" + urlencode({k: json.dumps(v) if not isinstance(v, str) else v for k, v in changed.items()})


def build_demo(lm: LoadedModel, runs: Runs) -> gr.Blocks:
    with gr.Blocks(title="TEMPO Explorer", delete_cache=(3600, 3600)) as demo:
        trace_state = gr.State(None)  # the finished (or last streamed) trace, as a JSON dict
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=330):
                controls = build_controls()
                names = list(controls)
                inputs = [controls[n] for n in names]
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=3, min_width=600):
                status = gr.Markdown("Ready: model **%s** on %s." % (lm.name, lm.device), elem_id="status")
                text_view = gr.HTML(text_html(Trace(lm.name, "tempo", {}, "", "", [])), js_on_load=TEXT_JS,
                                    elem_id="tempo-text")
                with gr.Tabs():
                    with gr.Tab("Tree"):
                        tree_plot = gr.Plot(elem_id="tempo-tree", show_label=False)
                        with gr.Row():
                            node_pick = gr.Dropdown([], label="Inspect candidate", scale=1)
                            details = gr.Markdown(node_details(Trace("", "tempo", {}, "", "", []), ""))
                    with gr.Tab("Pruning heatmap"):
                        heat_plot = gr.Plot(show_label=False, elem_id="tempo-heatmap")
                    with gr.Tab("Threshold curve"):
                        curve_plot = gr.Plot(show_label=False, elem_id="tempo-curve")
                    research = build_research_tab(lm, runs, trace_state,
                                                  lambda values: settings_from_form(names, values), inputs)
                    with gr.Tab("Replay & export"):
                        replay = gr.Slider(0, 1, value=0, step=1, label="Replay: step (no model needed)")
                        with gr.Row():
                            upload = gr.File(label="Replay an uploaded JSON trace", file_types=[".json"],
                                             elem_id="trace-upload")
                            with gr.Column():
                                dl_trace = gr.DownloadButton("Download JSON trace", visible=False)
                                dl_report = gr.DownloadButton("Download HTML report", visible=False)
                                share = gr.Textbox(label="Link with these settings", interactive=False,
                                                   buttons=["copy"])
        gr.Examples(EXAMPLES, [controls["prompt"], controls["selection_threshold"], controls["max_tokens"],
                               controls["mode"]], label="Examples")
        gr.Examples([v for _, v in RESEARCH_EXAMPLES], [controls[n] for n in RESEARCH_FIELDS],
                    example_labels=[label for label, _ in RESEARCH_EXAMPLES],
                    label="Research presets (then open the Research tab)")
        outputs = [tree_plot, heat_plot, curve_plot, text_view, status, trace_state]

        # gr.Request must be a positional parameter before *values for Gradio to pass it
        def run_stream(request: gr.Request, *values: Any) -> Iterator[tuple]:
            try:
                s = settings_from_form(names, list(values))
            except SettingsError as exc:
                gr.Warning(str(exc))
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {exc}", gr.skip()
                return
            session = getattr(request, "session_hash", None) or "anonymous"
            stop = runs.stop_flag(session)
            next_draw, build_s = 0.0, 0.0
            with runs.slots:
                try:
                    for event in generate(lm, s, stop):
                        if not event.done and time.perf_counter() < next_draw:
                            continue
                        t0 = time.perf_counter()
                        tr = event.trace
                        frame = (*views(tr), status_line(tr, not event.done), tr.to_dict() if event.done else None)
                        build_s = time.perf_counter() - t0
                        # drawing must not starve decoding: wait at least twice the last frame's build time
                        next_draw = time.perf_counter() + max(MIN_FRAME_S, 2 * build_s)
                        yield frame
                except SettingsError as exc:
                    gr.Warning(str(exc))
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {exc}", gr.skip()
                except Exception as exc:  # noqa: BLE001 - the page shows a message, never a traceback
                    log.exception("run failed")
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** run failed: {exc}", gr.skip()

        def after_run(request: gr.Request, data: dict | None):
            if not data:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            trace = Trace.from_dict(data)
            n = len(trace.steps)
            # one folder per session, overwritten by its next run (Gradio serves copies from its own cache)
            folder = os.path.join(DOWNLOADS, getattr(request, "session_hash", None) or "anonymous")
            os.makedirs(folder, exist_ok=True)
            path_json = os.path.join(folder, "tempo-trace.json")
            with open(path_json, "w") as f:
                f.write(trace.to_json(indent=1))
            path_html = path_json.replace(".json", "-report.html")
            with open(path_html, "w") as f:
                f.write(report_html(trace))
            # the page address (events arrive on the queue endpoint, so request.url is not the page)
            base = (request.headers.get("referer") or str(request.base_url)).split("?")[0] if request is not None else ""
            try:
                link = base + share_query(build_settings(trace.settings))
            except SettingsError:
                link = base
            return (gr.update(maximum=max(1, n - 1), value=max(0, n - 1)),
                    gr.update(choices=node_choices(trace), value=None),
                    gr.update(value=path_json, visible=True), gr.update(value=path_html, visible=True), link)

        run_evt = run_btn.click(run_stream, inputs, outputs, api_name="generate", concurrency_limit=runs.limit,
                                concurrency_id="model", show_progress="hidden")
        run_btn.click(lambda data: data, trace_state, research["previous"], queue=False, api_visibility="private")
        run_evt.then(after_run, [trace_state], [replay, node_pick, dl_trace, dl_report, share],
                     api_visibility="private")
        run_evt.then(research["refresh"], [trace_state], research["refresh_outputs"], api_visibility="private")
        def stop_run(request: gr.Request):
            runs.stop(getattr(request, "session_hash", None) or "anonymous")

        stop_btn.click(stop_run, None, None, api_name="stop", concurrency_limit=None, queue=False)

        def show_node(data: dict | None, node: str | None):
            if not data or not node:
                return gr.skip(), gr.skip()
            trace = Trace.from_dict(data)
            return tree_figure(trace, selected=node), node_details(trace, node)

        def clicked(data: dict | None, evt: gr.EventData):
            node = (getattr(evt, "_data", None) or {}).get("node")
            if not data or not node:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            tree, text = show_node(data, node)
            found = find_node(Trace.from_dict(data), node)
            pruned = found is not None and found[2].pruned_at is not None
            return tree, text, node, node if pruned else gr.skip()

        node_pick.change(show_node, [trace_state, node_pick], [tree_plot, details], api_visibility="private")
        text_view.click(clicked, [trace_state], [tree_plot, details, node_pick, research["rewind_pick"]],
                        api_visibility="private")

        def replay_to(data: dict | None, step: int):
            if not data:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            past = trace_at(Trace.from_dict(data), int(step))
            return (*views(past, current=int(step)), f"Replay: step {int(step) + 1} of {len(data['steps'])}")

        replay.input(replay_to, [trace_state, replay], [tree_plot, heat_plot, curve_plot, text_view, status],
                      api_name="replay", concurrency_limit=None, show_progress="hidden")

        def load_trace(file):
            if file is None:
                return (gr.skip(),) * 6
            try:
                trace = read_trace_file(file)
            except ValueError as exc:
                gr.Warning(str(exc))
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {exc}", gr.skip()
            return (*views(trace), f"Loaded trace: {len(trace.steps)} steps, {trace.model}", trace.to_dict())

        loaded = upload.upload(load_trace, [upload], outputs, concurrency_limit=None)
        loaded.then(after_run, [trace_state], [replay, node_pick, dl_trace, dl_report, share], api_visibility="private")
        loaded.then(research["refresh"], [trace_state], research["refresh_outputs"], api_visibility="private")

        # the curve redraws as soon as its controls change, before any generation
        curve_inputs = [controls[n] for n in ("dynamic_threshold", "attention_threshold", "final_threshold",
                                              "bezier_p1", "bezier_p2", "use_relu", "relu_activation_point",
                                              "max_tokens")]

        def preview_curve(*values: Any):
            try:
                return threshold_figure(settings_from_form(names, list(values)))
            except SettingsError:
                return gr.skip()
        for comp in curve_inputs:
            comp.change(preview_curve, inputs, curve_plot, api_visibility="private", concurrency_limit=None,
                        show_progress="hidden")

        def fill_from_link(request: gr.Request, *values: Any):
            params = dict(request.query_params) if request is not None else {}
            known = {k: v for k, v in params.items() if k in FIELDS}
            if not known:  # a plain visit keeps the form's own defaults
                return (*[gr.skip()] * len(names), preview_curve(*values))
            try:
                s = enforce_caps(build_settings({k: _parse_param(v) for k, v in known.items()}))
            except SettingsError as exc:
                gr.Warning(f"ignored link settings: {exc}")
                s = build_settings({})
            values = form_values(s, names)
            if "prompt" not in known:
                values[names.index("prompt")] = gr.skip()
            return (*values, threshold_figure(s))

        demo.load(fill_from_link, inputs, [*inputs, curve_plot], api_visibility="private")
    return demo


def _parse_param(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def build_app(lm: LoadedModel, concurrency: int = CONCURRENCY) -> FastAPI:
    """FastAPI app: /health, /api/generate, /api/v2/generate, /docs, and the Gradio UI at /."""
    runs = Runs(concurrency)
    api = FastAPI(title="TEMPO Explorer API", version=__version__,
                  description="Generate with TEMPO; the answer is the JSON trace (schema in the README).")

    @api.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_loaded": lm is not None, "model": lm.name, "device": str(lm.device),
                "dtype": str(lm.dtype).replace("torch.", ""), "version": __version__}

    def _generate(body: Any) -> JSONResponse:
        if not isinstance(body, dict):
            return _error("body", "body: must be a JSON object of settings (snake_case), e.g. {\"prompt\": \"Hi\"}")
        try:
            s = enforce_caps(build_settings(body))
            if not s.prompt.strip():
                raise SettingsError("prompt", "must be a non-empty string")
            with runs.slots:
                event = None
                for event in generate(lm, s):
                    pass
            return JSONResponse(event.trace.to_dict())
        except SettingsError as exc:
            return _error(exc.field, str(exc))

    @api.post("/api/generate", summary="Run TEMPO and return the JSON trace")
    def api_generate(body: Any = Body(..., examples=[{"prompt": "What is the capital of France?",
                                                      "selection_threshold": 0.1, "max_tokens": 30}])):
        return _generate(body)

    @api.post("/api/v2/generate", summary="Same as /api/generate")
    def api_generate_v2(body: Any = Body(...)):
        return _generate(body)

    return gr.mount_gradio_app(api, build_demo(lm, runs), path="/", css=CSS,
                               theme=gr.themes.Soft(primary_hue="indigo"))


def _error(field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"loc": ["body", field], "msg": message,
                                                              "type": "value_error"}]})


def main() -> None:
    import uvicorn

    from tempo_core import load_model
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        lm = load_model(os.environ.get("TEMPO_MODEL"), os.environ.get("TEMPO_DEVICE"), os.environ.get("TEMPO_DTYPE"))
    except ModelError as exc:
        raise SystemExit(f"error: {exc}")
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    print(f"TEMPO Explorer: model {lm.name} on {lm.device} — open http://{host}:{port}", flush=True)
    uvicorn.run(build_app(lm), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
