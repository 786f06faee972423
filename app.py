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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import FileResponse

from components.api import BodyLimit, add_routes, admit
from components.controls import (EXAMPLES, RESEARCH_EXAMPLES, RESEARCH_FIELDS, build_controls, form_values,
                                 settings_from_form)
from components.compare_tab import add_run, build_compare_tab
from components import frame_diff
from components.live import live_traces
from components.inspect import MAX_UPLOAD_BYTES, find_node, node_choices, node_details, read_trace_file, trace_at
from components.research_tab import build_research_tab
from components.sessions import Slots, StopFlags, TraceStore, session_key
from components.views import curve_view, heatmap_view, text_view, tree_view, units
from components.widgets import CSS as WIDGET_CSS
from components.widgets import PLOTLY_JS, RANGE_NOTE_HEAD, branching_text, plotly_view
from tempo_core import LoadedModel, ModelError, SettingsError, Trace, __version__, build_settings, generate
from tempo_core.config import FIELDS, TempoSettings
from tempo_core.limits import Limits, RunStop

log = logging.getLogger("tempo.app")
MIN_FRAME_S = 0.25  # draw at most 4 frames a second; the last step is always drawn


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"error: {name} must be a positive integer, got {value!r}") from None
    return n

CSS = WIDGET_CSS + """
#status {min-height: 1.6em}
#run-buttons {position: sticky; top: 0; z-index: 5; background: var(--block-background-fill)}
#run-buttons button {min-width: 70px}
.legend-line p {font-size: 12.5px; color: #666; margin: 0}
.tempo-downloads a {margin-right: .4em}
"""

INTRO = """# TEMPO Explorer
Decoding that keeps **every** token above a probability threshold: the candidates of a step share **one
position** in **one sequence**, and later attention prunes the ones nobody looks at. Press **Generate** and
watch the tree grow; click any node or token for its details."""

ABOUT = """**How to read the page.** A *token* is a piece of text the model reads or writes (`·` marks a space,
`⏎` a newline). At each *logical step* TEMPO keeps every token whose *probability* passes the *selection
threshold*: they form a *set*, written `[a/b]` in the text and stacked in one column of the tree (bigger and
brighter = more probable; the grey open circles below are the *near misses*, the next tokens that did not pass).
All tokens of a set sit at the same *position* of one sequence, and a *mask* keeps siblings from seeing each
other. *Retroactive pruning* later removes (✕, struck through) candidates that later tokens pay less
*attention* than the pruning threshold; the **Pruning heatmap** shows that attention and the **Threshold
curve** how the pruning threshold changes over the run. The orange line is the most probable surviving path."""


def status_line(trace: Trace, running: bool) -> str:
    n = len(trace.steps)
    if n == 0:
        return "Starting…" if running else f"no steps ({trace.stop_reason})"
    if running and trace.stats.get("progress"):
        return f"Step {n} done · {trace.stats['progress']}…"
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


