"""The "Explore" tab: the form, Generate / Stop, the live views of the run (tree, heatmap, curve, text), what a
click on them opens (details, continue from here, what if), step mode, and the Compare, Research and Replay tabs
beside the figures."""

from __future__ import annotations

import html
import logging
from typing import Any, Callable, Iterator

import gradio as gr

from tempo_core import SettingsError, StepEvent, Trace, build_settings
from tempo_core.config import TempoSettings
from tempo_core.forward import ForwardRequest
from tempo_core.steer import continue_from
from tempo_core.stop import RunStop

from ..figures.commitment_strip import commitment_strip
from ..figures.inspect import find_node, node_details, what_if_lower
from ..figures.lessons import GLOSSARY
from ..figures.recordings import recorded, RECORDINGS
from ..figures.style import empty_figure
from ..figures.text import status_line
from ..figures.tree import tree_view, units
from ..server.api import admit
from ..server.forms import RESEARCH_EXAMPLES, RESEARCH_FIELDS, examples, research_examples
from ..server.live import Pace, live_traces
from ..server.sessions import session_key
from ..server.shared import Shared
from .compare import Compare
from .controls import build_controls, prompt_box
from .page import Outputs, Page, TraceView, arrival
from .replay import Replay
from .research import Research
from .step_mode import StepControls, StepMode
from .widgets import branching_text, plotly_view

