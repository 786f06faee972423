"""The tree inspector under the Explore tab's tree: what a click on a candidate opens (in the tree, the heatmap or
the text), its details, "continue from here", "what if the threshold were lower here", and opening a collapsed
stretch of the tree."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import gradio as gr

from tempo_core import SettingsError, StepEvent, Trace, build_settings
from tempo_core.config import TempoSettings
from tempo_core.forward import ForwardRequest
from tempo_core.steer import continue_from, rerun_at
from tempo_core.stop import RunStop

from ..figures.commitment_strip import commitment_strip
from ..figures.inspect import find_node, node_details, what_if_lower
from ..figures.tree import tree_view, units
from ..server.api import admit
from ..server.shared import Shared
from .page import NO_TRACE, After, Hook, Outputs, Page

Events = Callable[[TempoSettings, RunStop], Iterator[StepEvent | ForwardRequest]]
# (request, settings, events, source) -> the run's frames on the page (Explore streams it like any run)
Stream = Callable[[gr.Request, Callable[[], TempoSettings], Events, str], Iterator[Outputs]]


class TreeInspector:
    def __init__(self, shared: Shared, page: Page):
        """Lays out, where it is made, the candidate list, its details and the two buttons under the tree."""
        self.shared, self.page = shared, page
        with gr.Row():
            page.node_pick.render()
            self.details = gr.Markdown(node_details(NO_TRACE, ""), elem_id="node-details")
        with gr.Row():
            self.continue_btn = gr.Button("Continue from here (only this candidate)", elem_id="continue-here",
                                          size="sm")
            self.what_if_btn = gr.Button("What if the threshold were lower here?", elem_id="what-if", size="sm")
        self.what_if = gr.Markdown("", elem_id="what-if-result")
        with gr.Row():  # what the what-if table promises, run: the earlier steps kept, this step on at a threshold
            self.rerun_threshold = gr.Number(None, label="Rerun from this step at threshold", minimum=0, maximum=1,
                                             step=0.0001, elem_id="rerun-threshold", scale=2)
            self.rerun_btn = gr.Button("Rerun (earlier steps as they were)", elem_id="rerun", size="sm", scale=1)

    def wire(self, stream: Stream, figure_tabs: gr.Tabs) -> None:
        """Listeners on the page's views; `stream` runs "continue from here" like any run. `figure_tabs` (the tabs
        beside the tree) are on the way to a pruned candidate's rewind."""
        page, view, model = self.page, self.page.view, {"show_progress": "hidden", **self.shared.model_events}
        self.stream = stream
        page.rewind_via(figure_tabs, "research")
        page.trace_arrived(self.continue_btn.click(self.continue_here, [page.trace, page.node_pick],
                                                   [*view.outputs, page.trace, page.arrived],
                                                   api_name="continue_from", **model))
        page.trace_arrived(self.rerun_btn.click(self.rerun_here, [page.trace, page.node_pick, self.rerun_threshold],
                                                [*view.outputs, page.trace, page.arrived], api_name="rerun_at",
                                                **model))
        listen = {"api_visibility": "private", **self.shared.view_events}
        self.what_if_btn.click(self.what_if_lower, [page.trace, page.node_pick], self.what_if, **listen)
        # .input, not .change: a click already drew the tree and the details; only a pick from the list redraws
        page.node_pick.input(self.show_node, [page.trace, page.node_pick, page.expanded],
                             [view.tree, self.details, view.strip], **listen)
        click_outputs = [self.details, page.node_pick, view.strip, *page.rewind_outputs]
        for source in (view.text, view.heatmap):
            source.click(self.clicked, [page.trace, page.expanded], [view.tree, *click_outputs], **listen)
        # the page rings a clicked tree node itself (widgets.py), so the tree is not an output: Gradio redraws an
        # output even when it sends nothing new, and a 200-step tree takes Plotly about a second
        view.tree.click(self.clicked_in_tree, [page.trace, page.expanded], click_outputs, **listen)
        view.tree.expand(self.expand_stretch, [page.trace, page.expanded], [view.tree, page.expanded], **listen)
        page.after_trace(After.PICK, Hook(self.forget_pick, [], [self.details, self.what_if], queued=False))

    def forget_pick(self) -> Outputs:
        """A new trace is on show (the candidate list was emptied): nothing of the trace before stays described."""
        return {self.details: node_details(NO_TRACE, ""), self.what_if: ""}

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
        yield from self.stream(request, settings, events, "continued")

    def rerun_here(self, request: gr.Request, data: dict | None, node: str | None, threshold: Any
                   ) -> Iterator[Outputs]:
        """What if, run: the run's steps before the picked candidate's as they were, its step and the rest selected
        at `threshold` (the original stays in Compare's history)."""
        original = Trace.from_dict(data) if data else None
        found = find_node(original, node) if original is not None and node else None
        if found is None:
            yield {self.page.view.status: "**Error:** pick a candidate in the tree first (click a node)"}
            return
        step = found[0]
        lm, limits = self.shared.lm, self.shared.limits

        def settings() -> TempoSettings:
            if original.model != lm.name:
                raise SettingsError("trace", f"made with {original.model}; this server runs {lm.name}")
            if threshold is None:
                raise SettingsError("rerun threshold", "must be a number in [0, 1] (the what-if table states them)")
            s = build_settings({"selection_threshold": threshold}, build_settings(original.settings))
            s = admit(lm, limits.fit(s), limits)  # within this server's caps, as continue from here
            original.settings = s.to_dict()
            return s

        def events(s: TempoSettings, stop: RunStop) -> Iterator[StepEvent | ForwardRequest]:
            return rerun_at(lm, original, step, s.selection_threshold, stop, cooperative=True)
        yield from self.stream(request, settings, events, "rerun")

    def clicked_in_tree(self, data: dict | None, expanded: list | None, evt: gr.EventData) -> Outputs:
        """A candidate clicked in the tree: its details and pick (the page rings it itself)."""
        return self.clicked(data, expanded, evt, redraw_tree=False)

    def clicked(self, data: dict | None, expanded: list | None, evt: gr.EventData, redraw_tree: bool = True
                ) -> Outputs:
        """A candidate clicked in the heatmap or the text: the tree with it ringed, its details and pick. A pruned
        cross in the heatmap opens its rewind."""
        event: dict[str, Any] = getattr(evt, "_data", None) or {}
        node = str(event.get("node") or "")
        trace = Trace.from_dict(data) if data and node else None
        found = find_node(trace, node) if trace is not None else None
        if found is None:
            return gr.skip()
        view = self.page.view
        out: Outputs = {self.details: node_details(trace, node), self.page.node_pick: node}
        if trace.commitment:  # the strip outlines the clicked step
            out[view.strip] = commitment_strip(trace, found[0])
        if redraw_tree:
            out[view.tree] = tree_view(trace, node, frozenset(expanded or ()))
        if found[2].pruned_at is not None and trace.mode == "tempo":
            out |= self.page.open_rewind(node, show="heatmap" in str(event.get("source") or ""))
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
