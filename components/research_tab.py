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

from .figures import tree_figure
from .research import (aligned_html, beam_tree_figure, faithfulness_figure, positions_figure,
                       rewind_figure, sweep_figure, sweep_multiples, sweep_table)

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


def build_research_tab(app: Any, trace_state: gr.State, controls: dict[str, gr.components.Component]) -> dict:
    """Lays out the tab in the current Blocks context and wires its events. Returns components others update.
    `app` is the page's `Explorer`: heavy jobs (baselines, sweep) run in their own concurrency group and slots
    so that ordinary generation keeps flowing, within the server's budget and time limit."""
    lm, limits = app.lm, app.limits
    with gr.Tab("Research", id="research"):
        with gr.Tabs() as inner:
            with gr.Tab("Faithfulness"):
                gr.Markdown("Does one superposed sequence approximate the explicit branches it stands for? Tick "
                            "**Measure faithfulness** (in *Research options*) and generate: each step's merged "
                            "distribution is compared with the mixture of the explicit paths run one by one.")
                faith_plot = gr.Plot(show_label=False, elem_id="faith-plot")
            with gr.Tab("Positions & mask"):
                mask_step = gr.Slider(0, 1, value=0, step=1, label="Step")
                mask_plot = gr.Plot(show_label=False, elem_id="mask-plot")
            with gr.Tab("Pruning rewind", id="rewind"):
                rewind_pick = gr.Dropdown([], label="Pruned candidate (or click one in the tree / heatmap)")
                rewind_plot = gr.Plot(show_label=False, elem_id="rewind-plot")
                with gr.Row():
                    before_plot = gr.Plot(label="tree just before the decision")
                    after_plot = gr.Plot(label="tree just after")
            with gr.Tab("Baselines"):
                base_btn = gr.Button("Run greedy, beam search and TEMPO on this prompt", elem_id="run-baselines")
                base_html = gr.HTML()
                beam_plot = gr.Plot(show_label=False)
            with gr.Tab("Threshold sweep"):
                sweep_thr = gr.Textbox("0.05, 0.1, 0.2, 0.3", label=f"Selection thresholds (up to {MAX_SWEEP})")
                sweep_btn = gr.Button("Sweep", elem_id="run-sweep")
                sweep_plot = gr.Plot(show_label=False)
                sweep_small = gr.Plot(show_label=False)
                sweep_md = gr.Markdown(elem_id="sweep-table")

    def refresh(data: dict | None):
        if not data:
            return (gr.skip(),) * 4
        trace = Trace.from_dict(data)
        n = len(trace.steps)
        return (faithfulness_figure(trace), gr.update(maximum=max(1, n - 1), value=max(0, n - 1)),
                positions_figure(trace, n - 1), gr.update(choices=pruned_choices(trace), value=None))

    def show_rewind(data: dict | None, node: str | None):
        if not data or not node:
            return gr.skip(), gr.skip(), gr.skip()
        trace = Trace.from_dict(data)
        try:
            s, i = (int(x) for x in node.split(":"))
            c = trace.steps[s].candidates[i]
        except (ValueError, IndexError):
            return gr.skip(), gr.skip(), gr.skip()
        at = c.pruned_at if c.pruned_at is not None else len(trace.steps) - 1
        return rewind_figure(trace, node), tree_figure(rewind(trace, at - 1)), tree_figure(rewind(trace, at))

    def run_baselines(progress: gr.Progress = gr.Progress(), **form: Any):
        try:
            s = app.settings(form, runs=3)  # TEMPO, greedy and beam search
        except SettingsError as exc:
            return f"<p><b>Error:</b> {html.escape(str(exc))}</p>", gr.skip()
        with app.research_slots.hold():
            result = _on(app.research_executor, baselines, lm, s, stop=RunStop(limits.max_seconds),
                         progress=_reporter(progress))
        return aligned_html(result), beam_tree_figure(result["beam"])

    def run_sweep(thresholds: str, progress: gr.Progress = gr.Progress(), **form: Any):
        try:
            values = parse_thresholds(thresholds)
            s = app.settings({**form, "mode": "TEMPO"}, runs=len(values))
        except SettingsError as exc:
            return gr.skip(), gr.skip(), f"**Error:** {exc}"
        with app.research_slots.hold():
            traces = _on(app.research_executor, sweep, lm, s, values, stop=RunStop(limits.max_seconds),
                         progress=_reporter(progress))
        return sweep_figure(traces), sweep_multiples(traces), sweep_table(traces)

    view = {"concurrency_id": "views", "concurrency_limit": app.view_concurrency}
    mask_step.input(lambda d, st: positions_figure(Trace.from_dict(d), int(st)) if d else gr.skip(),
                    [trace_state, mask_step], mask_plot, api_visibility="private", **view)
    rewind_pick.change(show_rewind, [trace_state, rewind_pick], [rewind_plot, before_plot, after_plot],
                       api_visibility="private", **view)
    base_btn.click(run_baselines, None, [base_html, beam_plot], inputs_kwargs=controls, api_name="baselines",
                   concurrency_id="research", concurrency_limit=app.research_concurrency)
    sweep_btn.click(run_sweep, [sweep_thr], [sweep_plot, sweep_small, sweep_md], inputs_kwargs=controls,
                    api_name="sweep", concurrency_id="research", concurrency_limit=app.research_concurrency)
    return {"refresh": refresh, "refresh_outputs": [faith_plot, mask_step, mask_plot, rewind_pick],
            "rewind_pick": rewind_pick, "tabs": inner}