def model_executor(workers: int, name: str = "tempo-model") -> ThreadPoolExecutor:
    """Long-lived threads for all model work. Each thread that runs torch ops gets its own OpenMP team, and on a
    small CPU a second team slows every op of the first (bench/README.md: a run in a fresh thread took 1.45x as
    long as in the thread that loaded the model); so the model is loaded, and every run made, on these."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


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
    concurrency: int = 32  # runs at once; the model thread serves them a step at a time (components/live.py)
    research_concurrency: int = 1
    view_concurrency: int = 2  # figure rebuilds from stored traces (replay, uploads, clicks) at once
    slots: Slots = field(init=False)
    research_slots: Slots = field(init=False)
    stops: StopFlags = field(default_factory=StopFlags)
    store: TraceStore = field(default_factory=TraceStore)
    executor: ThreadPoolExecutor | None = None  # the model's threads (model_executor); made here if not given
    research_executor: ThreadPoolExecutor = field(init=False)
    form_names: tuple[str, ...] = ()  # the form's settings, in order (build_demo fills it when it lays them out)

    def __post_init__(self) -> None:
        self.slots = Slots(self.concurrency)
        self.research_slots = Slots(self.research_concurrency)
        self.executor = self.executor or model_executor(1)
        self.research_executor = model_executor(self.research_concurrency, "tempo-research")
        self.decode = on_gpu(self._decode, self._gpu_seconds)

    # --- requests -> settings -------------------------------------------------------------------------------
    def settings(self, form: dict[str, Any], runs: int = 1) -> TempoSettings:
        """Validated settings within this server's caps and compute budget (SettingsError names the field)."""
        return admit(self.lm, settings_from_form(form, self.limits), self.limits, runs)

    def _gpu_seconds(self, s: TempoSettings, stop: RunStop) -> float:
        return self.limits.max_seconds + 10

    def _decode(self, s: TempoSettings, stop: RunStop) -> Iterator[tuple[Trace, bool]]:
        """(trace, done) after every step; a phase after the steps (faithfulness) reports in trace.stats."""
        for event in generate(self.lm, s, stop):
            if event.progress:
                event.trace.stats["progress"] = event.progress
            else:
                event.trace.stats.pop("progress", None)
            yield event.trace, event.done

    # --- handlers (plain functions of form values; build_demo only wires them) -------------------------------
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

    def run_stream(self, request: gr.Request, history: list | None, **form: Any) -> Iterator[tuple]:
        """Generate: (tree, heatmap, curve, text, status, trace state, history), streamed while the run goes on.
        Decoding runs in its own thread at full speed; frames show its latest state (components/live.py)."""
        key = session_key(request)
        flag = self.stops.start(key)
        try:
            try:
                s = self.settings(form)
            except SettingsError as exc:
                yield (*[gr.skip()] * 4, f"**Error:** {exc}", gr.skip(), gr.skip())
                return
            yield (*[gr.skip()] * 4, self._queue_line(), gr.skip(), gr.skip())
            with self.slots.hold():
                flag.start_clock(self.limits.max_seconds)
                yield from self._frames(s, flag, history)
        finally:
            flag.stop()  # the page went away mid-run (generator closed): the worker ends within a step
            self.stops.finish(key, flag)

    def _queue_line(self) -> str:
        ahead = self.slots.waiting
        return "Starting…" if self.slots.active < self.slots.limit else f"Waiting for the model ({ahead} ahead)…"

    def _frames(self, s: TempoSettings, flag: RunStop, history: list | None) -> Iterator[tuple]:
        window = s.pruning_window
        try:
            for trace, done in live_traces(lambda: self.decode(s, flag), window, MIN_FRAME_S, self.executor,
                                           waited=flag.extend):
                frame = (*views(trace, live=not done), status_line(trace, not done))
                if done:
                    data = trace.to_dict()
                    yield (*frame, data, add_run(history, data))
                else:
                    yield (*frame, gr.skip(), gr.skip())
        except SettingsError as exc:
            yield (*[gr.skip()] * 4, f"**Error:** {exc}", gr.skip(), gr.skip())
        except Exception as exc:  # noqa: BLE001 - the page shows a message, never a traceback
            log.exception("run failed")
            yield (*[gr.skip()] * 4, f"**Error:** run failed: {html.escape(str(exc))}", gr.skip(), gr.skip())

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

    def load_trace(self, history: list | None, file: Any):
        """An uploaded trace: its figures, its settings in the form, and an entry in the history."""
        names = list(self.form_names)
        if file is None:
            return (gr.skip(),) * (7 + len(names))
        try:
            trace = read_trace_file(file, self.limits.max_tokens, self.limits.max_parallel_tokens)
        except ValueError as exc:
            return (*[gr.skip()] * 4, f"**Error:** {html.escape(str(exc))}", gr.skip(), gr.skip(),
                    *[gr.skip()] * len(names))
        try:
            values = form_values(build_settings(trace.settings, caps=self.limits.caps), names)
        except SettingsError:  # a trace made with larger settings than this server allows: keep the form
            values = [gr.skip()] * len(names)
        data = trace.to_dict()
        return (*views(trace), f"Loaded trace: {len(trace.steps)} steps, {html.escape(trace.model)}", data,
                add_run(history, data, source="uploaded"), *values)

    def fill_from_link(self, request: gr.Request, **form: Any):
        """Opening a shared link fills the form with its settings (a plain visit keeps the defaults)."""
        names = list(form)
        params = dict(request.query_params) if request is not None else {}
        known = {k: v for k, v in params.items() if k in FIELDS}
        if not known:
            return (*[gr.skip()] * len(names), preview_curve(self.limits, **form))
        try:  # the link's settings on top of the form's own defaults; only the fields it names change
            s = build_settings({k: _parse_param(v) for k, v in known.items()}, settings_from_form(form, self.limits),
                               caps=self.limits.caps)
        except SettingsError as exc:
            gr.Warning(f"ignored link settings: {exc}")
            return (*[gr.skip()] * len(names), preview_curve(self.limits, **form))
        changed = set(known) | ({"mode"} if {"default_mode", "use_mcts"} & set(known) else set())
        values = [v if n in changed else gr.skip() for n, v in zip(names, form_values(s, names))]
        return (*values, curve_view(s))


