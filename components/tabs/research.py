"""The "Research" tab: faithfulness, positions & mask, pruning rewind, baselines, sweep and tree diff."""

from __future__ import annotations

import contextvars
import html
import json
import math
from dataclasses import replace
from typing import Any, Callable

import gradio as gr

from tempo_core import SettingsError, Trace
from tempo_core.analysis.baselines import baselines
from tempo_core.analysis.report import study_table
from tempo_core.analysis.study import BUNDLED_RESULTS, QUICK, load_prompts, study_iter
from tempo_core.analysis.sweep import sweep
from tempo_core.config import echo_value
from tempo_core.stop import RunStop
from tempo_core.trace import rewind

from ..figures.baselines import aligned_html, beam_tree_figure
from ..figures.faithfulness import faithfulness_figure, threads_figure
from ..figures.inspect import find_node
from ..figures.positions import positions_figure
from ..figures.report import tree_figure
from ..figures.rewind import rewind_figure
from ..figures.study import study_figure
from ..figures.sweep import sweep_figure, sweep_multiples, sweep_table
from ..server.shared import Shared
from .controls import setting_slider
from .page import After, Hook, Page
from .widgets import plotly_view

MAX_SWEEP = 6
MAX_STUDY_PROMPTS = 5  # a small study on a shared server: about 15-30 s a prompt on 2 cores


def study_prompts(value: Any, max_forward_passes: int) -> int:
    """The number of prompts of a small study, checked against its range and the server's budget."""
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value == int(value)
    if not whole or not 1 <= value <= MAX_STUDY_PROMPTS:
        raise SettingsError("study prompts", f"must be an integer in [1, {MAX_STUDY_PROMPTS}], got {echo_value(value)}")
    n = int(value)
    cost = QUICK.forward_passes(n)
    if cost > max_forward_passes:
        raise SettingsError("study prompts", f"{n} prompts need up to {cost:,} forward passes; this server allows "
                                             f"{max_forward_passes:,} per request")
    return n


def bundled_study() -> dict | None:
    """The full study's result shipped with the app (assets/study/results.json), None when absent."""
    try:
        return json.loads(BUNDLED_RESULTS.read_text())
    except (OSError, ValueError):
        return None


def study_heading(result: dict | None, here: bool = False) -> str:
    if result is None:
        return "*No bundled results: run `python cli.py study --out assets/study` and copy study.json to " \
               "assets/study/results.json.*"
    where = "Run here" if here else "Bundled results"
    stopped = f", **stopped early ({result['stopped'].replace('_', ' ')})**" if result.get("stopped") else ""
    return (f"**{where}**: {result['model']}, {len(result['records'])} prompts in {result['runtime_s'] / 60:.1f} min "
            f"on {result['torch_threads']} CPU threads{stopped}.")


