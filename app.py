"""TEMPO Explorer: a Gradio Blocks app (Hugging Face Spaces style) with a JSON API beside it.

    python app.py     # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; TEMPO_MODEL picks the model

One model is shared by every user; each run keeps its own trace (plain data) in the session's state. Every
request is bounded (README: "What a visitor can and cannot make the server do"); nothing is written to disk.
"""

from __future__ import annotations

import html
import importlib.util
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import FileResponse

from components.api import BodyLimit, add_routes, admit
from components.controls import (RESEARCH_EXAMPLES, RESEARCH_FIELDS, build_controls, examples, form_values,
                                 page_defaults, research_examples, settings_from_form)
from components.compare_tab import add_run, build_compare_tab
from components import frame_diff
from components.classroom import (SteppedRun, SteppedRuns, prediction_choices, reflection_question, reveal_markdown,
                                  score_prediction)
from components.learn import GLOSSARY, LESSONS, RECORDINGS, lesson_view, recorded
from components.live import live_traces
from components.inspect import MAX_UPLOAD_BYTES, find_node, node_choices, node_details, read_upload, trace_at
from components.research_tab import build_research_tab
from components.sessions import Slots, StopFlags, TraceStore, session_key
from components.views import curve_view, empty_figure, heatmap_view, show_token, text_view, tree_view, units
from components.widgets import CSS as WIDGET_CSS
from components.widgets import PLOTLY_JS, RANGE_NOTE_HEAD, branching_text, plotly_view
from tempo_core import LoadedModel, ModelError, SettingsError, Trace, __version__, build_settings, generate
from tempo_core.config import FIELDS, MODE_FLAGS, TempoSettings, echo_value
from tempo_core.limits import Limits, RunStop
from tempo_core.steer import continue_from, lower_threshold_preview
from tempo_core.trace import rewind

log = logging.getLogger("tempo.app")
NO_TRACE = Trace("", "tempo", {}, "", "", [])  # what the page shows before any run
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

ABOUT = """**How to read the page.** A *token* is a piece of text the model reads or writes (`·` marks a space,
`⏎` a newline). At each *logical step* TEMPO keeps every token whose *probability* passes the *selection
threshold*: they form a *set*, written `[a/b]` in the text and stacked in one column of the tree (bigger and
brighter = more probable; the grey open circles below are the *near misses*, the next tokens that did not pass).
All tokens of a set sit at the same *position* of one sequence, and a *mask* keeps siblings from seeing each
other. *Retroactive pruning* later removes (✕, struck through) candidates that later tokens pay less
*attention* than the pruning threshold; the **Pruning heatmap** shows that attention and the **Threshold
curve** how the pruning threshold changes over the run. The orange line is the most probable surviving path."""


def status_line(trace: Trace, running: bool, paused: bool = False) -> str:
    """One line under the prompt. Steps are named by their number in the trace (from 0), as in the tree, the
    node details, step mode and replay."""
    n = len(trace.steps)
    if n == 0:
        return "Starting…" if running else f"no steps ({trace.stop_reason})"
    last = trace.steps[-1]
    if running and trace.stats.get("progress"):
        return f"Steps 0–{last.step} done · {trace.stats['progress']}…"
    rate = trace.timings.get("steps_per_s", 0.0)
    pruned = trace.stats.get("pruned", 0)
    if paused:
        head = "Paused (press Step or Play to go on)"
    else:
        head = "Generating" if running else f"Done ({trace.stop_reason.replace('_', ' ')})"
    return (f"{head} · at step {last.step} ({n} step{'s' if n != 1 else ''}) · set size {len(last.candidates)} · "
            f"mean set {trace.stats.get('mean_set_size', 0):.2f} · {pruned} pruned · {rate:.1f} steps/s")