def views(trace: Trace, selected: str | None = None, current: int | None = None,
          expanded: frozenset[int] = frozenset(), live: bool = False) -> tuple:
    """(tree, heatmap, curve, text) of a trace; `live`: a run still growing."""
    return (tree_view(trace, selected, expanded, live=live), heatmap_view(trace),
            curve_view(trace, len(trace.steps) - 1 if current is None else current), text_view(trace))


def preview_curve(limits: Limits, **form: Any):
    try:
        return curve_view(settings_from_form(form, limits))
    except SettingsError:
        return gr.skip()


def clicked(data: dict | None, expanded: list | None, evt: gr.EventData):
    """A node of the tree or heatmap, or a token of the text, was clicked: (tree, details, pick, rewind pick,
    outer tab, research tab, expanded stretches). A collapsed stretch expands; a pruned cross in the heatmap
    opens its rewind."""
    event = getattr(evt, "_data", None) or {}
    node = str(event.get("node") or "")
    skip = (gr.skip(),) * 7
    if not data or not node:
        return skip
    trace = Trace.from_dict(data)
    opened = frozenset(expanded or ())
    if node.startswith("run:"):
        stretch = next((u for u in units(trace, opened) if u.collapsed and u.id == node), None)
        if stretch is None:  # only a stretch this tree really shows (the browser's id is not trusted)
            return skip
        opened = opened | {stretch.first}
        return (tree_view(trace, expanded=opened), *[gr.skip()] * 5, sorted(opened))
    found = find_node(trace, node)
    if found is None:
        return skip
    pruned = found[2].pruned_at is not None and trace.mode == "tempo"
    from_heatmap = "heatmap" in str(event.get("source") or "")
    return (tree_view(trace, node, opened), node_details(trace, node), node, node if pruned else gr.skip(),
            gr.Tabs(selected="research") if pruned and from_heatmap else gr.skip(),
            gr.Tabs(selected="rewind") if pruned and from_heatmap else gr.skip(), gr.skip())


