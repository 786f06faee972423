"""TEMPO Explorer: a Gradio Blocks app (Hugging Face Spaces style) with a JSON API beside it.

    python app.py     # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; TEMPO_MODEL picks the model

One model is shared by every user; each run keeps its own trace (plain data) in the session's state. Every
request is bounded (README: "What a visitor can and cannot make the server do"); nothing is written to disk.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import gradio as gr
from fastapi import FastAPI

from components.api import BodyLimit, add_routes
from components.controls import (EXAMPLES, RESEARCH_EXAMPLES, RESEARCH_FIELDS, build_controls, form_values,
                                 settings_from_form)
from components.figures import attention_figure, text_html, threshold_figure, tree_figure
from components.inspect import MAX_UPLOAD_BYTES, find_node, node_choices, node_details, read_trace_file, trace_at
from components.research_tab import build_research_tab
from components.sessions import Slots, StopFlags, TraceStore, session_key
from tempo_core import LoadedModel, ModelError, SettingsError, Trace, __version__, build_settings, generate
from tempo_core.config import FIELDS, TempoSettings, validate_prompt
from tempo_core.engine import encode_prompt
from tempo_core.limits import Limits, RunStop, check_budget

log = logging.getLogger("tempo.app")
MIN_FRAME_S = 0.1  # redraw at most ~10 times a second; the last step is always drawn


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"error: {name} must be a positive integer, got {value!r}") from None
    return n

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


def share_query(s: TempoSettings) -> str:
    """Query string of the settings that differ from the defaults (opening it fills the form)."""
    defaults = build_settings({}).to_dict()
    changed = {k: v for k, v in s.to_dict().items() if v != defaults[k]}
    return "?" + urlencode({k: json.dumps(v) if not isinstance(v, str) else v for k, v in changed.items()})


def downloads_html(run_id: str | None) -> str:
    if run_id is None:
        return ""
    return (f'<div class="tempo-downloads"><a href="download/{run_id}/tempo-trace.json" download>Download JSON trace</a>'
            f' · <a href="download/{run_id}/tempo-report.html" download>Download HTML report</a>'
            f' <small>(kept for an hour)</small></div>')


def on_gpu(fn: Callable, duration: Callable[..., float]) -> Callable:
    """On a ZeroGPU Space (the `spaces` package importable) run `fn` under its GPU decorator for a duration
    derived from the request; elsewhere `fn` itself. `fn` yields plain trace data only (nothing on the GPU)."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