def share_query(s: TempoSettings, start: TempoSettings) -> str:
    """Query string of the settings that differ from `start`, the form of a fresh page (opening it there gives
    back every setting of `s`)."""
    defaults = start.to_dict()
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
    waiting_runs: Callable[[str], int] = lambda session_hash: 0  # runs of a session in Gradio's queue (build_app)
    stepped: SteppedRuns = field(init=False)  # step mode: each session's paused run

    def __post_init__(self) -> None:
        self.slots = Slots(self.concurrency)
        self.research_slots = Slots(self.research_concurrency)
        self.executor = self.executor or model_executor(1)
        self.research_executor = model_executor(self.research_concurrency, "tempo-research")
        self.decode = on_gpu(self._decode, self._gpu_seconds)
        self.stepped = SteppedRuns(self.executor, max_runs=_env_int("TEMPO_STEP_RUNS", 40),
                                   idle_s=_env_int("TEMPO_STEP_IDLE_S", 300))

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
        key = session_key(request)
        if not self.stops.stop(key) and self.waiting_runs(getattr(request, "session_hash", None) or ""):
            # a client that never pressed the page's Generate (gradio_client) has a run waiting in the queue
            self.stops.arm(key)
            self.stops.stop(key)
        self.pause(request)  # Stop also halts Play

    def end_session(self, request: gr.Request) -> None:
        """The tab closed: stop its run, drop its downloads and flags."""
        key = session_key(request)
        self.stops.forget(key)
        self.store.forget(key)
        self.stepped.drop(key)

    def run_stream(self, request: gr.Request, history: list | None, **form: Any) -> Iterator[tuple]:
        """Generate: (tree, heatmap, curve, text, status, trace state, history), streamed while the run goes on.
        Decoding runs on the model's thread at full speed; frames show its latest state (components/live.py)."""
        self.stepped.drop(session_key(request))  # a new run replaces a stepped one
        yield from self._stream(request, history, lambda: self.settings(form),
                                lambda s, flag: (self.decode(s, flag)))

    def continue_here(self, request: gr.Request, history: list | None, data: dict | None, node: str | None
                      ) -> Iterator[tuple]:
        """Steer: the run up to the chosen candidate, that candidate alone in its set, then onward (the original
        stays in the history: the Compare tab shows both)."""
        original = Trace.from_dict(data) if data else None
        found = find_node(original, node) if original is not None and node else None
        if found is None:
            yield (*[gr.skip()] * 4, "**Error:** pick a candidate in the tree first (click a node)", gr.skip(), gr.skip())
            return
        step, index, _ = found

        def settings() -> TempoSettings:
            if original.model != self.lm.name:
                raise SettingsError("trace", f"made with {original.model}; this server runs {self.lm.name}")
            # a recorded or uploaded run may have been made with larger settings than this server's caps: its
            # earlier steps stay as they were, the steps made here keep within the caps
            s = admit(self.lm, self.limits.fit(build_settings(original.settings)), self.limits)
            original.settings = s.to_dict()
            return s

        def events(s: TempoSettings, flag: RunStop) -> Iterator[tuple[Trace, bool]]:
            for event in continue_from(self.lm, original, step, index, flag):
                yield event.trace, event.done
        yield from self._stream(request, history, settings, events)

    def _stream(self, request: gr.Request, history: list | None, settings: Callable[[], TempoSettings],
                events: Callable[[TempoSettings, RunStop], Iterator[tuple[Trace, bool]]]) -> Iterator[tuple]:
        key = session_key(request)
        flag = self.stops.start(key)
        try:
            try:
                s = settings()
            except SettingsError as exc:
                yield (*[gr.skip()] * 4, f"**Error:** {exc}", gr.skip(), gr.skip())
                return
            yield (*[gr.skip()] * 4, self._queue_line(), gr.skip(), gr.skip())
            with self.slots.hold():
                flag.start_clock(self.limits.max_seconds)
                yield from self._frames(s, flag, history, events)
        finally:
            flag.stop()  # the page went away mid-run (generator closed): the worker ends within a step
            self.stops.finish(key, flag)

    def _queue_line(self) -> str:
        ahead = self.slots.waiting
        return "Starting…" if self.slots.active < self.slots.limit else f"Waiting for the model ({ahead} ahead)…"

    def _frames(self, s: TempoSettings, flag: RunStop, history: list | None,
                events: Callable[[TempoSettings, RunStop], Iterator[tuple[Trace, bool]]]) -> Iterator[tuple]:
        window = s.pruning_window
        try:
            for trace, done in live_traces(lambda: events(s, flag), window, MIN_FRAME_S, self.executor,
                                           waited=flag.extend):
                frame = (*views(trace, live=not done), status_line(trace, not done))
                if done:
                    data = trace.to_plain()
                    yield (*frame, data, add_run(history, data, "continued" if "forced_step" in trace.stats else "run"))
                else:
                    yield (*frame, gr.skip(), gr.skip())
        except SettingsError as exc:
            yield (*[gr.skip()] * 4, f"**Error:** {exc}", gr.skip(), gr.skip())
        except Exception as exc:  # noqa: BLE001 - the page shows a message, never a traceback
            log.exception("run failed")
            yield (*[gr.skip()] * 4, f"**Error:** run failed: {html.escape(str(exc))}", gr.skip(), gr.skip())

    # --- step mode and predict-then-reveal (components/classroom.py) ------------------------------------------
    def _stepped_run(self, request: gr.Request, form: dict[str, Any]) -> SteppedRun:
        """The session's stepped run; a new one (from the form) when it has none or its run has ended."""
        key = session_key(request)
        run = self.stepped.get(key)
        if run is None or run.done:
            s = self.settings(form)
            run = self.stepped.start(key, lambda: generate(self.lm, s))
        return run

    def step(self, request: gr.Request, predict: bool, **form: Any) -> tuple:
        """Step: one logical step of the session's stepped run. With `predict`, the new step stays hidden and the
        student picks the tokens they think pass the threshold first."""
        try:
            run = self._stepped_run(request, form)
        except SettingsError as exc:
            return (*[gr.skip()] * 4, f"**Error:** {exc}", *[gr.skip()] * 4)
        run.playing = False
        self.stepped.advance(run)
        return step_frame(run, predict)

    def play(self, request: gr.Request, speed: float, **form: Any) -> Iterator[tuple]:
        """Play: step on at `speed` steps a second (0.5 to 5) until Pause, the end, or the session leaves."""
        try:
            speed = play_speed(speed)
            run = self._stepped_run(request, form)
        except SettingsError as exc:
            yield (*[gr.skip()] * 4, f"**Error:** {exc}", *[gr.skip()] * 4)
            return
        run.playing = True
        while run.playing and not run.done:
            t0 = time.monotonic()
            self.stepped.advance(run)
            yield step_frame(run, False)
            time.sleep(max(0.0, 1.0 / speed - (time.monotonic() - t0)))
        run.playing = False

    def pause(self, request: gr.Request) -> None:
        run = self.stepped.get(session_key(request))
        if run is not None:
            run.playing = False

    def reveal(self, request: gr.Request, picked: list[str] | None) -> tuple:
        """Reveal the hidden step: the picks marked right or wrong, the running score, then a question."""
        run = self.stepped.get(session_key(request))
        if run is None or not run.hidden or run.trace is None:
            return (*[gr.skip()] * 4, "Press **Step** (with *Predict* ticked) for a step to predict.", *[gr.skip()] * 4)
        st = run.trace.steps[-1]
        result = score_prediction(st, list(picked or []))
        run.score.right += result.right
        run.score.total += result.total
        frame = step_frame(run, False)
        return (*frame[:7], reveal_markdown(st, result, run.score), reflection_question(run.trace, st.step))

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
            link = base + share_query(build_settings(trace.settings), page_defaults(self.limits))
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
            trace = read_upload(file, self.limits.max_tokens, self.limits.max_parallel_tokens)
        except ValueError as exc:
            return (*[gr.skip()] * 4, f"**Error:** {html.escape(str(exc))}", gr.skip(), gr.skip(),
                    *[gr.skip()] * len(names))
        values = form_values(self.limits.fit(build_settings(trace.settings)), names)  # read_trace_file checked them
        data = trace.to_plain()
        return (*views(trace), f"Loaded trace: {len(trace.steps)} steps, {html.escape(trace.model)}", data,
                add_run(history, data, source="uploaded"), *values)

    def show_recorded(self, history: list | None, name: str):
        """A recorded run (assets/learn): its figures at once, its settings in the form (no model needed)."""
        trace = recorded(name)
        data = trace.to_plain()
        values = form_values(self.limits.fit(build_settings(RECORDINGS[name])), list(self.form_names))
        return (*views(trace), f"Recorded run: {len(trace.steps)} steps of “{html.escape(trace.prompt)}” "
                f"({html.escape(trace.model)}); press Generate to run it live", data,
                add_run(history, data, source="recorded"), *values)

    def try_lesson(self, index: int):
        """A lesson's "try it live": its settings in the form (within this server's caps), then the Explore tab."""
        lesson = LESSONS[max(0, min(len(LESSONS) - 1, int(index or 0)))]
        s = self.limits.fit(build_settings(lesson.settings()))
        return (*form_values(s, list(self.form_names)), gr.Tabs(selected="explore"))

    def fill_from_link(self, request: gr.Request, **form: Any):
        """Opening a shared link fills the form with its settings (a plain visit keeps the defaults)."""
        names = list(form)
        params = dict(request.query_params) if request is not None else {}
        known = {k: v for k, v in params.items() if k in FIELDS or k in MODE_FLAGS}
        if not known:
            return (*[gr.skip()] * len(names), preview_curve(self.limits, **form))
        try:  # the link's settings on top of the form's own defaults; only the fields it names change
            s = build_settings({k: _parse_param(v) for k, v in known.items()}, settings_from_form(form, self.limits),
                               caps=self.limits.caps)
        except SettingsError as exc:
            gr.Warning(f"ignored link settings: {exc}")
            return (*[gr.skip()] * len(names), preview_curve(self.limits, **form))
        changed = set(known) | ({"mode"} if set(MODE_FLAGS) & set(known) else set())
        values = [v if n in changed else gr.skip() for n, v in zip(names, form_values(s, names))]
        return (*values, curve_view(s))