def show_node(data: dict | None, node: str | None, expanded: list | None):
    if not data or not node:
        return gr.skip(), gr.skip()
    trace = Trace.from_dict(data)
    return tree_view(trace, node, frozenset(expanded or ())), node_details(trace, node)


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
        trace_state = gr.State(None)  # the finished (or loaded) trace, as a JSON dict
        history = gr.State([])  # the session's recent runs (compare_tab.add_run)
        expanded = gr.State([])  # collapsed stretches of the tree the user opened (their first steps)
        gr.Markdown(INTRO)
        with gr.Accordion("What am I looking at? (how to read the page)", open=False):
            gr.Markdown(ABOUT)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=330):
                buttons: dict[str, gr.Button] = {}

                def action_buttons() -> None:  # right under the prompt, above the fold on a laptop and a phone
                    with gr.Row(elem_id="run-buttons"):
                        buttons["run"] = gr.Button("Generate", variant="primary", elem_id="generate", scale=2,
                                                   min_width=80)
                        buttons["stop"] = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=60)
                controls = build_controls(limits, after_prompt=action_buttons)
                run_btn, stop_btn = buttons["run"], buttons["stop"]
            with gr.Column(scale=3, min_width=340):
                status = gr.Markdown("Ready: model **%s** on %s." % (app.lm.name, app.lm.device), elem_id="status")
                text_box = branching_text()
                with gr.Tabs() as outer:
                    with gr.Tab("Tree", id="tree"):
                        gr.Markdown("*One column per logical step (its candidates share one position); size and "
                                    "colour: probability; ✕ pruned; grey open circles: near misses; a long orange "
                                    "bar: steps with one candidate each (click to expand). Drag the slider under "
                                    "the tree to see the whole run.*", elem_classes="legend-line")
                        tree_plot = plotly_view(elem_id="tempo-tree")
                        with gr.Row():
                            node_pick = gr.Dropdown([], label="Inspect candidate", scale=1)
                            details = gr.Markdown(node_details(Trace("", "tempo", {}, "", "", []), ""))
                    with gr.Tab("Pruning heatmap", id="heatmap"):
                        gr.Markdown("*Rows: candidates that came near the pruning threshold; columns: the steps "
                                    "after theirs; colour: the attention those steps paid them (darker = more); red "
                                    "outline: below the threshold then; ✕ where one was pruned (click it for its "
                                    "rewind).*", elem_classes="legend-line")
                        heat_plot = plotly_view(elem_id="tempo-heatmap", max_height=620)
                    with gr.Tab("Threshold curve", id="curve"):
                        gr.Markdown("*The pruning threshold over the run (a constant, a Bezier or a ReLU curve), "
                                    "with each step's set size and the candidates pruned at it.*",
                                    elem_classes="legend-line")
                        curve_plot = plotly_view(elem_id="tempo-curve")
                    compare = build_compare_tab(app, history)
                    research = build_research_tab(app, trace_state, controls)
                    with gr.Tab("Replay & export", id="export"):
                        replay = gr.Slider(0, 1, value=0, step=1, label="Replay: step (no model needed)")
                        with gr.Row():
                            upload = gr.File(label="Replay an uploaded JSON trace (fills the form)",
                                             file_types=[".json"], elem_id="trace-upload")
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
        # figures from a stored trace (replay, uploads, clicks) share one bounded group: never unlimited
        view = {"concurrency_id": "views", "concurrency_limit": app.view_concurrency, "show_progress": "hidden"}
        app.form_names = tuple(controls)
        inputs = list(controls.values())
        figures = [tree_plot, heat_plot, curve_plot, text_box]
        outputs = [*figures, status, trace_state, history]
        finished = [replay, node_pick, downloads, share]
        run_btn.click(app.arm, None, None, queue=False, api_visibility="private")
        run_btn.click(lambda: [], None, expanded, queue=False, api_visibility="private")
        run_evt = run_btn.click(app.run_stream, [history], outputs, inputs_kwargs=controls, api_name="generate",
                                concurrency_limit=app.concurrency, concurrency_id="model", show_progress="hidden")

        def after_trace(event: Any) -> None:
            """A trace arrived (a run ended, a file was loaded): downloads and links, then the research and
            compare tabs."""
            done = event.then(app.after_run, [trace_state], finished, api_visibility="private", **view)
            done.then(research["refresh"], [trace_state], research["refresh_outputs"], api_visibility="private",
                      **view)
            done.then(compare["refresh"], [history], compare["refresh_outputs"], api_visibility="private", **view)

        after_trace(run_evt)
        stop_btn.click(app.stop, None, None, api_name="stop", concurrency_limit=None, queue=False)

        node_pick.change(show_node, [trace_state, node_pick, expanded], [tree_plot, details],
                         api_visibility="private", **view)
        click_outputs = [tree_plot, details, node_pick, research["rewind_pick"], outer, research["tabs"], expanded]
        for source in (text_box, tree_plot, heat_plot):
            source.click(clicked, [trace_state, expanded], click_outputs, api_visibility="private", **view)
        replay.input(replay_to, [trace_state, replay], [*figures, status], api_name="replay", **view)
        after_trace(upload.upload(app.load_trace, [history, upload], [*outputs, *inputs], api_visibility="private",
                                  **view))

        # the curve redraws as soon as its controls change, before any generation
        preview = lambda **form: preview_curve(limits, **form)  # noqa: E731
        for name in ("dynamic_threshold", "attention_threshold", "final_threshold", "bezier_p1", "bezier_p2",
                     "use_relu", "relu_activation_point", "max_tokens", "use_retroactive_pruning", "mode"):
            controls[name].change(preview, None, curve_plot, inputs_kwargs=controls, api_visibility="private",
                                  concurrency_limit=None, show_progress="hidden")
        demo.load(app.fill_from_link, None, [*inputs, curve_plot], inputs_kwargs=controls, api_visibility="private")
        demo.unload(app.end_session)
    return demo