@dataclass
class Explorer:
    """What the page's handlers share: the model, this server's limits and its per-session bookkeeping."""
    lm: LoadedModel
    limits: Limits = field(default_factory=Limits.from_env)
    concurrency: int = 1
    research_concurrency: int = 1
    view_concurrency: int = 2  # figure rebuilds from stored traces (replay, uploads, clicks) at once
    slots: Slots = field(init=False)
    research_slots: Slots = field(init=False)
    stops: StopFlags = field(default_factory=StopFlags)
    store: TraceStore = field(default_factory=TraceStore)

    def __post_init__(self) -> None:
        self.slots = Slots(self.concurrency)
        self.research_slots = Slots(self.research_concurrency)
        self.decode = on_gpu(self._decode, self._gpu_seconds)

    # --- requests -> settings -------------------------------------------------------------------------------
    def settings(self, form: dict[str, Any], runs: int = 1) -> TempoSettings:
        """Validated settings within this server's caps and compute budget (SettingsError names the field)."""
        s = settings_from_form(form, self.limits)
        validate_prompt(s)
        check_budget(s, len(encode_prompt(self.lm, s)[1]), self.limits, runs)
        return s

    def _gpu_seconds(self, s: TempoSettings, stop: RunStop) -> float:
        return self.limits.max_seconds + 10

    def _decode(self, s: TempoSettings, stop: RunStop) -> Iterator[Trace]:
        for event in generate(self.lm, s, stop):
            yield event.trace, event.done

    # --- handlers (plain functions of form values; the Blocks below only wires them) --------------------------
    def arm(self, request: gr.Request) -> None:
        """Generate was pressed: a Stop from now on applies to this run, even while it waits in the queue."""
        self.stops.arm(session_key(request))

    def stop(self, request: gr.Request) -> None:
        self.stops.stop(session_key(request))

    def end_session(self, request: gr.Request) -> None:
        """The tab closed: stop its run, drop its downloads and flags."""
        key = session_key(request)
        self.stops.forget(key)
        self.store.forget(key)

    def run_stream(self, request: gr.Request, **form: Any) -> Iterator[tuple]:
        """Generate, streaming (tree, heatmap, curve, text, status, trace state) while the run goes on."""
        key = session_key(request)
        flag = self.stops.start(key, None)
        try:
            try:
                s = self.settings(form)
            except SettingsError as exc:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {exc}", gr.skip()
                return
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), self._queue_line(), gr.skip()
            with self.slots.hold():
                flag.start_clock(self.limits.max_seconds)
                yield from self._frames(s, flag)
        finally:
            self.stops.finish(key, flag)

    def _queue_line(self) -> str:
        waiting = self.slots.waiting
        return "Starting…" if self.slots.active < self.slots.limit else f"Waiting for the model ({waiting} ahead)…"

    def _frames(self, s: TempoSettings, flag: RunStop) -> Iterator[tuple]:
        next_draw = 0.0
        try:
            for trace, done in self.decode(s, flag):
                if not done and time.perf_counter() < next_draw:
                    continue
                t0 = time.perf_counter()
                frame = (*views(trace), status_line(trace, not done), trace.to_dict() if done else None)
                # drawing must not starve decoding: wait at least twice the last frame's build time
                next_draw = time.perf_counter() + max(MIN_FRAME_S, 2 * (time.perf_counter() - t0))
                yield frame
        except SettingsError as exc:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {exc}", gr.skip()
        except Exception as exc:  # noqa: BLE001 - the page shows a message, never a traceback
            log.exception("run failed")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** run failed: {exc}", gr.skip()

    def after_run(self, request: gr.Request, data: dict | None):
        """A finished (or loaded) trace: replay range, candidate list, download links, share link."""
        if not data:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        trace = Trace.from_dict(data)
        n = len(trace.steps)
        run_id = self.store.put(session_key(request), trace.to_json())
        # the page address (events arrive on the queue endpoint, so request.url is not the page)
        base = (request.headers.get("referer") or str(request.base_url)).split("?")[0] if request is not None else ""
        try:
            link = base + share_query(build_settings(trace.settings))
        except SettingsError:
            link = base
        return (gr.update(maximum=max(1, n - 1), value=max(0, n - 1)), gr.update(choices=node_choices(trace), value=None),
                downloads_html(run_id), link)

    def load_trace(self, file: Any):
        if file is None:
            return (gr.skip(),) * 6
        try:
            trace = read_trace_file(file, self.limits.max_tokens, self.limits.max_parallel_tokens)
        except ValueError as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {html.escape(str(exc))}", gr.skip()
        return (*views(trace), f"Loaded trace: {len(trace.steps)} steps, {html.escape(trace.model)}", trace.to_dict())

    def fill_from_link(self, request: gr.Request, **form: Any):
        """Opening a shared link fills the form with its settings (a plain visit keeps the defaults)."""
        names = list(form)
        params = dict(request.query_params) if request is not None else {}
        known = {k: v for k, v in params.items() if k in FIELDS}
        if not known:
            return (*[gr.skip()] * len(names), preview_curve(self.limits, **form))
        try:
            s = build_settings({k: _parse_param(v) for k, v in known.items()}, caps=self.limits.caps)
        except SettingsError as exc:
            gr.Warning(f"ignored link settings: {exc}")
            s = build_settings({})
        values = form_values(s, names)
        if "prompt" not in known:
            values[names.index("prompt")] = gr.skip()
        return (*values, threshold_figure(s))


def views(trace: Trace, selected: str | None = None, current: int | None = None):
    return (tree_figure(trace, selected=selected), attention_figure(trace),
            threshold_figure(trace, current_step=len(trace.steps) - 1 if current is None else current),
            text_html(trace))


def preview_curve(limits: Limits, **form: Any):
    try:
        return threshold_figure(settings_from_form(form, limits))
    except SettingsError:
        return gr.skip()


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


def replay_to(data: dict | None, step: int):
    if not data:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    past = trace_at(Trace.from_dict(data), int(step))
    return (*views(past, current=int(step)), f"Replay: step {int(step) + 1} of {len(data['steps'])}")