def views(trace: Trace, selected: str | None = None, current: int | None = None,
          expanded: frozenset[int] = frozenset(), live: bool = False) -> tuple:
    """(tree, heatmap, curve, text) of a trace; `live`: a run still growing."""
    return (tree_view(trace, selected, expanded, live=live), heatmap_view(trace),
            curve_view(trace, len(trace.steps) - 1 if current is None else current), text_view(trace))


def step_frame(run: SteppedRun, predict: bool) -> tuple:
    """Step mode's outputs: (4 figures, status, finished trace, prediction choices, reveal, question). With
    `predict`, the newest step is made but not shown: the figures show the run just before it."""
    trace = run.trace
    finished = trace.to_plain() if run.done and trace is not None else gr.skip()
    hide_choices = gr.update(choices=[], value=[], visible=False)
    if trace is None or not trace.steps:
        return (*[gr.skip()] * 4, f"no steps ({trace.stop_reason if trace else 'nothing to run'})", finished,
                hide_choices, "", "")
    n = len(trace.steps)
    st = trace.steps[-1]
    if predict and not run.done:
        run.hidden = True
        ask = (f"**Step {st.step}: which tokens pass the selection threshold {st.selection_threshold:g}?** Tick them, "
               f"then press **Reveal**. (Score so far: {run.score})")
        return (*views(rewind(trace, n - 2), live=True), ask, finished,
                gr.update(choices=prediction_choices(st), value=[], visible=True), "", "")
    run.hidden = False
    status = status_line(trace, not run.done, paused=not run.playing and not run.done)
    if run.done:
        status += f" · prediction score {run.score}" if run.score.total else ""
    return (*views(trace, live=not run.done), status, finished, hide_choices, gr.skip(), gr.skip())