def build_app(lm: LoadedModel, concurrency: int | None = None, limits: Limits | None = None,
              executor: ThreadPoolExecutor | None = None) -> FastAPI:
    """FastAPI app: /health, /api/generate, /api/v2/generate, /download/..., /docs, and the Gradio UI at /.
    `executor`: the threads the model was loaded on (model_executor), which then make every run."""
    app = Explorer(lm, limits or Limits.from_env(), concurrency or _env_int("TEMPO_CONCURRENCY", 32),
                   _env_int("TEMPO_RESEARCH_CONCURRENCY", 1), _env_int("TEMPO_VIEW_CONCURRENCY", 2),
                   executor=executor)
    api = FastAPI(title="TEMPO Explorer API", version=__version__,
                  description="Generate with TEMPO; the answer is the JSON trace (schema in the README).")
    add_routes(api, lm, app.slots, app.store, app.limits, app.executor)
    api.add_api_route("/assets/plotly.min.js", lambda: FileResponse(PLOTLY_JS, headers={
        "Cache-Control": "public, max-age=86400"}), methods=["GET"], include_in_schema=False)
    frame_diff.install()  # Gradio's own frame diff corrupts figures whose lists shrink (components/frame_diff.py)
    demo = build_demo(app)
    demo.queue(max_size=_env_int("TEMPO_QUEUE_SIZE", 64))
    demo.max_threads = app.concurrency + 40  # a streaming run waits for its steps in a worker thread
    demo.state_session_capacity = _env_int("TEMPO_MAX_SESSIONS", 200)
    api = gr.mount_gradio_app(api, demo, path="/", css=CSS, theme=gr.themes.Soft(primary_hue="indigo"),
                              head=RANGE_NOTE_HEAD, max_file_size=f"{MAX_UPLOAD_BYTES // 1_000_000}mb")
    api.state.explorer, api.state.demo = app, demo
    api.add_middleware(BodyLimit)
    return api


def main() -> None:
    import uvicorn

    from tempo_core import load_model
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        executor = model_executor(_env_int("TEMPO_MODEL_THREADS", 1))
        lm = executor.submit(load_model, os.environ.get("TEMPO_MODEL"), os.environ.get("TEMPO_DEVICE"),
                             os.environ.get("TEMPO_DTYPE")).result()
        fastapi_app = build_app(lm, executor=executor)
    except (ModelError, SettingsError) as exc:
        raise SystemExit(f"error: {exc}")
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    print(f"TEMPO Explorer: model {lm.name} on {lm.device} — open http://{host}:{port}", flush=True)
    uvicorn.run(fastapi_app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