def _parse_param(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def build_demo(app: Explorer) -> gr.Blocks:
    limits = app.limits
    with gr.Blocks(title="TEMPO Explorer", delete_cache=(3600, 3600)) as demo:
        trace_state = gr.State(None)  # the finished (or last streamed) trace, as a JSON dict
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=330):
                controls = build_controls(limits)
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=3, min_width=600):
                status = gr.Markdown("Ready: model **%s** on %s." % (app.lm.name, app.lm.device), elem_id="status")
                text_view = gr.HTML(text_html(Trace(app.lm.name, "tempo", {}, "", "", [])), js_on_load=TEXT_JS,
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
                    research = build_research_tab(app, trace_state, controls)
                    with gr.Tab("Replay & export"):
                        replay = gr.Slider(0, 1, value=0, step=1, label="Replay: step (no model needed)")
                        with gr.Row():
                            upload = gr.File(label="Replay an uploaded JSON trace", file_types=[".json"],
                                             elem_id="trace-upload")
                            with gr.Column():
                                downloads = gr.HTML("", elem_id="downloads")
                                share = gr.Textbox(label="Link with these settings", interactive=False,
                                                   buttons=["copy"])
        gr.Examples(EXAMPLES, [controls["prompt"], controls["selection_threshold"], controls["max_tokens"],
                               controls["mode"]], label="Examples")
        gr.Examples([v for _, v in RESEARCH_EXAMPLES], [controls[n] for n in RESEARCH_FIELDS],
                    example_labels=[label for label, _ in RESEARCH_EXAMPLES],
                    label="Research presets (then open the Research tab)")

        # --- wiring ----------------------------------------------------------------------------------------
        # figures from a stored trace (replay, uploads, clicks) share one bounded group: seconds of CPU each
        # on long runs, so never unlimited
        view = {"concurrency_id": "views", "concurrency_limit": app.view_concurrency}
        inputs = list(controls.values())
        outputs = [tree_plot, heat_plot, curve_plot, text_view, status, trace_state]
        finished = [replay, node_pick, downloads, share]
        run_btn.click(app.arm, None, None, queue=False, api_visibility="private")
        run_btn.click(lambda data: data, trace_state, research["previous"], queue=False, api_visibility="private")
        run_evt = run_btn.click(app.run_stream, None, outputs, inputs_kwargs=controls, api_name="generate",
                                concurrency_limit=app.concurrency, concurrency_id="model", show_progress="hidden")
        run_evt.then(app.after_run, [trace_state], finished, api_visibility="private", **view)
        run_evt.then(research["refresh"], [trace_state], research["refresh_outputs"], api_visibility="private", **view)
        stop_btn.click(app.stop, None, None, api_name="stop", concurrency_limit=None, queue=False)

        node_pick.change(show_node, [trace_state, node_pick], [tree_plot, details], api_visibility="private", **view)
        text_view.click(clicked, [trace_state], [tree_plot, details, node_pick, research["rewind_pick"]],
                        api_visibility="private", **view)
        replay.input(replay_to, [trace_state, replay], [tree_plot, heat_plot, curve_plot, text_view, status],
                     api_name="replay", show_progress="hidden", **view)
        loaded = upload.upload(app.load_trace, [upload], outputs, api_visibility="private", **view)
        loaded.then(app.after_run, [trace_state], finished, api_visibility="private", **view)
        loaded.then(research["refresh"], [trace_state], research["refresh_outputs"], api_visibility="private", **view)

        # the curve redraws as soon as its controls change, before any generation
        preview = lambda **form: preview_curve(limits, **form)  # noqa: E731
        for name in ("dynamic_threshold", "attention_threshold", "final_threshold", "bezier_p1", "bezier_p2",
                     "use_relu", "relu_activation_point", "max_tokens"):
            controls[name].change(preview, None, curve_plot, inputs_kwargs=controls, api_visibility="private",
                                  concurrency_limit=None, show_progress="hidden")
        demo.load(app.fill_from_link, None, [*inputs, curve_plot], inputs_kwargs=controls, api_visibility="private")
        demo.unload(app.end_session)
    return demo


def build_app(lm: LoadedModel, concurrency: int | None = None, limits: Limits | None = None) -> FastAPI:
    """FastAPI app: /health, /api/generate, /api/v2/generate, /download/..., /docs, and the Gradio UI at /."""
    app = Explorer(lm, limits or Limits.from_env(), concurrency or _env_int("TEMPO_CONCURRENCY", 1),
                   _env_int("TEMPO_RESEARCH_CONCURRENCY", 1), _env_int("TEMPO_VIEW_CONCURRENCY", 2))
    api = FastAPI(title="TEMPO Explorer API", version=__version__,
                  description="Generate with TEMPO; the answer is the JSON trace (schema in the README).")
    add_routes(api, lm, app.slots, app.store, app.limits)
    demo = build_demo(app)
    demo.queue(max_size=_env_int("TEMPO_QUEUE_SIZE", 64))
    demo.state_session_capacity = _env_int("TEMPO_MAX_SESSIONS", 200)
    api = gr.mount_gradio_app(api, demo, path="/", css=CSS, theme=gr.themes.Soft(primary_hue="indigo"),
                              max_file_size=f"{MAX_UPLOAD_BYTES // 1_000_000}mb")
    api.state.explorer, api.state.demo = app, demo
    api.add_middleware(BodyLimit)
    return api


def main() -> None:
    import uvicorn

    from tempo_core import load_model
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        lm = load_model(os.environ.get("TEMPO_MODEL"), os.environ.get("TEMPO_DEVICE"), os.environ.get("TEMPO_DTYPE"))
        fastapi_app = build_app(lm)
    except (ModelError, SettingsError) as exc:
        raise SystemExit(f"error: {exc}")
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    print(f"TEMPO Explorer: model {lm.name} on {lm.device} — open http://{host}:{port}", flush=True)
    uvicorn.run(fastapi_app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