PLAY_SPEEDS = (0.5, 5.0)  # steps a second


def play_speed(value: Any) -> float:
    """The Play speed slider's value, checked (SettingsError names it and its range)."""
    lo, hi = PLAY_SPEEDS
    try:
        speed = float(value)
    except (TypeError, ValueError, OverflowError):
        speed = float("nan")
    if not lo <= speed <= hi:  # NaN fails too
        raise SettingsError("play_speed",
                            f"must be a number in [{lo:g}, {hi:g}] steps a second, got {echo_value(value)}")
    return speed


def what_if_lower(data: dict | None, node: str | None) -> str:
    """The set of the chosen candidate's step, with what a lower threshold would have added."""
    if not data or not node:
        return "Pick a candidate in the tree first (click a node)."
    trace = Trace.from_dict(data)
    found = find_node(trace, node)
    if found is None or trace.mode != "tempo":
        return "Pick a candidate of a TEMPO run."
    step = found[0]
    cap = trace.settings.get("max_parallel_tokens")
    lines = []
    for r in lower_threshold_preview(trace, step):
        if r["status"] == "joins":
            fate = f"joins at a threshold ≤ {r['joins_at']:.4f}"
        else:
            fate = {"kept": "in the set",
                    "capped": f"passed the threshold, but the set was full (max_parallel_tokens = {cap}): a lower "
                              "threshold adds nothing",
                    "by_hand": "passed the threshold; this set was chosen by hand (continue from here)"}[r["status"]]
        if r["needs_cap"]:
            fate += f" with max_parallel_tokens ≥ {r['needs_cap']}"
        lines.append(f"| `{html.escape(show_token(r['text']))}` | {r['prob']:.4f} | {fate} |")
    return (f"**Step {step} at lower thresholds** (this run: {trace.steps[step].selection_threshold:g}). A token joins "
            f"the set once the threshold is at or below its probability (thresholds rounded down, so a run at the "
            f"one shown selects it) and the set has room.\n\n| token | probability | |\n|---|---|---|\n"
            + "\n".join(lines))