def parse_thresholds(text: str) -> list[float]:
    """'0.05, 0.1; 0.2' -> [0.05, 0.1, 0.2]; SettingsError names the field and the allowed values."""
    try:
        values = [float(x) for x in str(text).replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise SettingsError("sweep thresholds", f"must be 1 to {MAX_SWEEP} numbers in [0, 1] separated by commas, "
                                                f"got {str(text)[:40]!r}") from None
    if not values or len(values) > MAX_SWEEP or any(not 0 <= t <= 1 for t in values):
        raise SettingsError("sweep thresholds", f"must be 1 to {MAX_SWEEP} numbers in [0, 1], got {str(text)[:40]!r}")
    return values


def _reporter(progress: gr.Progress):
    """(done, total, what) -> a Gradio progress bar saying what is being computed."""
    return lambda done, total, what: progress(done / max(1, total), desc=f"{what} ({done + 1} of {total})")


def _on(executor: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` on `executor`, in a copy of this thread's context: Gradio finds the event a progress
    bar belongs to through context variables, which a pool thread does not have (without this, the bar stays a
    bare spinner)."""
    return executor.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()


def pruned_choices(trace: Trace) -> list[tuple[str, str]]:
    return [(f"step {st.step} · {c.text!r} · pruned after {c.pruned_at}", f"{st.step}:{i}")
            for st in trace.steps for i, c in enumerate(st.candidates) if c.pruned_at is not None]


class Research:
    """The tab. Heavy jobs (baselines, sweep) run in their own concurrency group, slots and threads, so ordinary
    generation keeps flowing, within the server's budget and time limit. A pruned candidate clicked on the page
    opens its rewind here (`page.open_rewind`)."""

    def __init__(self, shared: Shared, page: Page):
        self.shared = shared
        with gr.Tab("Research", id="research"):
            with gr.Tabs() as self.tabs:
                self._layout()
        listen = {"api_visibility": "private", **shared.view_events}
        self.mask_step.input(self.show_mask, [page.trace, self.mask_step], self.mask_plot, **listen)
        self.rewind_pick.change(self.show_rewind, [page.trace, self.rewind_pick],
                                [self.rewind_plot, self.before_plot, self.after_plot], **listen)
        self.base_btn.click(self.run_baselines, None, [self.base_html, self.beam_plot], inputs_kwargs=page.form,
                            api_name="baselines", **shared.research_events)
        self.bundled_btn.click(self.show_bundled, None, [self.study_heading, self.study_plot, self.study_md],
                               queue=False, api_visibility="private")
        self.study_btn.click(self.run_study, [self.study_n], [self.study_heading, self.study_plot, self.study_md],
                             api_name="study", **shared.research_events)
        self.sweep_btn.click(self.run_sweep, [self.sweep_thr], [self.sweep_plot, self.sweep_small, self.sweep_md],
                             inputs_kwargs=page.form, api_name="sweep", **shared.research_events)
        page.after_trace(After.RESEARCH, Hook(self.refresh, [page.trace], [self.faith_plot, self.threads_plot,
                                                                       self.mask_step, self.mask_plot,
                                                                       self.rewind_pick]))
        page.offer_rewind(self.rewind_pick, self.tabs, "rewind")  # a pruned candidate clicked on the page opens here

    def _layout(self) -> None:
        with gr.Tab("Faithfulness"):
            gr.Markdown("Does one superposed sequence approximate the explicit branches it stands for? Tick "
                        "**Measure faithfulness** (in *Research options*) and generate: each step's merged "
                        "distribution is compared with the mixture of the explicit paths run one by one.")
            self.faith_plot = gr.Plot(show_label=False, elem_id="faith-plot")
            gr.Markdown("Does the merged step carry its threads, or only its top sibling's? Each step's merged "
                        "distribution fitted as *w* x (the top sibling's paths) + (1 - *w*) x (the others'): "
                        "*w* = 1 follows one thread, *w* = its share is a faithful mixture.")
            self.threads_plot = gr.Plot(show_label=False, elem_id="threads-plot")
        with gr.Tab("Positions & mask"):
            self.mask_step = gr.Slider(0, 1, value=0, step=1, label="Step")
            self.mask_plot = gr.Plot(show_label=False, elem_id="mask-plot")
        with gr.Tab("Pruning rewind", id="rewind"):
            self.rewind_pick = gr.Dropdown([], label="Pruned candidate (or click one in the tree / heatmap)")
            self.rewind_plot = gr.Plot(show_label=False, elem_id="rewind-plot")
            with gr.Row():
                self.before_plot = gr.Plot(label="tree just before the decision")
                self.after_plot = gr.Plot(label="tree just after")
        with gr.Tab("Baselines"):
            self.base_btn = gr.Button("Run greedy, beam search and TEMPO on this prompt", elem_id="run-baselines")
            self.base_html = gr.HTML()
            self.beam_plot = gr.Plot(show_label=False)
        with gr.Tab("Study", id="study"):
            self._study_layout()
        with gr.Tab("Threshold sweep"):
            self.sweep_thr = gr.Textbox("0.05, 0.1, 0.2, 0.3", label=f"Selection thresholds (up to {MAX_SWEEP})")
            self.sweep_btn = gr.Button("Sweep", elem_id="run-sweep")
            self.sweep_plot = gr.Plot(show_label=False)
            self.sweep_small = gr.Plot(show_label=False)
            self.sweep_md = gr.Markdown(elem_id="sweep-table")

    def _study_layout(self) -> None:
        bundled = bundled_study()
        gr.Markdown("Is the superposition real? The same questions over many prompts, the prompt as the unit: "
                    "attention received by parallel against ordinary tokens (with a greedy control), faithfulness and "
                    "single-threadedness by threshold for TEMPO against Soft Thinking, how many temperature-1 samples "
                    "stay on the sets, and where predictions settle. Rerun it all with `python cli.py study`.")
        self.study_heading = gr.Markdown(study_heading(bundled), elem_id="study-heading")
        self.study_plot = plotly_view(study_figure(bundled) if bundled else None, elem_id="study-plot")
        self.study_md = gr.Markdown(study_table(bundled) if bundled else "", elem_id="study-table")
        with gr.Row():
            self.study_n = setting_slider(1, MAX_STUDY_PROMPTS, value=2, step=1, scale=2,
                                          label="Prompts for a small study here (the first of the bundled set)")
            self.study_btn = gr.Button("Run a small study", elem_id="run-study", scale=1)
            self.bundled_btn = gr.Button("Show the bundled results", elem_id="show-bundled", scale=1)

    def refresh(self, data: dict | None) -> dict:
        """A trace arrived (the hook): its faithfulness, positions and pruned candidates."""
        if not data:
            return gr.skip()
        trace = Trace.from_dict(data)
        n = len(trace.steps)
        return {self.faith_plot: faithfulness_figure(trace), self.threads_plot: threads_figure(trace),
                self.mask_step: gr.update(maximum=max(1, n - 1), value=max(0, n - 1)),
                self.mask_plot: positions_figure(trace, n - 1),
                self.rewind_pick: gr.update(choices=pruned_choices(trace), value=None)}

    def show_mask(self, data: dict | None, step: Any) -> Any:
        return positions_figure(Trace.from_dict(data), int(step)) if data else gr.skip()

    def show_rewind(self, data: dict | None, node: str | None) -> dict:
        if not data or not node:
            return gr.skip()
        trace = Trace.from_dict(data)
        found = find_node(trace, node)  # an id from the browser: checked like every other click
        if found is None:
            return gr.skip()
        c = found[2]
        at = c.pruned_at if c.pruned_at is not None else len(trace.steps) - 1
        return {self.rewind_plot: rewind_figure(trace, node), self.before_plot: tree_figure(rewind(trace, at - 1)),
                self.after_plot: tree_figure(rewind(trace, at))}

    def run_baselines(self, request: gr.Request, progress: gr.Progress = gr.Progress(), **form: Any) -> dict:
        try:
            s = self.shared.settings(form, runs=3)  # TEMPO, greedy and beam search
        except SettingsError as exc:
            return {self.base_html: f"<p><b>Error:</b> {html.escape(str(exc))}</p>"}
        result = self._job(request, baselines, s, progress)
        return {self.base_html: aligned_html(result), self.beam_plot: beam_tree_figure(result["beam"])}

    def run_sweep(self, thresholds: str, request: gr.Request, progress: gr.Progress = gr.Progress(),
                  **form: Any) -> dict:
        try:
            values = parse_thresholds(thresholds)
            s = self.shared.settings({**form, "mode": "TEMPO"}, runs=len(values))
        except SettingsError as exc:
            return {self.sweep_md: f"**Error:** {exc}"}
        traces = self._job(request, sweep, s, progress, values)
        return {self.sweep_plot: sweep_figure(traces), self.sweep_small: sweep_multiples(traces),
                self.sweep_md: sweep_table(traces)}

    def run_study(self, prompts: Any, request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict:
        """The quick study (analysis/study.py QUICK) over the first `prompts` bundled prompts, on the research
        thread within the server's budget and time limit (Stop and a closed tab end it too); a stopped study
        shows the prompts it finished."""
        try:
            n = study_prompts(prompts, self.shared.limits.max_forward_passes)
        except SettingsError as exc:
            return {self.study_md: f"**Error:** {exc}"}
        cfg = replace(QUICK, max_prompts=n)
        progress(0, desc=f"study: 0 of {n} prompts done")  # a bar from the start, also for one prompt

        def job(stop: RunStop) -> dict:
            result = None
            for done, result in study_iter(self.shared.lm, cfg, load_prompts(), stop):
                progress(done / n, desc=f"study: {done} of {n} prompts done")
            return result
        with self.shared.research_job(request) as stop:
            result = _on(self.shared.research_executor, job, stop)
        result = json.loads(json.dumps(result), parse_constant=lambda c: None)
        return {self.study_heading: study_heading(result, here=True), self.study_plot: study_figure(result),
                self.study_md: study_table(result)}

    def show_bundled(self) -> dict:
        """The bundled study again, after a small study here replaced it."""
        bundled = bundled_study()
        return {self.study_heading: study_heading(bundled), self.study_plot: study_figure(bundled) if bundled else None,
                self.study_md: study_table(bundled) if bundled else ""}

    def _job(self, request: gr.Request, job: Callable[..., Any], s: Any, progress: gr.Progress, *args: Any) -> Any:
        """`job(lm, s, *args)` on the research thread, within the server's time limit (Stop and a closed tab end
        it too), reporting to `progress`."""
        with self.shared.research_job(request) as stop:
            return _on(self.shared.research_executor, job, self.shared.lm, s, *args, stop=stop,
                       progress=_reporter(progress))
