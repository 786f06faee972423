"""The "Explore" tab: the form, Generate / Stop, the live views of the run (tree, heatmap, curve, text), the tree
inspector under the tree (inspector.py), step mode, and the Compare, Research and Replay tabs beside the figures."""

from __future__ import annotations

import html
import logging
from typing import Any, Callable, Iterator

import gradio as gr

from tempo_core import SettingsError, build_settings
from tempo_core.config import TempoSettings
from tempo_core.stop import RunStop

from ..figures.lessons import GLOSSARY
from ..figures.recordings import RECORDINGS, recorded
from ..figures.text import status_line
from ..server.forms import (EXAMPLE_FIELDS, RESEARCH_EXAMPLES, RESEARCH_FIELDS, example_settings, examples,
                            research_examples)
from ..server.live import Pace, live_traces
from ..server.sessions import session_key
from ..server.shared import Shared
from .compare import Compare
from .controls import lay_out_form
from .inspector import Events, TreeInspector
from .page import Outputs, Page, arrival
from .replay import Replay
from .research import Research
from .step_mode import StepControls, StepMode

log = logging.getLogger("tempo.app")
# At most 4 frames a second (the last step is always drawn). A browser takes in a frame (clone the values, apply
# the diff, redraw the tree and the text) in time that grows with the steps shown, about 0.2 s at 200 steps on a
# 2-core laptop (Chromium profile): frames get rarer as a run grows, 1 s apart at 200 steps, so the page keeps up.
# With many runs at once, each run's frames get rarer too (a class of 30: 1.5 s apart), so that drawing does not
# take the server's cores from decoding.
FRAMES = Pace(min_s=0.25, per_step_s=0.005, per_run_s=0.05, max_s=2.0)
RECORDED = (("greedy", "Greedy"), ("tempo", "TEMPO + pruning"), ("curve", "Threshold curve"))
# the settings whose change redraws the threshold curve at once, before any run
CURVE_FIELDS = ("dynamic_threshold", "dynamic_threshold_form", "attention_threshold", "final_threshold", "bezier_p1",
                "bezier_p2", "use_relu", "relu_activation_point", "max_tokens", "use_retroactive_pruning", "mode")

ABOUT = """**How to read the page.** A *token* is a piece of text the model reads or writes (`·` marks a space,
`⏎` a newline). At each *logical step* TEMPO keeps every token whose *probability* passes the *selection
threshold*: they form a *set*, written `[a/b]` in the text and stacked in one column of the tree (bigger and
brighter = more probable; the grey open circles below are the *near misses*, the next tokens that did not pass).
All tokens of a set sit at the same *position* of one sequence, and a *mask* keeps siblings from seeing each
other. *Retroactive pruning* later removes (✕, struck through) candidates that later tokens pay less
*attention* than the pruning threshold; the **Pruning heatmap** shows that attention and the **Threshold
curve** how the pruning threshold changes over the run. The orange line is the most probable surviving path."""