def preview_curve(limits: Limits, **form: Any):
    try:
        return curve_view(settings_from_form(form, limits))
    except SettingsError:
        return gr.skip()


def expand_stretch(data: dict | None, expanded: list | None, evt: gr.EventData):
    """A collapsed stretch of the tree was clicked: (tree with it opened, expanded stretches)."""
    node = str((getattr(evt, "_data", None) or {}).get("node") or "")
    if not data or not node.startswith("run:"):
        return gr.skip(), gr.skip()
    trace = Trace.from_dict(data)
    opened = frozenset(expanded or ())
    stretch = next((u for u in units(trace, opened) if u.collapsed and u.id == node), None)
    if stretch is None:  # only a stretch this tree really shows (the browser's id is not trusted)
        return gr.skip(), gr.skip()
    opened = opened | {stretch.first}
    return tree_view(trace, expanded=opened), sorted(opened)


def clicked_in_tree(data: dict | None, expanded: list | None, evt: gr.EventData):
    """A candidate clicked in the tree: (details, pick, rewind pick, outer tab, research tab). The page rings it
    itself (widgets.py), so the tree is not an output: Gradio redraws an output even when it sends nothing new,
    and a 200-step tree takes Plotly about a second."""
    return clicked(data, expanded, evt, redraw_tree=False)


def clicked(data: dict | None, expanded: list | None, evt: gr.EventData, redraw_tree: bool = True):
    """A candidate in the heatmap or a token of the text was clicked: (tree with it ringed, details, pick, rewind
    pick, outer tab, research tab). A pruned cross in the heatmap opens its rewind."""
    event = getattr(evt, "_data", None) or {}
    node = str(event.get("node") or "")
    trace = Trace.from_dict(data) if data and node else None
    found = find_node(trace, node) if trace is not None else None
    if found is None:
        return (gr.skip(),) * (6 if redraw_tree else 5)
    pruned = found[2].pruned_at is not None and trace.mode == "tempo"
    from_heatmap = "heatmap" in str(event.get("source") or "")
    out = (node_details(trace, node), node, node if pruned else gr.skip(),
           gr.Tabs(selected="research") if pruned and from_heatmap else gr.skip(),
           gr.Tabs(selected="rewind") if pruned and from_heatmap else gr.skip())
    return (tree_view(trace, node, frozenset(expanded or ())), *out) if redraw_tree else out


def show_node(data: dict | None, node: str | None, expanded: list | None):
    if not data or not node:
        return gr.skip(), gr.skip()
    trace = Trace.from_dict(data)
    return tree_view(trace, node, frozenset(expanded or ())), node_details(trace, node)


def replay_to(data: dict | None, step: Any):
    if not data:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    n = len(data["steps"])
    try:
        at = int(step)
        if not 0 <= at < n:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        return (*[gr.skip()] * 4, f"**Error:** replay step: must be an integer in [0, {n - 1}], got {echo_value(step)}")
    past = trace_at(Trace.from_dict(data), at)
    return (*views(past, current=at), f"Replay: at step {at} (steps 0–{n - 1})")


