"""The "Research" tab: faithfulness, positions & mask, pruning rewind, baselines, sweep and tree diff."""

from __future__ import annotations

import contextvars
import html
from typing import Any, Callable

import gradio as gr

from tempo_core import SettingsError, Trace
from tempo_core.compare import baselines
from tempo_core.limits import RunStop
from tempo_core.sweep import sweep
from tempo_core.trace import rewind

from ..figures.inspect import find_node
from ..figures.report import tree_figure
from ..figures.research import (aligned_html, beam_tree_figure, faithfulness_figure, positions_figure,
                                rewind_figure, sweep_figure, sweep_multiples, sweep_table, threads_figure)
from ..server.shared import Shared
from .page import Hook, Page

MAX_SWEEP = 6


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
    generation keeps flowing, within the server's budget and time limit. It offers `rewind_pick` and `tabs`: a
    pruned candidate clicked in Explore opens its rewind here."""

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
        self.sweep_btn.click(self.run_sweep, [self.sweep_thr], [self.sweep_plot, self.sweep_small, self.sweep_md],
                             inputs_kwargs=page.form, api_name="sweep", **shared.research_events)
        page.on_trace.append(Hook(self.refresh, [page.trace], [self.faith_plot, self.threads_plot, self.mask_step,
                                                               self.mask_plot, self.rewind_pick]))

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
        with gr.Tab("Threshold sweep"):
            self.sweep_thr = gr.Textbox("0.05, 0.1, 0.2, 0.3", label=f"Selection thresholds (up to {MAX_SWEEP})")
            self.sweep_btn = gr.Button("Sweep", elem_id="run-sweep")
            self.sweep_plot = gr.Plot(show_label=False)
            self.sweep_small = gr.Plot(show_label=False)
            self.sweep_md = gr.Markdown(elem_id="sweep-table")

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

    def run_baselines(self, progress: gr.Progress = gr.Progress(), **form: Any) -> dict:
        try:
            s = self.shared.settings(form, runs=3)  # TEMPO, greedy and beam search
        except SettingsError as exc:
            return {self.base_html: f"<p><b>Error:</b> {html.escape(str(exc))}</p>"}
        result = self._job(baselines, s, progress)
        return {self.base_html: aligned_html(result), self.beam_plot: beam_tree_figure(result["beam"])}

    def run_sweep(self, thresholds: str, progress: gr.Progress = gr.Progress(), **form: Any) -> dict:
        try:
            values = parse_thresholds(thresholds)
            s = self.shared.settings({**form, "mode": "TEMPO"}, runs=len(values))
        except SettingsError as exc:
            return {self.sweep_md: f"**Error:** {exc}"}
        traces = self._job(sweep, s, progress, values)
        return {self.sweep_plot: sweep_figure(traces), self.sweep_small: sweep_multiples(traces),
                self.sweep_md: sweep_table(traces)}

    def _job(self, job: Callable[..., Any], s: Any, progress: gr.Progress, *args: Any) -> Any:
        """`job(lm, s, *args)` on the research thread, within the server's time limit, reporting to `progress`."""
        shared = self.shared
        with shared.research_slots.hold():
            return _on(shared.research_executor, job, shared.lm, s, *args,
                       stop=RunStop(shared.limits.max_seconds), progress=_reporter(progress))