class Explore:
    def __init__(self, shared: Shared, page: Page):
        self.shared, self.page = shared, page
        with gr.Tab("Explore", id="explore"):
            with gr.Accordion("What am I looking at? (how to read the page, glossary)", open=False):
                gr.Markdown(ABOUT + "\n\n" + GLOSSARY)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=330):
                    self._form_column()
                with gr.Column(scale=3, min_width=340):
                    self._views_column()
            form = page.form
            rows = gr.Examples(examples(shared.limits), [form[n] for n in EXAMPLE_FIELDS], label="Examples")
            presets = gr.Examples(research_examples(shared.limits), [form[n] for n in RESEARCH_FIELDS],
                                  example_labels=[label for label, _ in RESEARCH_EXAMPLES],
                                  label="Research presets (then open the Research tab)")
            for table, research in ((rows, False), (presets, True)):  # every other setting back to the defaults
                table.dataset.click(lambda picked, research=research: self.fill_example(picked, research),
                                    table.dataset, list(form.values()), queue=False, api_visibility="private")
            self._wire_runs()  # inside the tab: step mode's State must not sit among the top tabs
            self.inspector.wire(self._stream, self.figure_tabs)

    # --- layout -----------------------------------------------------------------------------------------------
    def _form_column(self) -> None:
        form = self.page.form
        form["prompt"].render()
        with gr.Row(elem_id="run-buttons"):  # right under the prompt, above the fold on a laptop and a phone
            self.run = gr.Button("Generate", variant="primary", elem_id="generate", scale=2, min_width=80)
            self.stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=60)
        self.step_controls = StepControls.lay_out(self.shared.limits.demo)
        lay_out_form(form, expert_visible=not self.shared.limits.demo)
        with gr.Row():
            self.recorded = {name: gr.Button(label, size="sm", elem_id=f"recorded-{name}") for name, label in RECORDED}
        gr.Markdown("*Recorded examples: instant, even while the model is busy.*", elem_classes="legend-line")

    def _views_column(self) -> None:
        view = self.page.view
        view.status.render()
        view.text.render()
        gr.Markdown("*Each step's set in [ ]; underline colour: probability (yellow high, purple low); struck "
                    "through: pruned; ⏎ newline, · space.*", elem_classes="legend-line")
        with gr.Tabs() as self.figure_tabs:
            self._figure_tabs()
            self.compare = Compare(self.shared, self.page)
            self.research = Research(self.shared, self.page)
            self.replay = Replay(self.shared, self.page)

    def _figure_tabs(self) -> None:
        view = self.page.view
        with gr.Tab("Tree", id="tree"):
            gr.Markdown("*One column per logical step (its candidates share one position); size and colour: "
                        "probability; ✕ pruned; grey open circles: near misses; a long orange bar: steps with one "
                        "candidate each (click to expand). Drag the slider under the tree to see the whole run.*",
                        elem_classes="legend-line")
            view.tree.render()
            self.inspector = TreeInspector(self.shared, self.page)
            view.strip.render()
        with gr.Tab("Pruning heatmap", id="heatmap"):
            gr.Markdown("*Rows: candidates that came near the pruning threshold; columns: the steps after theirs; "
                        "colour: the attention those steps paid them (darker = more); red outline: below the "
                        "threshold then; ✕ where one was pruned (click it for its rewind).*", elem_classes="legend-line")
            view.heatmap.render()
        with gr.Tab("Threshold curve", id="curve"):
            gr.Markdown("*The pruning threshold over the run (a constant, a Bezier or a ReLU curve), with each step's "
                        "set size and the candidates pruned at it.*", elem_classes="legend-line")
            view.curve.render()

    # --- wiring -------------------------------------------------------------------------------------------------
    def _wire_runs(self) -> None:
        shared, page = self.shared, self.page
        view, form = page.view, page.form
        outputs = [*view.outputs, page.trace, page.arrived]
        model = {"show_progress": "hidden", **shared.model_events}
        quiet = {"queue": False, "api_visibility": "private"}
        self.run.click(shared.arm, None, None, **quiet)
        self.run.click(lambda: [], None, page.expanded, **quiet)
        page.trace_arrived(self.run.click(self.run_stream, None, outputs, inputs_kwargs=form, api_name="generate",
                                          **model))
        self.stop.click(shared.stop, None, None, api_name="stop", concurrency_limit=None, queue=False)
        for name, button in self.recorded.items():
            page.trace_arrived(button.click(lambda name=name: self.show_recorded(name), None,
                                            [*outputs, *form.values()], api_visibility="private",
                                            **shared.view_events))
        self.step_mode = StepMode(shared, page, self.step_controls, self.stop)
        clear = self.step_controls.cleared
        for source in (self.run, self.inspector.continue_btn, self.inspector.rerun_btn, *self.recorded.values()):
            source.click(clear, None, list(clear()), **quiet)
        self.replay.upload.upload(clear, None, list(clear()), **quiet)
        preview = lambda **values: view.preview(values, shared.limits)  # noqa: E731
        for name in CURVE_FIELDS:
            form[name].change(preview, None, view.curve, inputs_kwargs=form, api_visibility="private",
                              concurrency_limit=None, show_progress="hidden")

    # --- runs ---------------------------------------------------------------------------------------------------
    def run_stream(self, request: gr.Request, **form: Any) -> Iterator[Outputs]:
        """Generate: the views, streamed while the run goes on; the trace once it has finished. Decoding runs on
        the model's thread at full speed; frames show its latest state (server/live.py)."""
        self.shared.stepped.drop(session_key(request))  # a new run replaces a stepped one
        yield from self._stream(request, lambda: self.shared.settings(form), self.shared.decode, "run")

    def _stream(self, request: gr.Request, settings: Callable[[], TempoSettings], events: Events, source: str
                ) -> Iterator[Outputs]:
        shared, status = self.shared, self.page.view.status
        key = session_key(request)
        flag = shared.stops.start(key)
        try:
            try:
                s = settings()
            except SettingsError as exc:
                yield {status: f"**Error:** {exc}"}
                return
            yield {status: shared.queue_line()}
            with shared.slots.hold():
                flag.start_clock(shared.limits.max_seconds)
                yield from self._frames(s, flag, events, source)
        finally:
            flag.stop()  # the page went away mid-run (generator closed): the worker ends within a step
            shared.stops.finish(key, flag)

    def _frames(self, s: TempoSettings, flag: RunStop, events: Events, source: str) -> Iterator[Outputs]:
        view = self.page.view
        try:
            for frame in live_traces(lambda: events(s, flag), s.pruning_window, FRAMES, self.shared.batcher,
                                     waited=flag.extend):
                status = status_line(frame.trace, not frame.done, progress=frame.progress)
                out = view.show(frame.trace, status, live=not frame.done)
                yield {**out, **arrival(frame.trace, source, self.page)} if frame.done else out
        except SettingsError as exc:
            yield {view.status: f"**Error:** {exc}"}
        except Exception as exc:  # noqa: BLE001 - the page shows a message, never a traceback
            log.exception("run failed")
            yield {view.status: f"**Error:** run failed: {html.escape(str(exc))}"}

    def fill_example(self, picked: Any, research: bool) -> Outputs:
        """An Examples row or research preset was clicked (`picked`: the dataset's (index, values)): the whole form
        from it, the settings it does not name at the page's defaults."""
        try:
            return self.page.fill_form(example_settings(int(picked[0]), research, self.shared.limits))
        except (TypeError, ValueError, IndexError, SettingsError):
            return gr.skip()

    def show_recorded(self, name: str) -> Outputs:
        """A recorded run (assets/learn): its views at once, its settings in the form (no model needed)."""
        trace = recorded(name)
        status = (f"Recorded run: {len(trace.steps)} steps of “{html.escape(trace.prompt)}” "
                  f"({html.escape(trace.model)}); press Generate to run it live")
        return {**self.page.view.show(trace, status), **arrival(trace, "recorded", self.page),
                **self.page.fill_form(self.shared.limits.fit(build_settings(RECORDINGS[name])))}