def _parse_param(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def lesson_buttons(i: int) -> tuple[gr.Button, gr.Button]:
    """Prev and Next, each clickable only where there is a lesson to go to."""
    return gr.Button(interactive=i > 0), gr.Button(interactive=i < len(LESSONS) - 1)


LESSON_DETAILS = "*Click a token in the figure for its details.*"


def lesson_node(index: int, evt: gr.EventData) -> str:
    """A token clicked in a lesson's figure: its details, from the lesson's recorded run."""
    node = str((getattr(evt, "_data", None) or {}).get("node") or "")
    trace = LESSONS[max(0, min(len(LESSONS) - 1, int(index or 0)))].trace
    return node_details(trace, node) if find_node(trace, node) else gr.skip()


def build_learn_tab() -> dict[str, Any]:
    """The guided walkthrough (components/learn.py): a lesson's text beside its figure, Prev / Next, try it live."""
    text, figure, where = lesson_view(0)
    with gr.Tab("Learn", id="learn"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                lesson_text = gr.Markdown(text, elem_id="lesson-text")
                with gr.Row():
                    prev = gr.Button("◀ Prev", elem_id="lesson-prev", min_width=70, interactive=False)
                    nxt = gr.Button("Next ▶", elem_id="lesson-next", variant="primary", min_width=70)
                where_line = gr.Markdown(where, elem_id="lesson-where")
                lesson_details = gr.Markdown(LESSON_DETAILS, elem_id="lesson-details")
                try_live = gr.Button("Try it live with these settings", elem_id="lesson-try", size="sm")
            with gr.Column(scale=3, min_width=320):
                lesson_plot = plotly_view(figure, elem_id="lesson-figure")
        with gr.Accordion("Glossary", open=False):
            gr.Markdown(GLOSSARY)
    return {"text": lesson_text, "plot": lesson_plot, "where": where_line, "prev": prev, "next": nxt,
            "try": try_live, "details": lesson_details}


def build_demo(app: Explorer) -> gr.Blocks:
    limits = app.limits
    with gr.Blocks(title="TEMPO Explorer", delete_cache=(3600, 3600)) as demo:
        trace_state = gr.State(None)  # the finished (or loaded) trace, as a JSON dict
        history = gr.State([])  # the session's recent runs (compare_tab.add_run)
        expanded = gr.State([])  # collapsed stretches of the tree the user opened (their first steps)
        stepped_trace = gr.State(None)  # a stepped run's trace once it has finished
        lesson = gr.State(0)
        gr.Markdown(INTRO)
        with gr.Tabs(selected="learn" if limits.demo else "explore") as top:
            learn = build_learn_tab() if limits.demo else None  # a classroom server opens on the walkthrough
            with gr.Tab("Explore", id="explore"):
                with gr.Accordion("What am I looking at? (how to read the page, glossary)", open=False):
                    gr.Markdown(ABOUT + "\n\n" + GLOSSARY)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=330):
                        ui: dict[str, Any] = {}

                        def under_prompt() -> None:  # right under the prompt, above the fold on a laptop and a phone
                            with gr.Row(elem_id="run-buttons"):
                                ui["run"] = gr.Button("Generate", variant="primary", elem_id="generate", scale=2,
                                                      min_width=80)
                                ui["stop"] = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=60)
                            with gr.Accordion("Step by step · predict first", open=limits.demo, elem_id="step-mode"):
                                with gr.Row():
                                    ui["step"] = gr.Button("Step", elem_id="step", min_width=60)
                                    ui["play"] = gr.Button("Play", elem_id="play", min_width=60)
                                    ui["pause"] = gr.Button("Pause", elem_id="pause", min_width=60)
                                ui["speed"] = gr.Slider(*PLAY_SPEEDS, value=1, step=0.5,
                                                        label="Play speed (steps a second)")
                                ui["predict"] = gr.Checkbox(value=limits.demo, label="Predict before each step",
                                                            elem_id="predict")
                                ui["choices"] = gr.CheckboxGroup([], label="Which tokens pass the threshold?",
                                                                 visible=False, elem_id="predict-choices")
                                ui["reveal"] = gr.Button("Reveal", elem_id="reveal", size="sm")
                                ui["reveal_md"] = gr.Markdown("", elem_id="reveal-result")
                                ui["question"] = gr.Markdown("", elem_id="reflection")
                        controls, _ = build_controls(limits, after_prompt=under_prompt, expert_visible=not limits.demo)
                        with gr.Row():
                            recorded_buttons = {name: gr.Button(label, size="sm", elem_id=f"recorded-{name}")
                                                for name, label in (("greedy", "Greedy"), ("tempo", "TEMPO + pruning"),
                                                                    ("curve", "Threshold curve"))}
                        gr.Markdown("*Recorded examples: instant, even while the model is busy.*",
                                    elem_classes="legend-line")
                    with gr.Column(scale=3, min_width=340):
                        status = gr.Markdown("Ready: model **%s** on %s." % (app.lm.name, app.lm.device),
                                             elem_id="status")
                        text_box = branching_text()
                        gr.Markdown("*Each step's set in [ ]; underline colour: probability (yellow high, purple "
                                    "low); struck through: pruned; ⏎ newline, · space.*", elem_classes="legend-line")
                        with gr.Tabs() as outer:
                            with gr.Tab("Tree", id="tree"):
                                gr.Markdown("*One column per logical step (its candidates share one position); size "
                                            "and colour: probability; ✕ pruned; grey open circles: near misses; a "
                                            "long orange bar: steps with one candidate each (click to expand). Drag "
                                            "the slider under the tree to see the whole run.*",
                                            elem_classes="legend-line")
                                tree_plot = plotly_view(tree_view(NO_TRACE), elem_id="tempo-tree")
                                with gr.Row():
                                    # any value is accepted here and checked by find_node (API callers name a node)
                                    node_pick = gr.Dropdown([], label="Inspect candidate", scale=1,
                                                            allow_custom_value=True)
                                    details = gr.Markdown(node_details(NO_TRACE, ""), elem_id="node-details")
                                with gr.Row():
                                    continue_btn = gr.Button("Continue from here (only this candidate)",
                                                             elem_id="continue-here", size="sm")
                                    what_if_btn = gr.Button("What if the threshold were lower here?",
                                                            elem_id="what-if", size="sm")
                                what_if = gr.Markdown("", elem_id="what-if-result")
                            with gr.Tab("Pruning heatmap", id="heatmap"):
                                gr.Markdown("*Rows: candidates that came near the pruning threshold; columns: the "
                                            "steps after theirs; colour: the attention those steps paid them (darker "
                                            "= more); red outline: below the threshold then; ✕ where one was pruned "
                                            "(click it for its rewind).*", elem_classes="legend-line")
                                heat_plot = plotly_view(empty_figure(
                                    "Pruning heatmap", 300, "press Generate (with pruning on) to fill it"),
                                    elem_id="tempo-heatmap", max_height=620)
                            with gr.Tab("Threshold curve", id="curve"):
                                gr.Markdown("*The pruning threshold over the run (a constant, a Bezier or a ReLU "
                                            "curve), with each step's set size and the candidates pruned at it.*",
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
                                                           elem_id="share-link",
                                                           buttons=["copy"])
                gr.Examples(examples(limits), [controls["prompt"], controls["selection_threshold"],
                                               controls["max_tokens"], controls["mode"]], label="Examples")
                gr.Examples(research_examples(limits), [controls[n] for n in RESEARCH_FIELDS],
                            example_labels=[label for label, _ in RESEARCH_EXAMPLES],
                            label="Research presets (then open the Research tab)")
            learn = learn or build_learn_tab()

        # --- wiring ----------------------------------------------------------------------------------------
        # figures from a stored trace (replay, uploads, clicks) share one bounded group: never unlimited
        view = {"concurrency_id": "views", "concurrency_limit": app.view_concurrency, "show_progress": "hidden"}
        model = {"concurrency_id": "model", "concurrency_limit": app.concurrency, "show_progress": "hidden"}
        app.form_names = tuple(controls)
        inputs = list(controls.values())
        figures = [tree_plot, heat_plot, curve_plot, text_box]
        outputs = [*figures, status, trace_state, history]
        finished = [replay, node_pick, downloads, share]
        ui["run"].click(app.arm, None, None, queue=False, api_visibility="private")
        ui["run"].click(lambda: [], None, expanded, queue=False, api_visibility="private")
        run_evt = ui["run"].click(app.run_stream, [history], outputs, inputs_kwargs=controls, api_name="generate",
                                  **model)

        def after_trace(event: Any) -> None:
            """A trace arrived (a run ended, a file was loaded): downloads and links, then the research and
            compare tabs."""
            done = event.then(app.after_run, [trace_state], finished, api_visibility="private", **view)
            done.then(research["refresh"], [trace_state], research["refresh_outputs"], api_visibility="private",
                      **view)
            done.then(compare["refresh"], [history], compare["refresh_outputs"], api_visibility="private", **view)

        after_trace(run_evt)
        ui["stop"].click(app.stop, None, None, api_name="stop", concurrency_limit=None, queue=False)

        # step mode: Step / Play / Pause, and predict-then-reveal
        step_outputs = [*figures, status, stepped_trace, ui["choices"], ui["reveal_md"], ui["question"]]
        ui["step"].click(app.step, [ui["predict"]], step_outputs, inputs_kwargs=controls, api_name="step", **model)
        ui["play"].click(app.play, [ui["speed"]], step_outputs, inputs_kwargs=controls, api_visibility="private",
                         **model)
        ui["pause"].click(app.pause, None, None, queue=False, api_visibility="private")
        ui["reveal"].click(app.reveal, [ui["choices"]], step_outputs, api_visibility="private", **view)
        after_trace(stepped_trace.change(lambda data, runs: (data, add_run(runs, data)) if data else (gr.skip(),) * 2,
                                         [stepped_trace, history], [trace_state, history], api_visibility="private"))

        # steering from a tree node
        after_trace(continue_btn.click(app.continue_here, [history, trace_state, node_pick], outputs,
                                       api_name="continue_from", **model))
        what_if_btn.click(what_if_lower, [trace_state, node_pick], what_if, api_visibility="private", **view)

        # .input, not .change: a click already drew the tree and the details; only a pick from the list redraws
        node_pick.input(show_node, [trace_state, node_pick, expanded], [tree_plot, details],
                        api_visibility="private", **view)
        click_outputs = [details, node_pick, research["rewind_pick"], outer, research["tabs"]]
        for source in (text_box, heat_plot):
            source.click(clicked, [trace_state, expanded], [tree_plot, *click_outputs], api_visibility="private",
                         **view)
        tree_plot.click(clicked_in_tree, [trace_state, expanded], click_outputs, api_visibility="private", **view)
        tree_plot.expand(expand_stretch, [trace_state, expanded], [tree_plot, expanded], api_visibility="private",
                         **view)
        replay.input(replay_to, [trace_state, replay], [*figures, status], api_name="replay", **view)
        clear_reveal = lambda: ("", "", gr.update(choices=[], value=[], visible=False))  # noqa: E731
        for source in (ui["run"], continue_btn, *recorded_buttons.values()):
            source.click(clear_reveal, None, [ui["reveal_md"], ui["question"], ui["choices"]], queue=False,
                         api_visibility="private")
        upload.upload(clear_reveal, None, [ui["reveal_md"], ui["question"], ui["choices"]], queue=False,
                      api_visibility="private")
        after_trace(upload.upload(app.load_trace, [history, upload], [*outputs, *inputs], api_visibility="private",
                                  **view))
        for name, button in recorded_buttons.items():
            after_trace(button.click(lambda runs, name=name: app.show_recorded(runs, name), [history],
                                     [*outputs, *inputs], api_visibility="private", **view))

        # the Learn tab: lessons from recorded runs; "try it live" fills the form and opens Explore
        def go(i: int, delta: int):
            i = max(0, min(len(LESSONS) - 1, int(i or 0) + delta))
            return (i, *lesson_view(i), *lesson_buttons(i), LESSON_DETAILS)
        lesson_outputs = [lesson, learn["text"], learn["plot"], learn["where"], learn["prev"], learn["next"],
                          learn["details"]]
        learn["prev"].click(lambda i: go(i, -1), lesson, lesson_outputs, queue=False, api_visibility="private")
        learn["next"].click(lambda i: go(i, 1), lesson, lesson_outputs, queue=False, api_visibility="private")
        learn["try"].click(app.try_lesson, lesson, [*inputs, top], queue=False, api_visibility="private")
        learn["plot"].click(lesson_node, lesson, learn["details"], api_visibility="private", **view)

        # the curve redraws as soon as its controls change, before any generation
        preview = lambda **form: preview_curve(limits, **form)  # noqa: E731
        for name in ("dynamic_threshold", "dynamic_threshold_form", "attention_threshold", "final_threshold",
                     "bezier_p1", "bezier_p2", "use_relu", "relu_activation_point", "max_tokens",
                     "use_retroactive_pruning", "mode"):
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
    app.waiting_runs = lambda session_hash: waiting_model_events(demo, session_hash)
    api.add_middleware(BodyLimit)
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
    import uvicorn

    from tempo_core import load_model
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        executor = model_executor(_env_int("TEMPO_MODEL_THREADS", 1))
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
    uvicorn.run(fastapi_app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