log = logging.getLogger("tempo.app")
NO_TRACE = Trace("", "tempo", {}, "", "", [])  # what the page shows before any run
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
Events = Callable[[TempoSettings, RunStop], Iterator[StepEvent | ForwardRequest]]

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
            gr.Examples(examples(shared.limits), [form[n] for n in ("prompt", "selection_threshold", "max_tokens",
                                                                      "mode")], label="Examples")
            gr.Examples(research_examples(shared.limits), [form[n] for n in RESEARCH_FIELDS],
                        example_labels=[label for label, _ in RESEARCH_EXAMPLES],
                        label="Research presets (then open the Research tab)")
            self._wire_runs()  # inside the tab: step mode's State must not sit among the top tabs
            self._wire_clicks()

    # --- layout -----------------------------------------------------------------------------------------------
    def _form_column(self) -> None:
        limits = self.shared.limits
        prompt = prompt_box(limits)
        with gr.Row(elem_id="run-buttons"):  # right under the prompt, above the fold on a laptop and a phone
            self.run = gr.Button("Generate", variant="primary", elem_id="generate", scale=2, min_width=80)
            self.stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=60)
        self.step_controls = StepControls.lay_out(limits.demo)
        self.page.set_form(build_controls(limits, prompt, expert_visible=not limits.demo))
        with gr.Row():
            self.recorded = {name: gr.Button(label, size="sm", elem_id=f"recorded-{name}") for name, label in RECORDED}
        gr.Markdown("*Recorded examples: instant, even while the model is busy.*", elem_classes="legend-line")

    def _views_column(self) -> None:
        page = self.page
        status = gr.Markdown(f"Ready: model **{self.shared.lm.name}** on {self.shared.lm.device}.", elem_id="status")
        text = branching_text()
        gr.Markdown("*Each step's set in [ ]; underline colour: probability (yellow high, purple low); struck "
                    "through: pruned; ⏎ newline, · space.*", elem_classes="legend-line")
        with gr.Tabs() as self.figure_tabs:
            tree, heatmap, curve, strip = self._figure_tabs()
            page.view = TraceView(status, text, tree, heatmap, curve, strip)
            self.compare = Compare(self.shared, page)
            self.research = Research(self.shared, page)
            self.replay = Replay(self.shared, page, self.node_pick)

    def _figure_tabs(self) -> tuple[Any, Any, Any, Any]:
        with gr.Tab("Tree", id="tree"):
            gr.Markdown("*One column per logical step (its candidates share one position); size and colour: "
                        "probability; ✕ pruned; grey open circles: near misses; a long orange bar: steps with one "
                        "candidate each (click to expand). Drag the slider under the tree to see the whole run.*",
                        elem_classes="legend-line")
            tree = plotly_view(tree_view(NO_TRACE), elem_id="tempo-tree")
            with gr.Row():
                # any value is accepted here and checked by find_node (API callers name a node)
                self.node_pick = gr.Dropdown([], label="Inspect candidate", scale=1, allow_custom_value=True)
                self.details = gr.Markdown(node_details(NO_TRACE, ""), elem_id="node-details")
            with gr.Row():
                self.continue_btn = gr.Button("Continue from here (only this candidate)", elem_id="continue-here",
                                              size="sm")
                self.what_if_btn = gr.Button("What if the threshold were lower here?", elem_id="what-if", size="sm")
            self.what_if = gr.Markdown("", elem_id="what-if-result")
            strip = plotly_view(commitment_strip(NO_TRACE), elem_id="commitment-strip")
        with gr.Tab("Pruning heatmap", id="heatmap"):
            gr.Markdown("*Rows: candidates that came near the pruning threshold; columns: the steps after theirs; "
                        "colour: the attention those steps paid them (darker = more); red outline: below the "
                        "threshold then; ✕ where one was pruned (click it for its rewind).*", elem_classes="legend-line")
            heatmap = plotly_view(empty_figure("Pruning heatmap", 300, "press Generate (with pruning on) to fill it"),
                                  elem_id="tempo-heatmap", max_height=620)
        with gr.Tab("Threshold curve", id="curve"):
            gr.Markdown("*The pruning threshold over the run (a constant, a Bezier or a ReLU curve), with each step's "
                        "set size and the candidates pruned at it.*", elem_classes="legend-line")
            curve = plotly_view(elem_id="tempo-curve")
        return tree, heatmap, curve, strip

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
        page.trace_arrived(self.continue_btn.click(self.continue_here, [page.trace, self.node_pick], outputs,
                                                   api_name="continue_from", **model))
        for name, button in self.recorded.items():
            page.trace_arrived(button.click(lambda name=name: self.show_recorded(name), None,
                                            [*outputs, *form.values()], api_visibility="private",
                                            **shared.view_events))
        self.step_mode = StepMode(shared, page, self.step_controls)
        clear = self.step_controls.cleared
        for source in (self.run, self.continue_btn, *self.recorded.values()):
            source.click(clear, None, list(clear()), **quiet)
        self.replay.upload.upload(clear, None, list(clear()), **quiet)
        preview = lambda **values: view.preview(values, shared.limits)  # noqa: E731
        for name in CURVE_FIELDS:
            form[name].change(preview, None, view.curve, inputs_kwargs=form, api_visibility="private",
                              concurrency_limit=None, show_progress="hidden")

    def _wire_clicks(self) -> None:
        page, research = self.page, self.research
        listen = {"api_visibility": "private", **self.shared.view_events}
        self.what_if_btn.click(self.what_if_lower, [page.trace, self.node_pick], self.what_if, **listen)
        # .input, not .change: a click already drew the tree and the details; only a pick from the list redraws
        self.node_pick.input(self.show_node, [page.trace, self.node_pick, page.expanded],
                             [page.view.tree, self.details, page.view.strip], **listen)
        click_outputs = [self.details, self.node_pick, research.rewind_pick, self.figure_tabs, research.tabs,
                         page.view.strip]
        for source in (page.view.text, page.view.heatmap):
            source.click(self.clicked, [page.trace, page.expanded], [page.view.tree, *click_outputs], **listen)
        # the page rings a clicked tree node itself (widgets.py), so the tree is not an output: Gradio redraws an
        # output even when it sends nothing new, and a 200-step tree takes Plotly about a second
        page.view.tree.click(self.clicked_in_tree, [page.trace, page.expanded], click_outputs, **listen)
        page.view.tree.expand(self.expand_stretch, [page.trace, page.expanded], [page.view.tree, page.expanded],
                              **listen)

    # --- runs ---------------------------------------------------------------------------------------------------
    def run_stream(self, request: gr.Request, **form: Any) -> Iterator[Outputs]:
        """Generate: the views, streamed while the run goes on; the trace once it has finished. Decoding runs on
        the model's thread at full speed; frames show its latest state (server/live.py)."""
        self.shared.stepped.drop(session_key(request))  # a new run replaces a stepped one
        yield from self._stream(request, lambda: self.shared.settings(form), self.shared.decode, "run")

    def continue_here(self, request: gr.Request, data: dict | None, node: str | None) -> Iterator[Outputs]:
        """Steer: the run up to the chosen candidate, that candidate alone in its set, then onward (the original
        stays in Compare's history)."""
        original = Trace.from_dict(data) if data else None
        found = find_node(original, node) if original is not None and node else None
        if found is None:
            yield {self.page.view.status: "**Error:** pick a candidate in the tree first (click a node)"}
            return
        step, index, _ = found
        lm, limits = self.shared.lm, self.shared.limits

        def settings() -> TempoSettings:
            if original.model != lm.name:
                raise SettingsError("trace", f"made with {original.model}; this server runs {lm.name}")
            # a recorded or uploaded run may have been made with larger settings than this server's caps: its
            # earlier steps stay as they were, the steps made here keep within the caps
            s = admit(lm, limits.fit(build_settings(original.settings)), limits)
            original.settings = s.to_dict()
            return s
        def events(s: TempoSettings, stop: RunStop) -> Iterator[StepEvent | ForwardRequest]:
            return continue_from(lm, original, step, index, stop, cooperative=True)
        yield from self._stream(request, settings, events, "continued")

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

    def show_recorded(self, name: str) -> Outputs:
        """A recorded run (assets/learn): its views at once, its settings in the form (no model needed)."""
        trace = recorded(name)
        status = (f"Recorded run: {len(trace.steps)} steps of “{html.escape(trace.prompt)}” "
                  f"({html.escape(trace.model)}); press Generate to run it live")
        return {**self.page.view.show(trace, status), **arrival(trace, "recorded", self.page),
                **self.page.fill_form(self.shared.limits.fit(build_settings(RECORDINGS[name])))}

    # --- clicks -------------------------------------------------------------------------------------------------
    def clicked_in_tree(self, data: dict | None, expanded: list | None, evt: gr.EventData) -> Outputs:
        """A candidate clicked in the tree: its details and pick (the page rings it itself)."""
        return self.clicked(data, expanded, evt, redraw_tree=False)

    def clicked(self, data: dict | None, expanded: list | None, evt: gr.EventData, redraw_tree: bool = True
                ) -> Outputs:
        """A candidate clicked in the heatmap or the text: the tree with it ringed, its details and pick. A pruned
        cross in the heatmap opens its rewind."""
        event = getattr(evt, "_data", None) or {}
        node = str(event.get("node") or "")
        trace = Trace.from_dict(data) if data and node else None
        found = find_node(trace, node) if trace is not None else None
        if found is None:
            return gr.skip()
        out: Outputs = {self.details: node_details(trace, node), self.node_pick: node}
        if trace.commitment:  # the strip outlines the clicked step
            out[self.page.view.strip] = commitment_strip(trace, found[0])
        if redraw_tree:
            out[self.page.view.tree] = tree_view(trace, node, frozenset(expanded or ()))
        if found[2].pruned_at is not None and trace.mode == "tempo":
            out[self.research.rewind_pick] = node
            if "heatmap" in str(event.get("source") or ""):
                out |= {self.figure_tabs: gr.Tabs(selected="research"), self.research.tabs: gr.Tabs(selected="rewind")}
        return out

    def show_node(self, data: dict | None, node: str | None, expanded: list | None) -> Outputs:
        if not data or not node:
            return gr.skip()
        trace = Trace.from_dict(data)
        found = find_node(trace, node)
        out: Outputs = {self.page.view.tree: tree_view(trace, node, frozenset(expanded or ())),
                        self.details: node_details(trace, node)}
        if trace.commitment and found:
            out[self.page.view.strip] = commitment_strip(trace, found[0])
        return out

    def expand_stretch(self, data: dict | None, expanded: list | None, evt: gr.EventData) -> Outputs:
        """A collapsed stretch of the tree was clicked: the tree with it opened."""
        node = str((getattr(evt, "_data", None) or {}).get("node") or "")
        if not data or not node.startswith("run:"):
            return gr.skip()
        trace = Trace.from_dict(data)
        opened = frozenset(expanded or ())
        stretch = next((u for u in units(trace, opened) if u.collapsed and u.id == node), None)
        if stretch is None:  # only a stretch this tree really shows (the browser's id is not trusted)
            return gr.skip()
        opened = opened | {stretch.first}
        return {self.page.view.tree: tree_view(trace, expanded=opened), self.page.expanded: sorted(opened)}

    def what_if_lower(self, data: dict | None, node: str | None) -> str:
        if not data or not node:
            return "Pick a candidate in the tree first (click a node)."
        return what_if_lower(Trace.from_dict(data), node)
